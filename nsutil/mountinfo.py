"""/proc/PID/mountinfo: the one parser, and the identity of a mount nsrecipes made.

Each line of mountinfo (proc(5)) is one mount::

    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2) (3)   (4)   (5)      (6)      (7)   (8)  (9)    (10)        (11)

mount ID, parent ID, major:minor, root (the part of the filesystem seen here), mount point,
mount options, optional fields (``shared:N`` peer group, ``master:N``, ``propagate_from:N``,
``unbindable``) ended by ``-``, filesystem type, source, super options. The kernel writes a
space, tab, newline and backslash in a path as an octal escape (``\\040``); every other byte,
non-ASCII ones too, stands as it is, so lines are read as bytes and decoded as the file
system's names are (``os.fsdecode``).

**Which mount is ours.** Mount IDs are reused once a mount is gone, so nsrecipes records a
mount it made by its ID *and* its parent's ID, its mount point and its root
(:func:`mount_record`), plus the 64-bit mount ID that ``statx(STATX_MNT_ID_UNIQUE)`` gives from
Linux 6.8 on, which is never reused. :func:`is_recorded` is true only while the mount that
``path`` shows is that very one: a mount somebody else made there, before or after, never is.
"""
from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass

from .errors import SyscallError

_ESCAPE = re.compile(rb"\\([0-7]{3})")
#: statx(2) mask bits and flags (linux/stat.h)
STATX_MNT_ID = 0x1000
STATX_MNT_ID_UNIQUE = 0x4000
AT_SYMLINK_NOFOLLOW = 0x100
AT_NO_AUTOMOUNT = 0x800
#: offsets in struct statx: stx_mask (u32) at 0, stx_mnt_id (u64) at 0x90
_STATX_SIZE, _STX_MNT_ID = 256, 0x90


def unescape(field: bytes | str) -> str:
    """A mountinfo path with its octal escapes decoded (``a\\040b`` -> ``a b``); the bytes
    are decoded as file names are, so ``/tmp/café`` stays ``/tmp/café``."""
    raw = field if isinstance(field, bytes) else os.fsencode(field)
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), raw))


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo, its paths unescaped."""

    mount_id: int
    parent_id: int
    dev: str                       #: major:minor
    root: str                      #: the part of the filesystem mounted here
    mount_point: str
    options: str                   #: per-mount options (rw, nosuid, ...)
    optional: tuple[str, ...]      #: shared:N, master:N, propagate_from:N, unbindable
    fstype: str
    source: str
    super_options: str

    @property
    def propagation(self) -> str:
        """``shared``, ``slave``, ``unbindable`` or ``private``, as findmnt's PROPAGATION
        names the main state (a shared mount that is also a slave says ``shared``)."""
        tags = {f.split(":")[0] for f in self.optional}
        for state in ("shared", "unbindable"):
            if state in tags:
                return state
        return "slave" if "master" in tags else "private"

    def tag(self, name: str) -> int | None:
        """The number of an optional field (``tag("shared")`` -> the peer group), or None."""
        for f in self.optional:
            key, _, value = f.partition(":")
            if key == name and value.isdigit():
                return int(value)
        return None


def parse_line(line: bytes | str) -> Mount:
    """One mountinfo line -> :class:`Mount`."""
    raw = line if isinstance(line, bytes) else os.fsencode(line)
    fields = raw.split()
    dash = fields.index(b"-", 6)
    rest = fields[dash + 1:] + [b""] * 3
    return Mount(int(fields[0]), int(fields[1]), fields[2].decode(), unescape(fields[3]),
                 unescape(fields[4]), fields[5].decode(),
                 tuple(f.decode() for f in fields[6:dash]), rest[0].decode(), unescape(rest[1]),
                 rest[2].decode())


def parse(text: bytes | str) -> list[Mount]:
    """A whole mountinfo text -> its mounts, in the kernel's order (parents first)."""
    raw = text if isinstance(text, bytes) else os.fsencode(text)
    return [parse_line(ln) for ln in raw.splitlines() if ln.strip()]


def read_raw(pid: int | str = "self") -> bytes:
    """The text of ``/proc/PID/mountinfo``, unparsed."""
    path = f"/proc/{pid}/mountinfo"
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise SyscallError.from_oserror(f"open({path!r})", exc) from None


def read(pid: int | str = "self") -> list[Mount]:
    """The mounts of ``/proc/PID/mountinfo`` (the mount namespace ``pid`` is in)."""
    return parse(read_raw(pid))


def escape(path: str) -> bytes:
    """``path`` as mountinfo writes it (space, tab, newline and backslash as octal)."""
    return re.sub(rb"[ \t\n\\]", lambda m: b"\\%03o" % m.group()[0], os.fsencode(path))


def mentions(path: str, pid: int | str = "self") -> bool:
    """False if no mount point (nor source or root) of ``pid``'s mount namespace has
    ``path`` in it: a quick test that spares parsing the whole table where nothing is
    mounted at or below ``path`` (True says only: parse it)."""
    return escape(path) in read_raw(pid)


def of_path(path: str) -> Mount | None:
    """The mount ``path`` (which exists) is on here, by its mount ID (:func:`mount_id_of`):
    one line of the table parsed. None if it cannot be told."""
    mid = mount_id_of(path)
    if mid is None:
        return None
    head = b"%d " % mid
    for line in read_raw().splitlines():
        if line.startswith(head):
            return parse_line(line)
    return None


def mount_id_of(path: str) -> int | None:
    """The ID of the mount that ``path`` resolves to here (``mnt_id`` in the fdinfo of an
    O_PATH descriptor), or None if ``path`` does not exist."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for ln in f:
                if ln.startswith("mnt_id:"):
                    return int(ln.split()[1])
    finally:
        os.close(fd)
    return None


def visible(path: str, mounts: list[Mount] | None = None) -> Mount | None:
    """The mount that ``path`` shows here, or None if it does not exist.

    Looking the mount point up in mountinfo is not enough: mountinfo still lists mounts that a
    later mount on a directory above covered (a tmpfs on /run hides a bind of /run/nsrecipes
    that stays listed), and several mounts can be stacked on one point."""
    mnt_id = mount_id_of(path)
    if mnt_id is None:
        return None
    return next((m for m in (mounts if mounts is not None else read()) if m.mount_id == mnt_id),
                None)


def covering(path: str, mounts: list[Mount] | None = None) -> Mount | None:
    """The topmost mount *on* ``path`` (the one whose mount point it is), None if ``path``
    is not a mount point here."""
    m = visible(path, mounts)
    return m if m is not None and m.mount_point == os.path.normpath(path) else None


def is_mountpoint(path: str) -> bool:
    """True if something is mounted on ``path`` here, and is what ``path`` shows."""
    return covering(path) is not None


def below(path: str, mounts: list[Mount] | None = None) -> list[str]:
    """Mount points strictly below ``path`` that ``path`` shows here: mounts on the visible
    mount of ``path`` and on those, not the hidden ones a later mount above covered."""
    table = mounts if mounts is not None else read()
    top = visible(path, table)
    if top is None:
        return []
    prefix = path.rstrip("/") + "/"
    seen, out, grew = {top.mount_id}, [], True
    while grew:
        grew = False
        for m in table:
            if m.parent_id in seen and m.mount_id not in seen:
                seen.add(m.mount_id)
                grew = True
                if m.mount_point.startswith(prefix):
                    out.append(m.mount_point)
    return out


# --- which mount is ours ----------------------------------------------------------------------

def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                               ctypes.c_void_p]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def unique_id(path: str) -> int | None:
    """``statx(path, STATX_MNT_ID_UNIQUE)``'s mount ID (Linux 6.8+: never reused while the
    system runs), or None where the kernel or libc has no such field."""
    if _LIBC is None:
        return None
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _LIBC.statx(-100, os.fsencode(path), AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT,
                   STATX_MNT_ID_UNIQUE, buf) != 0:
        return None
    mask = int.from_bytes(buf.raw[0:4], "little")
    if not mask & STATX_MNT_ID_UNIQUE:
        return None
    return int.from_bytes(buf.raw[_STX_MNT_ID:_STX_MNT_ID + 8], "little")


def mount_record(path: str) -> dict | None:
    """What identifies the topmost mount on ``path`` for later (``{"mount_id", "parent_id",
    "mount_point", "root", "unique_id"}``), None if ``path`` is not a mount point."""
    m = covering(path)
    if m is None:
        return None
    return {"mount_id": m.mount_id, "parent_id": m.parent_id, "mount_point": m.mount_point,
            "root": m.root, "unique_id": unique_id(path)}


def still_mounted(record: dict | None, mounts: list[Mount] | None = None) -> bool:
    """True if the mount ``record`` (from :func:`mount_record`) names is still in this mount
    namespace, on top or covered by later mounts: same mount ID, parent ID, mount point and
    root (a mount ID is reused only once its mount is gone, so these four tell it)."""
    if not isinstance(record, dict):
        return False
    return any([m.mount_id, m.parent_id, m.mount_point, m.root]
               == [record.get("mount_id"), record.get("parent_id"), record.get("mount_point"),
                   record.get("root")] for m in (mounts if mounts is not None else read()))


def is_recorded(path: str, record: dict | None) -> bool:
    """True if the topmost mount on ``path`` is the one ``record`` (from :func:`mount_record`)
    names: same mount ID, parent ID, mount point and root, and the same unique ID where the
    kernel gives one. A reused mount ID, or a mount another program put there, is not."""
    if not isinstance(record, dict):
        return False
    now = mount_record(path)
    if now is None:
        return False
    keys = ["mount_id", "parent_id", "mount_point", "root"]
    if now["unique_id"] is not None and record.get("unique_id") is not None:
        keys.append("unique_id")
    return all(now[k] == record.get(k) for k in keys)
