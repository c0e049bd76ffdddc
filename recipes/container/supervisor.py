"""The supervisor of a detached container (``container-run --detach``), as conmon is podman's.

One small process per detached container. :func:`spawn` starts it as
``python -m recipes.container.supervisor FD`` (the request, JSON, on its stdin); it forks once more and the first
process exits, so the supervisor belongs to no terminal and no caller (a double fork: it
outlives the CLI, whose ``wait`` reaps the first process). It then

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

import json
import os
import pickle
import subprocess
import sys
import time
from typing import IO, Any

from nsutil import syscalls as sc
from nsutil.backend import Runner
from nsutil.errors import NsrError
from nsutil.state import atomic_write_json, prune, read_json

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
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    try:
        first = subprocess.Popen([sys.executable, "-m", "recipes.container.supervisor",
                                  str(write_end)],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, pass_fds=(write_end,), env=env)
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        first.communicate(json.dumps(request).encode())
        answer = _read_answer(f)
    if answer.startswith(b"ok "):
        return answer[3:].decode()
    if answer.startswith(b"E"):
        raise pickle.loads(answer[1:])
    raise NsrError("the container's supervisor died before it started the container",
                   hint="run it in the foreground (without --detach) to see why")


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


def _finish(name: str, record_path: str, rm: bool, code: int, why: str | None) -> None:
    """Record the exit code (an atomic rename), or with ``--rm`` remove the container."""
    from recipes.container.state import remove_container
    rec = read_json(record_path)
    if rec is None:   # removed meanwhile (cleanup --all, container-rm --force)
        return
    if rm:
        remove_container(rec)
        prune()
        return
    rec.update(exit_code=code, finished=time.time(), why=why)
    atomic_write_json(record_path, rec)


def supervise(request: dict, report_fd: int) -> int:
    """The supervisor's work (see the module docstring); its exit status."""
    from recipes import container
    from recipes.container.run import ready
    with open(os.devnull, "rb") as null:
        run = Runner(backend=request["backend"], keep=True)
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
            _report(report_fd, b"E" + pickle.dumps(exc))
            return START_FAILED
    _to_log(ct.extra["log"])
    _report(report_fd, b"ok " + ct.id.encode())
    code, why = _outcome(run, ct, spec)
    if why:
        print(f"nsrecipes: {why}", file=sys.stderr, flush=True)
    for err in run.undo():
        print(f"nsrecipes: {err}", file=sys.stderr, flush=True)
    _finish(ct.name, os.path.join(ct.dir, "state.json"), request["rm"], code, why)
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


def main(args: list[str]) -> int:
    """``python -m recipes.container.supervisor FD`` (the request on stdin): fork, let the
    caller go on, and supervise in a session of its own."""
    report_fd, request = int(args[0]), json.loads(sys.stdin.buffer.read())
    os.set_inheritable(report_fd, False)   # the container's command never gets it
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    sc.LIBC.prctl(15, COMM, 0, 0, 0)    # PR_SET_NAME
    return supervise(request, report_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
