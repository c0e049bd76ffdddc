"""IPC namespace (document section "IPC namespace"; flag CLONE_NEWIPC).

The document makes a message queue on the host with ``ipcmk -Q``, sees it in ``ipcs -q``,
then runs its UTS program with CLONE_NEWIPC added: inside, ``ipcs -q`` lists nothing; after
``exit`` the host still has its queue. Semaphores, message queues and shared memory are all
per IPC namespace.
"""
from __future__ import annotations

import re
import socket

from nsutil import process, sysvipc
from nsutil.backend import Placeholder, Runner, Step
from nsutil.rootless import require_namespaces

from recipes import uts
from recipes.common.holder import enter_argv, join_types, start_holder, stop_holder

SECTION = "IPC namespace"


def make_queue(run: Runner) -> int:
    """Step: create a message queue in the caller's IPC namespace (``ipcmk -Q``); undo: remove it."""
    def parse(text: str) -> int:
        return int(re.search(r"id:\s*(\d+)", text).group(1))  # "Message queue id: 0"
    qid = run.run(Step("make a message queue", argv=["ipcmk", "-Q"], native=sysvipc.make_queue,
                       parse=parse, placeholder=Placeholder("$QID")))
    run.defer(Step(f"remove message queue {qid}", argv=["ipcrm", "-q", qid],
                   native=lambda: sysvipc.remove_queue(qid)))
    return qid


def make_queue_inside(run: Runner, holder: process.Holder) -> int:
    """Step: create a message queue inside the holder's IPC namespace (dies with it)."""
    def parse(text: str) -> int:
        return int(re.search(r"id:\s*(\d+)", text).group(1))
    return run.run(Step("make a message queue inside",
                        argv=enter_argv(holder, "ipc", ["ipcmk", "-Q"]),
                        native=lambda: process.call_in(holder.pid, join_types(holder, "ipc"),
                                                       sysvipc.make_queue),
                        parse=parse, placeholder=Placeholder("$QID")))


def list_queues(run: Runner, holder: process.Holder | None = None, where: str = "on the host") -> list[dict]:
    """Step: list the message queues (``ipcs -q``) on the host or inside ``holder``."""
    if holder is None:
        argv: list = ["ipcs", "-q"]
        native = sysvipc.list_queues
    else:
        argv = enter_argv(holder, "ipc", ["ipcs", "-q"])
        native = lambda: process.call_in(holder.pid, join_types(holder, "ipc"),  # noqa: E731
                                         sysvipc.list_queues)
    return run.run(Step(f"list message queues {where}", argv=argv, native=native,
                        parse=sysvipc.parse_ipcs_q, placeholder=[]))


def demo(run: Runner, hostname: str = "NewNamespace") -> dict:
    """The document's IPC demo: a queue made on the host is invisible in a new IPC
    namespace and still there after the child exits. Returns what was observed."""
    if not run.explain:
        require_namespaces("ipc-demo")
    run.heading(f"{SECTION} (CLONE_NEWIPC): semaphores, message queues, shared memory")
    host = socket.gethostname()
    run.say("1. 先创建一消息队列 (make a message queue on the host)")
    qid = make_queue(run)
    run.say(f"[root@{host}]# ipcmk -Q\nMessage queue id: {qid}")
    host_before = list_queues(run)
    run.say(f"[root@{host}]# ipcs -q" + sysvipc.format_ipcs_q(host_before))
    run.say("\n2. 执行 (run the UTS program with CLONE_NEWIPC added)\n程序开始：")
    holder = start_holder(run, "uts,ipc")
    uts.set_hostname(run, holder, hostname)
    run.say("在子进程中！")
    inside = list_queues(run, holder, "inside the new IPC namespace")
    run.say(f"[root@{hostname}]# ipcs -q" + sysvipc.format_ipcs_q(inside))
    run.learner_shell(hint="ipcs -q (empty here); ipcmk -Q (a queue only this namespace "
                           "sees); exit")
    if not run.wants_shell:  # (the learner typed it)
        run.say(f"\n[root@{hostname}]# exit\nexit")
    stop_holder(run, holder)
    run.say("已退出")
    host_after = list_queues(run)
    run.say(f"[root@{host}]# ipcs -q" + sysvipc.format_ipcs_q(host_after))
    run.say("\n可以看出在新namespace中看不到之前创建的消息队列，退出后能看到，隔离效果很明显。\n"
            "(the queue is invisible in the new namespace and visible again after exit)")
    return {"qid": qid, "host_before": host_before, "inside": inside, "host_after": host_after}
