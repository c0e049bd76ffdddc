"""nsutil: the native layer of nsrecipes.

Syscalls (:mod:`~nsutil.syscalls`), namespace identity (:mod:`~nsutil.nstypes`), processes
in namespaces (:mod:`~nsutil.process`), uid/gid maps (:mod:`~nsutil.idmap`), capabilities
(:mod:`~nsutil.caps`), name checks (:mod:`~nsutil.names`), steps and backends
(:mod:`~nsutil.backend`), the shell backend (:mod:`~nsutil.shell`) and one error hierarchy
(:mod:`~nsutil.errors`). nsutil never imports ``recipes`` or ``invoke``.
"""
from .errors import (CommandError, Conflict, InvalidInput, NotFound, NotRoot, NsrError,
                     SyscallError, ToolMissing)

__all__ = ["CommandError", "Conflict", "InvalidInput", "NotFound", "NotRoot", "NsrError",
           "SyscallError", "ToolMissing"]
