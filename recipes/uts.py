"""UTS namespace (document section "UTS namespace"; flag CLONE_NEWUTS).

The document's test_uts.c clones a child with CLONE_NEWUTS, the child calls
sethostname("NewNamespace") and execs bash, whose prompt then shows the new name, while
the host's name stays what it was. Here: a holder keeps a new UTS namespace alive, one
step sets its hostname, another runs a command inside and shows what it sees.
"""
from __future__ import annotations

import socket
from typing import Callable, Sequence

from nsutil import process
from nsutil import syscalls as sc
from nsutil.backend import Runner, Step
from nsutil.names import check_hostname

from recipes.common.holder import enter_argv, join_types, run_inside, start_holder

SECTION = "UTS namespace"


def _set_name(run: Runner, holder: process.Holder, name: str, what: str, tool: str,
              setter: Callable[[str], None]) -> None:
    """Step: ``tool NAME`` inside the holder's UTS namespace (native: ``setter(NAME)`` there)."""
    check_hostname(name)
    run.run(Step(f"set the {what} inside to {name!r} ({setter.__name__})",
                 argv=enter_argv(holder, "uts", [tool, name]),
                 native=lambda: process.call_in(holder.pid, join_types(holder, "uts"),
                                                lambda: setter(name))))


def set_hostname(run: Runner, holder: process.Holder, name: str) -> None:
    """Step: set the hostname inside the holder's UTS namespace (``hostname NAME``)."""
    _set_name(run, holder, name, "hostname", "hostname", sc.sethostname)


def set_domainname(run: Runner, holder: process.Holder, name: str) -> None:
    """Step: set the NIS domain name inside the holder's UTS namespace."""
    _set_name(run, holder, name, "domain name", "domainname", sc.setdomainname)


def demo(run: Runner, hostname: str = "NewNamespace",
         command: Sequence[str] = ("hostname",)) -> dict:
    """The document's test_uts: a child in a new UTS namespace sets its hostname and runs
    ``command``; the host's hostname is unchanged. Returns what was observed."""
    check_hostname(hostname)
    run.heading(f"{SECTION} (CLONE_NEWUTS): hostname and domain name")
    before = socket.gethostname()
    run.say("程序开始： (program starts)")
    run.say(f"[root@{before}]# hostname\n{before}")
    holder = start_holder(run, "uts")
    set_hostname(run, holder, hostname)
    run.say("在子进程中！ (in the child, new UTS namespace)")
    done = run_inside(run, holder, "uts", list(command),
                      f"run {' '.join(command)!r} inside the new UTS namespace")
    run.say(f"[root@{hostname}]# {' '.join(command)}\n{done.stdout.rstrip()}")
    run.learner_shell(hint="hostname; uname -n; readlink /proc/$$/ns/uts; exit")
    if not run.wants_shell:  # (the learner typed it)
        run.say(f"[root@{hostname}]# exit\nexit")
    run.undo()
    after = socket.gethostname()
    run.say("已退出 (exited)")
    run.say(f"[root@{after}]# hostname\n{after}    <- the host's name is unchanged")
    return {"host_before": before, "inside": done.stdout.strip(), "host_after": after,
            "returncode": done.returncode}
