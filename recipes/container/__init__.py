"""The whole container: namespaces + cgroups + copy-on-write, started step by step.

The document's three principles composed the way ``docker run`` / runc compose them:

1. check the input (:mod:`recipes.container.spec`: limits, mounts, user, ... and that the
   command exists in the rootfs -- the only thing a rootfs must have);
2. make the container's directory (overlay ``upper``, ``work``, ``merged``; where the state
   directory's filesystem cannot hold an upper, e.g. an overlayfs, on a tmpfs mounted on
   it, as bubblewrap's ``--tmp-overlay`` does: :mod:`recipes.common.upperfs`);
3. make a cgroup ``nsr-c-ID`` and write the limits (:mod:`recipes.cgroup`);
4. fork a process, unshare mount, UTS, IPC, PID (and with ``--net`` network) namespaces and
   fork PID 1 of the new PID namespace; the tool records both PIDs for ``cleanup``
   (:mod:`recipes.container.run`, :mod:`recipes.container.state`). PID 1
5. makes ``/`` rslave, mounts the overlay (rootfs as lowerdir) on ``merged``, ``/proc``, a
   tmpfs ``/dev`` with null, zero, full, random, urandom, tty, the ``--volume`` binds and
   ``--tmpfs`` mounts, remounts the overlay read-only (``--read-only``), sets the hostname
   and domainname, brings ``lo`` up in a new netns (:mod:`recipes.container.inside`),
6. ``pivot_root . .`` into ``merged``, makes the old root rslave and detaches it,
7. moves itself into the cgroup (``echo 0 > tasks`` through a file opened before the
   pivot) and unshares a cgroup namespace -- last, once the setup's helper processes and
   threads are gone, so ``--pids 2`` is enough for PID 1 and the command;
8. forks the command, which becomes ``--user``, enters ``--workdir`` and execs with
   ``--env``; PID 1 stays, reaps every zombie (orphans are reparented to it) and forwards
   SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1/2, SIGWINCH to the command (the tool and the
   process outside forward them too);
9. the exit status comes back (128+N for a signal; 137 past ``--timeout``); with ``rm`` (the
   default) the cgroup and the container's directory are removed. If the tool dies,
   everything inside dies with it (PR_SET_PDEATHSIG) and ``cleanup`` finds the records.

Every step is a recipe call, so ``--explain`` prints the whole sequence, and a script can
compose the same steps differently. The steps of 5 to 7 run inside the new namespaces
(in PID 1, before the exec) with the runner's backend: ``mount ...``/``hostname``/
``ip link``/``pivot_root`` commands or the syscalls. The overlay and /proc are mounted in
the container's own mount namespace only, so they vanish with it: the host never sees them.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from nsutil import cgroupfs
from nsutil import mountattr
from nsutil import shell as nshell
from nsutil.backend import Runner, Step
from nsutil.cgroupfs import Cgroup
from nsutil.errors import NsrError
from nsutil.state import locked, prune, state_dir

from recipes import cgroup as cgroup_recipe
from recipes.container import rootfs as rootfs_recipe
from recipes.container import rootless as rootless_recipe
from recipes.common import upperfs
from recipes.container.run import SETUP_FAILED, start, wait  # noqa: F401 (public API)
from recipes.container.spec import (PATH, CommandNotExecutable, CommandNotFound,  # noqa: F401
                            ContainerTimeout, Spec, find_command, make_spec, settle)
from recipes.container.state import Container, leftovers, recorded_cgroups  # noqa: F401
from recipes.cow import remove_tree

SECTION = "the whole container (namespaces + cgroups + copy-on-write)"


# --- steps outside ----------------------------------------------------------------------------

def _rmtree_step(path: str) -> Step:
    def native() -> None:
        remove_tree(path)
        prune()

    def shell(argv: list[str]) -> None:
        nshell.run(argv)
        prune()

    return Step(f"remove the container directory {path}",
                argv=["rm", "-rf", "--one-file-system", path], native=native, shell=shell)


def make_dirs(run: Runner, spec: Spec, fs: upperfs.Fs | None = None) -> str:
    """Steps: make the container's directory with the overlay's upper, work and merged dirs
    (on a tmpfs mounted on it where the state directory's filesystem ``fs`` cannot hold an
    upper); undo: remove it (unless ``rm`` is off)."""
    base = state_dir(create=not run.explain)
    cdir = os.path.join(base, spec.name)
    subdirs = [os.path.join(cdir, d) for d in ("upper", "work", "merged")]
    fs = fs or upperfs.plan_upper(base)
    on_tmpfs = upperfs.needs_tmpfs(fs)
    first = [cdir] if on_tmpfs else [cdir] + subdirs

    def mkdirs(paths: list[str]) -> None:
        for d in paths:
            try:
                os.mkdir(d, 0o700 if d == cdir else 0o755)
            except FileExistsError:
                raise NsrError(f"container directory {d} exists", errno_name="EEXIST",
                               hint="another container has that name; run `invoke cleanup`") from None

    def held(make: Callable[[], object]) -> None:
        with locked(shared=True):    # a concurrent prune() cannot remove the state dir now
            make()

    run.run(Step(f"make the container directory {cdir}" + ("" if on_tmpfs else
                 " (overlay upper, work, merged)"), argv=["mkdir"] + first,
                 native=lambda: held(lambda: mkdirs(first)),
                 shell=lambda argv: held(lambda: nshell.run(argv)),
                 undo=(_rmtree_step(cdir) if spec.ids is None else
                       rootless_recipe.remove_step(cdir, spec.ids)) if spec.rm else None))
    if on_tmpfs:
        upperfs.mount_upper_tmpfs(run, cdir, fs, undo=spec.rm, mode="0700")
        run.run(Step("make the overlay's upper, work and merged in it", argv=["mkdir"] + subdirs,
                     native=lambda: mkdirs(subdirs)))
    return cdir


def cgroup_controllers(spec: Spec) -> tuple[str, ...]:
    """The controllers of the container's cgroup: those of the limits asked for, and on v1
    pids always (a v1 cgroup exists only in a controller's hierarchy; a bare v2 cgroup groups
    and kills its processes by itself, so v2 needs no controller delegated for that)."""
    if spec.ids is not None:   # without root: only what the limits need (delegated v2)
        return rootless_recipe.controllers(spec)
    v1 = cgroupfs.host_layout().mode != "unified"
    return tuple(c for c, on in (("memory", spec.limits.memory is not None),
                                 ("pids", v1 or spec.limits.pids is not None),
                                 ("cpu", spec.limits.cpus is not None)) if on)


def make_cgroup(run: Runner, spec: Spec) -> Cgroup | None:
    """Steps: the container's cgroup (:func:`cgroup_controllers`) and its limits; undo: kill
    what is left, remove it. None without root where no cgroup is delegated to the user."""
    if spec.ids is not None and not rootless_recipe.wants_cgroup(spec):
        return None
    cg = cgroup_recipe.create_cgroup(run, spec.name, cgroup_controllers(spec))
    cgroup_recipe.set_limits(run, cg, spec.limits)
    return cg


def _check_host(run: Runner, spec: Spec) -> upperfs.Fs:
    """What the host must offer, checked before anything is made: an upper for the overlay,
    a lower the rootfs can be, the cgroup controllers, mount_setattr for ``:ro`` volumes."""
    fs = upperfs.plan_upper(state_dir(create=False))
    upperfs.check_lower(spec.rootfs or rootfs_recipe.cache_dir(), "the rootfs")
    if run.rootless:
        rootless_recipe.check(spec, fs)
    else:
        cgroupfs.require(cgroup_controllers(spec))
    if not run.explain and any(v.readonly for v in spec.volumes):
        mountattr.require("--volume ...:ro")
    return fs


def _settle_default_rootfs(run: Runner, spec: Spec) -> None:
    """Without ``--rootfs``: the cached busybox rootfs, built first if need be."""
    default = rootfs_recipe.default_path()
    if os.path.isfile(os.path.join(default, "bin", "busybox")):
        settle(spec, default)
        return
    if run.explain:
        run.heading("build the busybox root filesystem (once; it is cached)")
    path = rootfs_recipe.ensure_default(run)
    if run.explain:
        spec.rootfs = path
    else:
        settle(spec, path)


def run_container(run: Runner, argv: Sequence[str], rootfs: str | None = None,
                  stdin: int | None = None, stdout: int | None = None,
                  stderr: int | None = None, **options: Any) -> int:
    """``container-run``: run ``argv`` in a new container and return its exit status.

    ``options`` are those of :func:`recipes.container.spec.make_spec` (``memory``, ``pids``,
    ``cpus``, ``hostname``, ``domainname``, ``net``, ``rm``, ``name``, ``timeout``,
    ``volumes``, ``tmpfs``, ``read_only``, ``env``, ``workdir``, ``user``).
    ``stdin``/``stdout``/``stderr`` are file descriptors for the command (default: ours).
    Bad input raises before anything is made; with ``rm`` nothing is left afterwards.
    """
    spec = make_spec(argv, rootfs, **options)
    fs = _check_host(run, spec)
    if spec.rootfs is None:
        _settle_default_rootfs(run, spec)
    if run.explain:  # the command's own output is all a real run prints
        run.heading(f"{SECTION}: {' '.join(spec.argv)}")
    try:
        cdir = make_dirs(run, spec, fs)
        cg = make_cgroup(run, spec)
        ct = Container(spec.name, cdir, cg, spec.rootfs)
        start(run, spec, ct, (stdin, stdout, stderr))
        code = wait(run, ct, spec.timeout)
    except BaseException:
        run.undo()
        raise
    errors = run.undo()
    if errors:
        raise errors[0]
    return code
