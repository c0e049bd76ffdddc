"""uid_map / gid_map: how a user namespace maps its ids to the parent's.

A line ``0 1000 1`` maps inside uid 0 to outside uid 1000, one id long. The rules
(user_namespaces(7)): each file may be written once; the writer must be in the parent user
namespace (or the namespace itself) with CAP_SETUID/CAP_SETGID there -- or map only its
own effective id; and an unprivileged writer must first write ``deny`` to
``/proc/PID/setgroups`` before it may write ``gid_map``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import InvalidInput, SyscallError
from .names import check_id


@dataclass(frozen=True)
class IdMap:
    """One line of a uid_map/gid_map: inside, outside, count."""

    inside: int
    outside: int
    count: int = 1

    def line(self) -> str:
        """The line as written to the map file."""
        return f"{self.inside} {self.outside} {self.count}"


def parse_map(spec: str) -> list[IdMap]:
    """``"0 1000 1"`` or ``"0:1000:1,1:100000:65536"`` -> [IdMap, ...]."""
    maps = []
    for part in spec.replace(",", "\n").splitlines():
        fields = part.replace(":", " ").split()
        if not fields:
            continue
        if len(fields) != 3:
            raise InvalidInput(f"id map {part!r} needs three numbers: inside outside count",
                               hint="e.g. 0:1000:1")
        inside, outside, count = (check_id(f, what="id") for f in fields)
        if count == 0:
            raise InvalidInput(f"id map {part!r} has count 0", hint="count must be at least 1")
        maps.append(IdMap(inside, outside, count))
    if not maps:
        raise InvalidInput("empty id map", hint="e.g. 0:1000:1")
    return maps


def _write(path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        raise SyscallError.from_oserror(f"open({path!r})", exc) from None
    try:
        os.write(fd, text.encode())
    except OSError as exc:
        raise SyscallError.from_oserror(f"write({path!r}, {text.strip()!r})", exc,
                                        hint="each map can be written once, by a process with "
                                             "CAP_SETUID in the parent namespace or for its own id") from None
    finally:
        os.close(fd)


def deny_setgroups(pid: int | str) -> None:
    """Write ``deny`` to /proc/PID/setgroups (required before an unprivileged gid_map)."""
    _write(f"/proc/{pid}/setgroups", "deny")


def write_uid_map(pid: int | str, maps: list[IdMap]) -> None:
    """Write /proc/PID/uid_map (the document's set_uid_map, using ``pid`` as it should)."""
    _write(f"/proc/{pid}/uid_map", "".join(m.line() + "\n" for m in maps))


def write_gid_map(pid: int | str, maps: list[IdMap]) -> None:
    """Write /proc/PID/gid_map; unprivileged writers get setgroups denied first."""
    if os.geteuid() != 0:
        deny_setgroups(pid)
    _write(f"/proc/{pid}/gid_map", "".join(m.line() + "\n" for m in maps))


def read_map(pid: int | str, which: str = "uid") -> list[IdMap]:
    """Read /proc/PID/{uid,gid}_map."""
    with open(f"/proc/{pid}/{which}_map") as f:
        return [IdMap(*map(int, ln.split())) for ln in f if ln.strip()]
