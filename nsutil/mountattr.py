"""``mount_setattr(2)``: change the attributes of a whole mount tree at once (Linux 5.12+).

``mount -o remount,bind,ro`` changes one mount: the submounts of a recursive bind stay
writable. ``mount_setattr(AT_FDCWD, path, AT_RECURSIVE, {attr_set=MOUNT_ATTR_RDONLY})``
makes every mount of the tree read-only in one call (runc's ``rro``). Python has no
wrapper and glibc only since 2.36, so it goes through ``syscall(442, ...)``: new system
calls have the same number on every architecture but alpha. util-linux 2.38 (Debian 12)
has no command that does it, so the shell backend uses this call too.
"""
from __future__ import annotations

import ctypes
import errno
import os

from .errors import SyscallError
from .syscalls import LIBC

SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

#: the raw ``syscall`` function (a test may stand in for a kernel without the call)
_syscall = LIBC.syscall


class MountAttr(ctypes.Structure):
    """``struct mount_attr`` (linux/mount.h, MOUNT_ATTR_SIZE_VER0 = 32 bytes)."""

    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def missing_hint() -> str:
    """What to say where the kernel lacks the call."""
    return (f"read-only bind mounts that cover their submounts need mount_setattr(2), "
            f"Linux 5.12 or later; this kernel is {os.uname().release}")


def _error(call: str, err: int) -> SyscallError:
    return SyscallError(call, err, hint=missing_hint() if err == errno.ENOSYS else None)


def available() -> bool:
    """True if the kernel has ``mount_setattr`` (probed with a call it must refuse: size 0)."""
    ret = _syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(-1), ctypes.c_char_p(b""),
                   ctypes.c_uint(0), ctypes.c_void_p(None), ctypes.c_size_t(0))
    return not (ret == -1 and ctypes.get_errno() == errno.ENOSYS)


def require(what: str) -> None:
    """Raise (one line, naming ``what`` needs it) unless ``mount_setattr`` exists."""
    if not available():
        raise SyscallError(f"mount_setattr() for {what}", errno.ENOSYS, hint=missing_hint())


def set_readonly(path: str, recursive: bool = True) -> None:
    """Make the mount at ``path`` -- with ``recursive``, each mount below it too -- read-only."""
    attr = MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    flags = AT_RECURSIVE if recursive else 0
    call = f"mount_setattr({path!r}, {'AT_RECURSIVE' if recursive else '0'}, MOUNT_ATTR_RDONLY)"
    ret = _syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD),
                   ctypes.c_char_p(os.fsencode(path)), ctypes.c_uint(flags), ctypes.byref(attr),
                   ctypes.c_size_t(ctypes.sizeof(attr)))
    if ret == -1:
        raise _error(call, ctypes.get_errno())
