"""The doctor's layers: what stands between this process and the namespaces it asks for.

Each row is backed by a real attempt in a child process (:mod:`nsutil.layers`,
:mod:`nsutil.probes`), not a guess from a version number: who we are and in which user
namespace; the capabilities; a seccomp filter; the LSMs; whether this is a container (its own
PID namespace, a read-only /proc/sys); a mount in a new mount namespace; a user namespace as
an unprivileged user; overlayfs inside a user namespace; a cgroup made where nsrecipes makes
them; a netem qdisc. Each row says what it blocks and the fix. :mod:`recipes.ops.doctor` adds the
host's rows (namespace types, cgroup layout, modules, tools) and prints the table.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from nsutil import layers, probes


@dataclass
class Check:
    """One row of the doctor's table."""

    name: str
    ok: bool
    detail: str
    hint: str = ""          # the fix
    required: bool = True   # a failed required check blocks the tour: `doctor` exits non-zero
    layer: str = ""         # the heading it is listed under
    blocks: str = ""        # what fails while this row is not ok

    @property
    def status(self) -> str:
        """``ok``, ``warn`` (optional and failing) or ``MISSING`` (blocks the tour)."""
        return "ok" if self.ok else ("MISSING" if self.required else "warn")


EVERYTHING = "every demo, environment, lab and container (all make namespaces)"
#: capabilities the recipes use -> what needs them
CAPS_USED = {
    "cap_sys_admin": "namespaces and mounts: " + EVERYTHING,
    "cap_net_admin": "links, addresses, routes, qdiscs: net-demo, net-veth, net-topo, envs",
    "cap_setuid": "uid maps and --user: user-demo as root, container-run --user",
    "cap_setgid": "gid maps and --user: user-demo as root, container-run --user",
    "cap_sys_chroot": "container-run (chroot into the root filesystem)",
    "cap_mknod": "container-run (the device nodes of its /dev)",
}
CAPS_REQUIRED = ("cap_sys_admin", "cap_net_admin")


def because(problem: str, refusal: layers.Refusal | None, fix: str,
            needs_caps: bool = True) -> tuple[str, str]:
    """(the detail, the fix) of a failed attempt: where a layer above already refuses
    namespaces (:func:`nsutil.layers.diagnose`) and the attempt met EPERM or EACCES, that
    layer is the cause, and its fix the fix. Without ``needs_caps`` (a user namespace, an
    attempt as nobody) missing capabilities are not a cause."""
    if refusal is not None and not needs_caps:
        refusal = refusal.without("capabilities")
    if refusal is not None and ("EPERM" in problem or "EACCES" in problem):
        return f"{problem}: refused by {' and '.join(refusal.layers)}", refusal.fix
    return problem, fix


def check_identity() -> Check:
    """Root or not, and whose root: uid 0 of a user namespace is not the host's."""
    euid = os.geteuid()
    userns = layers.user_namespace()
    where = userns.describe()
    if euid != 0:
        return Check("root", False, f"euid {euid} in {where}: without root, every demo makes a "
                     f"user namespace first (uid {euid} is root there)",
                     "run as root (sudo) for what needs the host's root", required=False,
                     layer="who", blocks=ROOT_ONLY)
    if userns.initial:
        return Check("root", True, f"euid 0 in {where}", layer="who")
    return Check("root", False, f"euid 0 in {where}: an LXD or rootless-podman container's root",
                 layers.FIX_USERNS, required=False, layer="who",
                 blocks="what needs the host's root: the network labs' /run/netns mount, "
                        "cgroups not delegated to it, sysctls and modules of the host")


#: what a rootless run leaves out, as the doctor's root row says it
ROOT_ONLY = ("what needs the host's root: names under /run/netns, a veth end on the host, a "
             "shared bind on the host, cgroups not delegated to you")


def check_capabilities() -> Check:
    """The capabilities the recipes use, in the effective and the bounding set."""
    missing = [c for c in CAPS_USED if not layers.has_cap(c)]
    gone = [c for c in CAPS_USED if not layers.has_cap(c, "CapBnd")]
    if not missing:
        return Check("capabilities", True, f"effective: all {len(CAPS_USED)} the recipes use "
                     f"({', '.join(CAPS_USED)})", layer="capabilities")
    detail = f"not effective: {', '.join(missing)}" + (
        f"; not in the bounding set either: {', '.join(gone)}" if gone else
        "; all in the bounding set (dropped by this process or its starter)")
    fix = (f"start the container with {' '.join('--cap-add ' + c[4:].upper() for c in gone)}"
           ", or --privileged" if gone else layers.FIX_DROPPED)
    if os.geteuid() != 0:   # without root they come from a user namespace of one's own
        detail += " (without root: a user namespace of your own gives them there)"
    return Check("capabilities", False, detail, fix,
                 required=any(c in missing for c in CAPS_REQUIRED) and os.geteuid() == 0,
                 layer="capabilities",
                 blocks="; ".join(CAPS_USED[c] for c in missing))


def check_seccomp(refused: dict[str, str]) -> Check:
    """The Seccomp: line, and which calls a filter answers instead of the kernel (``refused``:
    :func:`nsutil.layers.filtered_calls`, tried in children)."""
    mode = layers.seccomp_mode()
    head = f"Seccomp: {mode} ({layers.SECCOMP_MODES.get(mode, '?')}"
    head += f", {layers.seccomp_filters()} stacked)" if mode == 2 else ")"
    if mode != 2:
        return Check("seccomp", True, head, layer="seccomp")
    tried = "tried in a child, with arguments the kernel itself rejects"
    if not refused:
        return Check("seccomp", True, f"{head}: unshare, setns, mount, umount2, clone and clone3 "
                     f"reach the kernel ({tried})", layer="seccomp")
    answers = "; ".join(f"{name}: {answer}" for name, answer in refused.items())
    if not layers.blocks_namespaces(refused):   # clone3 alone: glibc falls back to clone
        return Check("seccomp", True, f"{head}: only clone3 is answered ({answers}); glibc "
                     f"falls back to clone ({tried})", layer="seccomp")
    return Check("seccomp", False, f"{head}: the filter answers {answers} ({tried})",
                 layers.FIX_SECCOMP, layer="seccomp", blocks=EVERYTHING)


def check_lsm(mount_problem: str | None, refused: dict[str, str]) -> Check:
    """The active LSMs and this process's AppArmor label; the LSM is blamed for a refused
    mount only where seccomp and the capabilities would let it through."""
    active = layers.lsms()
    label = layers.apparmor_label()
    detail = ("active: " + ",".join(active) if active is not None else
              "/sys/kernel/security/lsm not readable (securityfs not mounted)")
    detail += f"; AppArmor label: {label}" if label else "; no AppArmor label"
    clean = layers.has_cap("cap_sys_admin") and not layers.blocks_namespaces(refused)
    if mount_problem and clean and ("EACCES" in mount_problem or "EPERM" in mount_problem):
        return Check("LSM", False, f"{detail}; refused a mount that seccomp and the "
                     f"capabilities allow ({mount_problem})", layers.FIX_LSM, layer="LSM",
                     blocks="mounts: " + EVERYTHING)
    return Check("LSM", True, detail, layer="LSM")


def check_mount(problem: str | None, refusal: layers.Refusal | None) -> Check:
    """A mount in a new mount namespace, for real (``problem``: what the attempt met)."""
    if problem is None:
        return Check("mount in a new namespace", True, "unshare(CLONE_NEWNS), / made private, "
                     "a tmpfs mounted, in a child: ok", layer="mounts")
    detail, fix = because(problem, refusal, "see the LSM row")
    return Check("mount in a new namespace", False, f"in a child: {detail}", fix,
                 layer="mounts", blocks="mounts: " + EVERYTHING)


def check_container(refusal: layers.Refusal | None) -> list[Check]:
    """A PID namespace of our own (a container's), and a read-only /proc/sys."""
    own_pid = layers.in_initial("pid") is False
    with open("/proc/1/comm") as f:
        init = f.read().strip()
    rows = [Check("own PID namespace", True,
                  f"yes (pid:[{layers.ns_inode('pid')}]; PID 1 is {init}): a container"
                  if own_pid else f"no: the host's initial one (PID 1 is {init})",
                  required=False, layer="container")]
    problem = probes.sysctl_in_new_netns()
    fix = ("start the container with --privileged (Docker and Kubernetes mount /proc/sys "
           "read-only otherwise)")
    if problem:
        problem, fix = because(problem, refusal, fix)
    detail = ("read-only" if layers.proc_sys_readonly() else "writable") + \
        (f"; net.ipv4.ip_forward in a new network namespace: {problem}" if problem else
         "; net.ipv4.ip_forward written in a new network namespace, in a child: ok")
    rows.append(Check("/proc/sys", problem is None, detail, fix, required=False, layer="container",
                      blocks="routers of net-topo (ip_forward in their namespaces)"))
    return rows


def check_unprivileged_userns(refusal: layers.Refusal | None) -> Check:
    """A user namespace made by an unprivileged user, for real (as root: as nobody).
    Without root it is what every task needs: the row says what the tasks say when the
    kernel refuses (:func:`nsutil.rootless.userns_refusal`: the setting and its fix), and
    it blocks the tour."""
    from nsutil import rootless
    if rootless.decide():
        refused = rootless.userns_refusal("every task without root")
        return Check("unprivileged user namespace", refused is None,
                     "unshare(CLONE_NEWUSER) as this user, in a child: "
                     + ("ok" if refused is None else refused.what),
                     refused.hint if refused else "", layer="user namespaces",
                     blocks="every demo, the tour, environments, labs and containers "
                            "without root")
    problem = probes.unprivileged_user_namespace()
    who = "as nobody (uid 65534, no capabilities)" if os.geteuid() == 0 else "as this user"
    detail, fix = because(problem or "ok", refusal,
                          "see the sysctl rows above (user.max_user_namespaces, kernel."
                          "unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_"
                          "userns)", needs_caps=False)
    return Check("unprivileged user namespace", problem is None,
                 f"unshare(CLONE_NEWUSER) {who}, in a child: {detail}", fix,
                 required=False, layer="user namespaces",
                 blocks="user-demo run without root; rootless container tools")


def check_overlay_userns(refusal: layers.Refusal | None) -> Check:
    """overlayfs mounted inside a user namespace (unprivileged overlay, Linux 5.11+)."""
    problem = probes.overlay_in_user_namespace()
    detail, fix = because(problem or "ok", refusal,
                          "Linux 5.11+ (unprivileged overlayfs), or fuse-overlayfs",
                          needs_caps=False)
    return Check("overlay in a user namespace", problem is None,
                 f"a user and mount namespace, a tmpfs and an overlay on it, in a child: {detail}",
                 fix, required=False,
                 layer="overlay", blocks="copy-on-write layers without root (rootless "
                                         "container tools); nsrecipes mounts its own as root")


def check_netem(usable: bool, how: str, fix: str) -> Check:
    """A netem qdisc in a new network namespace, for real -- where the module is loaded or
    built in (``usable``, ``how`` from the module check); a loadable module is not loaded
    here (the first qdisc would load it)."""
    loaded = usable and ("loaded" in how or "built in" in how)
    problem = probes.netem_in_new_namespace() if loaded else None
    if loaded:
        detail = f"{how}; a netem qdisc on lo of a new network namespace, in a child: " + (
            problem or "ok")
    else:
        detail = f"{how}; not tried (doctor loads no module)"
    return Check("netem", usable and problem is None, detail,
                 fix if not usable else "load sch_netem on the host (modprobe sch_netem)",
                 required=False, layer="network",
                 blocks="delay, jitter, loss, duplicate, corrupt on lab links (net-link)")


def check_cgroup_delegation(parent: str, make_parent: bool) -> Check:
    """A cgroup made and removed where nsrecipes puts its cgroups, for real."""
    problem = probes.cgroup_mkdir(parent, make_parent)
    if problem and errno.errorcode[errno.EROFS] in problem:
        problem += " (/sys/fs/cgroup is mounted read-only)"
    return Check("cgroup delegation", problem is None,
                 f"a cgroup made and removed in {parent}, in a child: " + (problem or "ok"),
                 "a writable cgroup tree: --privileged, or a cgroup delegated to this user "
                 "(systemd's Delegate=yes)", layer="cgroups",
                 blocks="cgroup-demo, container-run --memory/--pids/--cpus")
