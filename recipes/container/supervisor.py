"""The supervisor of a detached container (``container-run --detach``), as conmon is podman's.

One small process per detached container. :func:`spawn` forks twice (the classic double
fork of a daemon): the first child starts a session of its own, forks the supervisor and
exits at once, so the supervisor belongs to no terminal and no caller and outlives the CLI,
which reaps the first child. The supervisor lets go of everything it inherited (stdin,
stdout and stderr become /dev/null, every other descriptor is closed, signals are back to
their defaults), takes the name ``nsr-supervisor`` (``ps``, ``pgrep``), and then

1. makes the container as ``container-run`` does (:func:`recipes.container.prepare` and
   :func:`recipes.container.launch`), the command's stdout and stderr going to the log file
   ``STATE_DIR/NAME/container.log``, and its own stderr too;
2. tells the caller the container's id through the pipe FD (or the error, as one pickled
   exception: the caller prints it as one line and exits 125, 126 or 127);
3. is the parent of the container's processes: they die with it (PR_SET_PDEATHSIG), so a
   SIGKILLed supervisor leaves a *dead* container that ``container-ls`` shows and
   ``cleanup`` removes; SIGTERM, SIGINT, SIGHUP, ... are passed on to PID 1;
4. reaps the container, removes its cgroup, and writes the exit code (and why, for the OOM
   killer or ``--timeout``) into the record with an atomic rename; with ``--rm`` it removes
   the container instead. Then it exits: it dies with nothing else.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import IO, Any

from nsutil import process
from nsutil import syscalls as sc
from nsutil.backend import Runner
from nsutil.errors import NsrError
from nsutil.state import prune, read_json

#: the log file of a detached container, in its directory
LOG = "container.log"
#: the supervisor's process name (``ps``, the test suite's leak guard: ``nsr-*``)
COMM = b"nsr-supervisor"
#: exit status when nsrecipes could not start or run the container (Docker's and podman's)
START_FAILED = 125


def spawn(argv: list[str], rootfs: str | None, backend: str | None, rm: bool,
          options: dict[str, Any]) -> str:
    """Start a supervisor for a new detached container; its id once it runs. Raises what
    kept it from starting (bad input, a name in use, a command not in the rootfs)."""
    request = {"argv": list(argv), "rootfs": rootfs, "backend": backend, "rm": rm,
               "options": options}
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    first = os.fork()
    if first == 0:  # pragma: no cover - runs in the child
        code = START_FAILED
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() == 0:
                code = _supervisor_main(request, write_end)
            else:
                code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        os.waitpid(first, 0)
        answer = _read_answer(f)
    if answer.startswith(b"ok "):
        return answer[3:].decode()
    if answer.startswith(b"E"):
        raise process.from_bytes(answer[1:])
    raise NsrError("the container's supervisor died before it started the container",
                   hint="run it in the foreground (without --detach) to see why")


def _let_go(keep_fd: int) -> None:
    """Drop what the caller's process had: its stdio (now /dev/null), every other
    descriptor but ``keep_fd`` (a caller's pipe held open would make its reader wait for us),
    its signal handlers; work from /."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX"))
    sys.stdout = open(1, "w", buffering=1, closefd=False)   # not the caller's (a pytest
    sys.stderr = open(2, "w", buffering=1, closefd=False)   # capture's file is closed now)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.chdir("/")


def _supervisor_main(request: dict, report_fd: int) -> int:
    """The supervisor process (the second child): let go, take its name, supervise."""
    _let_go(report_fd)
    os.set_inheritable(report_fd, False)   # the container's command never gets it
    sc.LIBC.prctl(15, COMM, 0, 0, 0)       # PR_SET_NAME
    try:
        return supervise(request, report_fd)
    except BaseException:   # noqa: BLE001 -- nobody reads a traceback here; the log does
        import traceback
        traceback.print_exc()
        return START_FAILED


def _read_answer(f: IO[bytes]) -> bytes:
    """One answer: ``ok ID`` or ``E`` + a pickled exception, its length first (the
    container's processes hold the pipe too, so its end is not waited for)."""
    head = f.read(8)
    if len(head) < 8:
        return b""
    return f.read(int.from_bytes(head, "little"))


def _report(fd: int, data: bytes) -> None:
    try:
        os.write(fd, len(data).to_bytes(8, "little") + data)
    finally:
        os.close(fd)


def _to_log(path: str) -> None:
    """From now on the supervisor's own stdout and stderr go to the log (until then they
    are /dev/null: the caller's terminal or pipe is never held, so nobody waits for its
    EOF)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)


def _outcome(run: Runner, ct: Any, spec: Any) -> tuple[int, str | None]:
    """Wait for the container; (exit code, the one line saying why when nsrecipes knows it:
    the OOM killer, ``--timeout``, a step inside that failed)."""
    from recipes import container
    try:
        code = container.wait(run, ct, spec.timeout)
    except NsrError as exc:
        code = exc.exit_code if exc.exit_code in (126, 127, 137) else START_FAILED
        return code, str(exc)
    return code, container.oom_line(ct, spec, code)


def _finish(record_path: str, rm: bool, code: int, why: str | None) -> None:
    """Record the exit code (:func:`recipes.container.state.record_exit`), or with ``--rm``
    remove the container."""
    from recipes.container.state import record_exit, remove_container
    if not rm:
        record_exit(record_path, code, why)
        return
    rec = read_json(record_path)
    if rec is not None:   # else removed meanwhile (cleanup --all, container-rm --force)
        remove_container(rec)
        prune()


def supervise(request: dict, report_fd: int) -> int:
    """The supervisor's work (see the module docstring); its exit status."""
    from recipes import container
    from recipes.container.run import ready
    with open(os.devnull, "rb") as null:
        run = Runner(backend=request["backend"], keep=True, announce_owner=False)
        spec = None
        try:
            spec, fs = container.prepare(run, request["argv"], request["rootfs"],
                                         **dict(request["options"], rm=False))
            ct = container.launch(run, spec, fs, (null.fileno(), None, None), log_name=LOG,
                                  extra={"detached": True, "rm_on_exit": request["rm"]})
            if not ready(ct):     # a step inside failed: the caller says so, nothing stays
                container.wait(run, ct)
        except BaseException as exc:
            run.undo()
            if not isinstance(exc, NsrError):
                exc = NsrError(f"the supervisor failed: {type(exc).__name__}: {exc}")
            _remove_dir(spec)
            _report(report_fd, b"E" + process.to_bytes(exc))
            return START_FAILED
    _to_log(ct.extra["log"])
    _report(report_fd, b"ok " + ct.id.encode())
    try:
        code, why = _outcome(run, ct, spec)
    except Exception as exc:   # noqa: BLE001 -- recorded as one line, never a silent end
        code, why = START_FAILED, f"the supervisor failed: {type(exc).__name__}: {exc}"
    if why:
        print(f"nsrecipes: {why}", file=sys.stderr, flush=True)
    for err in run.undo():
        print(f"nsrecipes: {err}", file=sys.stderr, flush=True)
    _finish(os.path.join(ct.dir, "state.json"), request["rm"], code, why)
    return 0


def _remove_dir(spec: Any) -> None:
    """A container that never started leaves nothing (its directory is kept only for a
    detached one that ran)."""
    from recipes.container.state import remove_container
    from nsutil.state import state_dir
    if spec is None:
        return
    rec = read_json(state_dir(spec.name, "state.json", create=False))
    if rec is not None and rec.get("creator", {}).get("pid") == os.getpid():
        remove_container(rec)
        prune()
