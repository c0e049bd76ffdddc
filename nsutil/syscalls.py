"""The system calls behind every namespace recipe.

Two implementations of the same small interface:

* ``os``: Python 3.12+ ``os.unshare`` / ``os.setns`` (the standard library's own wrappers);
* ``ctypes``: libc through ctypes with exact ``argtypes`` and ``use_errno=True`` (Python 3.11).

``IMPL`` is the one in use: ``os`` where it exists, ``ctypes`` otherwise; the environment
variable ``NSR_SYSCALLS=ctypes|os`` forces one (the tests run both). Calls that the
standard library has no wrapper for (mount, umount2, pivot_root, setdomainname) always go
through ctypes. Every failure raises :class:`nsutil.errors.SyscallError` naming the call.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
from typing import Any, Callable

from .errors import InvalidInput, SyscallError

# --- clone(2) namespace flags (linux/sched.h) -------------------------------------------
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

FLAG_NAMES = {
    CLONE_NEWNS: "CLONE_NEWNS", CLONE_NEWCGROUP: "CLONE_NEWCGROUP", CLONE_NEWUTS: "CLONE_NEWUTS",
    CLONE_NEWIPC: "CLONE_NEWIPC", CLONE_NEWUSER: "CLONE_NEWUSER", CLONE_NEWPID: "CLONE_NEWPID",
    CLONE_NEWNET: "CLONE_NEWNET", CLONE_NEWTIME: "CLONE_NEWTIME",
}

# --- mount(2) flags (linux/mount.h) --------------------------------------------------------
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2

#: propagation name (as `mount --make-*` spells it) -> mount flag
PROPAGATION = {"shared": MS_SHARED, "slave": MS_SLAVE, "private": MS_PRIVATE,
               "unbindable": MS_UNBINDABLE}

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203,
                   "s390x": 217, "i686": 217, "armv7l": 218}


def flag_names(flags: int) -> str:
    """``CLONE_NEWUTS|CLONE_NEWPID`` for a flag word, as the document writes them."""
    names = [name for bit, name in FLAG_NAMES.items() if flags & bit]
    rest = flags & ~sum(FLAG_NAMES)
    if rest:  # bits we have no name for: show them rather than hide them
        names.append(hex(rest))
    return "|".join(names) or "0"


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_void_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    libc.syscall.restype = ctypes.c_long
    return libc


LIBC = _libc()


def _check(ret: int, call: str) -> None:
    if ret == -1:
        raise SyscallError(call, ctypes.get_errno())


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


class CtypesImpl:
    """unshare/setns through libc (works on every Python)."""

    name = "ctypes"

    @staticmethod
    def unshare(flags: int) -> None:
        _check(LIBC.unshare(flags), f"unshare({flag_names(flags)})")

    @staticmethod
    def setns(fd: int, nstype: int) -> None:
        _check(LIBC.setns(fd, nstype), f"setns({fd}, {flag_names(nstype)})")


class OsImpl:
    """unshare/setns through Python 3.12's ``os.unshare``/``os.setns``."""

    name = "os"

    @staticmethod
    def unshare(flags: int) -> None:
        try:
            os.unshare(flags)  # type: ignore[attr-defined]
        except OSError as exc:
            raise SyscallError.from_oserror(f"unshare({flag_names(flags)})", exc) from None

    @staticmethod
    def setns(fd: int, nstype: int) -> None:
        try:
            os.setns(fd, nstype)  # type: ignore[attr-defined]
        except OSError as exc:
            raise SyscallError.from_oserror(f"setns({fd}, {flag_names(nstype)})", exc) from None


def available_impls() -> dict[str, type]:
    """The implementations this interpreter can use, by name."""
    impls: dict[str, type] = {"ctypes": CtypesImpl}
    if hasattr(os, "unshare") and hasattr(os, "setns"):
        impls["os"] = OsImpl
    return impls


def _choose() -> type:
    impls = available_impls()
    wanted = os.environ.get("NSR_SYSCALLS", "")
    if wanted:
        if wanted not in impls:
            raise InvalidInput(f"NSR_SYSCALLS={wanted!r} is not available here",
                               hint=f"choose one of {', '.join(impls)}")
        return impls[wanted]
    return impls.get("os", CtypesImpl)


IMPL = _choose()


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (``unshare(2)``)."""
    IMPL.unshare(flags)


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that ``fd`` (an open /proc/PID/ns/* file) refers to (``setns(2)``)."""
    IMPL.setns(fd, nstype)


def sethostname(name: str) -> None:
    """Set the UTS hostname of the calling process's UTS namespace."""
    try:
        socket.sethostname(name)
    except OSError as exc:
        raise SyscallError.from_oserror(f"sethostname({name!r})", exc) from None


def setdomainname(name: str) -> None:
    """Set the NIS domain name of the calling process's UTS namespace."""
    raw = name.encode()
    _check(LIBC.setdomainname(raw, len(raw)), f"setdomainname({name!r})")


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    """``mount(2)``; with only propagation flags it changes a mount's propagation."""
    call = f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x}, {data!r})"
    _check(LIBC.mount(_b(source), _b(target), _b(fstype), flags,
                      ctypes.c_char_p(_b(data)) if data else None), call)


def umount(target: str, flags: int = 0) -> None:
    """``umount2(2)``; pass ``MNT_DETACH`` for a lazy unmount."""
    _check(LIBC.umount2(_b(target), flags), f"umount2({target!r}, {flags})")


def make_propagation(target: str, kind: str, recursive: bool = False) -> None:
    """``mount --make-[r]KIND TARGET``: change propagation (shared/slave/private/unbindable)."""
    flags = PROPAGATION[kind] | (MS_REC if recursive else 0)
    mount(None, target, None, flags)


def pivot_root(new_root: str, put_old: str) -> None:
    """``pivot_root(2)`` (glibc has no wrapper, so it goes through ``syscall``)."""
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise SyscallError(f"pivot_root({new_root!r}, {put_old!r})", 38,
                           hint=f"unknown syscall number on {os.uname().machine}")
    _check(LIBC.syscall(nr, _b(new_root), _b(put_old)), f"pivot_root({new_root!r}, {put_old!r})")


#: the clocks a time namespace offsets, as /proc/PID/timens_offsets names them
TIMENS_CLOCKS = ("monotonic", "boottime")


def set_timens_offsets(offsets: dict[str, int], pid: int | str = "self") -> None:
    """Write ``CLOCK SECONDS 0`` lines to /proc/PID/timens_offsets (time_namespaces(7)).

    Only possible after ``unshare(CLONE_NEWTIME)`` and before the first process enters the
    new namespace (then EACCES); needs CAP_SYS_TIME."""
    path = f"/proc/{pid}/timens_offsets"
    text = "".join(f"{clock} {int(secs)} 0\n" for clock, secs in offsets.items())
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        frozen = exc.errno == errno.EACCES
        hint = "the offsets are frozen once a process is in the namespace" if frozen else None
        raise SyscallError.from_oserror(f"write({path!r}, {text.strip()!r})", exc,
                                        hint) from None


def remove_if_present(path: str, remove: Callable[[str], Any] = os.unlink,
                      call: str | None = None) -> None:
    """Remove ``path`` with ``remove`` (``os.unlink``, ``os.rmdir``, ``shutil.rmtree``); a path
    that is already gone is fine (``rm -f``). Any other failure raises :class:`SyscallError`
    naming ``call`` (default ``"NAME('PATH')"`` from the function's name, e.g. ``unlink``)."""
    try:
        remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SyscallError.from_oserror(call or f"{remove.__name__}({path!r})", exc) from None
