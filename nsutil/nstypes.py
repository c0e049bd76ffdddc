"""Namespace types and identity: the /proc/PID/ns files.

Each namespace is an inode on the nsfs filesystem; ``readlink /proc/PID/ns/uts`` prints
``uts:[4026531838]``. Two processes are in the same namespace exactly when those inode
numbers are equal -- this is what ``lsns`` lists.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

from . import syscalls as sc
from .errors import InvalidInput, SyscallError


@dataclass(frozen=True)
class NsType:
    """One kind of namespace and its spellings in the kernel and util-linux."""

    name: str       # our name, as `--ns` takes it
    flag: int       # CLONE_NEW* flag
    proc: str       # file under /proc/PID/ns/
    option: str     # util-linux option for unshare/nsenter
    isolates: str   # the document's table: what it isolates
    #: the kernel that brought it, for the two the document predates ("" for its six)
    since: str = ""

    @property
    def in_document(self) -> bool:
        """True for the document's six types; cgroup and time came later."""
        return not self.since


#: In the order nsenter joins them: user first, so the rest are joined with its privileges.
#: Linux has eight; the document (written before Linux 4.6) lists six: cgroup and time are
#: "beyond the document" (cgroup_namespaces(7), time_namespaces(7)).
NS_TYPES: dict[str, NsType] = {t.name: t for t in (
    NsType("user", sc.CLONE_NEWUSER, "user", "--user", "user and group IDs"),
    NsType("cgroup", sc.CLONE_NEWCGROUP, "cgroup", "--cgroup", "cgroup root directory", "4.6"),
    NsType("ipc", sc.CLONE_NEWIPC, "ipc", "--ipc", "semaphores, message queues, shared memory"),
    NsType("uts", sc.CLONE_NEWUTS, "uts", "--uts", "hostname and domain name"),
    NsType("net", sc.CLONE_NEWNET, "net", "--net", "network devices, stacks, ports"),
    NsType("pid", sc.CLONE_NEWPID, "pid", "--pid", "process IDs"),
    NsType("mnt", sc.CLONE_NEWNS, "mnt", "--mount", "mount points"),
    NsType("time", sc.CLONE_NEWTIME, "time", "--time", "CLOCK_MONOTONIC and CLOCK_BOOTTIME",
           "5.6"),
)}
ALIASES = {"mount": "mnt", "network": "net", "ns": "mnt"}

#: unshare(2) moves the caller into new namespaces of every type but these two: a new PID or
#: time namespace is for its *children*. So ``unshare(1)`` must ``--fork`` for them, and the
#: holder is the child. (Kernels from 6.3 also switch time namespace at exec, so ``unshare
#: --time -- CMD`` without --fork works there; Debian 12's 6.1 leaves CMD in the old one.)
FORKING = frozenset({"pid", "time"})


def needs_fork(types: Iterable["NsType"]) -> bool:
    """True if ``unshare(1)`` must ``--fork`` for these types (see :data:`FORKING`)."""
    return any(t.name in FORKING for t in types)


def ns_type(name: str) -> NsType:
    """Look a namespace type up by name (``uts``, ``mnt``/``mount``, ...)."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in NS_TYPES:
        raise InvalidInput(f"unknown namespace type {name!r}",
                           hint=f"choose from {','.join(NS_TYPES)}")
    return NS_TYPES[key]


def parse_types(spec: str | Iterable[str]) -> list[NsType]:
    """``"uts,ipc"`` -> [NsType(uts), NsType(ipc)], in join order, duplicates removed."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    wanted = {ns_type(n).name for n in names if n.strip()}
    if not wanted:
        raise InvalidInput("no namespace type given", hint=f"choose from {','.join(NS_TYPES)}")
    return [t for t in NS_TYPES.values() if t.name in wanted]


def flags_of(types: Iterable[NsType]) -> int:
    """The CLONE_NEW* flag word for some types."""
    flags = 0
    for t in types:
        flags |= t.flag
    return flags


def ns_path(pid: int | str, t: NsType | str) -> str:
    """``/proc/PID/ns/TYPE``."""
    t = ns_type(t) if isinstance(t, str) else t
    return f"/proc/{pid}/ns/{t.proc}"


def available(t: NsType | str) -> bool:
    """True if this kernel has namespaces of type ``t`` (``/proc/self/ns/TYPE`` exists):
    time namespaces need Linux 5.6+ with CONFIG_TIME_NS."""
    return os.path.exists(ns_path("self", t))


def ns_inode(pid: int | str, t: NsType | str) -> int:
    """The inode number identifying the namespace of type ``t`` that ``pid`` is in."""
    path = ns_path(pid, t)
    try:
        return os.stat(path).st_ino
    except OSError as exc:
        raise SyscallError.from_oserror(f"stat({path!r})", exc) from None


def ns_link(pid: int | str, t: NsType | str) -> str:
    """What ``readlink /proc/PID/ns/TYPE`` prints, e.g. ``uts:[4026531838]``."""
    path = ns_path(pid, t)
    try:
        return os.readlink(path)
    except OSError as exc:
        raise SyscallError.from_oserror(f"readlink({path!r})", exc) from None


#: ioctl(NS_GET_MNTNS_ID) = _IOR(0xb7, 5, __u64): the kernel's own id of a mount namespace
_NS_GET_MNTNS_ID = 0x8008B705


def mntns_id(pid: int | str) -> int | None:
    """The kernel's id of ``pid``'s mount namespace (``NS_GET_MNTNS_ID``), or ``None`` on a
    kernel without the ioctl (6.1 has none) or when ``pid`` is gone.

    The kernel refuses (EINVAL) to bind a mount-namespace file unless the namespace's id is
    greater than the binder's own (``mnt_ns_loop``). From 6.18 on, ids come from per-CPU
    batches, so a namespace made later on another CPU can have the smaller id.
    """
    import fcntl
    import struct
    try:
        fd = os.open(ns_path(pid, "mnt"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return struct.unpack("Q", fcntl.ioctl(fd, _NS_GET_MNTNS_ID, bytes(8)))[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def ns_ids(pid: int | str = "self") -> dict[str, int]:
    """All namespace inodes of a process, by type name."""
    return {name: ns_inode(pid, t) for name, t in NS_TYPES.items()}


def enter(path_or_pid: int | str, t: NsType | str) -> None:
    """setns() the calling process into a namespace given by pid (``123``, ``"self"``) or by a
    file path (``/run/netns/NAME``, anything with a '/')."""
    t = ns_type(t) if isinstance(t, str) else t
    is_path = isinstance(path_or_pid, str) and "/" in path_or_pid
    path = path_or_pid if is_path else ns_path(path_or_pid, t)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SyscallError.from_oserror(f"open({path!r})", exc) from None
    try:
        sc.setns(fd, t.flag)
    finally:
        os.close(fd)
