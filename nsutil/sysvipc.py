"""System V message queues: the native forms of ``ipcmk -Q``, ``ipcs -q`` and ``ipcrm -q``.

The kernel lists the queues of the reader's IPC namespace in /proc/sysvipc/msg, so reading
that file inside a namespace shows exactly what ``ipcs -q`` would show there.
"""
from __future__ import annotations

import ctypes
import pwd
import secrets

from .errors import SyscallError
from .syscalls import LIBC

IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_RMID = 0

LIBC.msgget.argtypes = [ctypes.c_int, ctypes.c_int]
LIBC.msgctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]


def make_queue(mode: int = 0o644) -> int:
    """Create a message queue with a random key (as ``ipcmk -Q`` does); return its id."""
    key = ctypes.c_int32(secrets.randbits(32) or 1).value
    qid = LIBC.msgget(key, IPC_CREAT | IPC_EXCL | mode)
    if qid == -1:
        raise SyscallError(f"msgget({key:#x}, IPC_CREAT|IPC_EXCL|{mode:o})", ctypes.get_errno())
    return qid


def remove_queue(qid: int) -> None:
    """Remove a message queue (``ipcrm -q ID``)."""
    if LIBC.msgctl(qid, IPC_RMID, None) == -1:
        raise SyscallError(f"msgctl({qid}, IPC_RMID)", ctypes.get_errno())


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def list_queues() -> list[dict]:
    """The queues of the caller's IPC namespace, with the columns ``ipcs -q`` prints."""
    queues = []
    with open("/proc/sysvipc/msg") as f:
        header = f.readline().split()
        for line in f:
            row = dict(zip(header, line.split()))
            if not row:
                continue
            queues.append({"key": f"0x{int(row['key']) & 0xFFFFFFFF:08x}", "msqid": int(row["msqid"]),
                           "owner": _owner(int(row["uid"])), "perms": f"{int(row['perms'], 8) & 0o777:o}",
                           "used-bytes": int(row["cbytes"]), "messages": int(row["qnum"])})
    return queues


def parse_ipcs_q(text: str) -> list[dict]:
    """Parse ``ipcs -q`` output into the same rows :func:`list_queues` returns."""
    queues = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[0].startswith("0x"):
            queues.append({"key": fields[0], "msqid": int(fields[1]), "owner": fields[2],
                           "perms": fields[3], "used-bytes": int(fields[4]), "messages": int(fields[5])})
    return queues


def format_ipcs_q(queues: list[dict]) -> str:
    """Render rows like ``ipcs -q`` does (what the document shows)."""
    lines = ["", "------ Message Queues --------",
             f"{'key':<11}{'msqid':<11}{'owner':<11}{'perms':<11}{'used-bytes':<13}{'messages':<12}"]
    for q in queues:
        lines.append(f"{q['key']:<11}{q['msqid']:<11}{q['owner']:<11}{q['perms']:<11}"
                     f"{q['used-bytes']:<13}{q['messages']:<12}")
    return "\n".join(lines)


def queue_ids() -> set[int]:
    """Ids of the queues visible here (cheap check used by tests)."""
    return {q["msqid"] for q in list_queues()}

