"""Environments: mounts inside an environment's mount namespace only (``env-mount``).

A tmpfs on a target (``--size``, ``--readonly``), or a bind of a path as seen inside
(``--source``); ``--recursive`` binds the mounts below the source too (``mount --rbind``).
A read-only bind is remounted read-only (``mount --bind -o ro``); that changes one mount, so
a read-only *recursive* bind is made read-only in every submount with one
``mount_setattr(AT_RECURSIVE)`` (Linux 5.12+; util-linux 2.38 has no command for it, so that
step is the system call on both backends, as for ``container-run --volume SRC:DST:ro``).
"""
from __future__ import annotations

import os
from typing import Callable

from nsutil import mountattr, process
from nsutil import syscalls as sc
from nsutil.backend import Runner, Step
from nsutil.errors import InvalidInput, NotFound
from nsutil.limits import parse_tmpfs_size

from recipes.common.holder import enter_argv, join_types
from recipes.env.state import check_path, holder_of, load, lock_unless_explain, update_state


def add_mount(run: Runner, name: str, target: str, *, source: str | None = None,
              size: str | None = None, readonly: bool = False, recursive: bool = False) -> None:
    """Step(s) of ``env-mount``: a tmpfs on ``target``, or with ``source`` a bind."""
    if source is None:
        if recursive:
            raise InvalidInput("--recursive applies to a bind, not to a tmpfs",
                               hint="give --source PATH to bind, or drop --recursive")
        mount_tmpfs(run, name, target, size, readonly=readonly)
        return
    if size is not None:
        raise InvalidInput("--size applies to a tmpfs, not to a bind (--source)",
                           hint="drop --size, or drop --source to mount a tmpfs")
    bind_mount(run, name, source, target, readonly, recursive=recursive)


def mount_tmpfs(run: Runner, name: str, target: str, size: str | None = None, *,
                readonly: bool = False) -> None:
    """Step: mount a tmpfs on ``target`` inside the environment's mount namespace only;
    ``size`` like ``16m`` or ``50%`` (0, unlimited, is refused); ``readonly``: MS_RDONLY."""
    target = check_path(target)
    size = parse_tmpfs_size(size) if size is not None else None
    st = load(name, run, need="mnt")
    holder = holder_of(st)
    check_inside(run, name, holder, target, "mount point", directory=True)
    data = f"size={size}" if size else None
    opts = ",".join((["ro"] if readonly else []) + ([data] if data else []))
    argv = ["mount", "-t", "tmpfs"] + (["-o", opts] if opts else []) + ["tmpfs", target]
    flags = sc.MS_RDONLY if readonly else 0
    title = f"mount a{' read-only' if readonly else ''} tmpfs on {target} inside {name}"
    step = _inside(holder, title, argv, lambda: sc.mount("tmpfs", target, "tmpfs", flags, data))
    _mount(run, name, [step], {"type": "tmpfs", "target": target, "size": size,
                               "readonly": readonly})


def bind_mount(run: Runner, name: str, source: str, target: str, readonly: bool = False, *,
               recursive: bool = False) -> None:
    """Step(s): bind-mount ``source`` on ``target`` inside the environment (both paths as
    seen there); ``recursive`` with the mounts below ``source`` (MS_REC); ``readonly`` makes
    the bind -- with ``recursive``, every mount of the tree -- read-only."""
    source = check_path(source, "mount source")
    target = check_path(target)
    if readonly and recursive and not run.explain:
        mountattr.require("a read-only recursive bind (env-mount --recursive --readonly)")
    st = load(name, run, need="mnt")
    holder = holder_of(st)
    check_inside(run, name, holder, source, "mount source")
    check_inside(run, name, holder, target, "mount point")
    rec = {"type": "bind", "source": source, "target": target, "readonly": readonly,
           "recursive": recursive}
    if recursive:
        steps = [_rbind_step(name, holder, source, target)]
        if readonly:
            steps.append(_readonly_tree_step(holder, target))
    else:
        steps = [_bind_step(name, holder, source, target, readonly)]
    _mount(run, name, steps, rec)


def check_inside(run: Runner, name: str, holder: process.Holder, path: str, what: str, *,
                 directory: bool = False) -> None:
    """Refuse, before mounting, a ``path`` that does not exist as seen inside the environment
    (or, ``directory``, is no directory there): looked up in its mount namespace."""
    if run.explain:
        return
    kind = process.call_in(holder.pid, join_types(holder, "mnt"),
                           lambda: "dir" if os.path.isdir(path) else
                           "other" if os.path.lexists(path) else None)
    if kind is None:
        around = os.path.join(os.path.dirname(path), "*")
        raise NotFound(f"{what} {path} does not exist inside {name}",
                       hint="paths are as seen inside the environment; "
                            + (f"make it first: env-exec {name} -- mkdir -p {path}"
                               if what == "mount point" else
                               f"look: env-exec {name} -- ls -d {around}"))
    if directory and kind != "dir":
        raise InvalidInput(f"{what} {path} inside {name} is not a directory",
                           hint="a tmpfs is mounted on a directory")


def _bind_step(name: str, holder: process.Holder, source: str, target: str,
               readonly: bool) -> Step:
    """``mount --bind [-o ro] SOURCE TARGET`` (read-only: a bind, then a remount)."""
    def native() -> None:
        sc.mount(source, target, None, sc.MS_BIND)
        if readonly:
            sc.mount(None, target, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)
    argv = ["mount", "--bind"] + (["-o", "ro"] if readonly else []) + [source, target]
    return _inside(holder, f"bind {source} on {target} inside {name}" +
                   (" read-only" if readonly else ""), argv, native)


def _rbind_step(name: str, holder: process.Holder, source: str, target: str) -> Step:
    """``mount --rbind SOURCE TARGET``; undo (a later step failed): unmount the tree."""
    undo = _inside(holder, f"unmount {target} and the mounts below it",
                   ["umount", "--lazy", target], lambda: sc.umount(target, sc.MNT_DETACH))
    step = _inside(holder, f"bind {source} on {target} inside {name}, with the mounts below it "
                   "(--rbind)", ["mount", "--rbind", source, target],
                   lambda: sc.mount(source, target, None, sc.MS_BIND | sc.MS_REC))
    step.undo = undo
    return step


def _readonly_tree_step(holder: process.Holder, target: str) -> Step:
    """``mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)`` on the tree at ``target``."""
    types = join_types(holder, "mnt")
    return Step(f"make {target} and every mount below it read-only (a system call on both "
                "backends: util-linux 2.38 has no recursive read-only remount)",
                display=f"mount_setattr(AT_FDCWD, {target}, AT_RECURSIVE, "
                        "{attr_set=MOUNT_ATTR_RDONLY})" + f"   # in {holder.pid}'s mount namespace",
                native=lambda: process.call_in(holder.pid, types,
                                               lambda: mountattr.set_readonly(target)))


def _inside(holder: process.Holder, title: str, argv: list[str],
            fn: Callable[[], None]) -> Step:
    """A step run in the holder's mount namespace: ``nsenter ... --mount -- argv`` or ``fn``
    called there (its user namespace first, when it has one)."""
    types = join_types(holder, "mnt")
    return Step(title, argv=enter_argv(holder, "mnt", argv),
                native=lambda: process.call_in(holder.pid, types, fn))


def _mount(run: Runner, name: str, steps: list[Step], rec: dict) -> None:
    """Run the steps under the environment's lock; note the mount in its record."""
    with lock_unless_explain(run, name):
        for step in steps:
            run.run(step)
        if not run.explain:
            update_state(name, lambda d: d.setdefault("mounts", []).append(rec))
