"""Doctor: can this host run the recipes? A kernel and host check in the spirit of
``lxc-checkconfig``: each namespace type, user-namespace limits, the cgroup layout and its
controllers, overlayfs, the tools and their versions, and whether we are root.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

from nsutil import syscalls
from nsutil.nstypes import NS_TYPES
from nsutil.process import package_for


@dataclass
class Check:
    """One line of the doctor's table."""

    name: str
    ok: bool
    detail: str
    hint: str = ""
    required: bool = True   # a failed required check makes `doctor` exit non-zero


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def check_namespaces() -> list[Check]:
    """Each namespace type the document uses (plus cgroup) is present in /proc/self/ns."""
    return [Check(f"namespace {t.name}", os.path.exists(f"/proc/self/ns/{t.proc}"),
                  f"{syscalls.FLAG_NAMES[t.flag]}: {t.isolates}",
                  "rebuild the kernel with CONFIG_" + t.name.upper() + "_NS")
            for t in NS_TYPES.values()]


def check_userns_limits() -> list[Check]:
    """max_user_namespaces, Debian's unprivileged_userns_clone, AppArmor's restriction."""
    out = []
    limit = _read("/proc/sys/user/max_user_namespaces")
    out.append(Check("user.max_user_namespaces", limit not in (None, "0"), f"{limit}",
                     "sysctl -w user.max_user_namespaces=15000"))
    clone = _read("/proc/sys/kernel/unprivileged_userns_clone")
    if clone is not None:
        out.append(Check("kernel.unprivileged_userns_clone", clone == "1", clone,
                         "sysctl -w kernel.unprivileged_userns_clone=1 (only unprivileged "
                         "user-demo needs it)", required=False))
    apparmor = _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    if apparmor is not None:
        out.append(Check("apparmor_restrict_unprivileged_userns", apparmor == "0", apparmor,
                         "unprivileged user namespaces are restricted by AppArmor; root is "
                         "unaffected (sysctl -w kernel.apparmor_restrict_unprivileged_userns=0)",
                         required=False))
    return out


def cgroup_layout() -> tuple[str, dict[str, str]]:
    """("v1" | "v2" | "hybrid" | "none", {controller: where}) from /proc/self/mountinfo."""
    v1: dict[str, str] = {}
    v2_path = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _src, opts = (right.split() + ["", "", ""])[:3]
            mnt = left.split()[4]
            if fstype == "cgroup2":
                v2_path = mnt
            elif fstype == "cgroup":
                for opt in opts.split(","):
                    if opt in ("cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices",
                               "freezer", "net_cls", "perf_event", "hugetlb", "rdma", "misc"):
                        v1[opt] = f"v1 {mnt}"
    controllers = dict(v1)
    if v2_path:
        for ctrl in (_read(os.path.join(v2_path, "cgroup.controllers")) or "").split():
            controllers.setdefault(ctrl, f"v2 {v2_path}")
    layout = "hybrid" if v1 and v2_path else "v1" if v1 else "v2" if v2_path else "none"
    return layout, controllers


def check_cgroups() -> list[Check]:
    """The cgroup layout and the controllers the cgroup recipes use."""
    layout, controllers = cgroup_layout()
    out = [Check("cgroup layout", layout != "none", layout, "mount cgroup2 on /sys/fs/cgroup")]
    for ctrl in ("memory", "pids", "cpu"):
        out.append(Check(f"cgroup controller {ctrl}", ctrl in controllers,
                         controllers.get(ctrl, "not available"),
                         "enable it (cgroup_enable= on the kernel command line, or "
                         "cgroup.subtree_control on v2)", required=False))
    return out


def check_overlayfs() -> Check:
    """overlayfs in /proc/filesystems (or as a loadable module)."""
    fs = _read("/proc/filesystems") or ""
    has = bool(re.search(r"\boverlay\b", fs))
    return Check("overlayfs", has, "in /proc/filesystems" if has else "not registered",
                 "modprobe overlay", required=False)


TOOLS = [("unshare", True), ("nsenter", True), ("mount", True), ("ip", True), ("ipcmk", True),
         ("ipcs", True), ("ps", True), ("hostname", True), ("lsns", False), ("busybox", False),
         ("runc", False), ("bwrap", False)]


def tool_version(tool: str) -> str:
    """First line of ``tool --version`` (``ip -V`` for iproute2)."""
    path = shutil.which(tool)
    if path is None:
        return ""
    argv = [path, "-V"] if tool == "ip" else [path] if tool == "busybox" else [path, "--version"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return path
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0][:60] if text else path


def check_tools() -> list[Check]:
    """The programs the shell backend runs (required) and the peers bench/ compares (optional)."""
    out = []
    for tool, required in TOOLS:
        version = tool_version(tool)
        out.append(Check(f"tool {tool}", bool(version), version or "missing",
                         f"apt-get install {package_for(tool)}" + ("" if required else
                         " (optional)"), required=required and tool not in ("ps", "hostname")))
    return out


def check_host() -> list[Check]:
    """root or not, the Python version and which syscall implementation is in use."""
    root = os.geteuid() == 0
    return [
        Check("root", root, "euid 0" if root else f"euid {os.geteuid()}",
              "run as root (only user-demo works unprivileged)"),
        Check("python", sys.version_info >= (3, 11), platform.python_version() +
              f", syscalls via {syscalls.IMPL.name}", "install Python 3.11 or newer"),
    ]


def run_checks() -> list[Check]:
    """All checks, in the order the table prints them."""
    return (check_host() + check_namespaces() + check_userns_limits() + check_cgroups()
            + [check_overlayfs()] + check_tools())


def format_table(checks: list[Check]) -> str:
    """ok/missing table with hints for what is missing."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  status   detail"]
    for c in checks:
        status = "ok" if c.ok else ("MISSING" if c.required else "warn")
        line = f"{c.name:<{width}}  {status:<7}  {c.detail}"
        if not c.ok:
            line += f"\n{'':<{width}}           hint: {c.hint}"
        lines.append(line)
    return "\n".join(lines)
