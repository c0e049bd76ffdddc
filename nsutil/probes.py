"""Attempts `doctor` makes for real, each in a forked child: what the kernel answers here.

A version number says what a kernel could do; a container, a seccomp filter, an LSM or a
sysctl decide what it does for this process. So each probe does the thing once, in a child
(:func:`nsutil.process.fork_call`) and in namespaces of the child's own, and undoes it by
exiting: a mount in a new mount namespace, a user namespace as an unprivileged user, an
overlay inside a user namespace, a netem qdisc in a new network namespace, a cgroup made and
removed. Each returns None when it worked, else one line: the call that failed and its
errno. :mod:`nsutil.layers` has the probes that need no more than system calls.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from . import idmap, process
from . import syscalls as sc
from .errors import NsrError

#: the uid and gid an unprivileged probe runs as (nobody)
NOBODY = 65534
#: where the probes mount a tmpfs, inside a mount namespace of their own
SCRATCH = "/tmp"


def attempt(fn: Callable[[], Any], what: str) -> str | None:
    """Run ``fn`` in a forked child: None if it worked, else the failure in one line
    (the call and its errno, without the hint: the caller's table says what to do)."""
    try:
        process.fork_call(fn, what)
    except NsrError as exc:
        return f"{exc.what}: {exc.errno_name}" if exc.errno_name else exc.what
    return None


def _private_mount_namespace() -> None:
    """unshare(CLONE_NEWNS) and make every mount private: nothing reaches the host."""
    sc.unshare(sc.CLONE_NEWNS)
    sc.make_propagation("/", "private", recursive=True)


def mount_in_new_namespace() -> str | None:
    """A new mount namespace, / made private, a tmpfs mounted on /tmp (mount -t tmpfs).
    Without root, inside a user namespace of its own first, as every rootless run does."""
    from . import rootless

    def child() -> None:
        if rootless.decide():
            rootless.become_root_in_userns()
        _private_mount_namespace()
        sc.mount("nsr-probe", SCRATCH, "tmpfs", 0, "size=64k")
    return attempt(child, "mount probe")


def unprivileged_user_namespace() -> str | None:
    """unshare(CLONE_NEWUSER) as an unprivileged user: as root, the child first becomes
    nobody (no capabilities left), which is what the sysctls and AppArmor restrict."""
    def child() -> None:
        if os.geteuid() == 0:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
        sc.unshare(sc.CLONE_NEWUSER)
    return attempt(child, "unprivileged user namespace probe")


def overlay_in_user_namespace() -> str | None:
    """A user namespace mapping uid 0 to this uid, a mount namespace it owns, a tmpfs, and
    an overlay on it (unprivileged overlayfs: Linux 5.11+)."""
    def child() -> None:
        uid, gid = os.geteuid(), os.getegid()
        sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
        idmap.deny_setgroups("self")
        idmap.write_uid_map("self", [idmap.IdMap(0, uid, 1)])
        idmap.write_gid_map("self", [idmap.IdMap(0, gid, 1)])
        sc.make_propagation("/", "private", recursive=True)
        sc.mount("nsr-probe", SCRATCH, "tmpfs", 0, "size=64k")
        for sub in ("lower", "upper", "work", "merged"):
            os.mkdir(os.path.join(SCRATCH, sub))
        sc.mount("overlay", f"{SCRATCH}/merged", "overlay", 0,
                 f"lowerdir={SCRATCH}/lower,upperdir={SCRATCH}/upper,workdir={SCRATCH}/work")
    return attempt(child, "overlay probe")


def netem_in_new_namespace() -> str | None:
    """A new network namespace and a netem qdisc (delay 1ms) on its lo, over rtnetlink."""
    def child() -> None:
        from . import netlink as nl
        from . import tc
        sc.unshare(sc.CLONE_NEWNET)
        with nl.Rtnl(nl.rtnl_socket()) as r:
            r.add(tc.RTM_NEWQDISC, tc.qdisc_body(1, "netem", tc.TC_H_ROOT, tc.ROOT_HANDLE,
                                                 tc.netem_options(delay_us=1000)),
                  "tc qdisc add dev lo root handle 1: netem delay 1ms",
                  tc.NLM_F_CREATE | tc.NLM_F_REPLACE)
            r.flush()
    return attempt(child, "netem probe")


def sysctl_in_new_netns() -> str | None:
    """net.ipv4.ip_forward=1 written in a new network namespace (a read-only /proc/sys, as
    containers have it, refuses it with EROFS)."""
    def child() -> None:
        from . import netlink as nl
        sc.unshare(sc.CLONE_NEWNET)
        nl.write_sysctl("net.ipv4.ip_forward", "1")
    return attempt(child, "sysctl probe")


def cgroup_mkdir(parent: str, make_parent: bool) -> str | None:
    """mkdir and rmdir a cgroup ``nsr-doctor-PID`` below ``parent`` (made first, and
    removed after if empty, with ``make_parent``): whether this process may make cgroups
    where nsrecipes puts them (a read-only /sys/fs/cgroup, a cgroup not delegated)."""
    def child() -> None:
        from . import cgroupfs
        if make_parent:
            cgroupfs.make_parent(parent)
        path = os.path.join(parent, f"{cgroupfs.PREFIX}-doctor-{os.getpid()}")
        cgroupfs.make_dir(path)
        cgroupfs.remove_dir(path)
    return attempt(child, "cgroup probe")
