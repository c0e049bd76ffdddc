"""``container-exec``: a new process in a running container, as ``docker exec`` starts one.

The process joins the container's cgroup (it counts toward ``--pids`` and ``--memory``) and
every namespace PID 1 has that the caller does not share (mount, UTS, IPC, PID, cgroup, and
network with ``--net``; without root, the container's user namespace first). Joining a PID
namespace takes effect for children only, so the joining process forks once more, as
``nsenter`` does. Joining the mount namespace puts it at
the container's root (``pivot_root`` made that the namespace's root). Then it becomes
``--user``, enters ``--workdir`` and execs with the container's environment plus ``--env``.

* shell form: ``echo 0 > CGROUP/cgroup.procs`` (Python's write in the forked child), then
  ``nsenter --target PID1 [--user --preserve-credentials] --mount --uts --ipc --pid --cgroup
  [--net] --wdns DIR [--setuid U --setgid G] -- CMD`` with the container's environment;
* native form: the same with ``setns(2)`` on ``/proc/PID1/ns/*`` and ``fork``.

``--tty`` gives the command a new pseudo-terminal as its controlling terminal (``docker exec
-it``); our terminal, in raw mode meanwhile, and the terminal's master are copied both ways.
Exit status: the command's, 126 (not executable), 127 (not found).
"""
from __future__ import annotations

import os
import select
import shlex
import signal
import sys
from typing import Sequence

from nsutil import idmap
from nsutil import programs
from nsutil import rootless
from nsutil import syscalls as sc
from nsutil.backend import Runner, Step
from nsutil.errors import InvalidInput, NsrError, SyscallError

from recipes.container.run import exit_code as exit_code_of
from recipes.container.spec import parse_env, parse_user, parse_workdir, passwd_entry

#: (nsenter option, /proc/PID/ns name, clone flag), in the order they are joined: the user
#: namespace first (a container made without root has one, which owns all the others: joining
#: it gives the capabilities the other setns calls need), the mount namespace last (after it,
#: /proc/PID1/ns is the container's /proc's)
NAMESPACES = (("--user", "user", sc.CLONE_NEWUSER),
              ("--cgroup", "cgroup", sc.CLONE_NEWCGROUP), ("--ipc", "ipc", sc.CLONE_NEWIPC),
              ("--uts", "uts", sc.CLONE_NEWUTS), ("--net", "net", sc.CLONE_NEWNET),
              ("--pid", "pid", sc.CLONE_NEWPID), ("--mount", "mnt", sc.CLONE_NEWNS))
Fds = tuple[int | None, int | None, int | None]


class NotRunning(NsrError):
    """The container is not running (exec, stop, kill need a running one)."""


def _joined(pid1: int) -> list[tuple[str, str, int]]:
    """The namespaces of ``pid1`` that differ from ours (the ones to join)."""
    out = []
    for option, name, flag in NAMESPACES:
        try:
            theirs = os.stat(f"/proc/{pid1}/ns/{name}").st_ino
        except OSError as exc:
            raise SyscallError.from_oserror(f"stat(/proc/{pid1}/ns/{name})", exc) from None
        if theirs != os.stat(f"/proc/self/ns/{name}").st_ino:
            out.append((option, name, flag))
    return out


def _plan(rec: dict, argv: Sequence[str], user: str | int | None, env: Sequence[str],
          workdir: str | None) -> tuple[list[str], dict[str, str], str, tuple[int, int] | None]:
    """(argv, environment, working directory, (uid, gid) or None) of the new process."""
    environ = dict(rec.get("env") or {})
    environ.update(parse_env(env))
    who = None
    if user is not None:
        parsed = parse_user(user)
        gid = parsed.gid
        if gid is None:
            entry = passwd_entry(rec.get("rootfs") or "", parsed.uid)
            gid = entry[0] if entry else parsed.uid
            environ["HOME"] = entry[1] if entry else "/"
        who = (parsed.uid, gid)
    elif rec.get("user"):
        uid, gid = rec["user"]
        who = (uid, gid if gid is not None else uid)
    wd = parse_workdir(workdir) if workdir else rec.get("workdir") or "/"
    return [str(a) for a in argv], environ, wd, who


def nsenter_argv(pid1: int, joined: list[tuple[str, str, int]], argv: list[str], wd: str,
                 who: tuple[int, int] | None) -> list[str]:
    """The ``nsenter`` command line of the shell form. A user namespace is joined with
    ``--preserve-credentials``: this user is the one its map makes root inside already, and
    nsenter's own setgroups()+setuid(0) would fail where the map denies setgroups."""
    opts = [o for o, _n, _f in joined]
    if "--user" in opts:
        opts = list(rootless.NSENTER_OPTIONS) + [o for o in opts if o != "--user"]
    out = ["nsenter", f"--target={pid1}", *opts, f"--wdns={wd}"]
    if who:
        out += [f"--setuid={who[0]}", f"--setgid={who[1]}"]
    return out + ["--", *argv]


def _cgroup_files(rec: dict) -> list[str]:
    return [os.path.join(d, "cgroup.procs") for d in rec.get("cgroup", [])]


def _join_cgroup(files: list[str]) -> None:
    for path in files:
        try:
            with open(path, "w") as f:
                f.write("0")
        except OSError as exc:
            raise SyscallError.from_oserror(f"write(0 > {path})", exc) from None


def _become_tty(slave: int | None) -> None:
    """In the child: a new session whose controlling terminal is ``slave`` on 0, 1, 2."""
    if slave is None:
        return
    import fcntl
    import termios
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)


def _stdio(fds: Fds, slave: int | None) -> None:
    for target, fd in enumerate(fds):
        src = slave if slave is not None else fd
        if src is not None and src != target:
            os.dup2(src, target)


def _exec_native(fds: list[int], argv: list[str], environ: dict[str, str], wd: str,
                 who: tuple[int, int] | None) -> int:
    """In the forked child, after the cgroup: setns into each namespace, fork (the PID
    namespace takes effect for children), and in the grandchild become the user, chdir and
    exec. Returns the grandchild's exit status."""
    for fd, flag in fds:
        sc.setns(fd, flag)
        os.close(fd)
    child = os.fork()
    if child == 0:
        code = 126
        try:
            if who:
                if _setgroups_allowed():
                    os.setgroups([])
                os.setgid(who[1])
                os.setuid(who[0])
            os.chdir(wd)
            os.execvpe(argv[0], argv, environ)
        except FileNotFoundError:
            print(f"nsrecipes: command {argv[0]!r} not found in the container (hint: its PATH is "
                  f"{environ.get('PATH', '')})", file=sys.stderr, flush=True)
            code = 127
        except OSError as exc:
            print(f"nsrecipes: {SyscallError.from_oserror(f'execve({argv[0]!r})', exc)}",
                  file=sys.stderr, flush=True)
        finally:
            os._exit(code)
    return _wait_child(child)


def _setgroups_allowed() -> bool:
    """False in a user namespace whose maps were written with setgroups denied (a rootless
    container without a subordinate range): there setgroups(2) fails, and nsenter skips it."""
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() != "deny"
    except OSError:
        return True


def _check_mapped(rec: dict, who: tuple[int, int] | None) -> None:
    """Refuse in one line a ``--user`` that the container's user namespace does not map (a
    container made without root maps only the ids it was started for)."""
    if who is None:
        return
    for which, wanted in (("uid", who[0]), ("gid", who[1])):
        maps = idmap.read_map(rec["pid1"], which)
        if not any(m.inside <= wanted < m.inside + m.count for m in maps):
            shown = ", ".join(m.line() for m in maps)
            raise InvalidInput(
                f"container-exec --user: {which} {wanted} is not mapped in the user namespace "
                f"of container {rec.get('name')} ({which}_map {shown})",
                hint="without root a container maps only the ids it was started for: start "
                     "it with container-run --user ID (an /etc/subuid range), or exec as 0")


def _wait_child(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return exit_code_of(status)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


def _relay(master: int, child: int) -> int:
    """Copy our stdin to the terminal's master and its output to our stdout until the child
    ends; our terminal is in raw mode meanwhile (Ctrl-C goes to the container)."""
    import termios
    import tty
    saved = None
    if os.isatty(0):
        saved = termios.tcgetattr(0)
        tty.setraw(0)
    inputs = [master, 0]
    try:
        while True:
            ready = select.select(inputs, [], [], 0.2)[0]
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:     # EIO: the last holder of the slave closed it
                    data = b""
                if not data:
                    break
                os.write(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    os.write(master, data)
                else:
                    inputs.remove(0)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSAFLUSH, saved)
        os.close(master)
    return _wait_child(child)


def exec_in(run: Runner, rec: dict, argv: Sequence[str], user: str | int | None = None,
            env: Sequence[str] = (), workdir: str | None = None, tty: bool = False,
            fds: Fds = (None, None, None)) -> int:
    """Run ``argv`` in the running container ``rec``; its exit status (see the module
    docstring). ``fds``: the command's stdin, stdout, stderr (default: ours)."""
    from recipes.container import ids
    name = rec.get("name")
    if not ids.running(rec):
        raise NotRunning(f"container {name} is not running ({ids.status(rec)})",
                         hint=f"`invoke container-logs {name}` shows what it printed; "
                              "start a new one with `invoke container-run`")
    args, environ, wd, who = _plan(rec, argv, user, env, workdir)
    if not args:
        raise NsrError("container-exec: no command given",
                       hint=f"invoke container-exec {name} -- CMD ARGS...")
    pid1, files = rec["pid1"], _cgroup_files(rec)
    joined = _joined(pid1)
    if any(name == "user" for _o, name, _f in joined):
        _check_mapped(rec, who)
    shown = nsenter_argv(pid1, joined, args, wd, who)
    step = Step(f"run {shlex.join(args)} in container {name}: join its cgroup and namespaces "
                f"({', '.join(n for _o, n, _f in joined)}), fork into its PID namespace",
                argv=shown, display="echo 0 > " + " ".join(files) + " && env - " +
                " ".join(shlex.quote(f"{k}={v}") for k, v in environ.items()) + " " +
                shlex.join(shown),
                native=lambda: _start(files, joined, pid1, args, environ, wd, who, tty, fds, None),
                shell=lambda a: _start(files, joined, pid1, args, environ, wd, who, tty, fds, a))
    return run.run(step)


def _start(files: list[str], joined: list[tuple[str, str, int]], pid1: int, argv: list[str],
           environ: dict[str, str], wd: str, who: tuple[int, int] | None, tty: bool, fds: Fds,
           nsenter: list[str] | None) -> int:
    """Fork the process that joins the cgroup and the namespaces (``nsenter`` when given),
    with a new terminal when ``tty``; wait for it (relaying the terminal)."""
    ns_fds = [] if nsenter else [(os.open(f"/proc/{pid1}/ns/{n}", os.O_RDONLY | os.O_CLOEXEC), f)
                                 for _o, n, f in joined]
    master = slave = None
    if tty:
        master, slave = os.openpty()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:   # pragma: no cover - runs in the child
        code = 126
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if master is not None:
                os.close(master)
            _become_tty(slave)
            _stdio(fds, slave)
            _join_cgroup(files)
            if nsenter:   # the host's nsenter, with the container's environment
                os.execve(programs.which(nsenter[0]) or nsenter[0], nsenter, environ)
            code = _exec_native(ns_fds, argv, environ, wd, who)
        except NsrError as exc:
            print(f"nsrecipes: {exc}", file=sys.stderr, flush=True)
        except OSError as exc:
            print(f"nsrecipes: {SyscallError.from_oserror('container-exec', exc)}",
                  file=sys.stderr, flush=True)
        finally:
            os._exit(code)
    for fd, _f in ns_fds:
        os.close(fd)
    if master is not None:
        os.close(slave)
        return _relay(master, child)
    return _wait_child(child)
