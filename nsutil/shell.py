"""The shell backend: run util-linux / iproute2 commands.

Commands are always argument lists (never a shell string), so user input cannot be
interpreted by a shell. A missing program raises :class:`ToolMissing` naming the Debian
package; a non-zero exit raises :class:`CommandError` with the command and its stderr.

A command is started with ``posix_spawn`` (the kernel's vfork + exec: no copy of this
process's memory, no Python in the child), its stdin, stdout and stderr in memory files, so
there is nothing to pump while it runs and many can run at once (:func:`run_many`). Measured
on a 2-core machine, one ``ip -n NS -batch -`` with one line: 16.4 ms through the ``sh``
package (threads and pipes it starts for each command), 6.2 ms with ``subprocess.run``,
4.0 ms with ``posix_spawn`` (bench/shell_commands.py); a lab's shell build runs one per
namespace.
"""
from __future__ import annotations

import os
import select
import signal
from dataclasses import dataclass
from typing import Sequence

from .errors import CommandError, ToolMissing
from .process import Completed, deferred_sigint
from .programs import package_for, which


def have(tool: str) -> bool:
    """True if ``tool`` is on PATH."""
    return which(tool) is not None


def found(argv: Sequence[str]) -> tuple[str, list[str]]:
    """``argv`` as strings, and the path of its program on PATH; :class:`ToolMissing`
    (naming the Debian package) when there is none."""
    argv = [str(a) for a in argv]
    path = which(argv[0])
    if path is None:
        raise ToolMissing(argv[0], package_for(argv[0]))
    return path, argv


def _memfile(name: str, data: bytes = b"") -> int:
    """A memory file (``memfd_create``) holding ``data``, read from its start."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    if data:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_memfile(fd: int) -> str:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0).decode(errors="replace") if size else ""


@dataclass
class Started:
    """A command started by :func:`start`: its pid, a pidfd that polls readable when it
    has exited, and the memory files of its output."""

    argv: list[str]
    pid: int
    pidfd: int
    out: int
    err: int

    def wait(self) -> Completed:
        """Reap it; its exit status (128 + N when killed by signal N, as a shell says) and
        output. Closes its files."""
        try:
            _pid, status = os.waitpid(self.pid, 0)
            code = os.waitstatus_to_exitcode(status)
            return Completed(self.argv, 128 - code if code < 0 else code,
                             _read_memfile(self.out), _read_memfile(self.err))
        finally:
            for fd in (self.pidfd, self.out, self.err):
                os.close(fd)


def start(argv: Sequence[str], *, input: str | bytes | None = None) -> Started:
    """Start ``argv`` (looked up on PATH) with ``input`` on its stdin (else /dev/null) and
    its stdout and stderr kept in memory; SIGINT at its default in it (a Ctrl-C ends it),
    in our process group (the terminal's Ctrl-C reaches it)."""
    path, argv = found(argv)
    data = input.encode() if isinstance(input, str) else (input or b"")
    stdin = _memfile("nsr-stdin", data) if input is not None \
        else os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    fds = [stdin, _memfile("nsr-stdout"), _memfile("nsr-stderr")]
    try:
        pid = os.posix_spawn(path, argv, os.environ,
                             file_actions=[(os.POSIX_SPAWN_DUP2, fd, i)
                                           for i, fd in enumerate(fds)],
                             setsigdef=(signal.SIGINT,), setsigmask=())
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise CommandError(argv, 127, f"{path}: {exc.strerror}") from None
    os.close(fds[0])
    return Started(argv, pid, os.pidfd_open(pid), fds[1], fds[2])


def run_full(argv: Sequence[str], *, input: str | bytes | None = None) -> Completed:
    """Run ``argv`` and return its exit status and output, whatever the status."""
    with deferred_sigint() as pending:
        started = start(argv, input=input)
        if pending:      # Ctrl-C came before the command could get it: pass it on
            os.kill(started.pid, signal.SIGINT)
        return started.wait()


def run(argv: Sequence[str], *, input: str | bytes | None = None, ok: Sequence[int] = (0,)) -> str:
    """Run ``argv`` and return its stdout as text; raise on a missing tool or a failure."""
    done = run_full(argv, input=input)
    if done.returncode not in ok:
        raise CommandError(done.argv, done.returncode, done.stderr)
    return done.stdout


def run_many(commands: Sequence[tuple[Sequence[str], str | bytes | None]],
             width: int | None = None) -> list[str]:
    """Run ``(argv, input)`` commands, up to ``width`` at once (default: one per CPU this
    process may run on, as ``nproc`` counts), as ``xargs -P $(nproc)`` would; their
    stdouts, in order. After a failure (or a Ctrl-C) no new command starts; those running
    are waited for, then the first failure is raised."""
    width = max(1, width or len(os.sched_getaffinity(0)))
    results: list[str] = [""] * len(commands)
    running: dict[int, tuple[int, Started]] = {}     # pidfd -> (index, command)
    failure: CommandError | None = None
    waiting = list(enumerate(commands))[::-1]        # the next one last
    with deferred_sigint() as pending:
        try:
            while True:
                while failure is None and not pending and waiting and len(running) < width:
                    i, (argv, input) = waiting.pop()
                    started = start(argv, input=input)
                    running[started.pidfd] = (i, started)
                    if pending:      # Ctrl-C came while it started: pass it on, start no more
                        os.kill(started.pid, signal.SIGINT)
                if not running:
                    break
                ended = select.poll()
                for fd in running:
                    ended.register(fd, select.POLLIN)
                for fd, _event in ended.poll():
                    i, started = running.pop(fd)
                    done = started.wait()
                    results[i] = done.stdout
                    if done.returncode and failure is None:
                        failure = CommandError(done.argv, done.returncode, done.stderr)
        finally:
            for _i, started in running.values():     # an error starting one: reap the rest
                started.wait()
    if failure is not None:
        raise failure
    return results


def stream(argv: Sequence[str], stdin: int):
    """Start ``argv`` reading the file descriptor ``stdin``, its stdout a pipe to read as
    a stream (a decompressor at the head of a pipeline: ``zstd -dc < BLOB | ...``); the
    ``subprocess.Popen``. The caller waits for it and reads its stderr on failure."""
    import subprocess

    path, argv = found(argv)
    # no preexec_fn (it is unsafe where threads run): exec itself puts the caught SIGINT
    # back to its default, and no Python code runs in the child before it
    return subprocess.Popen([path, *argv[1:]], stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
