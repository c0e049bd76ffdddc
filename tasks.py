"""nsrecipes command line: `invoke --list` shows every task, `invoke TASK --help` its options.

This file is thin on purpose: it parses options, calls a recipe and prints. Every error
nsrecipes raises becomes one line on stderr with a hint and a non-zero exit status.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from invoke import Exit, task

from nsutil.errors import NsrError

COMMON_HELP = {
    "backend": "auto | shell | native: run steps with util-linux/iproute2 commands or with "
               "syscalls/netlink (default: $NSR_BACKEND, else auto = shell where installed)",
    "explain": "print the steps with the document section and the equivalent shell "
               "commands, and change nothing",
}


def nsr_task(help: dict[str, str] | None = None, **kwargs: Any) -> Callable:
    """@task, plus: the common option help, and NsrError -> one line and a non-zero exit."""
    def decorate(fn: Callable) -> Any:
        params = inspect.signature(fn).parameters
        merged = {k: v for k, v in COMMON_HELP.items() if k in params}
        merged.update(help or {})

        @functools.wraps(fn)
        def body(c, *args: Any, **kw: Any) -> Any:
            try:
                return fn(c, *args, **kw)
            except NsrError as exc:
                raise Exit(f"nsrecipes: {exc}", code=exc.exit_code) from None
            except KeyboardInterrupt:
                raise Exit("nsrecipes: interrupted; what this run made has been undone",
                           code=130) from None

        return task(body, help=merged, **kwargs)
    return decorate


def _runner(backend: str | None, explain: bool, keep: bool = False):
    from nsutil.backend import Runner
    return Runner(backend=backend or "auto", explain=explain, keep=keep)


# ==== core demos (issue 2) ==================================================================

# ==== network (issue 3) =====================================================================

# ==== environments (issue 4) ================================================================

# ==== cgroups, copy-on-write, container (issue 5) ===========================================

# ==== tour, doctor, cleanup ================================================================
