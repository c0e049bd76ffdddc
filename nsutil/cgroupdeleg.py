"""A cgroup delegated to a user: where limits live without root.

Without root a process may only make cgroups below one it was given. systemd gives one with
``Delegate=yes`` (``systemd-run --user --scope -p Delegate=yes CMD``): it chowns the
scope's directory and its ``cgroup.procs``, ``cgroup.subtree_control`` and
``cgroup.threads`` to the user. nsrecipes finds it as podman does: on cgroup v2, the cgroup
this process runs in is *delegated* when the user owns it and its ``cgroup.subtree_control``
(and may write its ``cgroup.procs``). cgroup v1 is never delegated to a user.

v2's "no internal processes" rule still holds there: the delegated cgroup may enable
controllers for its children only while it holds no process itself, so the tool first moves
itself into a leaf of its own (``nsr-self-PID``) and back when it is done.
"""
from __future__ import annotations

import os

from .cgrouplayout import ROOT, Layout, host_layout, own_cgroup
from .errors import NsrError
from .names import PREFIX

#: the leaf the tool moves itself into while its cgroups below the delegated one have controllers
SELF_LEAF = f"{PREFIX}-self-"


def hint(what: str) -> str:
    """How a user gets a delegated cgroup for ``what`` (a task and its options): systemd."""
    return (f"run it in a cgroup delegated to you: systemd-run --user --scope -p Delegate=yes "
            f"invoke {what} ... (cgroup v2 with systemd), or run as root")


def self_leaf(delegated: str, pid: int | None = None) -> str:
    """``DELEGATED/nsr-self-PID``: where this process waits while its cgroups have controllers."""
    return os.path.join(delegated, f"{SELF_LEAF}{pid or os.getpid()}")


def current(layout: Layout | None = None, proc_cgroup: str | None = None) -> str | None:
    """The v2 cgroup directory this process belongs to -- the delegated one it came from when
    it sits in its own ``nsr-self-PID`` leaf; None on a host without cgroup v2 on /sys/fs/cgroup."""
    layout = layout or host_layout()
    if layout.mode != "unified":
        return None
    path = os.path.join(layout.v2 or ROOT, own_cgroup(None, proc_cgroup).lstrip("/")).rstrip("/")
    if os.path.basename(path) == f"{SELF_LEAF}{os.getpid()}":
        path = os.path.dirname(path)
    return path


def _owner(path: str) -> int | None:
    try:
        return os.stat(path).st_uid
    except OSError:
        return None


def problem(layout: Layout | None = None, uid: int | None = None,
            proc_cgroup: str | None = None) -> str | None:
    """Why this process has no cgroup delegated to ``uid`` (the effective uid), or None."""
    layout = layout or host_layout()
    uid = os.geteuid() if uid is None else uid
    if layout.mode != "unified":
        return (f"cgroups are {'hybrid v1/v2' if layout.mode == 'hybrid' else 'v1'} here, and "
                "only a cgroup v2 is ever delegated to a user")
    path = current(layout, proc_cgroup)
    if path is None:
        return "no cgroup v2 is mounted on /sys/fs/cgroup"
    for name in ("", "cgroup.subtree_control", "cgroup.procs"):
        owner = _owner(os.path.join(path, name) if name else path)
        if owner != uid:
            what = f"{path}/{name}" if name else f"the cgroup it runs in, {path},"
            return (f"{what} is owned by uid {owner}, not by uid {uid}" if owner is not None
                    else f"{path}/{name or '.'} cannot be read")
    return None


def find(layout: Layout | None = None) -> str | None:
    """The cgroup delegated to this user that this process runs in, or None."""
    return None if problem(layout) else current(layout)


def require(what: str, controllers: tuple[str, ...] = (), layout: Layout | None = None) -> str:
    """The delegated cgroup (checked before anything is made), or one line saying why there
    is none (or which controller it lacks), with the systemd-run hint."""
    why = problem(layout)
    if why is not None:
        raise NsrError(f"{what}: without root, limits need a cgroup delegated to uid "
                       f"{os.geteuid()}, and there is none: {why}", hint=hint(what))
    path = current(layout) or ROOT
    try:
        with open(os.path.join(path, "cgroup.controllers")) as f:
            offered = f.read().split()
    except OSError:
        offered = []
    for ctrl in controllers:
        if ctrl not in offered:
            raise NsrError(f"{what}: the cgroup delegated to uid {os.geteuid()}, {path}, is "
                           f"not given the {ctrl} controller (its cgroup.controllers: "
                           f"{' '.join(offered) or 'none'})",
                           hint="systemd-run --user --scope -p Delegate=yes -p "
                                "DelegateControllers='memory pids cpu' ..., or run as root")
    return path
