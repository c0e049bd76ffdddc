"""Doctor: can this host run the recipes, and if not, which layer blocks them?

A table of layers, each row backed by a real attempt in a child process where one can be
made (:mod:`recipes.ops.layercheck`: who we are and in which user namespace, capabilities,
seccomp, LSMs, a container's PID namespace and /proc/sys, mounts, unprivileged user
namespaces, overlay in a user namespace, cgroup delegation, netem), and the host's rows in
the spirit of ``lxc-checkconfig``: each namespace type (made for real), the user-namespace
sysctls, the cgroup layout and its controllers, the root's mount propagation, whether the
state, scratch and cache directories can hold overlay layers, the veth, bridge, overlay and
sch_netem modules (built in, loaded or loadable: never loaded here), the tools. Each row that
is not ok says what it blocks and the fix; a required one blocks the tour.
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys

from nsutil import layers, mountinfo, probes, rootless, syscalls
from nsutil.nstypes import NS_TYPES
from nsutil.programs import package_for, which

from recipes.ops import layercheck as lc
from nsutil.rootless import read_setting
from recipes.ops.layercheck import Check


_read = read_setting


#: the kernel option behind each namespace type (mount namespaces have none of their own;
#: cgroup namespaces come with CONFIG_CGROUPS)
NS_CONFIG = {"user": "CONFIG_USER_NS", "cgroup": "CONFIG_CGROUPS", "ipc": "CONFIG_IPC_NS",
             "uts": "CONFIG_UTS_NS", "net": "CONFIG_NET_NS", "pid": "CONFIG_PID_NS",
             "mnt": "CONFIG_NAMESPACES", "time": "CONFIG_TIME_NS"}


def check_namespaces(refusal: layers.Refusal | None = None) -> list[Check]:
    """Each of the eight namespace types: present in /proc/self/ns, and made for real, one
    after another in one child (unprivileged: inside a user namespace it makes first, as the
    kernel allows). The document's six and cgroup (Linux 4.6, 2016: every kernel
    the recipes meet) are required; time (Linux 5.6, 2020) is optional: only time-demo needs
    it, and it names the running kernel."""
    out = []
    root = os.geteuid() == 0
    present = [t for t in NS_TYPES.values() if os.path.exists(f"/proc/self/ns/{t.proc}")]
    # root: the user namespace last (inside one, the child could make all the others);
    # unprivileged: first, and the others inside it, as the kernel allows
    order = sorted(present, key=lambda t: (t.name == "user") == root)
    tried = dict(zip([t.name for t in order], layers.try_each([t.flag for t in order])))
    for t in NS_TYPES.values():
        flag = syscalls.FLAG_NAMES[t.flag]
        detail = f"{flag}: {t.isolates}"
        if not t.in_document:
            detail += f" (Linux {t.since}+, beyond the document)"
        if t.name == "time":
            detail += f"; this kernel: {platform.release()}"
        made = tried.get(t.name)
        hint = (f"Linux {t.since} or newer" if t.since else "a kernel") + \
            f" built with {NS_CONFIG[t.name]}"
        if made is None:
            detail += "; not in /proc/self/ns"
        elif made == 0:
            detail += "; made in a child" + ("" if root or t.name == "user" else
                                             ", inside a user namespace of its own")
        else:
            why, hint = lc.because(f"unshare in a child: {layers.errno_name(made)}", refusal,
                                   "see the LSM row", needs_caps=root and t.name != "user")
            detail += f"; {why}"
        out.append(Check(f"namespace {t.name}", made == 0, detail, hint,
                         required=t.name != "time", layer="namespaces",
                         blocks=f"the recipes that make {t.name} namespaces"
                                + " (the tour)" * t.in_document))
    return out


def check_userns_limits() -> list[Check]:
    """max_user_namespaces, Debian's unprivileged_userns_clone, AppArmor's restriction."""
    out = []
    limit = _read("/proc/sys/user/max_user_namespaces")
    unprivileged = "user-demo run without root; rootless container tools (root is unaffected)"
    out.append(Check("user.max_user_namespaces", limit not in (None, "0"), f"{limit}",
                     "sysctl -w user.max_user_namespaces=15000", layer="user namespaces",
                     blocks="every user namespace, root's too: user-demo (the tour), "
                            "--ns user of envs"))
    clone = _read("/proc/sys/kernel/unprivileged_userns_clone")
    if clone is not None:
        out.append(Check("kernel.unprivileged_userns_clone", clone == "1", clone,
                         "sysctl -w kernel.unprivileged_userns_clone=1 (only unprivileged "
                         "user-demo needs it)", required=False, layer="user namespaces",
                         blocks=unprivileged))
    apparmor = _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    if apparmor is not None:
        out.append(Check("apparmor_restrict_unprivileged_userns", apparmor == "0", apparmor,
                         "unprivileged user namespaces are restricted by AppArmor; root is "
                         "unaffected (sysctl -w kernel.apparmor_restrict_unprivileged_userns=0)",
                         required=False, layer="user namespaces", blocks=unprivileged))
    else:
        enabled = _read("/sys/module/apparmor/parameters/enabled")
        out.append(Check("apparmor_restrict_unprivileged_userns", True,
                         "not in this kernel" + (f" (AppArmor enabled: {enabled})" if enabled
                                                 else " (no AppArmor)"),
                         "Ubuntu 23.10+ has it set to 1: unprivileged user-demo then needs "
                         "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0; root is "
                         "unaffected", required=False, layer="user namespaces"))
    return out


def check_cgroups() -> list[Check]:
    """The cgroup layout; the caller's own cgroup and whether it holds processes; where
    nsrecipes puts its cgroups; and for each controller the recipes use whether it is usable
    there (on v2: offered by the root, which nsrecipes enables for its children when a limit
    asks for it and it is not, as runc does)."""
    from nsutil import cgroupfs
    from nsutil.errors import NsrError
    try:
        layout = cgroupfs.detect()
    except NsrError as exc:
        return [Check("cgroup layout", False, exc.what, exc.hint or "")]
    v2 = layout.mode == "unified"
    root = layout.v2 or cgroupfs.ROOT
    nsroot = ", a cgroup namespace's root, not the real one" * cgroupfs.is_namespace_root(root)
    detail = (f"unified (v2 at {root}{nsroot})" if v2 else
              f"{layout.mode} (v1: {', '.join(sorted(layout.v1))}; v2: {layout.v2 or '-'})")
    out = [Check("cgroup layout", True, detail, "mount cgroup2 on /sys/fs/cgroup")]
    ctrl = None if v2 else "memory" if "memory" in layout.v1 else next(iter(layout.v1), None)
    own = cgroupfs.own_cgroup(ctrl)
    top = root if v2 else layout.v1.get(ctrl or "", root)
    nprocs = len(cgroupfs.procs_here(os.path.join(top, own.lstrip("/"))))
    holds = (f"holds {nprocs} processes" if nprocs else "holds no processes") + (
        ": v2 forbids it to enable controllers, so nsrecipes does not nest below it"
        if v2 and nprocs and own != "/" else "")
    out.append(Check("cgroup of the caller", True, f"{own} ({'v2' if v2 else ctrl}) {holds}",
                     "see /proc/self/cgroup"))
    out.append(Check("cgroup placement", True, cgroupfs.placement(layout),
                     "nsrecipes removes them when done; `invoke cleanup` removes leftovers"))
    parent_dir = os.path.join(root, cgroupfs.PARENT_NAME)
    for name in cgroupfs.CONTROLLERS:
        problem = cgroupfs.controller_problem(name, layout)
        enables = v2 and problem is None and cgroupfs.ancestor_writes(parent_dir, root, (name,))
        where = (f"offered by {root} but not enabled for its children: a limit enables it "
                 f"there first (echo +{name} > {root}/cgroup.subtree_control), as runc does"
                 if enables else
                 f"enabled in {root}/cgroup.subtree_control; nsrecipes enables it in its own "
                 f"{parent_dir}" if v2 else f"v1 {layout.v1.get(name)}")
        out.append(Check(f"cgroup controller {name}", problem is None,
                         where if problem is None else problem.what,
                         problem.hint or "" if problem else ""))
    parent = os.path.join(root, cgroupfs.PARENT_NAME) if v2 else os.path.join(top, own.lstrip("/"))
    out.append(lc.check_cgroup_delegation(parent, make_parent=v2))
    return out


def check_propagation() -> Check:
    """The root's mount propagation, from the optional fields of its /proc/self/mountinfo
    line (``shared:N``, ``master:N``, ``unbindable``; none: private)."""
    fields: list[str] = []
    for m in mountinfo.read():
        if m.mount_point == "/":
            fields = list(m.optional)      # the last line for / is the mount on top
    kinds = [f"shared (peer group {f[7:]})" if f.startswith("shared:") else
             f"slave (of peer group {f[7:]})" if f.startswith("master:") else f
             for f in fields if not f.startswith("propagate_from:")]
    detail = " and ".join(kinds) or "private"
    hint = ("as systemd sets it: a mount made in a new mount namespace would reach the "
            "host, so nsrecipes makes / private (rslave for containers) in every mount "
            "namespace it makes" if "shared" in detail else
            "nothing propagates; systemd hosts have / shared, so test that too "
            "(`mount --make-rshared /` inside a mount namespace or VM of your own)")
    return Check("root mount propagation", True, detail, hint, required=False)


def check_overlay_dirs() -> list[Check]:
    """Whether the state and scratch directories can hold an overlay upper (else nsrecipes
    mounts a tmpfs for it), and whether the cache directory can hold the rootfs (a lower)."""
    from nsutil.state import state_dir
    from recipes import cow
    from recipes.container import rootfs
    from recipes.common import upperfs
    out = []
    for what, path, env in (("state dir", state_dir(create=False), "NSR_STATE_DIR"),
                            ("scratch dir", cow.scratch_dir(), "TMPDIR")):
        fs = upperfs.fs_of(path)
        problem = fs.upper_problem()
        detail = f"{path}: {fs.describe()}: " + (
            "holds an overlay upper" if problem is None else
            f"no upper ({problem}); " + ("nowhere to mount a tmpfs" if fs.readonly else
                                         "uppers go on a tmpfs nsrecipes mounts there"))
        hint = (f"set {env} to a writable directory (" if fs.readonly else
                f"works, in memory; to keep uppers on disk set {env} to a directory on ") + \
            "ext4, xfs, btrfs or a tmpfs" + (")" if fs.readonly else "")
        out.append(Check(f"overlay upper in {what}", problem is None, detail, hint,
                         required=False))
    path = rootfs.cache_dir()
    fs = upperfs.fs_of(path)
    problem = "it is read-only" if fs.readonly else fs.lower_problem()
    out.append(Check("overlay lower in cache dir", problem is None,
                     f"{path}: {fs.describe()}: " + (problem or "holds the rootfs (a lower "
                                                     "layer; on overlayfs too)"),
                     "set NSR_CACHE_DIR to a writable directory on ext4, xfs, btrfs, tmpfs "
                     "or overlayfs", required=False))
    return out


#: kernel modules the recipes use: (module, config symbol, what needs it)
MODULES = (("veth", "CONFIG_VETH", "net-veth, env, topologies"),
           ("bridge", "CONFIG_BRIDGE", "topology switches"),
           ("overlay", "CONFIG_OVERLAY_FS", "cow-demo, container-run"),
           ("sch_netem", "CONFIG_NET_SCH_NETEM", "link delay/loss"))


def kernel_config(symbol: str) -> str | None:
    """``y``, ``m`` or ``n`` for a CONFIG_ symbol of the running kernel (/proc/config.gz or
    /boot/config-RELEASE); None if neither is there."""
    import gzip
    release = platform.release()
    for path, opener in (("/proc/config.gz", gzip.open), (f"/boot/config-{release}", open)):
        try:
            with opener(path, "rt") as f:
                text = f.read()
        except OSError:
            continue
        found = re.search(rf"^{symbol}=(\w)", text, re.M)
        return found.group(1) if found else "n"
    return None


def module_state(name: str, symbol: str) -> tuple[bool, str]:
    """(usable, how): built in, loaded, or loadable (``modprobe -n``, which loads nothing)."""
    if os.path.exists(f"/sys/module/{name}/initstate"):
        return True, "loaded"
    if os.path.isdir(f"/sys/module/{name}"):
        return True, "built in"
    if name == "overlay" and re.search(r"\boverlay\b", _read("/proc/filesystems") or ""):
        return True, "built in (in /proc/filesystems)"
    config = kernel_config(symbol)
    if config == "y":
        return True, f"built in ({symbol}=y)"
    if config == "n":
        return False, f"not in this kernel ({symbol} is not set)"
    moddir = f"/lib/modules/{platform.release()}"
    if not os.path.isdir(moddir):
        return False, f"not loaded, and {moddir} is missing (a container?)"
    modprobe = which("modprobe")
    if modprobe is None:
        found = re.search(rf"/{name}\.ko", _read(f"{moddir}/modules.dep") or "")
        return bool(found), "loadable (in modules.dep)" if found else "not in modules.dep"
    done = subprocess.run([modprobe, "-n", "-q", name], capture_output=True, timeout=10)
    return (done.returncode == 0,
            "not loaded; loadable (`modprobe -n` finds it; the kernel loads it on first use)"
            if done.returncode == 0 else f"not loaded, and modprobe finds no {name} module")


def check_modules() -> list[Check]:
    """The veth, bridge and overlay modules: built in, loaded or loadable; and the netem row:
    sch_netem's state, and a netem qdisc made for real where it is loaded or built in."""
    out = []
    for name, symbol, users in MODULES:
        ok, how = module_state(name, symbol)
        hint = ("use a kernel built with it (Debian's and Ubuntu's have it as a module)"
                if "not set" in how else
                f"load it on the host (`modprobe {name}`): a container cannot" if "missing" in how
                else f"apt-get install linux-modules-extra-{platform.release()} (Ubuntu) or "
                     f"rebuild with {symbol}=m")
        if name == "sch_netem":                     # its row is the netem layer's
            out.append(lc.check_netem(ok, how, hint))
            continue
        out.append(Check(f"module {name}", ok, f"{how}; for {users}", hint, required=False,
                         layer="modules", blocks=users))
    return out


TOOLS = [("unshare", True), ("nsenter", True), ("mount", True), ("ip", True), ("ipcmk", True),
         ("ipcs", True), ("ps", True), ("hostname", True), ("lsns", False), ("busybox", False),
         ("runc", False), ("bwrap", False)]


def tool_version(tool: str) -> str:
    """First line of ``tool --version`` (``ip -V`` for iproute2)."""
    path = which(tool)
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


def check_python() -> Check:
    """The Python version and which syscall implementation is in use."""
    return Check("python", sys.version_info >= (3, 11), platform.python_version() +
                 f", syscalls via {syscalls.IMPL.name}", "install Python 3.11 or newer",
                 layer="who", blocks="everything (nsrecipes needs 3.11+)")


def _in_layer(layer: str, checks: list[Check], blocks: str = "") -> list[Check]:
    """Set the layer of ``checks`` (and what they block, where a row has not said)."""
    for c in checks:
        c.layer = c.layer or layer
        c.blocks = c.blocks or blocks
    return checks


def run_checks() -> list[Check]:
    """All checks, in the order the table prints them: the layers between this process and
    the kernel first (in the order the kernel asks them), then what the recipes use.
    Without root the user namespace row is the one every task needs (and says as its
    refusal), and root, capabilities and cgroups do not block the tour."""
    mount_problem = probes.mount_in_new_namespace()
    refused = layers.filtered_calls()
    refusal = layers.diagnose(refused=refused)
    checks = (
        [lc.check_identity(), check_python(), lc.check_capabilities(), lc.check_seccomp(refused),
         lc.check_lsm(mount_problem, refused)]
        + lc.check_container(refusal)
        + check_namespaces(refusal)
        + [lc.check_mount(mount_problem, refusal)]
        + _in_layer("mounts", [check_propagation()])
        + check_userns_limits()
        + [lc.check_unprivileged_userns(refusal)]
        + _in_layer("cgroups", check_cgroups(),
                    "cgroup-demo, container-run --memory/--pids/--cpus")
        + _in_layer("overlay", check_overlay_dirs(),
                    "nothing: uppers then go on a tmpfs nsrecipes mounts (in memory)")
        + [lc.check_overlay_userns(refusal)]
        + check_modules()
        + _in_layer("tools", check_tools(), "the shell backend (--backend native needs none)"))
    if rootless.decide():
        # without root the tour goes on past a cgroup it may not make (one line says why)
        for c in checks:
            if c.layer == "cgroups":
                c.required = False
    return checks


def blocking(checks: list[Check]) -> list[Check]:
    """The rows that block the tour: required and not ok."""
    return [c for c in checks if c.required and not c.ok]


def format_table(checks: list[Check]) -> str:
    """The table: one heading per layer, a row per check (ok / warn / MISSING), and under
    each row that is not ok what it blocks and the fix."""
    width = max(len(c.name) for c in checks)
    pad = " " * (width + 11)
    lines = [f"{'check':<{width}}  status   detail"]
    layer = None
    for c in checks:
        if c.layer != layer:
            layer = c.layer
            lines.append(f"-- {layer}")
        lines.append(f"{c.name:<{width}}  {c.status:<7}  {c.detail}")
        if not c.ok:
            lines.append(f"{pad}blocks: {c.blocks or '-'}")
            lines.append(f"{pad}fix: {c.hint or '-'}")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> str:
    """The table as JSON: a list of rows with layer, name, status, ok, required, detail,
    blocks and fix."""
    return json.dumps([{"layer": c.layer, "name": c.name, "status": c.status, "ok": c.ok,
                        "required": c.required, "detail": c.detail,
                        "blocks": "" if c.ok else c.blocks, "fix": "" if c.ok else c.hint}
                       for c in checks], indent=2)
