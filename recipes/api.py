"""The four ways to use the namespace API (document section "4种操作namespace API的方式").

1. ``clone()`` -- create a new process and, with the CLONE_NEW* flags, new namespaces for it.
   Shell: ``unshare --uts --ipc --fork -- CMD``; native: :func:`nsutil.process.spawn`
   (fork + unshare, Python cannot clone() onto a new stack safely).
2. the ``/proc/PID/ns`` files -- one symlink per namespace type, ``uts:[4026531838]``; the
   number is the namespace's inode, two processes are in the same namespace exactly when the
   numbers are equal. Opening such a file (or bind-mounting it onto a file) keeps the
   namespace alive after its last process exits.
3. ``setns()`` -- join an existing namespace, given by a file descriptor of such a file:
   ``nsenter -t PID --uts`` or ``nsenter --uts=FILE``; native: :func:`nsutil.nstypes.enter`,
   :func:`nsutil.process.call_in`.
4. ``unshare()`` -- move the *calling* process into new namespaces (the document notes Docker
   did not use it then). Shell: ``unshare --uts -- CMD`` (unshare(2), then exec CMD in the same
   process); native: :func:`nsutil.syscalls.unshare` in a forked child, so nsrecipes itself
   stays where it was.
"""
from __future__ import annotations

import os
import socket
import tempfile
from typing import Any

from nsutil import process, rootless
from nsutil import syscalls as sc
from nsutil.rootless import require_namespaces
from nsutil.backend import Placeholder, Runner, Step, derived
from nsutil.errors import SyscallError
from nsutil.names import check_hostname
from nsutil.nstypes import NS_TYPES, available, enter, flags_of, ns_link, parse_types

from recipes import uts
from recipes.common.holder import join_types, nsenter_argv, start_holder, stop_holder

SECTION = "4种操作namespace API的方式"
#: user, cgroup, ipc, uts, net, pid, mnt, time: all eight where the kernel has them (time:
#: Linux 5.6+; cgroup and time are beyond the document's six)
TYPES = [t for t in NS_TYPES if available(t)]
#: run inside a joined namespace (a constant: no user input goes into it)
NAME_AND_LINK = "hostname; readlink /proc/self/ns/uts"


def parse_links(text: str, types: list[str] = TYPES) -> dict[str, str]:
    """Lines of ``readlink /proc/PID/ns/T...`` -> {type: "type:[inode]"}."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return dict(zip(types, lines))


def inode_of(link: str) -> int:
    """``uts:[4026531838]`` -> 4026531838."""
    return int(link.rsplit("[", 1)[1].rstrip("]"))


def _links_placeholder() -> dict[str, str]:
    return {t: Placeholder(f"{t}:[$INODE]") for t in TYPES}


def _name_and_link() -> dict[str, str]:
    return {"hostname": socket.gethostname(), "link": ns_link("self", "uts")}


def _parse_name_and_link(text: str) -> dict[str, str]:
    name, link = (text.strip().splitlines() + ["", ""])[:2]
    return {"hostname": name.strip(), "link": link.strip()}


# --- 1. clone() --------------------------------------------------------------------------------

def clone_child(run: Runner, types: str = "uts,ipc") -> dict[str, str]:
    """Step: a new process in new namespaces of ``types``; returns its /proc/self/ns links."""
    ts = parse_types(types)
    flags = flags_of(ts)
    first = list(rootless.UNSHARE_OPTIONS) if run.rootless else []
    argv = ["unshare", *first, *[t.option for t in ts], "--fork", "--", "readlink",
            *[f"/proc/self/ns/{NS_TYPES[t].proc}" for t in TYPES]]
    return run.run(Step(f"clone(child_main, stack, {sc.flag_names(flags)}|SIGCHLD, NULL): "
                        "the child reads its /proc/self/ns links",
                        argv=argv,
                        native=lambda: process.spawn(lambda: {t: ns_link("self", t) for t in TYPES},
                                                     flags, userns_first=bool(run.rootless)),
                        parse=parse_links, placeholder=_links_placeholder()))


# --- 2. /proc/PID/ns ---------------------------------------------------------------------------

def read_links(run: Runner, pid: int | str, where: str) -> dict[str, str]:
    """Step: ``readlink /proc/PID/ns/*`` -- the namespaces ``pid`` is in."""
    return run.run(Step(f"read the /proc/{pid}/ns links of {where}",
                        argv=["readlink", *[derived(f"/proc/{pid}/ns/{NS_TYPES[t].proc}", pid)
                                             for t in TYPES]],
                        native=lambda: {t: ns_link(pid, t) for t in TYPES},
                        parse=parse_links, placeholder=_links_placeholder()))


def make_dir(run: Runner) -> str:
    """Step: make ``/tmp/nsr-api-XXXXXX`` for the bind-mounted namespace file; undo: remove it."""
    path = run.run(Step("make a directory for the namespace file",
                        argv=["mktemp", "-d", "/tmp/nsr-api-XXXXXX"],
                        native=lambda: tempfile.mkdtemp(prefix="nsr-api-", dir="/tmp"),
                        parse=str.strip, placeholder=Placeholder("$DIR")))
    run.defer(Step(f"remove {path}", argv=["rmdir", path], native=lambda: os.rmdir(path)))
    return path


def _touch(path: str) -> None:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o444))
    except OSError as exc:
        raise SyscallError.from_oserror(f"open({path!r}, O_CREAT)", exc) from None


def _rm(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        raise SyscallError.from_oserror(f"unlink({path!r})", exc) from None


def keep_namespace(run: Runner, pid: int | str, ns: str, target: str) -> None:
    """Step: bind-mount /proc/PID/ns/NS onto the file ``target`` (what ``ip netns add``
    does): the namespace now lives as long as that mount; undo: unmount it and remove the file."""
    src = derived(f"/proc/{pid}/ns/{NS_TYPES[ns].proc}", pid)
    run.run(Step(f"make the file {target}", argv=["touch", target], native=lambda: _touch(target),
                 undo=Step(f"remove {target}", argv=["rm", target], native=lambda: _rm(target))))
    run.run(Step(f"bind-mount {src} onto {target}: the namespace stays while this mount does",
                 argv=["mount", "--bind", src, target],
                 native=lambda: sc.mount(src, target, None, sc.MS_BIND),
                 undo=Step(f"unmount {target}: the last reference goes, so does the namespace",
                           argv=["umount", target], native=lambda: sc.umount(target))))


def file_inode(run: Runner, path: str) -> int:
    """Step: ``stat -c %i FILE`` -- for a bind-mounted namespace file, the namespace's inode."""
    def native() -> int:
        try:
            return os.stat(path).st_ino
        except OSError as exc:
            raise SyscallError.from_oserror(f"stat({path!r})", exc) from None
    return run.run(Step(f"the inode behind {path}", argv=["stat", "-c", "%i", path], native=native,
                        parse=lambda t: int(t.strip()), placeholder=Placeholder("$INODE")))


# --- 3. setns() --------------------------------------------------------------------------------

def join_by_pid(run: Runner, holder: process.Holder) -> dict[str, str]:
    """Step: setns() into the UTS namespace of ``holder`` (its user namespace first, when it
    has one) and report hostname and link there."""
    pid, types = holder.pid, join_types(holder, "uts")
    return run.run(Step(f"setns(open('/proc/{pid}/ns/uts'), CLONE_NEWUTS): join it, "
                        "then hostname; readlink /proc/self/ns/uts",
                        argv=nsenter_argv(pid, types, ["sh", "-c", NAME_AND_LINK]),
                        native=lambda: process.call_in(pid, types, _name_and_link),
                        parse=_parse_name_and_link,
                        placeholder={"hostname": Placeholder("$NAME"), "link": Placeholder("$LINK")}))


def join_by_file(run: Runner, path: str) -> dict[str, str]:
    """Step: setns() into the UTS namespace a file refers to (``nsenter --uts=FILE``)."""
    def native() -> dict[str, str]:
        def inside() -> dict[str, str]:
            enter(path, "uts")
            return _name_and_link()
        return process.fork_call(inside, f"nsenter --uts={path}")
    return run.run(Step(f"setns(open({path!r}), CLONE_NEWUTS): join the namespace the file "
                        "keeps, then hostname; readlink /proc/self/ns/uts",
                        argv=["nsenter", derived(f"--uts={path}", path), "--", "sh", "-c", NAME_AND_LINK],
                        native=native, parse=_parse_name_and_link,
                        placeholder={"hostname": Placeholder("$NAME"), "link": Placeholder("$LINK")}))


# --- 4. unshare() ------------------------------------------------------------------------------

def unshare_self(run: Runner) -> str:
    """Step: the calling process unshares its UTS namespace; returns its new uts link.

    Shell: ``unshare --uts -- readlink /proc/self/ns/uts`` (unshare(2) in the unshare
    process, which then execs readlink: same process). Native: a forked child of nsrecipes.
    """
    def native() -> str:
        def child() -> str:
            if run.rootless:
                rootless.become_root_in_userns()
            sc.unshare(sc.CLONE_NEWUTS)
            return ns_link("self", "uts")
        return process.fork_call(child, "unshare(CLONE_NEWUTS)")
    first = list(rootless.UNSHARE_OPTIONS) if run.rootless else []
    return run.run(Step("unshare(CLONE_NEWUTS) in the calling process, then readlink "
                        "/proc/self/ns/uts", argv=["unshare", *first, "--uts", "--", "readlink",
                                                   "/proc/self/ns/uts"],
                        native=native, parse=str.strip, placeholder=Placeholder("uts:[$INODE]")))


# --- the demo ----------------------------------------------------------------------------------

#: what part 2 does as root that a user cannot (said in one line without root)
KEEP_LEFT_OUT = ("keeping the namespace alive by bind-mounting /proc/PID/ns/uts onto a file, and "
                 "setns() by that file (a user cannot mount in the host's mount namespace)")


def _compare(a: dict[str, str], b: dict[str, str]) -> tuple[list[str], list[str]]:
    same = [t for t in TYPES if a.get(t) == b.get(t)]
    return same, [t for t in TYPES if t not in same]


def _table(run: Runner, host: dict[str, str], other: dict[str, str], label: str) -> None:
    run.say(f"  {'type':<7} {'host (nsrecipes)':<22} {label:<22}")
    for t in TYPES:
        mark = "same namespace" if host[t] == other[t] else "NEW namespace"
        if not NS_TYPES[t].in_document:
            mark += f"  (Linux {NS_TYPES[t].since}+, beyond the document)"
        run.say(f"  {t:<7} {host[t]:<22} {other[t]:<22} {mark}")


def demo(run: Runner, hostname: str = "NewNamespace") -> dict:
    """The document's four ways to operate on namespaces. Returns what was observed:
    ``host`` links; ``clone`` (``links``, ``new``, ``same``); ``proc_ns`` (the holder's
    ``links``, ``same``, ``different``); ``setns`` (``by_pid``, ``holder_alive``,
    ``kept_inode``, ``by_file``); ``unshare`` (``after``, ``tool_after``)."""
    if not run.explain:
        require_namespaces("api-demo")
    check_hostname(hostname)
    run.heading(f"{SECTION} -- four ways to use the namespace API")
    me = os.getpid()
    host = {t: ns_link("self", t) for t in TYPES}
    result: dict[str, Any] = {"host": host}

    run.say("\n-- 1. clone(): a new process, created in new namespaces --\n"
            "int clone(int (*child_func)(void *), void *child_stack, int flags, void *args);")
    child = clone_child(run, "uts,ipc")
    same, new = _compare(host, child)
    if not run.explain:
        _table(run, host, child, "the clone()d child")
    result["clone"] = {"flags": sc.flag_names(sc.CLONE_NEWUTS | sc.CLONE_NEWIPC),
                       "links": child, "new": new, "same": same}

    run.say("\n-- 2. /proc/[pid]/ns: one link per namespace; same number = same namespace --")
    holder = start_holder(run, "uts")
    uts.set_hostname(run, holder, hostname)
    links = read_links(run, holder.pid, f"the holder (pid {holder.pid})")
    same, different = _compare(host, links)
    if not run.explain:
        run.say(f"$ readlink /proc/{me}/ns/* /proc/{holder.pid}/ns/*")
        _table(run, host, links, f"pid {holder.pid}")
    result["proc_ns"] = {"holder_pid": holder.pid, "links": links, "same": same,
                         "different": different}
    if run.rootless:
        run.say(f"left out without root: {KEEP_LEFT_OUT}")
    else:
        where = make_dir(run)
        target = derived(f"{where}/uts", where)
        keep_namespace(run, holder.pid, "uts", target)
        run.say(f"bind-mounted /proc/{holder.pid}/ns/uts onto {target}: it keeps the namespace "
                "open even without a process (see 3.)")

    run.say("\n-- 3. setns(): join an existing namespace --\nint setns(int fd, int nstype);")
    by_pid = join_by_pid(run, holder)
    joined = " ".join(map(str, nsenter_argv(holder.pid, join_types(holder, "uts"), [])))
    run.say(f"$ {joined} sh -c '{NAME_AND_LINK}'\n"
            f"{by_pid['hostname']}\n{by_pid['link']}")
    stop_holder(run, holder)
    if run.rootless:
        result["setns"] = {"by_pid": by_pid, "left_out": KEEP_LEFT_OUT}
        return _unshare_part(run, host, result)
    alive = holder.alive() if not run.explain else False
    kept = file_inode(run, target)
    by_file = join_by_file(run, target)
    if not run.explain:
        run.say(f"the holder exited (alive: {alive}); {target} still refers to inode {kept}")
        run.say(f"$ nsenter --uts={target} -- sh -c '{NAME_AND_LINK}'\n"
                f"{by_file['hostname']}\n{by_file['link']}    <- the same namespace, kept alive "
                "by the bind mount")
    result["setns"] = {"by_pid": by_pid, "holder_alive": alive, "kept_inode": kept,
                       "by_file": by_file}
    return _unshare_part(run, host, result)


def _unshare_part(run: Runner, host: dict[str, str], result: dict[str, Any]) -> dict:
    """Part 4 of :func:`demo` (unshare), then everything undone; returns ``result``."""
    run.say("\n-- 4. unshare(): the calling process moves into new namespaces --\n"
            "int unshare(int flags);    (目前docker还未使用此调用: Docker did not use it then)")
    after = unshare_self(run)
    tool_after = ns_link("self", "uts")
    if not run.explain:
        run.say(f"$ readlink /proc/self/ns/uts\n{host['uts']}")
        first = "--user --map-root-user " if run.rootless else ""
        run.say(f"$ unshare {first}--uts -- readlink /proc/self/ns/uts\n{after}    "
                "<- a new UTS namespace")
        run.say(f"nsrecipes itself is still in {tool_after} (the unshare ran in a child)")
    result["unshare"] = {"after": after, "tool_after": tool_after}
    run.undo()
    return result
