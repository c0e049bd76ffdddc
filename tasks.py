"""nsrecipes command line: `invoke --list` shows every task, `invoke TASK --help` its options.

This file is thin on purpose: it parses options, calls a recipe and prints. Every error
nsrecipes raises becomes one line on stderr with a hint and a non-zero exit status.
"""
from __future__ import annotations

import functools
import inspect
import os
import sys
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
            except BrokenPipeError:  # `invoke tour | head`: stop quietly, like coreutils
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise Exit(code=141) from None
            except KeyboardInterrupt:
                raise Exit("nsrecipes: interrupted; what this run made has been undone",
                           code=130) from None

        kwargs.setdefault("auto_shortflags", False)  # no -h clash with --help
        return task(body, help=merged, **kwargs)
    return decorate


def _runner(backend: str | None, explain: bool, keep: bool = False):
    from nsutil.backend import Runner
    return Runner(backend=backend, explain=explain, keep=keep)


# ==== core demos (issue 2) ==================================================================

@nsr_task(help={"hostname": "the hostname to set inside the new UTS namespace (default NewNamespace)",
                "command": "command to run inside, as one string split on spaces (default: hostname)"})
def uts_demo(c, hostname="NewNamespace", command="hostname", backend=None, explain=False):
    """UTS namespace: a child in a new UTS namespace sets its hostname; the host's is unchanged."""
    from recipes import uts
    from nsutil.errors import require_root
    if not explain:
        require_root("uts-demo")
    with _runner(backend, explain) as run:
        uts.demo(run, hostname=hostname, command=command.split())


@nsr_task()
def ipc_demo(c, backend=None, explain=False):
    """IPC namespace: a host message queue (ipcmk -Q) is invisible in a new IPC namespace."""
    from recipes import ipc
    from nsutil.errors import require_root
    if not explain:
        require_root("ipc-demo")
    with _runner(backend, explain) as run:
        ipc.demo(run)


@nsr_task(help={"uid": "outside uid that uid 0 inside maps to (default 1000 as root, "
                       "your own uid otherwise)",
                "gid": "outside gid that gid 0 inside maps to (default: same as the uid)"})
def user_demo(c, uid=None, gid=None, backend=None, explain=False):
    """User namespace: uid 0 inside maps to an outside uid; root inside, powerless outside.

    Works as root and as an unprivileged user.
    """
    from recipes import user
    with _runner(backend, explain) as run:
        user.demo(run, uid=uid, gid=gid)


# ==== network (issue 3) =====================================================================

# ==== environments (issue 4) ================================================================

# ==== cgroups, copy-on-write, container (issue 5) ===========================================

# ==== tour, doctor, cleanup ================================================================

@nsr_task()
def tour(c, backend=None, explain=False):
    """All demos in the document's order, with headings: the main job. Needs root."""
    from recipes import tour as t
    from nsutil.errors import require_root
    if not explain:
        require_root("tour")
    t.tour(backend=backend, explain=explain)


@nsr_task(help={"dry_run": "only list what would be removed"})
def cleanup(c, dry_run=False):
    """Remove every nsrecipes leftover (netns, links, /etc/netns entries, environments,
    cgroups, mounts, overlay dirs) -- and nothing else -- and report what was removed."""
    from recipes import cleanup as cl
    from nsutil.errors import require_root
    require_root("cleanup")
    removed, failed = cl.remove_all(dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for item in removed:
        print(f"{verb} {item.kind} {item.name}")
    for item, exc in failed:
        print(f"FAILED {item.kind} {item.name}: {exc}")
    print(f"{len(removed)} {'to remove' if dry_run else 'removed'}, {len(failed)} failed"
          if removed or failed else "nothing to clean up")
    if failed:
        raise Exit(f"nsrecipes: cleanup: {len(failed)} could not be removed (hint: see above)",
                   code=1)

@nsr_task()
def doctor(c):
    """Check the kernel and host: namespaces, user-ns limits, cgroups, overlayfs, tools, root.

    Prints an ok/missing table with hints; exits non-zero if something the demos need is missing.
    """
    from recipes import doctor as doc
    checks = doc.run_checks()
    print(doc.format_table(checks))
    missing = [ch.name for ch in checks if ch.required and not ch.ok]
    if missing:
        raise Exit(f"nsrecipes: doctor: missing {', '.join(missing)} (hint: see the table above)",
                   code=1)
