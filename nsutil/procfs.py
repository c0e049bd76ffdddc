"""Who a process is, from /proc: alive or not, when it started, its children.

A pid alone does not name a process: once it exits, the kernel hands its pid to a later one.
So wherever nsrecipes records a process it made or that made something (an environment's
holder, a container, the creator of a record), it records :func:`identity` -- the pid and the
start time (field 22 of ``/proc/PID/stat``) -- and :func:`same_process` asks whether that
very process still runs.
"""
from __future__ import annotations

import os


def identity(pid: int | None = None) -> dict:
    """``{"pid": PID, "start": START}`` of ``pid`` (default: this process), as records hold it."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "start": start_time(pid)}


def same_process(rec: object) -> bool:
    """True if the process recorded as ``{"pid", "start"}`` (:func:`identity`) still runs: its
    pid is alive and started at the recorded time (not a later process that re-uses the pid)."""
    if not isinstance(rec, dict):
        return False
    pid = rec.get("pid")
    return (isinstance(pid, int) and pid > 0 and rec.get("start") is not None
            and pid_alive(pid) and start_time(pid) == rec.get("start"))


def host_pid() -> int:
    """Our PID as the caller's /proc sees it (call it before mounting a new /proc)."""
    return int(os.readlink("/proc/self"))


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X")


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (children, their children, ...), from /proc."""
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children_of(todo.pop())
        out += kids
        todo += kids
    return out


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started (clock ticks since boot), which
    tells a process from a later one that re-uses its pid; ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/PID/task/*/children)."""
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
    except FileNotFoundError:
        pass
    return kids


def started_pid(parent: int, comm: str, forks: bool) -> int | None:
    """The pid of the process a just-started ``unshare`` (``parent``) will hold namespaces
    with -- ``parent`` itself, or with ``forks`` (``--fork``) its first child -- once it
    runs ``comm`` (its /proc/PID/comm); ``None`` while it is not there yet. For
    :func:`wait_for`."""
    pid = parent
    if forks:
        kids = children_of(parent)
        if not kids:
            return None
        pid = kids[0]
    try:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() != comm:
                return None
    except OSError:
        return None
    return pid
