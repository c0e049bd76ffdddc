"""cgroup layouts: v1, v2 or hybrid, detected as runc does, and the caller's own cgroup.

runc decides the layout from the filesystem types (statfs magic) of the cgroup mounts:

* **unified** (v2 only): ``/sys/fs/cgroup`` itself is ``cgroup2``; one tree, controllers are
  listed in ``cgroup.controllers`` and enabled for children in ``cgroup.subtree_control``;
* **hybrid**: ``/sys/fs/cgroup`` is a tmpfs holding one ``cgroup`` (v1) mount per controller
  (``/sys/fs/cgroup/memory``, ``/sys/fs/cgroup/pids``, ...) *and* a ``cgroup2`` mount at
  ``/sys/fs/cgroup/unified`` -- usually with no controllers (the machines nsrecipes is
  developed on are like this);
* **legacy** (v1 only): the per-controller mounts and nothing else.

Here the same answer comes from ``/proc/self/mountinfo`` (the filesystem type and the super
options, which name the v1 controllers), so a test can hand in a made-up mountinfo.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import mountinfo
from .errors import NsrError

ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")


@dataclass
class Layout:
    """Where the cgroup hierarchies are and which one carries each controller."""

    mode: str                                   #: "unified", "hybrid" or "legacy"
    v1: dict[str, str] = field(default_factory=dict)   #: controller -> v1 mount point
    v2: str | None = None                        #: the cgroup2 mount point (if any)
    v2_controllers: tuple[str, ...] = ()          #: controllers available in the v2 root

    def version_for(self, controller: str) -> int:
        """1 or 2: which hierarchy nsrecipes uses for ``controller`` (v1 wins in hybrid mode,
        as in runc, because the v2 tree of a hybrid host has no controllers)."""
        if controller in self.v1:
            return 1
        if self.v2 and (controller in self.v2_controllers or controller == "cpuacct"):
            return 2
        raise NsrError(f"cgroup controller {controller!r} is not available on this host",
                       hint="see /proc/cgroups and /proc/self/mountinfo")


def detect(text: str | None = None, root: str = ROOT) -> Layout:
    """Detect the cgroup layout from ``/proc/self/mountinfo`` (or the mountinfo text given)."""
    v1: dict[str, str] = {}
    v2: str | None = None
    root_is_v2 = False
    for m in mountinfo.read() if text is None else mountinfo.parse(text):
        point, fstype, superopts = m.mount_point, m.fstype, m.super_options
        if fstype == "cgroup2":
            if point == root:
                root_is_v2, v2 = True, point
            elif v2 is None or point == os.path.join(root, "unified"):
                v2 = point
        elif fstype == "cgroup":
            for opt in superopts.split(","):
                if opt in V1_CONTROLLERS and opt not in v1:
                    v1[opt] = point
    controllers: tuple[str, ...] = ()
    if v2 is not None:
        try:
            with open(os.path.join(v2, "cgroup.controllers")) as f:
                controllers = tuple(f.read().split())
        except OSError:
            controllers = ()
    if root_is_v2:
        return Layout("unified", {}, v2, controllers)
    if v1 and v2:
        return Layout("hybrid", v1, v2, controllers)
    if v1:
        return Layout("legacy", v1, None, ())
    if v2:
        return Layout("unified", {}, v2, controllers)
    raise NsrError("no cgroup filesystem is mounted", hint="mount cgroup2 on /sys/fs/cgroup")


_CACHED: Layout | None = None


def host_layout() -> Layout:
    """The host's layout, detected once per process (it does not change while we run)."""
    global _CACHED
    if _CACHED is None:
        _CACHED = detect()
    return _CACHED


def own_cgroup(controller: str | None, proc_cgroup: str | None = None) -> str:
    """The caller's cgroup path in the hierarchy of ``controller`` (``None`` = v2 "0::")."""
    if proc_cgroup is None:
        with open("/proc/self/cgroup") as f:
            proc_cgroup = f.read()
    for line in proc_cgroup.splitlines():
        num, ctrls, path = line.split(":", 2)
        names = ctrls.split(",") if ctrls else []
        if controller is None and num == "0" and not ctrls:
            return path
        if controller is not None and controller in names:
            return path
    return "/"
