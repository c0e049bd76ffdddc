"""PID namespace (document section "PID namespace"; flag CLONE_NEWPID).

The document adds CLONE_NEWPID to its UTS program: on the host ``echo $$`` prints 1254, in
the child ``echo $$`` prints 1 -- the first process of a new PID namespace is its PID 1. It
notes that ``ps`` inside still shows the parent namespace's processes until /proc is mounted
again, and that PID namespaces form a tree: a parent sees (and can signal) the processes of
its children, a child sees nothing of its parent.

Here, each of those as a step:

* a one-shot child in a new PID namespace without its own /proc: ``echo $$`` is 1, but ``ps``
  still reads the host's /proc and lists every host process;
* the same with a new mount namespace and /proc mounted there (``unshare --mount-proc``):
  ``echo $$`` is 1 and ``ps`` lists only the child's own processes;
* a holder in new PID+mount namespaces: the host sees it under its real PID, and its
  ``NSpid`` line in /proc/PID/status lists its PID at every level (``H 1``);
* a nested PID namespace inside that one: ``NSpid`` has three levels, the middle namespace's
  ``ps`` lists the grandchild's processes, the grandchild's ``ps`` lists only its own.
"""
from __future__ import annotations

import os
import socket
import struct

from nsutil import process
from nsutil import procfs
from nsutil import syscalls as sc
from nsutil import rootless
from nsutil.rootless import require_namespaces
from nsutil.backend import Placeholder, Runner, Step, derived
from nsutil.errors import CommandError, NsrError, SyscallError
from nsutil.nstypes import ns_inode, parse_types

from nsutil.lesson import Inside

from recipes import uts
from recipes.common.holder import (join_types, nsenter_argv, read_back, spawn_background, start_holder, stop_holder,
                     unshare_argv)

SECTION = "PID namespace"
PIDMNT = "pid,mnt"
#: what the one-shot child runs (constant; no user input ever goes into it)
ECHO_PS = 'hostname NewNamespace; hostname; echo $$; ps -e -o pid=,comm='
#: the same without its own /proc: ps is exec'd, so it is PID 1 too. procps looks itself up
#: as /proc/<its getpid()>, a PID of the new namespace read in the parent namespace's /proc:
#: a low PID there is some other process or none ("fatal library error, lookup self" in a
#: container, whose /proc holds few PIDs), and PID 1 is in every /proc.
ECHO_EXEC_PS = 'hostname NewNamespace; hostname; echo $$; exec ps -e -o pid=,comm='


# --- observing ---------------------------------------------------------------------------------

def list_processes(proc: str = "/proc") -> list[tuple[int, str]]:
    """The native ``ps -e -o pid=,comm=``: (pid, comm) of every process in ``proc``
    (the caller is named ``nsr-ps`` and, like ps, lists itself)."""
    process.set_comm("nsr-ps")
    found = []
    for name in os.listdir(proc):
        if name.isdigit():
            try:
                with open(f"{proc}/{name}/comm") as f:
                    found.append((int(name), f.read().strip()))
            except OSError:
                continue  # exited meanwhile
    return sorted(found)


def parse_ps(text: str) -> list[tuple[int, str]]:
    """Lines of ``ps -o pid=,comm=`` -> sorted [(pid, comm)]."""
    out = []
    for line in text.splitlines():
        fields = line.split(None, 1)
        if fields and fields[0].isdigit():
            out.append((int(fields[0]), fields[1].strip() if len(fields) > 1 else ""))
    return sorted(out)


def parse_echo_ps(text: str) -> dict:
    """Output of :data:`ECHO_PS` (or :data:`ECHO_EXEC_PS`) ->
    {"hostname": str, "self": int, "ps": [(pid, comm)]}."""
    name, _, rest = text.partition("\n")
    first, _, rest = rest.partition("\n")
    return {"hostname": name.strip(), "self": int(first.strip()), "ps": parse_ps(rest)}


def parse_nspid(text: str) -> list[int]:
    """``NSpid:\\t4711\\t1`` (a line of /proc/PID/status) -> [4711, 1], outermost first."""
    for line in text.splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    raise NsrError("no NSpid line in /proc/PID/status", hint="this kernel is older than 4.1")


def read_nspid(pid: int) -> list[int]:
    """The native ``grep NSpid /proc/PID/status``."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return parse_nspid(f.read())
    except OSError as exc:
        raise SyscallError.from_oserror(f"open('/proc/{pid}/status')", exc) from None


def parse_pidns(text: str) -> dict[int, tuple[int, int]]:
    """Lines of ``ps -e -o pid=,ppid=,pidns=`` -> {pid: (parent pid, PID namespace inode)}."""
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and all(f.isdigit() for f in fields):
            out[int(fields[0])] = (int(fields[1]), int(fields[2]))
    return out


def read_pidns() -> dict[int, tuple[int, int]]:
    """The native ``ps -e -o pid=,ppid=,pidns=``: /proc/PID/stat and /proc/PID/ns/pid."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
                out[int(name)] = (ppid, ns_inode(int(name), "pid"))
            except (OSError, NsrError):
                continue  # exited meanwhile, or not ours to read
    return out


def parse_status(text: str) -> dict[int, dict]:
    """``grep -H -e ^Name: -e ^PPid: -e ^NSpid: /proc/PID/status ...`` ->
    {pid: {"pid", "comm", "ppid", "nspid"}}."""
    out: dict[int, dict] = {}
    for line in text.splitlines():
        path, _, rest = line.partition(":")
        key, _, value = rest.partition(":")
        pid = int(path.split("/")[2])
        entry = out.setdefault(pid, {"pid": pid, "comm": "", "ppid": 0, "nspid": [pid]})
        if key == "Name":
            entry["comm"] = value.strip()
        elif key == "PPid":
            entry["ppid"] = int(value)
        elif key == "NSpid":
            entry["nspid"] = [int(x) for x in value.split()]
    return out


def read_status(pids: list[int]) -> dict[int, dict]:
    """The native form of :func:`parse_status`'s grep (processes gone meanwhile are left out)."""
    text = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                text += [f"/proc/{pid}/status:{ln}" for ln in f.read().splitlines()
                         if ln.startswith(("Name:", "PPid:", "NSpid:"))]
        except OSError:
            continue
    return parse_status("\n".join(text))


def namespace_tree(run: Runner, levels: dict[str, int]) -> dict:
    """Steps: every process of the PID namespaces of ``levels`` ({name: a host PID in it},
    outermost first), and the host-side parents they hang from, each with its PID at every
    level -- what :func:`recipes.common.pictures.pid_tree` draws."""
    table = run.run(Step("list every process's parent and PID namespace (for the picture)",
                         argv=["ps", "-e", "-o", "pid=,ppid=,pidns="], parse=parse_pidns,
                         native=read_pidns, placeholder={}))
    spaces = [{"level": i, "name": name, "inode": table.get(pid, (0, 0))[1]}
              for i, (name, pid) in enumerate(levels.items())]
    inner = {s["inode"] for s in spaces[1:]}
    members = {p for p, (_, ino) in table.items() if ino in inner}
    wanted = sorted(members | {table[p][0] for p in members} | set(levels.values()))
    status = run.run(Step("read each one's NSpid (its PID at every level) and name",
                          argv=["grep", "-H", "-e", "^Name:", "-e", "^PPid:", "-e", "^NSpid:",
                                *[f"/proc/{p}/status" for p in wanted]],
                          parse=parse_status, native=lambda: read_status(wanted),
                          placeholder={}))
    procs = [{**e, "pidns": table.get(pid, (0, 0))[1]} for pid, e in sorted(status.items())]
    return {"namespaces": spaces, "processes": procs}


def _private_proc() -> None:
    """Inside new PID+mount namespaces: what ``unshare --mount-proc`` does."""
    sc.make_propagation("/", "private", recursive=True)
    sc.mount("proc", "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


# --- steps ---------------------------------------------------------------------------------------

def first_process(run: Runner, *, mount_proc: bool) -> dict:
    """Step: a one-shot child in new UTS+PID namespaces (the document's program: its UTS
    program plus CLONE_NEWPID) names itself NewNamespace, prints ``$$`` and what ``ps`` sees.

    Without ``mount_proc`` the child still reads the host's /proc (the document's note);
    with it, a new mount namespace gets its own /proc and ``ps`` shows only the child's.
    """
    types = "uts,pid,mnt" if mount_proc else "uts,pid"
    argv = (["unshare"] + (list(rootless.UNSHARE_OPTIONS) if run.rootless else [])
            + ["--uts", "--pid", "--fork"] + (["--mount", "--mount-proc"] if mount_proc else []))
    argv += ["--", "sh", "-c", ECHO_PS if mount_proc else ECHO_EXEC_PS]
    flags = sc.CLONE_NEWUTS | sc.CLONE_NEWPID | (sc.CLONE_NEWNS if mount_proc else 0)

    def probe() -> dict:
        if mount_proc:
            _private_proc()
        sc.sethostname("NewNamespace")
        return {"hostname": socket.gethostname(), "self": os.getpid(), "ps": list_processes()}

    what = ("with its own /proc (new PID + mount namespaces)" if mount_proc
            else "without remounting /proc (new PID namespace only)")
    return run.run(Step(f"clone a child into {types.upper().replace(',', '+')} namespaces "
                        f"({sc.flag_names(flags)}), {what}: hostname; echo $$; ps",
                        argv=argv, native=lambda: process.spawn(probe, flags,
                                                                userns_first=bool(run.rootless)),
                        parse=parse_echo_ps,
                        placeholder={"hostname": "NewNamespace", "self": Placeholder("$$"),
                                     "ps": []}))


def host_view(run: Runner, pid: int | str, title: str) -> list[int]:
    """Step: the host's view of a process: its PID at every level (``grep NSpid``)."""
    return run.run(Step(title, argv=["grep", "NSpid", derived(f"/proc/{pid}/status", pid)],
                        native=lambda: read_nspid(int(pid)), parse=parse_nspid,
                        placeholder=[Placeholder("$PID"), 1]))


def ps_inside(run: Runner, holder: process.Holder, where: str) -> list[tuple[int, str]]:
    """Step: ``ps -e`` inside the holder's PID+mount namespaces (its own /proc)."""
    types = join_types(holder, PIDMNT)
    argv = nsenter_argv(holder.pid, types, ["ps", "-e", "-o", "pid=,comm="])
    # native: join both namespaces, fork once more (only children enter a PID namespace) and
    # read the /proc mounted there -- the reader is listed too, as ps lists itself
    return run.run(Step(f"list the processes {where} (ps -e, reading the /proc mounted there)",
                        argv=argv, parse=parse_ps, placeholder=[],
                        native=lambda: process.call_in(holder.pid, types, list_processes)))


def _shell_nested(argv: list[str], outer: process.Holder) -> process.Holder:
    """Start ``nsenter -t OUTER --pid --mount -- unshare --pid ... sleep infinity``."""
    parent, errfile = spawn_background(argv)
    outer_ns = ns_inode(outer.pid, "pid")

    def ready() -> int | None:
        if not procfs.pid_alive(parent):
            raise CommandError(argv, process.wait_child(parent),
                               read_back(errfile) or "nested unshare failed")
        for pid in procfs.descendants(parent):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "sleep" and ns_inode(pid, "pid") != outer_ns:
                        return pid
            except (OSError, NsrError):
                continue
        return None

    try:
        pid = process.wait_for(ready, 10, "the nested holder to start")
    except BaseException:
        process.kill_and_reap(parent, parent)
        raise
    finally:
        os.close(errfile)
    return process.Holder(pid, parent, sc.CLONE_NEWPID | sc.CLONE_NEWNS
                          | (outer.flags & sc.CLONE_NEWUSER))


def _native_nested(outer: process.Holder) -> process.Holder:
    """Fork P; P joins the outer PID+mount namespaces (setns), then starts a holder in new
    PID+mount namespaces there -- which makes them children of the outer ones. P stays
    as the holder's reaper and reports the host PID of its direct child."""
    flags = sc.CLONE_NEWPID | sc.CLONE_NEWNS
    r, w = os.pipe()

    def middle() -> int:
        os.close(r)
        process.set_comm("nsr-nsenter")  # the native `nsenter -t OUTER --pid --mount`
        try:
            # our children land in outer's PID ns (its user namespace first, when it has one)
            process.enter_all(outer.pid, join_types(outer, PIDMNT))
            held = process.spawn_holder(flags, setup=_private_proc)
            # P is in the host's PID namespace: fork() told it the host PID of its child
            payload: tuple = ("ok", held.parent)
        except NsrError as exc:
            payload, held = ("err", exc), None
        data = process.to_bytes(payload)
        process.write_all(w, struct.pack("!I", len(data)) + data)
        os.close(w)
        return process.wait_child(held.parent) if held is not None else 1

    pid = process.fork()
    if pid == 0:
        process.in_child(middle)
    os.close(w)
    try:
        header = _read_exact(r, 4)
        data = _read_exact(r, struct.unpack("!I", header)[0]) if len(header) == 4 else b""
        if not data:
            raise NsrError("the nested holder died while starting", hint="see `invoke doctor`")
        kind, value = process.from_bytes(data)
        if kind == "err":
            raise value
        hold = process.wait_for(lambda: (procfs.children_of(value) or [None])[0], 5,
                                "the nested holder to start")
    except BaseException:
        process.kill_and_reap(pid, pid)
        raise
    finally:
        os.close(r)
    return process.Holder(hold, pid, flags | (outer.flags & sc.CLONE_NEWUSER))


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def start_nested(run: Runner, outer: process.Holder) -> process.Holder:
    """Step: start a holder in new PID+mount namespaces nested in ``outer``'s; undo: stop it."""
    types = parse_types(PIDMNT)
    # without root, outer's user namespace is joined first and owns the nested ones too
    argv = nsenter_argv(outer.pid, join_types(outer, types), unshare_argv(types, mount_proc=True))
    holder = run.run(Step(
        "inside it, start a process in a nested PID namespace (a grandchild of the host's)",
        argv=argv, native=lambda: _native_nested(outer),
        shell=lambda a: _shell_nested(a, outer),
        placeholder=process.Holder(Placeholder("$PID2"), Placeholder("$PID2"),
                                   sc.CLONE_NEWPID | sc.CLONE_NEWNS | outer.flags & sc.CLONE_NEWUSER)))
    stop = Step(f"stop the nested holder (pid {holder.pid})", argv=["kill", "-KILL", holder.pid],
                native=holder.stop, shell=lambda _a: holder.stop())
    run.defer(stop)
    run.inside(Inside(holder.pid, tuple(t.name for t in join_types(holder, PIDMNT))))  # lessons: `s` at a later step enters it
    return holder


# --- the demo ----------------------------------------------------------------------------------

def _fmt_ps(rows: list[tuple[int, str]], limit: int = 8) -> str:
    lines = [f"{pid:>7} {comm}" for pid, comm in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"    ... {len(rows) - limit} more")
    return "\n".join(["    PID CMD"] + lines)


def demo(run: Runner, draw: str | None = None) -> dict:
    """The document's PID demo and its PID-namespace tree. Returns what was observed:
    ``host_pid``, ``without_proc`` and ``with_proc`` (``self`` is ``$$`` in the child,
    ``ps`` what its ps listed; without /proc, ``visible`` counts the PIDs it listed and
    ``pids`` are they), ``holder`` (``nspid`` as the host sees it, ``ps`` inside)
    and ``nested`` (three-level ``nspid``, ``outer_ps``, ``inner_ps``). With ``draw`` (a
    path ending in .svg, checked before anything is made) the tree of PID namespaces is
    drawn there (``picture``: the data drawn); under --explain nothing is drawn."""
    from recipes.common import pictures
    if draw:
        pictures.check_path(draw)
    if not run.explain:
        require_namespaces("pid-demo")
    run.heading(f"{SECTION} (CLONE_NEWPID): process IDs")
    me = os.getpid()
    host = socket.gethostname()
    run.say(f"root@{host}:~# echo $$\n{me}")
    first = "--user --map-root-user " if run.rootless else ""
    run.say(f"root@{host}:~# ./test_namespace    "
            f"(here: unshare {first}--uts --pid --fork --mount --mount-proc -- sh)")
    own = first_process(run, mount_proc=True)
    if not run.explain:
        run.say(f"root@{own['hostname']}:~# echo $$\n{own['self']}    <- PID 1, as in the document")
        run.say(f"root@{own['hostname']}:~# ps -e\n{_fmt_ps(own['ps'])}    <- only its own processes")
    if run.wants_shell:  # the document's program: a shell that is PID 1, named NewNamespace
        named = start_holder(run, "uts")
        uts.set_hostname(run, named, "NewNamespace")
        run.learner_shell(Inside(named.pid, ("uts",), new_pid=True),
                          hint="echo $$ (1: the first process here); ps -e (only this shell's); exit")
        stop_holder(run, named)

    run.say("\n-- 在child namespace中ps a看到的parent namespace的PID，需要挂载/proc文件系统 --\n"
            "(without its own /proc, ps in the child still shows the parent namespace's PIDs)")
    bare = first_process(run, mount_proc=False)
    if not run.explain:
        run.say(f"root@{bare['hostname']}:~# echo $$\n{bare['self']}")
        run.say(f"root@{bare['hostname']}:~# ps -e | wc -l\n{len(bare['ps'])}    <- the host's "
                "processes, read from the host's /proc")

    run.say("\n-- the host sees the real PID; the tree of PID namespaces --")
    outer = start_holder(run, PIDMNT, mount_proc=True)
    outer_nspid = host_view(run, outer.pid, "the host's view of it (its PID at each level)")
    nested = start_nested(run, outer)
    nested_nspid = host_view(run, nested.pid, "the host's view of the nested one")
    outer_ps = ps_inside(run, outer, "in the child PID namespace")
    inner_ps = ps_inside(run, nested, "in the grandchild PID namespace")
    tree = (namespace_tree(run, {"host": me, "child": outer.pid, "grandchild": nested.pid})
            if draw and not run.explain else None)
    if not run.explain:
        run.say(f"host:        grep NSpid /proc/{outer.pid}/status -> NSpid: "
                f"{' '.join(map(str, outer_nspid))}    (host PID, PID inside)")
        run.say(f"host:        grep NSpid /proc/{nested.pid}/status -> NSpid: "
                f"{' '.join(map(str, nested_nspid))}    (host, child ns, grandchild ns)")
        run.say("root namespace  (the host: sees every process below)")
        run.say(f"└─ child       (PID {outer_nspid[0]} on the host is 1 here) ps -e:\n"
                + _indent(_fmt_ps(outer_ps), 6))
        run.say(f"   └─ grandchild (PID {nested_nspid[1]} in the child is 1 here) ps -e:\n"
                + _indent(_fmt_ps(inner_ps), 9))
        run.say("所属的父节点可以看到子节点中的进程 ... 子节点却不能看到父节点PID namespace中的任何内容\n"
                "(a parent sees its children's processes; a child sees nothing of its parent)")
    run.undo()
    if tree:
        run.say(f"drew the PID namespace tree into {pictures.pid_tree(tree, draw)}")
    elif draw:
        print(f"(--explain: nothing is drawn; a real run draws {draw})", file=run.out)
    return {"host_pid": me, "picture": tree,
            "without_proc": {"hostname": bare["hostname"], "self": bare["self"],
                             "visible": len(bare["ps"]), "pids": [p for p, _ in bare["ps"]]},
            "with_proc": own,
            "holder": {"host_pid": outer.pid, "nspid": outer_nspid, "ps": outer_ps},
            "nested": {"host_pid": nested.pid, "nspid": nested_nspid,
                       "outer_ps": outer_ps, "inner_ps": inner_ps}}


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())
