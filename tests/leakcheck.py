"""An independent look at the host for anything nsrecipes made (used by the leak guard).

It does not use nsrecipes' own discovery code, so a bug there cannot hide a leak. What it
looks at: network namespaces, links in the root namespace, mounts, cgroups, state files,
/etc/netns entries, System V IPC objects whose names carry the ``nsr`` prefix (or, for IPC,
all of them), and processes. A process counts only when it is this test session's (a
descendant of the test process, or started with the session's mark in its environment:
:func:`mark_session`) *and* nsrecipes-like: a fork of the test process, named ``nsr-*``
(holders, their ``unshare`` parents, the native ``ps``/``nsenter``, a detached container's
``nsr-supervisor``), recorded as a holder or container process (a detached container's
supervisor is its record's ``creator``; its log is in its state entry) under the state
directory, in an ``nsr*`` cgroup, or in a namespace
other than the test process's own. Another user's process is never reported, whatever its
command line says; nor are the state entries, mounts and cgroups of an environment or
container whose recorded processes run and are all someone else's (a concurrent run's).

Rootless runs (uid 65534, :mod:`asuser`) are checked per test, when the test's home goes:
:func:`started_with_home` names the processes the test started (this session's mark *and*
the test's own HOME in their environment) and :func:`runtime_records` what is left in its
runtime directory; the session check above still sees their ``/tmp/nsr*`` entries.
"""
from __future__ import annotations

import json
import os
import subprocess
import time

NS_KINDS = ("net", "uts", "ipc", "pid", "mnt", "user", "cgroup", "time")
#: the environment variable that marks this session's processes (inherited by what it starts)
SESSION_VAR = "NSR_TEST_SESSION"


def mark_session() -> None:
    """Mark this test session: every process it starts inherits the mark in its environment
    (pytest-xdist workers keep their controller's)."""
    os.environ.setdefault(SESSION_VAR, f"{os.getpid()}.{time.time_ns()}")


def _lines(argv: list[str]) -> list[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.splitlines()
    except FileNotFoundError:
        return []


def _ns_of(pid: str) -> tuple[int, ...]:
    out = []
    for kind in NS_KINDS:
        try:
            out.append(os.stat(f"/proc/{pid}/ns/{kind}").st_ino)
        except OSError:
            out.append(0)
    return tuple(out)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _cmdline(pid: str) -> bytes:
    return _read(f"/proc/{pid}/cmdline")


def _state_dir() -> str:
    return os.environ.get("NSR_STATE_DIR", "/run/nsrecipes")


def records() -> dict[str, dict]:
    """The state directory's records by entry: an environment's ``env.json`` or a
    container's ``state.json``."""
    base = _state_dir()
    found: dict[str, dict] = {}
    for entry in os.listdir(base) if os.path.isdir(base) else []:
        for name in ("env.json", "state.json"):
            try:
                rec = json.loads(_read(os.path.join(base, entry, name)) or b"null")
            except ValueError:
                continue
            if isinstance(rec, dict):
                found[entry] = rec
    return found


def _pids_of(rec: dict) -> set[str]:
    """The processes a record names: holder, parent, creator; a container's pid and pid1."""
    found = set()
    for key in ("holder", "parent", "creator", "pid", "pid1"):
        value = rec.get(key)
        value = value.get("pid") if isinstance(value, dict) else value
        if isinstance(value, int) and value > 0:
            found.add(str(value))
    return found


def _cgroup_procs(directory: str) -> set[str]:
    found: set[str] = set()
    for root, _dirs, _files in os.walk(directory):
        found.update(_read(os.path.join(root, "cgroup.procs")).decode().split())
    return found


def _in_nsr_cgroup(pid: str) -> bool:
    """In a cgroup nsrecipes makes (``nsrecipes/...``, ``nsr-*``) in some hierarchy."""
    for line in _read(f"/proc/{pid}/cgroup").decode(errors="replace").splitlines():
        path = line.split(":", 2)[-1]
        if any(part.startswith("nsr") for part in path.split("/")):
            return True
    return False


def _start(pid: str) -> int:
    """Field 22 of /proc/PID/stat: when it started (0 if it is gone)."""
    raw = _read(f"/proc/{pid}/stat")
    fields = raw.rsplit(b")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else 0


def _stat(pid: str) -> tuple[bytes, bytes, str] | None:
    """(comm, state, ppid) from /proc/PID/stat."""
    raw = _read(f"/proc/{pid}/stat")
    if b")" not in raw:
        return None
    head, tail = raw.rsplit(b")", 1)
    fields = tail.split()
    return head.split(b"(", 1)[-1], fields[0], fields[1].decode()


class Session:
    """The processes on the host right now, and which of them are this test session's: a
    descendant of the test process, or one started with the session's mark."""

    def __init__(self) -> None:
        self.me = str(os.getpid())
        stats = {pid: _stat(pid) for pid in os.listdir("/proc") if pid.isdigit() and pid != self.me}
        self.stats = {pid: st for pid, st in stats.items() if st is not None}
        self.parents = {pid: st[2] for pid, st in self.stats.items()}
        mark = os.environ.get(SESSION_VAR)
        self.mark = f"{SESSION_VAR}={mark}".encode() if mark else None
        self.my_cmdline = _cmdline(self.me)
        self.my_start = _start(self.me)

    def _descends(self, pid: str) -> bool:
        seen = set()
        while pid in self.parents and pid not in seen:
            seen.add(pid)
            pid = self.parents[pid]
            if pid == self.me:
                return True
        return False

    def owns(self, pid: str) -> bool:
        """True if ``pid`` is this session's."""
        if self._descends(pid):
            return True
        if self.mark is not None and self.mark in _read(f"/proc/{pid}/environ").split(b"\0"):
            return True
        # a fork of the test process that was re-parented (a detached container's
        # supervisor, double-forked by the Python API): the mark set at run time is not in
        # its /proc/PID/environ, which shows the environment the test process was exec'd with
        return _cmdline(pid) == self.my_cmdline and _start(pid) >= self.my_start

    def foreign(self, pids: set[str]) -> bool:
        """True if some of ``pids`` run and none of those is this session's: what they
        belong to is someone else's, alive (a concurrent run's environment or container)."""
        alive = [p for p in pids if p in self.stats and self.stats[p][1] != b"Z"]
        return bool(alive) and not any(self.owns(p) for p in alive)


def recorded_pids() -> set[str]:
    """PIDs nsrecipes' records name (see :func:`records`)."""
    return {pid for rec in records().values() for pid in _pids_of(rec)}


def _nsrecipes_like(pid: str, comm: bytes, mine: tuple[bytes, tuple[int, ...]],
                    recorded: set[str]) -> bool:
    """Named like nsrecipes' processes, recorded, in an nsr cgroup, a fork of the test
    process (``mine``: its command line and namespaces), or in namespaces other than its
    (a namespace inode number is re-used once freed: "made since the start" cannot be told)."""
    my_cmd, my_ns = mine
    return (comm.startswith(b"nsr-") or pid in recorded or _cmdline(pid) == my_cmd
            or _in_nsr_cgroup(pid) or any(i and i != m for i, m in zip(_ns_of(pid), my_ns)))


def processes(session: Session | None = None) -> set[str]:
    """This session's processes that look like nsrecipes' (see the module docstring)."""
    session = session or Session()
    me = session.me
    mine = (_cmdline(me), _ns_of(me))
    recorded = recorded_pids()
    found = set()
    for pid, (comm, state, ppid) in session.stats.items():
        if ppid == "2" or pid == "2":  # kernel threads
            continue
        if state == b"Z" and ppid != me:
            continue
        if session.owns(pid) and _nsrecipes_like(pid, comm, mine, recorded):
            text = _cmdline(pid).replace(b"\0", b" ").decode(errors="replace").strip()[:80]
            found.add(f"pid {pid} {text}")
    return found


def _theirs(session: Session) -> tuple[set[str], set[str]]:
    """(state entries, cgroup directories) of records whose live processes are all someone
    else's: a concurrent run's environments and containers, which are not leaks of ours."""
    entries, cgroups = set(), set()
    for entry, rec in records().items():
        if session.foreign(_pids_of(rec)):
            entries.add(os.path.join(_state_dir(), entry))
            cgroups.update(d for d in rec.get("cgroup", []) if isinstance(d, str))
    return entries, cgroups


def _ours(name: str) -> bool:
    return name.startswith("nsr")


def _cgroups() -> set[str]:
    found = set()
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        depth = root.count("/") - "/sys/fs/cgroup".count("/")
        found |= {os.path.join(root, d) for d in dirs if _ours(d)}
        dirs[:] = [d for d in dirs if not _ours(d)] if depth < 6 else []
    return found


def _state() -> set[str]:
    state = _state_dir()
    found = {os.path.join(state, n) for n in os.listdir(state)} if os.path.isdir(state) else set()
    if os.path.isdir(state):
        found.add(state)
    return found | {f"/run/{n}" for n in os.listdir("/run") if _ours(n) and n != "nsrecipes"}


def _ipc() -> set[str]:
    found = set()
    for kind in ("msg", "shm", "sem"):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                next(f)
                found |= {f"{kind} key={ln.split()[0]} id={ln.split()[1]}"
                          for ln in f if ln.strip()}
        except OSError:
            pass
    return found


def _below(path: str, tops: set[str]) -> bool:
    return any(path == t or path.startswith(t + "/") for t in tops)


def snapshot() -> dict[str, set[str]]:
    """Everything that looks like nsrecipes' on the host right now, by kind -- but not what
    belongs to a live environment or container of someone else's (:func:`_theirs`)."""
    session = Session()
    their_entries, their_cgroups = _theirs(session)
    snap: dict[str, set[str]] = {}
    snap["netns"] = {n for n in (ln.split()[0] for ln in _lines(["ip", "netns", "list"])
                                 if ln.strip()) if _ours(n)}
    links = (ln.split(":")[1].strip().split("@")[0] for ln in _lines(["ip", "-o", "link", "show"]))
    snap["links"] = {n for n in links if _ours(n)}
    with open("/proc/self/mountinfo") as f:
        points = [ln.split()[4] for ln in f]
    snap["mounts"] = {p for p in points if any(_ours(part) for part in p.split("/"))
                      and not _below(p, their_entries)}
    snap["cgroups"] = {d for d in _cgroups() if d not in their_cgroups
                       and not session.foreign(_cgroup_procs(d))}
    snap["state"] = {p for p in _state() if not _below(p, their_entries)
                     and not (p == _state_dir() and their_entries)}
    snap["etc-netns"] = ({f"/etc/netns/{n}" for n in os.listdir("/etc/netns") if _ours(n)}
                         if os.path.isdir("/etc/netns") else set())
    snap["tmp"] = {f"/tmp/{n}" for n in os.listdir("/tmp") if _ours(n)}
    snap["ipc"] = _ipc()
    snap["processes"] = processes(session)
    return snap


def started_with_home(home: str, uid: int) -> set[str]:
    """Processes of ``uid`` that this session started with ``home`` as their HOME (as
    :mod:`asuser` starts the CLI: one fresh home per test), as ``pid N CMDLINE``. Both the
    session's mark and that HOME must be in the environment, so another session's or
    another test's process is never named, even of the same uid."""
    session = Session()
    want = f"HOME={home}".encode()
    found = set()
    for pid, (_comm, state, _ppid) in session.stats.items():
        if state == b"Z":
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
        except OSError:
            continue
        env = _read(f"/proc/{pid}/environ").split(b"\0")
        if want in env and session.mark is not None and session.mark in env:
            text = _cmdline(pid).replace(b"\0", b" ").decode(errors="replace").strip()[:80]
            found.add(f"pid {pid} {text}")
    return found


def runtime_records(run_dir: str) -> set[str]:
    """What is left in a test user's state directory (``RUN_DIR/nsrecipes``): nsrecipes
    removes it once nothing of its own is left, so every entry is a leak."""
    base = os.path.join(run_dir, "nsrecipes")
    if not os.path.isdir(base):
        return set()
    found = set()
    for root, dirs, files in os.walk(base):
        found.update(os.path.join(root, n) for n in dirs + files)
    return found or {base}


def new_since(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, set[str]]:
    """What ``after`` has that ``before`` did not, by kind (empty kinds dropped)."""
    return {k: after[k] - before.get(k, set()) for k in after if after[k] - before.get(k, set())}
