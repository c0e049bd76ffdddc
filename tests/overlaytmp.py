"""A container-like host for one test: /tmp (and the state and cache dirs) on overlayfs.

Docker, many CI runners and virtme's guests have /tmp on overlayfs, where no overlay upper
can live. :func:`run_in_overlay_tmp` makes that setup on any host without touching the
host's mounts: a forked child unshares its mount namespace, makes ``/`` private there,
mounts an overlayfs on a directory the test made (its layers on a tmpfs, so this works
where the test's directory is itself on overlayfs), points TMPDIR, NSR_STATE_DIR and
NSR_CACHE_DIR into it and runs the test's function. Everything goes with the namespace.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from nsutil import process
from nsutil import syscalls as sc
from recipes import cow


def mounts_below(path: str) -> list[str]:
    """Mount points strictly below ``path`` in our mount namespace."""
    return [p for p in cow.mounts_at_or_below(path) if p != path.rstrip("/")]


def _overlay_tmp(root: str) -> str:
    """Inside the child's own mount namespace: an overlayfs on ROOT/tmp; its path."""
    sc.unshare(sc.CLONE_NEWNS)
    sc.make_propagation("/", "private", recursive=True)
    backing, tmp = os.path.join(root, "backing"), os.path.join(root, "tmp")
    for d in (backing, tmp):
        os.mkdir(d)
    # all three on a tmpfs: stacked on an overlayfs (the VM's /tmp) this overlay would be
    # depth 2 already, and the overlays the recipes stack on it over the kernel's limit
    sc.mount("tmpfs", backing, "tmpfs", 0, "mode=0755")
    for d in ("lower", "upper", "work"):
        os.mkdir(os.path.join(backing, d))
    sc.mount("overlay", tmp, "overlay", 0,
             f"lowerdir={backing}/lower,upperdir={backing}/upper,workdir={backing}/work")
    os.chmod(tmp, 0o1777)
    os.environ.update(TMPDIR=tmp, NSR_STATE_DIR=os.path.join(tmp, "state"),
                      NSR_CACHE_DIR=os.path.join(tmp, "cache"))
    return tmp


def run_in_overlay_tmp(root: str, fn: Callable[[str], Any]) -> tuple[Any, dict]:
    """``fn(tmp)`` in a child whose /tmp stand-in ``tmp`` is an overlayfs; returns its result
    and what was left there afterwards: ``{"fstype", "mounts", "entries"}``."""
    def child() -> tuple[Any, dict]:
        tmp = _overlay_tmp(root)
        from recipes.common.upperfs import fs_of
        fstype = fs_of(tmp).fstype
        result = fn(tmp)
        return result, {"fstype": fstype, "mounts": mounts_below(tmp),
                        "entries": sorted(os.listdir(tmp))}
    return process.fork_call(child, "the overlay-/tmp test")
