"""Processes in namespaces: the native forms of ``unshare --fork``, ``nsenter`` and clone().

* :func:`spawn` -- the document's ``clone(child_func, stack, CLONE_NEW*|SIGCHLD, arg)``: fork a
  child, move it into new namespaces, run a Python function there, and hand back its result.
* :func:`spawn_holder` -- a process that only keeps new namespaces alive (``unshare ... sleep``);
  with a PID namespace it is PID 1 there and reaps zombies.
* :func:`call_in` -- run a Python function inside the namespaces of another process
  (``nsenter -t PID``), and :func:`exec_in` -- run a command there and capture its output.

Python cannot call clone() with a new stack safely, so "clone" here is fork() + unshare(),
and a new PID namespace takes one more fork(), exactly as ``unshare --fork`` does.
Results and exceptions come back to the caller through a pipe.
"""
from __future__ import annotations

import errno
import os
import re
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from . import procfs, rootless
from . import syscalls as sc
from .errors import CommandError, CommandNotFound, NsrError, SyscallError
from .nstypes import NS_TYPES, NsType, enter, ns_type
from .programs import PACKAGES, which


def read_all(fd: int) -> bytes:
    """Read ``fd`` (a pipe) until end of file; every writer must have closed its end."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _child_report(fd: int, fn: Callable[[], Any]) -> int:
    """Run ``fn`` in a forked child and pickle its outcome to ``fd``. Returns an exit status."""
    try:
        payload: tuple = ("ok", fn())
        status = 0
    except NsrError as exc:
        payload, status = ("err", exc), 1
    except Exception as exc:  # report any failure to the parent, never return into its stack
        payload, status = ("err", NsrError(f"{type(exc).__name__}: {exc}")), 1
    try:
        data = to_bytes(payload)
    except Exception as exc:  # an unpicklable result
        data, status = to_bytes(("err", NsrError(f"result not picklable: {exc}"))), 1
    write_all(fd, data)
    return status


def to_bytes(obj: Any) -> bytes:
    """``obj`` pickled, for the process at the other end of a pipe (a result, an error).
    pickle is loaded on first use: loading it cost about 1 ms of every command line."""
    import pickle
    return pickle.dumps(obj)


def from_bytes(data: bytes) -> Any:
    """What :func:`to_bytes` made of an object, the object again."""
    import pickle
    return pickle.loads(data)


def wait_child(pid: int) -> int:
    """waitpid() and turn the status into a shell-style exit code (128+N for a signal)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:  # pragma: no cover
            continue
    return os.waitstatus_to_exitcode(status) if status & 0x7F == 0 else 128 + os.WTERMSIG(status)


def in_child(fn: Callable[[], int]) -> None:
    """Body of a forked child: run ``fn`` and _exit with its status, whatever happens."""
    status = 1
    try:
        status = fn()
    except BaseException:  # the child must never unwind into the parent's code
        status = 1
    finally:
        os._exit(status)


def _unwrap(data: bytes, what: str) -> Any:
    if not data:
        raise NsrError(f"{what}: the child died before reporting",
                       hint="see the kernel log (dmesg) or run with --backend shell")
    kind, value = from_bytes(data)
    if kind == "err":
        raise value
    return value


@contextmanager
def deferred_sigint() -> Iterator[list[int]]:
    """Hold Ctrl-C (SIGINT) back while the body runs, then deliver it.

    A KeyboardInterrupt raised at an arbitrary bytecode can land inside the interpreter's
    at-fork handlers (logging's lock) or the ``sh`` package's bookkeeping and leave a lock
    held forever. So forks and foreground commands run with SIGINT only recorded; the
    commands, being in our process group, get the terminal's SIGINT themselves and end, and
    the interrupt is raised as soon as the body is done -- as a shell waits for its
    foreground job. The body gets the list of what was recorded so far: a Ctrl-C that came
    before its command existed has to be passed on (:func:`run_foreground`).
    """
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    caught: list[int] = []
    owner = os.getpid()

    def record(signum: int, _frame: Any) -> None:
        if os.getpid() != owner:
            # a fork of ours that has not exec'd yet (sh's, subprocess's preexec): a
            # recorded Ctrl-C would be lost there, so it ends the child as the default would
            os._exit(128 + signum)
        caught.append(signum)

    previous = signal.signal(signal.SIGINT, record)
    try:
        yield caught
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(signal.SIGINT, None)
        elif caught and previous == signal.SIG_DFL:
            raise KeyboardInterrupt


def run_foreground(argv: Sequence[str], *, input: bytes | None = None, capture: bool = True,
                   preexec_fn: Callable[[], None] | None = None) -> Any:
    """Run ``argv`` in the foreground, as a shell runs a command: a Ctrl-C is the command's
    (in our process group, it gets the terminal's), and raised here once it has ended
    (:func:`deferred_sigint`). A Ctrl-C that came while it was being started, before it
    could get one, is passed on to it: else the command would run to its end, however long.
    Its stdin is ours unless ``input``; its output is captured unless not ``capture``.
    Returns the ``subprocess.CompletedProcess``."""
    import subprocess
    pipe = subprocess.PIPE if capture else None
    with deferred_sigint() as pending:
        with subprocess.Popen(list(argv), stdin=subprocess.PIPE if input is not None else None,
                              stdout=pipe, stderr=pipe, preexec_fn=preexec_fn) as proc:
            if pending:
                proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(input)
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def default_sigint() -> None:
    """In a forked child, the last thing before exec: SIGINT back to its default, so that a
    Ctrl-C from now on ends the child at once. Until then :func:`deferred_sigint`'s handler
    ends it, but only at the next bytecode: a Ctrl-C that lands after the last one and
    before exec would be swallowed, and the command would run on with us waiting for it
    (CI once saw a demo's ``sleep 30`` outlive its Ctrl-C)."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    except (ValueError, OSError):    # not the main thread: nothing of ours was installed
        pass


def fork() -> int:
    """``os.fork()`` with Ctrl-C held back until both sides are back in our code."""
    with deferred_sigint():
        return os.fork()


def fork_call(fn: Callable[[], Any], what: str = "child", *, detached: bool = False) -> Any:
    """Run ``fn`` in a forked child, wait for it, and return its (picklable) result.

    With ``detached`` the child ignores Ctrl-C and works from ``/``: what it starts (a
    holder) is re-parented to init when it exits, and it finishes even if we are interrupted.
    """
    def body() -> Any:
        if detached:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            os.chdir("/")
        return fn()

    r, w = os.pipe()
    pid = fork()
    if pid == 0:
        os.close(r)
        in_child(lambda: _child_report(w, body))
    os.close(w)
    try:
        data = read_all(r)
    finally:
        os.close(r)
        try:
            wait_child(pid)
        except ChildProcessError:
            pass  # already reaped (SIGCHLD ignored): its report is what counts
    return _unwrap(data, what)


def _run_with_pidns(fn: Callable[[], Any]) -> Any:
    """After unshare/setns of a PID namespace only children land in it: fork once more."""
    return fork_call(fn, "pid namespace child")


def spawn(fn: Callable[[], Any], flags: int, *,
          before: Callable[[int], None] | None = None, userns_first: bool = False) -> Any:
    """The document's clone(): run ``fn`` in a new child in new namespaces; return its result.

    ``before(pid)`` runs in the parent after the child has unshared and before ``fn`` runs
    (this is where a parent writes the child's uid_map/gid_map). With ``userns_first``
    (without root) the child first makes a user namespace with this user as its root, which
    owns the namespaces of ``flags`` (``unshare --user --map-root-user``).
    """
    def child() -> Any:
        if userns_first:
            rootless.become_root_in_userns()
        sc.unshare(flags)
        if before is not None:
            write_all(ready_w, b"u")
            if os.read(go_r, 1) != b"g":  # the parent's before() failed: do not run fn
                raise NsrError(f"clone({sc.flag_names(flags)}): the parent's preparation failed",
                               hint="see the error reported before this one")
        return _run_with_pidns(fn) if flags & sc.CLONE_NEWPID else fn()

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    r, w = os.pipe()
    pid = fork()
    if pid == 0:
        for fd in (r, ready_r, go_w):
            os.close(fd)
        in_child(lambda: _child_report(w, child))
    for fd in (w, ready_w, go_r):
        os.close(fd)
    try:
        # The child says "u" once it has unshared; if unshare failed it says nothing (and
        # writing to it would only raise EPIPE and hide its error). If before() raises, the
        # child sees go_w closed without a "g" and stops instead of running fn.
        if before is not None and os.read(ready_r, 1) == b"u":
            before(pid)
            write_all(go_w, b"g")
        data = read_all(r)
    finally:
        for fd in (r, ready_r, go_w):
            os.close(fd)
        wait_child(pid)
    return _unwrap(data, f"clone({sc.flag_names(flags)})")


def enter_all(pid: int | str, types: Iterable[NsType | str]) -> bool:
    """setns() into the namespaces of ``pid`` in nsenter's order; True if PID ns was joined.

    All namespace files are opened before the first setns(), as nsenter does, so joining a
    mount namespace cannot hide the /proc of the others.
    """
    wanted = {(ns_type(t) if isinstance(t, str) else t).name for t in types}
    fds = []
    try:
        for t in NS_TYPES.values():
            if t.name in wanted:
                path = f"/proc/{pid}/ns/{t.proc}" if not str(pid).startswith("/") else str(pid)
                try:
                    fds.append((os.open(path, os.O_RDONLY | os.O_CLOEXEC), t))
                except OSError as exc:
                    raise SyscallError.from_oserror(f"open({path!r})", exc) from None
        for fd, t in fds:
            if t.name == "user" and os.stat(f"/proc/self/fd/{fd}").st_ino == os.stat("/proc/self/ns/user").st_ino:
                continue  # setns into one's own user namespace is EINVAL; nsenter skips it too
            sc.setns(fd, t.flag)
            if t.name == "user":
                become_root_inside()
        if "mnt" in wanted:
            os.chdir("/")
    finally:
        for fd, _ in fds:
            os.close(fd)
    return "pid" in wanted


def become_root_inside() -> None:
    """After joining a user namespace, take uid/gid 0 there, as ``nsenter --user`` does."""
    try:
        os.setgroups([])
    except PermissionError:
        pass  # setgroups is denied in this namespace; nsenter ignores that too
    try:
        os.setgid(0)
        os.setuid(0)
    except OSError as exc:
        raise SyscallError.from_oserror("setuid(0) inside the user namespace", exc,
                                        hint="write the namespace's uid_map/gid_map first") from None


def call_in(pid: int | str, types: Iterable[NsType | str], fn: Callable[[], Any]) -> Any:
    """Run ``fn`` inside the namespaces of process ``pid`` (the native ``nsenter -t PID``)."""
    types = list(types)

    def child() -> Any:
        joined_pid = enter_all(pid, types)
        return _run_with_pidns(fn) if joined_pid else fn()

    return fork_call(child, f"nsenter -t {pid}")


@dataclass
class Completed:
    """The outcome of a command run inside namespaces."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str = ""

    def check(self) -> "Completed":
        """Raise :class:`CommandError` unless the command exited 0 (:class:`CommandNotFound`
        where nsenter or unshare found no command to execute)."""
        if self.returncode == 127:
            missing = re.search(r"failed to execute (.+?): No such file or directory",
                                self.stderr)
            if missing:
                raise command_not_found(missing.group(1))
        if self.returncode != 0:
            raise CommandError(self.argv, self.returncode, self.stderr)
        return self


def command_not_found(command: str) -> CommandNotFound:
    """The error for a command run inside namespaces that is on no PATH: the package to
    install if it is one of the tools nsrecipes knows, else to check its name."""
    package = PACKAGES.get(os.path.basename(command))
    return CommandNotFound(f"command {command!r} not found",
                           hint=f"apt-get install {package}" if package
                           else "check its name: it is looked up on PATH; or give its full path")


def exec_in(pid: int | str | None, types: Iterable[NsType | str], argv: Sequence[str], *,
            input: bytes | None = None, uid: int | None = None, gid: int | None = None,
            capture: bool = True) -> Completed:
    """Run ``argv`` inside the namespaces of ``pid`` (all of ``types``) and capture its output.

    With ``uid``/``gid`` the command runs with those ids (as ``nsenter -S/-G`` does).
    ``pid=None`` runs it where we are.
    """
    import subprocess

    argv = [str(a) for a in argv]
    types = list(types)

    def preexec() -> None:
        if pid is not None:
            enter_all(pid, types)
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        default_sigint()

    if which(argv[0]) is None and not os.path.isabs(argv[0]):
        raise command_not_found(argv[0])
    # A PID namespace is joined by children only: the preexec setns() makes the exec'd
    # command's *children* land in it, so for "pid" we go through one extra fork of our own.
    if pid is not None and any((ns_type(t) if isinstance(t, str) else t).name == "pid" for t in types):
        return fork_call(lambda: _exec_pidns(pid, types, argv, input, uid, gid, capture),
                         f"nsenter -t {pid}")
    try:
        proc = run_foreground(argv, input=input, capture=capture, preexec_fn=preexec)
    except subprocess.SubprocessError as exc:
        raise NsrError(f"cannot enter the namespaces of {pid} to run {argv[0]}: {exc}",
                       hint="is the process still alive? (see `invoke env-ls`)") from None
    except FileNotFoundError:
        raise command_not_found(argv[0]) from None
    return Completed(argv, proc.returncode, (proc.stdout or b"").decode(errors="replace"),
                     (proc.stderr or b"").decode(errors="replace"))


def _exec_pidns(pid, types, argv, input, uid, gid, capture) -> Completed:
    enter_all(pid, types)
    return exec_in(None, [], argv, input=input, uid=uid, gid=gid, capture=capture)


# --- holders --------------------------------------------------------------------------------

@dataclass
class Holder:
    """A process that keeps namespaces alive.

    ``pid`` is the holder itself (PID 1 of its PID namespace, if it has one): pass it to
    ``nsenter -t``. ``parent`` is the process this one forked (the ``unshare --fork``
    intermediate, or the holder itself), which the creator waits for.
    """

    pid: int
    parent: int
    flags: int
    started: float = field(default_factory=time.time)

    def alive(self) -> bool:
        """True while the holder runs (a zombie counts as dead)."""
        return procfs.pid_alive(self.pid)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGKILL the holder (and with a PID namespace, everything in it) and reap it."""
        kill_and_reap(self.pid, self.parent, timeout)




def kill_and_reap(pid: int, parent: int | None = None, timeout: float = 5.0) -> None:
    """SIGKILL ``pid``; wait for ``parent`` (our child) or poll until ``pid`` is gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    waited = False
    for child in {p for p in (parent, pid) if p}:
        try:
            os.waitpid(child, 0)
            waited = True
        except ChildProcessError:
            pass  # not our child: someone else reaps it
    if not waited:
        deadline = time.monotonic() + timeout
        while procfs.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)


def reap_forever(wake_every: float = 60) -> None:
    """What a holder does forever: reap every child (orphans are re-parented to it when it is
    PID 1) and otherwise sleep in sigtimedwait(SIGCHLD), waking at least every ``wake_every``
    seconds. Never returns."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        signal.sigtimedwait({signal.SIGCHLD}, wake_every)


def spawn_holder(flags: int, *, setup: Callable[[], None] | None = None,
                 before: Callable[[int], None] | None = None, detach: bool = False,
                 quiet: bool = False, name: str = "nsr-holder",
                 userns_first: bool = False, userns_of: int | None = None) -> Holder:
    """Start a holder in new namespaces (the native ``unshare --fork ... sleep infinity``).

    ``before(pid)`` runs in the caller once the holder has unshared (write uid/gid maps
    there); ``setup()`` runs inside the holder after that (set the hostname, mount /proc...).
    With ``detach`` the holder starts its own session, so it outlives the caller and ignores
    the terminal's Ctrl-C; with ``quiet`` its stdio goes to /dev/null and it keeps no other
    file of ours open (a daemon's fds). ``name`` is what ``ps`` shows for it.
    With ``userns_first`` (without root) the holder first makes a user namespace with this
    user as its root (``unshare --user --map-root-user``), which then owns the namespaces of
    ``flags``; the Holder's flags include CLONE_NEWUSER, so joining it joins that first.
    With ``userns_of`` (a holder's pid) it joins that process's user namespace instead, so
    one user namespace owns the namespaces of both (``nsenter -t PID --user -- unshare ...``).
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def hold() -> int:
        host_pid = procfs.host_pid()  # before setup() may mount a new /proc
        set_comm(name)  # what ps shows for it, instead of the caller's name
        if setup is not None:
            setup()
        write_all(ready_w, b"R" + to_bytes(host_pid))
        os.close(ready_w)
        reap_forever()
        return 0

    def first() -> int:
        for fd in (ready_r, go_w):
            os.close(fd)
        if quiet:
            quiet_fds(keep={ready_w, go_r})
        if detach:
            os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_IGN if detach else signal.SIG_DFL)
        try:
            if userns_of is not None:
                enter_all(userns_of, ["user"])
            elif userns_first:
                rootless.become_root_in_userns()
            sc.unshare(flags)
            if flags & sc.CLONE_NEWTIME:
                # unshare(CLONE_NEWTIME) made the namespace for our children only; enter it
                # ourselves, as unshare(1) without --fork does (recipes.timens sets offsets)
                enter_time_for_children()
            if before is not None:
                write_all(ready_w, b"u")
                os.read(go_r, 1)
            if flags & sc.CLONE_NEWPID:
                set_comm("nsr-unshare")  # the `unshare --fork` parent of PID 1
                child = fork()
                if child == 0:
                    in_child(hold)
                os.close(ready_w)
                # like `unshare --fork`: stay as the parent of PID 1 and share its fate
                return wait_child(child)
            return hold()
        except NsrError as exc:
            write_all(ready_w, b"E" + to_bytes(exc))
            return 1

    pid = fork()
    if pid == 0:
        in_child(first)
    for fd in (ready_w, go_r):
        os.close(fd)
    try:
        tag = os.read(ready_r, 1)
        if tag == b"u":
            try:
                before(pid)  # type: ignore[misc]
            finally:
                write_all(go_w, b"g")
            tag = os.read(ready_r, 1)
        rest = read_all(ready_r) if tag in (b"R", b"E") else b""
    except BaseException:
        kill_and_reap(pid, pid)
        raise
    finally:
        os.close(ready_r)
        os.close(go_w)
    if tag == b"R":
        owned = userns_first or userns_of is not None
        return Holder(from_bytes(rest), pid, flags | (sc.CLONE_NEWUSER if owned else 0))
    kill_and_reap(pid, pid)
    if tag == b"E":
        raise from_bytes(rest)
    raise NsrError(f"holder for {sc.flag_names(flags)} died while starting",
                   hint="see `invoke doctor`")


def enter_time_for_children() -> None:
    """setns() into /proc/self/ns/time_for_children: after unshare(CLONE_NEWTIME) only the
    caller's children would be in the new time namespace (time_namespaces(7))."""
    enter("/proc/self/ns/time_for_children", "time")


def quiet_fds(keep: set[int]) -> None:
    """stdin/stdout/stderr to /dev/null and every other fd but ``keep`` closed."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    low = 3
    for fd in sorted(keep) + [1 << 16]:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1


def set_comm(name: str) -> None:
    """prctl(PR_SET_NAME): the name ``ps``/``top`` show for the calling process (15 bytes)."""
    sc.LIBC.prctl(15, name.encode()[:15], 0, 0, 0)




def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true, or raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise NsrError(f"timed out waiting for {what}", errno_name=errno.errorcode[errno.ETIMEDOUT])
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
