"""The processes of a container: the one outside, PID 1, the command; and waiting for them.

As root the tool unshares a PID namespace for its next child only, forks PID 1 into it
(and ``setns`` back to its own at once), and PID 1 unshares the other namespaces. Without
root the tool forks a process outside that makes the user namespace first (it must own the
others), unshares the rest and forks PID 1. PID 1 runs the inside steps
(:mod:`recipes.container.inside`), then starts the command: by ``posix_spawn`` (a vfork and
an exec, nothing of PID 1 copied) where nothing has to run in between, else by a fork whose
child becomes ``--user`` (setgroups, setgid, setuid), enters ``--workdir`` and execs with
``--env``. PID 1 stays, reaps every zombie and forwards signals. Failures inside
come back through a pipe as the exception itself (one line on the CLI, never a silent 125).
``--timeout``: the tool waits on a pidfd and, past the deadline, SIGKILLs its child (PID 1,
or the process outside, with which PID 1 dies: PR_SET_PDEATHSIG); the PID namespace goes
with PID 1 (exit status 137). :mod:`nsutil.timeline` marks each stage of a start when on.
"""
from __future__ import annotations

import errno
import os
import select
import shlex
import signal
import sys
import threading

from nsutil import process
from nsutil import syscalls as sc
from nsutil import timeline
from nsutil.backend import Runner, Step
from nsutil.errors import NsrError, SyscallError

from recipes.common import userns
from recipes.container import rootless as rootless_recipe
from recipes.container.inside import inside_steps
from recipes.container.spec import (MIN_PIDS, CommandNotExecutable, CommandNotFound, ContainerTimeout,
                            Spec, User)
from recipes.container.state import Container, container_record, record

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH)
#: signals the command starts with at their default action (Python ignores SIGPIPE and
#: SIGXFSZ, as subprocess restores them; PID 1
#: catches SIGCHLD)
RESET = (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ)
#: exit status of PID 1 when a setup step inside failed (docker uses 125 for its own errors)
SETUP_FAILED = 125
Fds = tuple[int | None, int | None, int | None]


def flags_for(spec: Spec) -> int:
    """The namespaces of a container: mount, UTS, IPC, PID, cgroup (+ network with --net)."""
    flags = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWPID | sc.CLONE_NEWCGROUP
    return flags | (sc.CLONE_NEWNET if spec.net else 0)


def unshare_display(spec: Spec) -> str:
    """The util-linux command line that makes the same namespaces (without root, a user
    namespace first)."""
    user = rootless_recipe.unshare_words(spec)
    opts = (user + " " if user else "") + "--mount --uts --ipc --pid --cgroup" + (
        " --net" if spec.net else "")
    return f"unshare {opts} --fork --kill-child --propagation slave -- (PID 1: the steps below)"


def exec_display(spec: Spec) -> str:
    """The command line that starts the command as PID 1's child does it."""
    words = []
    if spec.env:
        words.append("env " + " ".join(shlex.quote(f"{k}={v}") for k, v in spec.env.items()))
    if spec.user:
        gid = spec.user.gid if spec.user.gid is not None else spec.user.uid
        words.append(f"setpriv --reuid={spec.user.uid} --regid={gid} --clear-groups --")
    line = " ".join(words + [shlex.join(spec.argv)])
    return f"cd {shlex.quote(spec.workdir)} && {line}" if spec.workdir else line


# --- inside -------------------------------------------------------------------------------------

def _send(fd: int, kind: bytes, exc: NsrError) -> None:
    try:
        os.write(fd, kind + process.to_bytes(exc))
    except OSError:
        pass


def _unexpected(exc: BaseException) -> NsrError:
    """A failure that is not nsrecipes' own (e.g. ``RuntimeError: can't start new thread``)
    as one line, so PID 1 never ends with a bare 125."""
    return NsrError(f"container setup failed: {type(exc).__name__}: {exc}",
                    hint="this is a bug of nsrecipes: report it with the output of --explain")


def _set_pdeathsig(expected_parent: int | None) -> None:
    """Die with SIGKILL when the parent dies (and at once if it is gone already; PID 1 of a
    new PID namespace sees its parent as 0, so there ``expected_parent`` is None)."""
    pr_set_pdeathsig = 1
    sc.LIBC.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(137)


def _become(user: User | None) -> None:
    """``--user``: no supplementary groups, then the gid, then the uid (the order matters:
    once the uid is not 0 the others can no longer be changed)."""
    if user is None:
        return
    gid = user.gid if user.gid is not None else user.uid
    try:
        try:
            os.setgroups([])
        except PermissionError:
            if not _setgroups_denied():
                raise
        os.setgid(gid)
        os.setuid(user.uid)
    except OSError as exc:
        raise SyscallError.from_oserror(f"setuid({user.uid})/setgid({gid})", exc) from None


def _setgroups_denied() -> bool:
    """True in a user namespace whose setgroups is ``deny`` (mapped by the user alone): there
    are no supplementary groups to drop then."""
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "deny"
    except OSError:
        return False


def _enter_workdir(workdir: str | None) -> None:
    """``--workdir``: chdir there (as the user, so its permissions apply)."""
    if workdir:
        try:
            os.chdir(workdir)
        except OSError as exc:
            raise SyscallError.from_oserror(f"chdir({workdir!r}) in the container", exc) from None


def _exec(spec: Spec, report_w: int) -> int:
    """execve the command (one call where it was resolved already); returns the exit status
    to use (127/126) after reporting why it could not be run."""
    argv, env, path = spec.argv, spec.environ(), spec.command_path
    timeline.mark("execve the command")
    try:
        if path:
            try:
                os.execve(path, argv, env)
            except FileNotFoundError:
                pass
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        _send(report_w, b"N", CommandNotFound(
            f"command {argv[0]!r} not found in the container's root filesystem",
            hint=f"the container's PATH is {spec.path}"))
    except PermissionError:
        _send(report_w, b"N", CommandNotExecutable(
            f"command {argv[0]!r} is not executable in the container" +
            (f" by uid {spec.user.uid}" if spec.user else ""),
            hint="chmod +x it, or run it through sh"))
        return 126
    except OSError as exc:
        _send(report_w, b"N", SyscallError.from_oserror(f"execve({argv[0]!r})", exc))
        return 126
    return 127


def _child_exec(spec: Spec, report_w: int, fds: Fds) -> None:
    """The command's process: default signals, stdio, user, working directory, exec."""
    code = SETUP_FAILED
    timeline.mark("the command's process: forked")
    try:
        for sig in FORWARDED + RESET:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for target, fd in enumerate(fds):
            if fd is not None:
                os.dup2(fd, target)
        try:
            _become(spec.user)
            _enter_workdir(spec.workdir)
        except NsrError as exc:
            _send(report_w, b"N", exc)
            return
        code = _exec(spec, report_w)
    finally:
        os._exit(code)


def _setup(run: Runner, spec: Spec, ct: Container, report_w: int) -> bool:
    """PID 1's inside steps; False (after reporting why) if one failed."""
    try:
        inside_steps(run, spec, ct)
        return True
    except NsrError as exc:
        _send(report_w, b"E", exc)
    except OSError as exc:
        _send(report_w, b"E", SyscallError.from_oserror("container setup", exc))
    except Exception as exc:   # noqa: BLE001 -- reported as one line, never a silent 125
        _send(report_w, b"E", _unexpected(exc))
    return False


def _start_failed(call: str, exc: OSError) -> SyscallError:
    """The command's process could not be made; EAGAIN here is the pids limit, said so."""
    hint = (f"the pids limit is reached: the container itself needs {MIN_PIDS} processes "
            "(PID 1 and the command); raise --pids" if exc.errno == errno.EAGAIN else None)
    return SyscallError.from_oserror(f"{call} of the command in the container", exc, hint)


def _spawn_command(spec: Spec, fds: Fds) -> int | None:
    """The command by ``posix_spawn`` (a vfork and an exec: PID 1's memory is not copied, no
    Python runs in between), where nothing has to happen between fork and exec but what
    posix_spawn does itself: stdio, default signals, an empty signal mask. None where it
    cannot (a ``--user`` to become, a command not resolved in the rootfs, an exec that
    failed): then :func:`_fork_command` starts it, and says why it could not run."""
    if spec.user is not None or not spec.command_path:
        return None
    try:
        if spec.workdir:     # PID 1 is root, as the command will be: the same permissions
            os.chdir(spec.workdir)
        return os.posix_spawn(spec.command_path, spec.argv, spec.environ(),
                              file_actions=[(os.POSIX_SPAWN_DUP2, fd, target)
                                            for target, fd in enumerate(fds) if fd is not None],
                              setsigmask=(), setsigdef=FORWARDED + RESET)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            raise _start_failed("posix_spawn()", exc) from None
        return None


def _fork_command(spec: Spec, report_w: int, fds: Fds) -> int:
    """Fork the command's process (it becomes the user, enters the working directory, execs)."""
    try:
        child = process.fork()
    except OSError as exc:
        raise _start_failed("fork()", exc) from None
    if child == 0:
        _child_exec(spec, report_w, fds)
    return child


def _pid1(run: Runner, spec: Spec, ct: Container, report_w: int, fds: Fds) -> int:
    """PID 1 of the container: the inside steps (the cgroup last), then fork+exec the
    command, reap and forward signals until it ends."""
    handler = lambda *_: None  # noqa: E731 -- PID 1 ignores SIG_DFL signals: install handlers
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if not _setup(run, spec, ct, report_w):
        return SETUP_FAILED
    waited = set(FORWARDED) | {signal.SIGCHLD}
    for sig in waited:
        signal.signal(sig, handler)
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    timeline.mark("PID 1: fork the command")
    try:
        child = _spawn_command(spec, fds)
        if child is None:
            child = _fork_command(spec, report_w, fds)
    except NsrError as exc:
        _send(report_w, b"E", exc)
        return SETUP_FAILED
    os.close(report_w)
    code = _reap_until(child, waited)
    timeline.mark("PID 1: the command was reaped")
    return code


def _reap_until(child: int, waited: set[int]) -> int:
    """Reap every process that ends (orphans are ours), forward signals to ``child``, and
    return ``child``'s exit status once it ends (128+N for signal N)."""
    while True:
        info = signal.sigwaitinfo(waited)
        timeline.mark(f"signal {info.si_signo}")
        if info.si_signo != signal.SIGCHLD:
            try:
                os.kill(child, info.si_signo)
            except ProcessLookupError:
                pass
            continue
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 0
            if pid == 0:
                break
            if pid == child:
                return exit_code(status)


def exit_code(status: int) -> int:
    """A wait status as a shell shows it: the exit code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


# --- outside ------------------------------------------------------------------------------------

def _start_pid1(spec: Spec, ct: Container, run: Runner, pipes: dict[str, int], fds: Fds) -> int:
    """Fork PID 1 (it dies with this process, even if this one died before it could ask)."""
    life_r, life_w = os.pipe()   # EOF on life_r: this process is gone
    timeline.mark("outside: fork PID 1")
    pid1 = process.fork()
    if pid1 == 0:
        code = SETUP_FAILED
        timeline.mark("PID 1: forked")
        try:
            os.close(pipes["pid_w"])
            os.close(life_w)
            _set_pdeathsig(None)
            os.set_blocking(life_r, False)
            try:
                if os.read(life_r, 1) == b"":   # died before PR_SET_PDEATHSIG took effect
                    os._exit(137)
            except BlockingIOError:
                pass
            os.close(life_r)
            code = _pid1(run, spec, ct, pipes["report_w"], fds)
        except Exception as exc:   # noqa: BLE001 -- reported, never a silent 125
            _send(pipes["report_w"], b"E", _unexpected(exc))
        finally:
            os._exit(code)
    os.close(life_r)
    return pid1


def _fork_pid1_here(spec: Spec, ct: Container, run: Runner, report_w: int, fds: Fds) -> int:
    """As root: the tool forks PID 1 itself, into a PID namespace made for it
    (``unshare(CLONE_NEWPID)`` applies to the caller's next child only, and ``setns`` to the
    tool's own PID namespace right after the fork undoes even that): a fork and an exit
    fewer than with a process outside. PID 1 unshares the other namespaces itself."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    tool = os.pidfd_open(os.getpid())   # readable once the tool is gone
    try:
        timeline.mark("unshare a PID namespace for PID 1")
        sc.unshare(sc.CLONE_NEWPID)
        try:
            timeline.mark("fork PID 1")
            pid1 = process.fork()
        except BaseException:
            sc.setns(own, sc.CLONE_NEWPID)      # the fork failed: its next child is its own
            raise
        if pid1 == 0:  # pragma: no cover - runs in the child
            _pid1_here(spec, ct, run, report_w, fds, tool)
        # the tool (which may itself be PID 1 of a container): its next child is its own again
        sc.setns(own, sc.CLONE_NEWPID)
        timeline.mark("forked PID 1")
        return pid1
    finally:
        os.close(own)
        os.close(tool)


def _pid1_here(spec: Spec, ct: Container, run: Runner, report_w: int, fds: Fds,
               tool: int) -> None:
    """PID 1 forked by the tool: die with it, unshare the other namespaces, run as PID 1."""
    code = SETUP_FAILED
    timeline.mark("PID 1: forked")
    try:
        _set_pdeathsig(None)
        if select.select([tool], [], [], 0)[0]:    # died before PR_SET_PDEATHSIG took effect
            os._exit(137)
        os.close(tool)
        sc.unshare(flags_for(spec) & ~(sc.CLONE_NEWCGROUP | sc.CLONE_NEWPID))
        timeline.mark("PID 1: unshared")
        code = _pid1(run, spec, ct, report_w, fds)
    except NsrError as exc:
        _send(report_w, b"E", exc)
    except Exception as exc:   # noqa: BLE001 -- reported, never a silent 125
        _send(report_w, b"E", _unexpected(exc))
    finally:
        os._exit(code)


def _outside(spec: Spec, ct: Container, run: Runner, pipes: dict[str, int], fds: Fds,
             parent: int, shake: userns.Handshake | None = None) -> int:
    """The forked process outside: unshare (without root, a user namespace first), fork
    PID 1 and tell the tool its PID, then forward signals to it and pass its exit status up."""
    timeline.mark("outside: forked")
    _set_pdeathsig(parent)
    try:
        if spec.ids is not None:
            userns.enter(spec.ids, shake)
        timeline.mark("outside: unshare")
        sc.unshare(flags_for(spec) & ~sc.CLONE_NEWCGROUP)
        timeline.mark("outside: unshared")
    except NsrError as exc:
        _send(pipes["report_w"], b"E", exc)
        return SETUP_FAILED
    waited = set(FORWARDED) | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    pid1 = _start_pid1(spec, ct, run, pipes, fds)
    os.write(pipes["pid_w"], pid1.to_bytes(8, "little"))
    for name in ("pid_w", "report_w"):
        os.close(pipes[name])
    for sig in FORWARDED:
        signal.signal(sig, lambda *_: None)
    code = _reap_until(pid1, waited)
    timeline.mark("outside: PID 1 was reaped")
    return code


def _explain_start(run: Runner, spec: Spec, ct: Container) -> None:
    names = sc.flag_names(flags_for(spec) & ~sc.CLONE_NEWCGROUP)
    run.run(Step(f"fork, unshare the namespaces ({names}) and fork PID 1",
                 display=unshare_display(spec), native=lambda: None))
    rootless_recipe.explain_maps(run, spec)
    record(run, os.path.join(ct.dir, "state.json"), {})
    inside_steps(run, spec, ct)
    who = (f" as uid {spec.user.uid} (setgroups, setgid, setuid: PID 1's child does it on both "
           "backends, the host's setpriv is out of reach after pivot_root)" if spec.user else "")
    run.run(Step(f"fork and exec {' '.join(spec.argv)!r}{who}; PID 1 reaps zombies and "
                 "forwards signals until it exits", display=exec_display(spec),
                 native=lambda: None))
    if spec.timeout is not None:
        run.run(Step(f"after {spec.timeout:g} s, kill the container: SIGKILL to the process "
                     "outside, PID 1 dies with it and the PID namespace with PID 1 (exit 137)",
                     display=f"sleep {spec.timeout:g} && kill -KILL $PID", native=lambda: None))


def start(run: Runner, spec: Spec, ct: Container, fds: Fds = (None, None, None)) -> Container:
    """Steps: fork, unshare, fork PID 1, which does the inside steps, joins the cgroup and
    starts the command; the tool records the PIDs meanwhile. Returns the container with
    ``pid`` (the process outside) and ``pid1`` set."""
    if run.explain:
        _explain_start(run, spec, ct)
        return ct
    if spec.ids is None:
        return _start_as_root(run, spec, ct, fds)
    pipes: dict[str, int] = {}
    pipes["pid_r"], pipes["pid_w"] = os.pipe()
    pipes["report_r"], pipes["report_w"] = os.pipe()
    inner = Runner(backend=run.backend, explain=False, keep=True, out=run.out,
                   rootless=run.rootless, announce_owner=run.announce_owner)
    shake = userns.Handshake.open() if spec.ids is not None and spec.ids.helpers else None
    sys.stdout.flush()
    sys.stderr.flush()
    me = os.getpid()
    timeline.mark("fork the process outside")
    pid = process.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = SETUP_FAILED
        try:
            for name in ("pid_r", "report_r"):
                os.close(pipes[name])
            if shake is not None:
                shake.close("ready_r", "go_w")
            code = _outside(spec, ct, inner, pipes, fds, me, shake)
        except Exception as exc:   # noqa: BLE001 -- reported, never a silent 125
            _send(pipes["report_w"], b"E", _unexpected(exc))
        finally:
            os._exit(code)
    timeline.mark("forked the process outside")
    for name in ("pid_w", "report_w"):
        os.close(pipes.pop(name))
    ct.pid, ct.report_r = pid, pipes.pop("report_r")
    try:
        run.defer(Step(f"stop the container's processes (pid {pid})", argv=["kill", "-KILL", pid],
                       native=lambda: _kill_reap(ct), shell=lambda _a: _kill_reap(ct)))
        if shake is not None:
            userns.map_child(run, spec.ids, pid, shake)
        raw = process.read_all(pipes["pid_r"])
        if len(raw) != 8:
            wait(run, ct)    # raises what went wrong (e.g. unshare refused)
            raise NsrError("the container's first process died while starting",
                           hint="see the kernel log (dmesg)")
        ct.pid1 = int.from_bytes(raw, "little")
        timeline.mark("got PID 1's pid")
        record(run, os.path.join(ct.dir, "state.json"), container_record(ct, spec.argv, spec.rm))
    finally:
        os.close(pipes.pop("pid_r"))
    return ct


def _start_as_root(run: Runner, spec: Spec, ct: Container, fds: Fds) -> Container:
    """:func:`start` as root: PID 1 is the tool's own child (:func:`_fork_pid1_here`), so
    ``pid`` and ``pid1`` are the same process."""
    report_r, report_w = os.pipe()
    inner = Runner(backend=run.backend, explain=False, keep=True, out=run.out,
                   rootless=run.rootless, announce_owner=run.announce_owner)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid1 = _fork_pid1_here(spec, ct, inner, report_w, fds)
    except BaseException:
        os.close(report_r)
        raise
    finally:
        os.close(report_w)
    ct.pid = ct.pid1 = pid1
    ct.report_r = report_r
    run.defer(Step(f"stop the container's processes (pid {pid1})", argv=["kill", "-KILL", pid1],
                   native=lambda: _kill_reap(ct), shell=lambda _a: _kill_reap(ct)))
    record(run, os.path.join(ct.dir, "state.json"), container_record(ct, spec.argv, spec.rm))
    return ct


def _kill_reap(ct: Container) -> None:
    if ct.reaped or not ct.pid:
        return
    try:
        os.kill(ct.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(ct.pid, 0)
    except ChildProcessError:
        pass
    ct.reaped = True
    if ct.report_r >= 0:
        os.close(ct.report_r)
        ct.report_r = -1


def _wait_status(ct: Container, timeout: float | None) -> tuple[int, bool]:
    """waitpid() for the process outside; past ``timeout`` seconds SIGKILL it first. Returns
    (wait status, whether it was killed for the timeout)."""
    timed_out = False
    if timeout is not None:
        fd = os.pidfd_open(ct.pid)
        try:   # select() is retried after a signal handler, with the time left (PEP 475)
            if not select.select([fd], [], [], timeout)[0]:
                timed_out = True
                os.kill(ct.pid, signal.SIGKILL)   # our unreaped child: its PID cannot be reused
        finally:
            os.close(fd)
    try:
        _, status = os.waitpid(ct.pid, 0)
    except ChildProcessError:
        status = 0
    return status, timed_out


def ready(ct: Container) -> bool:
    """Block until the container's command was exec'd (every copy of the error pipe's write
    end is closed by then: PID 1's after the fork, the command's by close-on-exec) or a
    failure was reported; True if it started. The report is left for :func:`wait`."""
    import fcntl
    import termios
    select.select([ct.report_r], [], [])
    pending = fcntl.ioctl(ct.report_r, termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(pending, sys.byteorder) == 0


def _read_report(ct: Container) -> bytes:
    try:
        return process.read_all(ct.report_r)
    finally:
        os.close(ct.report_r)
        ct.report_r = -1


def wait(run: Runner, ct: Container, timeout: float | None = None) -> int:
    """Wait for the container to end; its command's exit status (128+N for a signal).

    Raises what went wrong inside (a failed setup step, a command that could not be run),
    and :class:`ContainerTimeout` (exit status 137) if it ran past ``timeout`` seconds.
    """
    if run.explain:
        return 0
    forwarding = threading.current_thread() is threading.main_thread()
    saved = {}
    if forwarding:  # the tool passes SIGTERM, SIGINT, ... on, as PID 1 does
        for sig in FORWARDED:
            saved[sig] = signal.signal(sig, lambda signo, _f: _forward(ct, signo))
    timeline.mark("waitpid() for the tool's child")
    try:
        status, timed_out = _wait_status(ct, timeout)
        timeline.mark("the tool reaped its child")
    finally:
        ct.reaped = True
        for sig, old in saved.items():
            signal.signal(sig, old)
    data = _read_report(ct)
    if data:
        raise process.from_bytes(data[1:])
    if timed_out:
        raise ContainerTimeout(f"container {ct.name} ran past --timeout {timeout:g} s and was "
                               "killed (SIGKILL)", hint="give it longer with --timeout SECONDS, "
                                                        "or leave --timeout out")
    return exit_code(status)


def _forward(ct: Container, signo: int) -> None:
    if not ct.reaped:
        try:
            os.kill(ct.pid, signo)
        except ProcessLookupError:
            pass
