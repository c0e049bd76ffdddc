"""One exception hierarchy for everything nsrecipes can fail at.

Every error renders as a single line: what failed (the syscall or the command line),
the errno name when there is one, and a hint that says what to do about it, e.g.::

    unshare(CLONE_NEWUTS): EPERM (hint: run as root)
"""
from __future__ import annotations

import errno as _errno
import os
import shlex
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:     # imported where a refusal is explained: it loads ctypes
    from . import layers

#: errno -> what a user should usually do about it.
HINTS: dict[int, str] = {
    _errno.EPERM: "run as root",
    _errno.EACCES: "permission denied: run as root or check the file's owner and mode",
    _errno.ENOSPC: "a namespace limit was reached: see /proc/sys/user/max_*_namespaces",
    _errno.EUSERS: "too many nested user namespaces (the kernel allows 32)",
    _errno.EBUSY: "still in use: stop the processes using it, then retry",
    _errno.ENOENT: "it does not exist (already removed?)",
    _errno.EEXIST: "it exists already: pick another name or remove it first",
    _errno.EINVAL: "the kernel rejected the arguments (is the feature enabled? see `invoke doctor`)",
    _errno.ENOSYS: "this kernel lacks the system call",
    _errno.ESRCH: "the process is gone",
    _errno.ENOTDIR: "a directory was expected",
    _errno.EBADF: "the file descriptor is not open (was the namespace file closed?)",
}


class NsrError(Exception):
    """Base of all nsrecipes errors. ``str(err)`` is one line with a hint."""

    #: process exit status the CLI uses for this kind of error
    exit_code: int = 1

    def __init__(self, what: str, *, errno_name: str | None = None, hint: str | None = None):
        self.what = what
        self.errno_name = errno_name
        self.hint = hint
        super().__init__(str(self))

    def __reduce__(self):
        # Errors cross process boundaries (a forked child reports them through a pipe).
        return (_rebuild, (type(self), dict(self.__dict__)))

    def __str__(self) -> str:
        text = self.what
        if self.errno_name:
            text += f": {self.errno_name}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


def _rebuild(cls: type, state: dict) -> "NsrError":
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    Exception.__init__(obj, str(obj))
    return obj


#: calls whose ENOSPC means a full filesystem (elsewhere, as from unshare, a namespace limit)
FILE_CALLS = ("open", "write", "mkdir", "rename", "replace", "mkstemp", "link", "symlink")
FULL_FILESYSTEM = "its filesystem is full (no space or no inode left): see df -h and df -i there"


def eperm_hint() -> str:
    """What to do about an EPERM. Unprivileged: "run as root" (and, on a host whose AppArmor
    restricts unprivileged user namespaces (Ubuntu 23.10+), say so). As root: the layer that
    refuses (:func:`nsutil.layers.diagnose`: a seccomp filter, a missing CAP_SYS_ADMIN, uid 0
    of a user namespace, an LSM) and its fix; "run as root" only where none is seen."""
    if os.geteuid() != 0:
        try:
            with open("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") as f:
                if f.read().strip() == "1":
                    return ("run as root: AppArmor restricts unprivileged user namespaces here "
                            "(kernel.apparmor_restrict_unprivileged_userns=1)")
        except OSError:
            pass
        return HINTS[_errno.EPERM]
    from . import layers    # ctypes and probes in a child: only to explain a refusal
    refusal = layers.diagnose()
    if refusal is not None:
        return f"{refusal}; {refusal.fix}"
    return layers.user_namespace_hint() or (
        "root is refused too: the namespace belongs to another user namespace (join that one "
        "first), or a security module forbids it")


class SyscallError(NsrError):
    """A system call failed; carries ``errno`` and the call as it was made."""

    def __init__(self, call: str, err: int, hint: str | None = None):
        self.errno = err
        self.call = call
        if hint is None and err == _errno.EPERM:
            hint = eperm_hint()
        if hint is None and err == _errno.ENOSPC and call.split("(", 1)[0] in FILE_CALLS:
            hint = FULL_FILESYSTEM   # not a namespace limit: the file's filesystem is full
        super().__init__(call, errno_name=_errno.errorcode.get(err, str(err)),
                         hint=hint or HINTS.get(err))

    @classmethod
    def from_oserror(cls, call: str, exc: OSError, hint: str | None = None) -> "SyscallError":
        """Wrap an ``OSError`` raised by ``os.*`` or a ctypes call."""
        return cls(call, exc.errno or 0, hint)


class CommandError(NsrError):
    """An external command exited non-zero; names the command and its first stderr line."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str = "", hint: str | None = None):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        first = next((ln.strip() for ln in stderr.splitlines() if ln.strip()), "")
        what = f"`{shlex.join(self.argv)}` exited {returncode}"
        if first:
            what += f": {first}"
        if hint is None:
            low = first.lower()
            if "permission denied" in low or "operation not permitted" in low:
                hint = eperm_hint()
            elif "file exists" in low:
                hint = HINTS[_errno.EEXIST]
            elif "no such file" in low or "cannot find device" in low:
                hint = HINTS[_errno.ENOENT]
        super().__init__(what, hint=hint)


class ToolMissing(NsrError):
    """The shell backend needs a program that is not installed."""

    exit_code = 127

    def __init__(self, tool: str, package: str):
        self.tool, self.package = tool, package
        super().__init__(f"`{tool}` is not installed",
                         hint=f"apt-get install {package}, or use --backend native")


class InvalidInput(NsrError, ValueError):
    """A value given by the user is malformed or out of range; nothing was created."""

    exit_code = 2


class NotRoot(NsrError):
    """The operation needs root (CAP_SYS_ADMIN in the initial user namespace)."""

    def __init__(self, what: str):
        super().__init__(f"{what} needs root", hint="run it with sudo, or as root")


class Conflict(NsrError):
    """Something with that name exists and was not made by nsrecipes, or differs."""


class NotFound(NsrError):
    """The named object (environment, namespace, link, ...) does not exist."""


class CommandNotFound(NotFound):
    """A command to run (inside namespaces, or in a container's rootfs) is on no PATH;
    exit status 127, as a shell's."""

    exit_code = 127


class Refused(NsrError):
    """Root, but a layer between this process and the kernel refuses namespaces: a seccomp
    filter, a missing CAP_SYS_ADMIN (a container that is not privileged), an LSM."""

    def __init__(self, what: str, refusal: "layers.Refusal"):
        self.layers = list(refusal.layers)
        super().__init__(f"{what}: namespaces are {refusal}", hint=refusal.fix)


def require_root(what: str) -> None:
    """Raise :class:`NotRoot` unless the effective uid is 0, and :class:`Refused` if a layer
    refuses this process the namespaces (tried in a child, see :func:`layers.diagnose`)
    before anything is made."""
    if os.geteuid() != 0:
        raise NotRoot(what)
    from . import layers    # ctypes and probes in a child: only where namespaces are needed
    refusal = layers.diagnose()
    if refusal is not None:
        raise Refused(what, refusal)
