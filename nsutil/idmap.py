"""uid_map / gid_map: how a user namespace maps its ids to the parent's.

A line ``0 1000 1`` maps inside uid 0 to outside uid 1000, one id long. The rules
(user_namespaces(7)): each file may be written once; the writer must be in the parent user
namespace (or the namespace itself) with CAP_SETUID/CAP_SETGID there -- or map only its
own effective id; and an unprivileged writer must first write ``deny`` to
``/proc/PID/setgroups`` before it may write ``gid_map``.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from .errors import InvalidInput, SyscallError
from .limits import parse_number
from .names import check_id


#: lines a map may have (UID_GID_MAP_MAX_EXTENTS, Linux 4.15+; 5 before)
MAX_LINES = 340
#: inside+count and outside+count may not pass this (the ids are u32; 2^32-1 is "no id")
ID_LIMIT = (1 << 32) - 1


@dataclass(frozen=True)
class IdMap:
    """One line of a uid_map/gid_map: inside, outside, count."""

    inside: int
    outside: int
    count: int = 1

    def line(self) -> str:
        """The line as written to the map file."""
        return f"{self.inside} {self.outside} {self.count}"

    def spec(self) -> str:
        """The line as the options write it: ``inside:outside:count``."""
        return f"{self.inside}:{self.outside}:{self.count}"


def parse_map(spec: str, what: str = "id map") -> list[IdMap]:
    """``"0 1000 1"`` or ``"0:1000:1,1:100000:65536"`` -> [IdMap, ...], checked against the
    kernel's rules (:func:`check_maps`); ``what`` names the option in errors (``--uid-map``)."""
    maps = []
    for part in spec.replace(",", "\n").splitlines():
        fields = part.replace(":", " ").split()
        if not fields:
            continue
        if len(fields) != 3:
            raise InvalidInput(f"{what} {part.strip()!r} needs three numbers: inside outside count",
                               hint="e.g. 0:1000:1")
        inside, outside = (check_id(f, what=f"{what} id") for f in fields[:2])
        count = parse_number(fields[2], f"{what} count", minimum=0, maximum=ID_LIMIT,
                             example="65536")
        maps.append(IdMap(inside, outside, int(count)))
    if not maps:
        raise InvalidInput(f"empty {what}", hint="e.g. 0:1000:1")
    return check_maps(maps, what)


def check_maps(maps: list[IdMap], what: str = "id map") -> list[IdMap]:
    """Refuse, before anything is made, what the kernel would refuse when the map is written
    (``map_write`` in kernel/user_namespace.c), one line naming the rule: a count of 0, a
    range running past 2^32-1 inside or outside, two ranges sharing an id inside or outside,
    more than 340 lines, more than a page of text. Returns ``maps``."""
    if len(maps) > MAX_LINES:
        raise InvalidInput(f"{what} has {len(maps)} ranges; the kernel takes at most {MAX_LINES}",
                           hint="merge adjacent ranges into one (user_namespaces(7))")
    for m in maps:
        _check_range(m, what)
    for i, a in enumerate(maps):
        for b in maps[i + 1:]:
            _check_apart(a, b, what)
    size, limit = len(map_text(maps)), max_bytes()
    if size > limit:
        raise InvalidInput(f"{what} is {size} bytes as written; the kernel takes one write of at "
                           f"most {limit} (a page less one)", hint="use fewer or shorter ranges")
    return maps


def max_bytes() -> int:
    """The longest map text the kernel takes: one write of less than a page."""
    return os.sysconf("SC_PAGE_SIZE") - 1


def _check_range(m: IdMap, what: str) -> None:
    if m.count < 1:
        raise InvalidInput(f"{what} {m.spec()} has count {m.count}",
                           hint="count must be at least 1")
    for side, first in (("inside", m.inside), ("outside", m.outside)):
        if first + m.count > ID_LIMIT:
            raise InvalidInput(f"{what} {m.spec()} runs past {ID_LIMIT - 1} {side} "
                               f"({first}+{m.count} > 2^32-1)",
                               hint=f"{side}+count may be at most {ID_LIMIT} (2^32-1 is no id): "
                                    "lower the start or the count")


def _check_apart(a: IdMap, b: IdMap, what: str) -> None:
    for side, x, y in (("inside", a.inside, b.inside), ("outside", a.outside, b.outside)):
        low, high = max(x, y), min(x + a.count, y + b.count) - 1
        if low <= high:
            ids = f"id {low}" if low == high else f"ids {low}-{high}"
            raise InvalidInput(f"{what} ranges {a.spec()} and {b.spec()} overlap {side} ({ids})",
                               hint=f"each {side} id may be mapped once: make the {side} "
                                    "ranges disjoint")


def map_text(maps: list[IdMap]) -> str:
    """What is written to the map file: one line per range."""
    return "".join(m.line() + "\n" for m in maps)


#: why the kernel refuses a map write, by errno (the ranges are checked before: check_maps)
_WRITE_HINTS = {
    errno.EPERM: "each map can be written once, by a process with CAP_SETUID (CAP_SETGID) in "
                 "the parent namespace, or only for its own id",
    errno.EINVAL: "the kernel refused the ranges (user_namespaces(7)); is the map written "
                  "already?",
}


def _write(path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        raise SyscallError.from_oserror(f"open({path!r})", exc) from None
    try:
        os.write(fd, text.encode())
    except OSError as exc:
        raise SyscallError.from_oserror(f"write({path!r}, {text.strip()!r})", exc,
                                        hint=_WRITE_HINTS.get(exc.errno or 0)) from None
    finally:
        os.close(fd)


def deny_setgroups(pid: int | str) -> None:
    """Write ``deny`` to /proc/PID/setgroups (required before an unprivileged gid_map)."""
    _write(f"/proc/{pid}/setgroups", "deny")


def write_uid_map(pid: int | str, maps: list[IdMap]) -> None:
    """Write /proc/PID/uid_map (the document's set_uid_map, using ``pid`` as it should)."""
    _write(f"/proc/{pid}/uid_map", map_text(check_maps(maps, "uid map")))


def write_gid_map(pid: int | str, maps: list[IdMap]) -> None:
    """Write /proc/PID/gid_map; unprivileged writers get setgroups denied first."""
    if os.geteuid() != 0:
        deny_setgroups(pid)
    _write(f"/proc/{pid}/gid_map", map_text(check_maps(maps, "gid map")))


def read_map(pid: int | str, which: str = "uid") -> list[IdMap]:
    """Read /proc/PID/{uid,gid}_map."""
    with open(f"/proc/{pid}/{which}_map") as f:
        return [IdMap(*map(int, ln.split())) for ln in f if ln.strip()]
