"""cgroup filesystem access: where nsrecipes' cgroups go, their files, and v2's rules.

The layout (v1, v2 or hybrid) is detected as runc does, in :mod:`nsutil.cgrouplayout`.
Where the cgroups go depends on the version, as in Docker's cgroupfs driver and nsjail:

* **v1** (legacy, hybrid): ``nsr-...`` *below the caller's own cgroup* in every hierarchy that
  carries a wanted controller (what runc does with a relative ``cgroupsPath``): v1 has no rule
  against a cgroup holding processes and having children;
* **v2**: below ``nsrecipes``, a cgroup of nsrecipes' own at the top of the hierarchy
  (``/sys/fs/cgroup/nsrecipes/nsr-...``), *never* below the caller's: on a systemd host the
  caller is in a scope like ``/user.slice/user-0.slice/session-1.scope`` that holds processes,
  and v2's "no internal processes" rule forbids such a cgroup to enable controllers for
  children. nsrecipes enables the controllers in its own ``nsrecipes`` cgroup and removes it
  when it is empty. Where the root does not enable a controller a limit needs for its
  children (no systemd: a container, a VM as booted), nsrecipes writes ``+CTRL`` into the
  ``cgroup.subtree_control`` of each ancestor of ``nsrecipes``, top-down from the root of
  its cgroup namespace, as runc does (:func:`ancestor_writes`): its one write outside its own
  cgroups, never undone, since other cgroups may rely on it. What v2 forbids is refused
  before anything is made (:func:`require`): a controller the root is not given, a read-only
  cgroup2 mount, and any controller in a namespace root that holds processes.

Limits map to files as runc maps them:

========  =====================================  ========================
limit     v1 file                                v2 file
========  =====================================  ========================
memory    memory/…/memory.limit_in_bytes         memory.max
pids      pids/…/pids.max                        pids.max
cpu       cpu/…/cpu.cfs_quota_us + cfs_period_us cpu.max ("QUOTA PERIOD")
========  =====================================  ========================

OOM kills are read from ``memory.oom_control`` (v1, ``oom_kill N``) or ``memory.events``
(v2, ``oom_kill N``); refused forks from ``pids.events`` (``max N``) in both; CPU time from
``cpuacct.usage`` (v1, ns) or ``cpu.stat`` (v2, ``usage_usec``).
"""
from __future__ import annotations

import errno
import os
import re
import signal
import time
from dataclasses import dataclass

from .cgrouplayout import (ROOT, V1_CONTROLLERS, Layout, detect,  # noqa: F401 (re-exported)
                           host_layout, own_cgroup)
from .errors import InvalidInput, NsrError, SyscallError
from .limits import (CPU_PERIOD_US, MIN_MEMORY, Limits, parse_cpus,  # noqa: F401 (re-exported)
                     parse_memory, parse_pids)
from .names import PREFIX

#: controllers nsrecipes uses; cpuacct only on v1 (CPU time), where it may be its own hierarchy
CONTROLLERS = ("memory", "pids", "cpu")
#: nsrecipes' own parent cgroup on v2 (below the hierarchy's root)
PARENT_NAME = f"{PREFIX}ecipes"


# --- can nsrecipes use a controller here? ----------------------------------------------------

def is_namespace_root(directory: str) -> bool:
    """True if the v2 root we see is not the real root (a cgroup namespace, a container):
    only non-root cgroups have ``cgroup.type``."""
    return os.path.exists(os.path.join(directory, "cgroup.type"))


def controller_problem(ctrl: str, layout: Layout | None = None) -> NsrError | None:
    """Why nsrecipes cannot use controller ``ctrl`` here (one line with the fix), or None.

    On v2 the root as mounted (the root of the cgroup namespace) must be given it (list it in
    ``cgroup.controllers``); if its ``cgroup.subtree_control`` lacks it, nsrecipes enables it
    there itself (:func:`ancestor_writes`) unless v2 forbids that write.
    """
    layout = layout or host_layout()
    if layout.mode != "unified":
        if ctrl in layout.v1:
            return None
        return NsrError(f"cgroup v1: controller {ctrl} is not mounted",
                        hint=f"mount -t cgroup -o {ctrl} cgroup {ROOT}/{ctrl} (see /proc/cgroups)")
    base = layout.v2 or ROOT
    control = os.path.join(base, "cgroup.subtree_control")
    if ctrl in read_file(control).split():
        return None
    ns_root = is_namespace_root(base)
    if ctrl not in read_file(os.path.join(base, "cgroup.controllers")).split():
        hint = ("the cgroup this container's namespace is rooted in does not delegate it: give "
                "the container its controllers (e.g. docker run --cgroupns=host)" if ns_root else
                "the kernel offers it on no v2 hierarchy here (bound to v1, or cgroup_disable=; "
                "see /proc/cgroups)")
        return NsrError(f"cgroup v2: controller {ctrl} is not available in "
                        f"{base}/cgroup.controllers", hint=hint)
    what = f"cgroup v2: controller {ctrl} is not enabled in {control}"
    if os.statvfs(base).f_flag & os.ST_RDONLY:
        return NsrError(f"{what}, and cgroup2 is mounted read-only at {base}",
                        hint=f"echo +{ctrl} > {control} where it is writable, or mount cgroup2 "
                             "read-write (a container: run it with --privileged)")
    if ns_root and procs_here(base):
        return NsrError(f"{what}, and {base} may not enable it: it holds processes",
                        hint=f"{base} is a cgroup namespace's root (a container's); "
                             + internal_processes_hint(base))
    return None


def internal_processes_hint(directory: str) -> str:
    """v2's "no internal processes" rule, and how a container's entrypoint lives with it."""
    return (f"cgroup v2 lets only a cgroup without processes enable controllers for children "
            f"that hold processes (no internal processes: memory is refused, pids and cpu make "
            f"it a threaded root); move its processes into a child first (mkdir "
            f"{directory}/init, then echo each pid of {directory}/cgroup.procs into "
            f"{directory}/init/cgroup.procs), as docker:dind's entrypoint does")


def ancestor_writes(parent: str, top: str, controllers: tuple[str, ...]) -> list[tuple[str, str]]:
    """v2: ``(DIR/cgroup.subtree_control, "+memory ...")`` for each ancestor of nsrecipes'
    ``parent``, top-down from ``top`` (the hierarchy's root as mounted), whose subtree_control
    lacks one of ``controllers``: what runc writes before it makes its cgroup. [] when every
    ancestor enables them already (a systemd host)."""
    wanted = [c for c in controllers if c in CONTROLLERS]
    rel = os.path.relpath(os.path.dirname(parent.rstrip("/")), top)
    parts = [] if rel == "." else rel.split("/")
    chain = [os.path.join(top, *parts[:i]) for i in range(len(parts) + 1)]
    writes: list[tuple[str, str]] = []
    for d in chain:
        control = os.path.join(d, "cgroup.subtree_control")
        missing = [c for c in wanted if c not in read_file(control).split()]
        if missing:
            writes.append((control, " ".join(f"+{c}" for c in missing)))
    return writes


def require(controllers: tuple[str, ...], layout: Layout | None = None) -> None:
    """Raise the first :func:`controller_problem` of ``controllers`` (before anything is made)."""
    for ctrl in controllers:
        problem = controller_problem(ctrl, layout)
        if problem is not None:
            raise problem


def procs_here(directory: str) -> list[int]:
    """PIDs in ``DIR/cgroup.procs`` itself (not in its children)."""
    return [int(x) for x in read_file(os.path.join(directory, "cgroup.procs")).split()
            if x.isdigit()]


# --- file helpers ----------------------------------------------------------------------------

def write_file(path: str, value: str | int) -> None:
    """``echo VALUE > PATH`` for a cgroup control file; errors name the file and the value.
    No O_CREAT: a control file the kernel does not offer is ENOENT (kernfs says EACCES)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise SyscallError.from_oserror(f"write({path!r}, {str(value)!r})", exc,
                                        write_hint(path, exc.errno or 0)) from None


def _ctype(directory: str) -> str:
    return read_file(os.path.join(directory, "cgroup.type")).strip() or "root"


def write_hint(path: str, err: int) -> str | None:
    """What a failed write of cgroup file ``path`` means (v2's rules named), by errno."""
    d, name = os.path.split(path)
    moving = name in ("cgroup.procs", "tasks")
    if err == errno.EBUSY and name == "cgroup.subtree_control":
        return f"{d} holds processes: " + internal_processes_hint(d)
    if err == errno.EBUSY and moving:
        return (f"{d} enables controllers for its children (cgroup.subtree_control), so cgroup "
                "v2 lets it hold no processes; use a leaf cgroup")
    if err == errno.EBUSY:
        return "a limit below current usage, or a controller in use in a child cgroup"
    if err == errno.ENOENT and not os.path.isdir(d):
        return f"the cgroup {d} is gone (removed by another run or `invoke cleanup`?)"
    if err == errno.ENOENT and name == "cgroup.subtree_control":
        return (f"a controller of the value is not in {d}/cgroup.controllers: the parent does "
                "not enable it in its cgroup.subtree_control; see `invoke doctor`")
    if err == errno.ENOENT and not moving:
        ctrl, parent = name.split(".")[0], os.path.dirname(d)
        return (f"the {ctrl} controller is not enabled for {d}: {parent}/cgroup.subtree_control "
                f"lacks it (echo +{ctrl} > {parent}/cgroup.subtree_control, if that cgroup is "
                "yours)")
    if err == errno.EOPNOTSUPP and moving:
        return (f"{d} has cgroup.type {_ctype(d)!r}: cgroup v2 takes processes only into a valid "
                "domain cgroup (a threaded or 'domain invalid' subtree refuses them)")
    if err == errno.EOPNOTSUPP:
        return (f"{d} has cgroup.type {_ctype(d)!r}: domain controllers (memory, io) cannot be "
                "enabled in a threaded subtree")
    if err == errno.EROFS:
        return "cgroup2 is mounted read-only here (a container: run it with --privileged)"
    if err == errno.EINVAL:
        return "the kernel refused the value (too small for what the cgroup uses already?)"
    return None


def read_file(path: str) -> str:
    """The text of a cgroup control file ("" if it does not exist)."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise SyscallError.from_oserror(f"read({path!r})", exc) from None


def read_keyed(path: str) -> dict[str, int]:
    """A flat-keyed file (``memory.events``, ``memory.oom_control``, ``cpu.stat``) as a dict."""
    out: dict[str, int] = {}
    for line in read_file(path).splitlines():
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"-?\d+", parts[1]):
            out[parts[0]] = int(parts[1])
    return out


# --- a cgroup --------------------------------------------------------------------------------

@dataclass
class Cgroup:
    """One nsrecipes cgroup: a directory per hierarchy that carries a wanted controller.

    ``dirs`` maps a controller to its directory (on v2 every controller maps to the same one).
    Build it with :func:`plan`; nothing exists until :meth:`create`.
    """

    name: str
    version: int                 #: 1 (v1/hybrid) or 2 (unified)
    dirs: dict[str, str]
    parent: str | None = None    #: v2: nsrecipes' own parent cgroup (made, then removed if empty)
    top: str | None = None       #: v2: the hierarchy's root as mounted (the cgroup namespace's)

    # -- paths ------------------------------------------------------------------------------
    def unique_dirs(self) -> list[str]:
        """Every directory of this cgroup, once each, in creation order."""
        seen: list[str] = []
        for d in self.dirs.values():
            if d not in seen:
                seen.append(d)
        return seen

    def file(self, controller: str, name: str) -> str:
        """Path of control file ``name`` of ``controller``."""
        return os.path.join(self.dirs[controller], name)

    # -- limits: the (file, value) writes for each --------------------------------------------
    def limit_writes(self, limits: Limits) -> list[tuple[str, str, str]]:
        """``(controller, file, value)`` for every limit set, in the order they are written."""
        writes: list[tuple[str, str, str]] = []
        if limits.memory is not None and "memory" in self.dirs:
            name = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
            writes.append(("memory", self.file("memory", name), str(limits.memory)))
            if self.version == 2:
                # like runc without a swap limit: no swap beyond the memory limit
                writes.append(("memory", self.file("memory", "memory.swap.max"), "0"))
        if limits.pids is not None and "pids" in self.dirs:
            writes.append(("pids", self.file("pids", "pids.max"), str(limits.pids)))
        if limits.cpus is not None and "cpu" in self.dirs:
            quota, period = limits.cpu_quota()
            if self.version == 1:
                writes.append(("cpu", self.file("cpu", "cpu.cfs_period_us"), str(period)))
                writes.append(("cpu", self.file("cpu", "cpu.cfs_quota_us"), str(quota)))
            else:
                writes.append(("cpu", self.file("cpu", "cpu.max"), f"{quota} {period}"))
        return writes

    def enable_writes(self) -> list[tuple[str, str]]:
        """v2 only: ``(parent subtree_control, "+memory +pids +cpu")`` so children get them."""
        if self.version != 2:
            return []
        parent = self.parent or os.path.dirname(self.unique_dirs()[0])
        wanted = " ".join(f"+{c}" for c in self.dirs if c in CONTROLLERS)
        return [(os.path.join(parent, "cgroup.subtree_control"), wanted)] if wanted else []

    def ancestor_enable_writes(self) -> list[tuple[str, str]]:
        """v2: the writes that enable this cgroup's controllers in the ancestors of nsrecipes'
        parent that lack them now (:func:`ancestor_writes`); [] on v1."""
        if self.version != 2 or not self.parent or not self.top:
            return []
        return ancestor_writes(self.parent, self.top, tuple(self.dirs))

    # -- operations ---------------------------------------------------------------------------
    def create(self) -> None:
        """mkdir every directory; on v2 in nsrecipes' parent, whose controllers are enabled
        once the directory exists (so a concurrent run cannot remove the parent between),
        after the ancestors that lacked them got them (never undone)."""
        for path, value in self.ancestor_enable_writes():
            write_file(path, value)
        if self.parent:
            make_parent(self.parent)
        for d in self.unique_dirs():
            make_dir(d, self.parent)
        for path, value in self.enable_writes():
            write_file(path, value)

    def set_limits(self, limits: Limits) -> None:
        """Write every limit file."""
        for _ctrl, path, value in self.limit_writes(limits):
            write_file(path, value)

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into this cgroup in every hierarchy."""
        for d in self.unique_dirs():
            write_file(os.path.join(d, "cgroup.procs"), pid)

    def procs(self) -> list[int]:
        """Processes in this cgroup (union over hierarchies)."""
        pids: set[int] = set()
        for d in self.unique_dirs():
            pids.update(procs_of(d))
        return sorted(pids)

    def exists(self) -> bool:
        """True if any of the directories exists."""
        return any(os.path.isdir(d) for d in self.unique_dirs())

    # -- observations -------------------------------------------------------------------------
    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer killed in this cgroup."""
        if self.version == 1:
            return read_keyed(self.file("memory", "memory.oom_control")).get("oom_kill", 0)
        return read_keyed(self.file("memory", "memory.events")).get("oom_kill", 0)

    def memory_events(self) -> dict[str, int]:
        """``memory.events`` (v2) or ``memory.oom_control`` (v1) as a dict."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        return read_keyed(self.file("memory", name))

    def memory_max_usage(self) -> int:
        """Peak memory use in bytes (``memory.max_usage_in_bytes`` / ``memory.peak``)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        text = read_file(self.file("memory", name)).strip()
        return int(text) if text.isdigit() else 0

    def pids_refused(self) -> int:
        """How many forks the pids limit refused (``pids.events``: ``max N``)."""
        return read_keyed(self.file("pids", "pids.events")).get("max", 0)

    def cpu_usage_us(self) -> int:
        """CPU time used by the cgroup, in microseconds."""
        if self.version == 1:
            ctrl = "cpuacct" if "cpuacct" in self.dirs else "cpu"
            text = read_file(self.file(ctrl, "cpuacct.usage")).strip()
            return int(text) // 1000 if text.isdigit() else 0
        return read_keyed(self.file("cpu", "cpu.stat")).get("usage_usec", 0)

    def cpu_throttled(self) -> int:
        """How many CFS periods the cgroup was throttled in (``cpu.stat`` ``nr_throttled``)."""
        return read_keyed(self.file("cpu", "cpu.stat")).get("nr_throttled", 0)

    # -- removal ------------------------------------------------------------------------------
    def kill(self) -> int:
        """SIGKILL every process in the cgroup (``cgroup.kill`` on v2 when there is one)."""
        return sum(kill_procs(d) for d in self.unique_dirs())

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left and rmdir every directory, retrying while the kernel says EBUSY."""
        for d in reversed(self.unique_dirs()):
            remove_dir(d, timeout)


def procs_of(directory: str) -> list[int]:
    """PIDs listed in ``DIR/cgroup.procs`` (and of child cgroups)."""
    out: list[int] = []
    for root, _dirs, files in os.walk(directory):
        if "cgroup.procs" in files:
            out.extend(int(x) for x in read_file(os.path.join(root, "cgroup.procs")).split()
                       if x.isdigit())
    return out


def kill_procs(directory: str) -> int:
    """SIGKILL the processes of one cgroup directory (and its children); returns how many."""
    kill_file = os.path.join(directory, "cgroup.kill")
    pids = procs_of(directory)
    if os.path.exists(kill_file) and pids:
        try:
            write_file(kill_file, 1)
            return len(pids)
        except NsrError:
            pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def remove_dir(directory: str, timeout: float = 5.0) -> None:
    """rmdir a cgroup directory (children first); on EBUSY kill what is in it and retry.
    Then remove nsrecipes' v2 parent if that leaves it empty."""
    _remove_tree(directory, timeout)
    parent = os.path.dirname(directory.rstrip("/"))
    if os.path.basename(parent) == PARENT_NAME:
        prune_parent(parent)


def make_parent(parent: str) -> None:
    """``mkdir -p`` nsrecipes' own v2 parent cgroup (another run may have made it)."""
    try:
        os.mkdir(parent, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SyscallError.from_oserror(f"mkdir({parent!r})", exc) from None


def make_dir(directory: str, parent: str | None = None, attempts: int = 50) -> None:
    """mkdir one cgroup; with ``parent``, make it again if a concurrent run removed it
    (ENOENT) between our :func:`make_parent` and this mkdir."""
    for attempt in range(attempts):
        try:
            os.mkdir(directory, 0o755)
            return
        except FileExistsError:
            raise SyscallError(f"mkdir({directory!r})", errno.EEXIST,
                               hint="a cgroup of that name exists; run `invoke cleanup`") from None
        except OSError as exc:
            if exc.errno != errno.ENOENT or parent is None or attempt == attempts - 1:
                raise SyscallError.from_oserror(f"mkdir({directory!r})", exc) from None
        make_parent(parent)


def prune_parent(parent: str) -> bool:
    """rmdir nsrecipes' parent cgroup if nothing is in it; True if it is gone. Another run
    using it (EBUSY, ENOTEMPTY) is fine: the last one out removes it."""
    try:
        os.rmdir(parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise SyscallError.from_oserror(f"rmdir({parent!r})", exc) from None
    return True


def _remove_tree(directory: str, timeout: float) -> None:
    if not os.path.isdir(directory):
        return
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(entry.path, timeout)
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                raise SyscallError.from_oserror(f"rmdir({directory!r})", exc) from None
        kill_procs(directory)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def plan(name: str, controllers: tuple[str, ...] = CONTROLLERS, layout: Layout | None = None,
         proc_cgroup: str | None = None) -> Cgroup:
    """The cgroup ``name`` (must start with ``nsr``) for ``controllers``: on v1 below the
    caller's own cgroup in each hierarchy carrying one (also cpuacct when cpu is wanted), on v2
    in nsrecipes' own parent (see the module docstring). Raises, before anything is made, if
    a controller cannot be used (:func:`require`); one nsrecipes can enable is fine."""
    if not name.startswith(PREFIX) or "/" in name:
        raise InvalidInput(f"cgroup name {name!r} must start with {PREFIX!r} and have no '/'",
                           hint=f"use e.g. {PREFIX}-demo")
    layout = layout or host_layout()
    require(controllers, layout)
    if layout.mode == "unified":
        top = layout.v2 or ROOT
        parent = os.path.join(top, PARENT_NAME)
        path = os.path.join(parent, name)
        # no controller: a bare v2 cgroup still groups, counts and kills its processes
        return Cgroup(name, 2, {c: path for c in controllers} or {"cgroup": path}, parent, top)
    dirs: dict[str, str] = {}
    wanted = list(controllers) + (["cpuacct"] if "cpu" in controllers else [])
    for c in wanted:
        if c in layout.v1:
            base = own_cgroup(c, proc_cgroup)
            dirs[c] = os.path.join(layout.v1[c], base.lstrip("/"), name)
    return Cgroup(name, 1, dirs)


def placement(layout: Layout | None = None) -> str:
    """Where nsrecipes puts its cgroups on this host, in words (for `doctor`)."""
    layout = layout or host_layout()
    if layout.mode == "unified":
        return (f"{os.path.join(layout.v2 or ROOT, PARENT_NAME)}/{PREFIX}-* (v2: a cgroup of "
                "nsrecipes' own, outside the caller's)")
    mem = layout.v1.get("memory") or next(iter(layout.v1.values()), ROOT)
    return (f"{os.path.join(mem, own_cgroup('memory').lstrip('/'))}/{PREFIX}-* and likewise "
            "in each v1 hierarchy (below the caller's own cgroup)")


def find_ours(layout: Layout | None = None, max_depth: int = 4) -> list[str]:
    """Every cgroup directory named ``nsr*`` in every hierarchy (not descending into them)."""
    layout = layout or detect()
    roots = sorted(set(layout.v1.values()) | ({layout.v2} if layout.v2 else set()))
    found: list[str] = []
    parents: list[str] = []   # nsrecipes' own v2 parents: listed after what is in them
    for top in roots:
        base_depth = top.rstrip("/").count("/")
        for root, dirs, _files in os.walk(top):
            keep = []
            for d in dirs:
                if d == PARENT_NAME:
                    parents.append(os.path.join(root, d))
                    keep.append(d)
                elif d.startswith(PREFIX):
                    found.append(os.path.join(root, d))
                else:
                    keep.append(d)
            dirs[:] = keep if root.count("/") - base_depth < max_depth else []
    return found + parents
