"""The new mount API (Linux 5.2+): ``fsopen``, ``fsconfig``, ``fsmount``, ``move_mount``.

``mount(2)`` takes a filesystem's options as one string of at most a page (4096 bytes).
The new API builds a mount in steps on a *filesystem context* file descriptor: one
``fsconfig`` call per option, then ``FSCONFIG_CMD_CREATE`` makes the superblock,
``fsmount`` a detached mount of it, and ``move_mount`` puts that where it belongs. Since
Linux 6.8 overlayfs takes its lower directories one ``fsconfig(fd, FSCONFIG_SET_STRING,
"lowerdir+", PATH)`` at a time, so a long list of layers no longer has to fit in a page.

Python has no wrappers; the calls go through ``syscall(NR, ...)``: the new calls (424 on)
have one number on every architecture but alpha. util-linux 2.38 (Debian 12) has no
command that appends lowers, so only the native backend mounts this way.

:func:`lowerdir_plus` probes whether this kernel's overlayfs takes ``lowerdir+``. Before
6.5 overlayfs had no context of its own: the kernel's *legacy* context accepts any key
(and fails only at ``FSCONFIG_CMD_CREATE``), so the probe checks that an unknown key is
refused too. When the kernel fails a step it leaves its reason on the context fd (``read``
it): errors here carry it.
"""
from __future__ import annotations

import ctypes
import errno
import os
from functools import lru_cache
from typing import Sequence

from .errors import SyscallError
from .syscalls import LIBC, CLONE_NEWNS, CLONE_NEWUSER

SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432

FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
#: how recipes name this way of passing lowers (``--explain`` shows it)
VIA = "fsconfig lowerdir+"

#: the raw ``syscall`` function (a test may stand in for a kernel without the calls)
_syscall = LIBC.syscall


def _log(fd: int) -> str:
    """The messages the kernel left on a filesystem context (``e overlay: ...`` lines)."""
    lines = []
    while True:
        try:
            line = os.read(fd, 1024)
        except OSError:
            break
        if not line:
            break
        lines.append(line.decode(errors="replace").strip())
    return "; ".join(lines)


def _fail(call: str, err: int, fd: int = -1) -> SyscallError:
    said = _log(fd) if fd >= 0 else ""
    return SyscallError(call, err, hint=f"the kernel says: {said}" if said else None)


def fsopen(fstype: str) -> int:
    """``fsopen(FSTYPE, FSOPEN_CLOEXEC)``: a new filesystem context; its fd."""
    fd = _syscall(ctypes.c_long(SYS_FSOPEN), ctypes.c_char_p(fstype.encode()),
                  ctypes.c_uint(FSOPEN_CLOEXEC))
    if fd < 0:
        raise _fail(f"fsopen({fstype!r})", ctypes.get_errno())
    return int(fd)


def _set(fd: int, key: str, value: str | None) -> int:
    """``fsconfig(fd, SET_STRING or SET_FLAG, key, value, 0)``; 0 or the errno."""
    cmd = FSCONFIG_SET_FLAG if value is None else FSCONFIG_SET_STRING
    ret = _syscall(ctypes.c_long(SYS_FSCONFIG), ctypes.c_int(fd), ctypes.c_uint(cmd),
                   ctypes.c_char_p(key.encode()),
                   ctypes.c_char_p(None if value is None else os.fsencode(value)),
                   ctypes.c_int(0))
    return ctypes.get_errno() if ret < 0 else 0


def fsconfig(fd: int, key: str, value: str | None = None) -> None:
    """``fsconfig(fd, FSCONFIG_SET_STRING, KEY, VALUE, 0)`` (a flag without ``value``)."""
    err = _set(fd, key, value)
    if err:
        raise _fail(f"fsconfig({key}={value!r})" if value is not None else f"fsconfig({key})",
                    err, fd)


def create_and_mount(fd: int, target: str) -> None:
    """``fsconfig(fd, FSCONFIG_CMD_CREATE)``, ``fsmount(fd)``, then ``move_mount`` of the
    new mount onto ``target``."""
    ret = _syscall(ctypes.c_long(SYS_FSCONFIG), ctypes.c_int(fd), ctypes.c_uint(FSCONFIG_CMD_CREATE),
                   ctypes.c_char_p(None), ctypes.c_char_p(None), ctypes.c_int(0))
    if ret < 0:
        raise _fail("fsconfig(FSCONFIG_CMD_CREATE)", ctypes.get_errno(), fd)
    mfd = _syscall(ctypes.c_long(SYS_FSMOUNT), ctypes.c_int(fd), ctypes.c_uint(FSMOUNT_CLOEXEC),
                   ctypes.c_uint(0))
    if mfd < 0:
        raise _fail("fsmount()", ctypes.get_errno(), fd)
    try:
        ret = _syscall(ctypes.c_long(SYS_MOVE_MOUNT), ctypes.c_int(mfd), ctypes.c_char_p(b""),
                       ctypes.c_int(AT_FDCWD), ctypes.c_char_p(os.fsencode(target)),
                       ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))
        if ret < 0:
            raise _fail(f"move_mount(fsmount fd, {target!r})", ctypes.get_errno())
    finally:
        os.close(mfd)


def mount_overlay(lowers: Sequence[str], upper: str, work: str, target: str,
                  userxattr: bool = False) -> None:
    """Mount an overlay on ``target`` with the lowers (top first) appended one by one
    (``lowerdir+``, Linux 6.8+): no page limit on their number or length."""
    fd = fsopen("overlay")
    try:
        fsconfig(fd, "source", "overlay")       # as mount(2)'s source, for mountinfo
        for lower in lowers:
            fsconfig(fd, "lowerdir+", lower)
        fsconfig(fd, "upperdir", upper)
        fsconfig(fd, "workdir", work)
        if userxattr:
            fsconfig(fd, "userxattr")
        create_and_mount(fd, target)
    finally:
        os.close(fd)


def _probe() -> bool | None:
    """True if overlayfs takes ``lowerdir+`` here; None if this process may not open a
    context (EPERM: no CAP_SYS_ADMIN over its mount namespace)."""
    fd = _syscall(ctypes.c_long(SYS_FSOPEN), ctypes.c_char_p(b"overlay"),
                  ctypes.c_uint(FSOPEN_CLOEXEC))
    if fd < 0:
        return None if ctypes.get_errno() == errno.EPERM else False
    try:
        # a legacy context (overlayfs before 6.5) takes any key: an unknown one must fail
        return _set(fd, "lowerdir+", "/") == 0 and _set(fd, "nsr-probe", "x") == errno.EINVAL
    finally:
        os.close(fd)


def _probe_in_userns() -> bool:
    """The probe in a child with a user and mount namespace of its own (without root, as
    the container's own namespaces will be)."""
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            from .syscalls import unshare
            unshare(CLONE_NEWUSER | CLONE_NEWNS)
            code = 0 if _probe() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


@lru_cache(maxsize=1)
def lowerdir_plus() -> bool:
    """True if this kernel's overlayfs appends lowers with ``fsconfig(..., "lowerdir+", ...)``
    (Linux 6.8+). Probed once: as root here, without root in a user namespace of its own."""
    found = _probe()
    if found is None:
        found = _probe_in_userns()
    return found
