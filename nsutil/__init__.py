"""nsutil: the native layer of nsrecipes.

Syscalls (:mod:`~nsutil.syscalls`), namespace identity (:mod:`~nsutil.nstypes`), processes
in namespaces (:mod:`~nsutil.process`), uid/gid maps (:mod:`~nsutil.idmap`), capabilities
(:mod:`~nsutil.caps`), name checks (:mod:`~nsutil.names`), steps and backends
(:mod:`~nsutil.backend`), the shell backend (:mod:`~nsutil.shell`) and one error hierarchy
(:mod:`~nsutil.errors`). nsutil never imports ``recipes`` or ``invoke``.
"""
import os

from .errors import (CommandError, Conflict, InvalidInput, NotFound, NotRoot, NsrError,
                     SyscallError, ToolMissing)

__all__ = ["CommandError", "Conflict", "InvalidInput", "NotFound", "NotRoot", "NsrError",
           "SyscallError", "ToolMissing"]


#: where Debian and Ubuntu put ip, tc, sysctl and runc: on root's PATH, not on a user's
#: (/etc/profile gives users /usr/local/bin:/usr/bin:/bin). Without root, nsrecipes still runs
#: them -- inside a user namespace of the user's own -- so it looks there too, as ``su -l``
#: and sudo's ``secure_path`` would.
SYSTEM_BIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def add_system_bin_dirs() -> None:
    """Append to PATH the :data:`SYSTEM_BIN_DIRS` it lacks (after the user's own entries, so
    a tool the user put first still wins); the commands nsrecipes starts inherit it."""
    path = os.environ.get("PATH", os.defpath).split(os.pathsep)
    missing = [d for d in SYSTEM_BIN_DIRS if d not in path]
    if missing:
        os.environ["PATH"] = os.pathsep.join([p for p in path if p] + missing)


add_system_bin_dirs()
