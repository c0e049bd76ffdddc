"""The shell backend: run util-linux / iproute2 commands through the ``sh`` package.

Commands are always argument lists (never a shell string), so user input cannot be
interpreted by a shell. A missing program raises :class:`ToolMissing` naming the Debian
package; a non-zero exit raises :class:`CommandError` with the command and its stderr.
"""
from __future__ import annotations

import shutil
from typing import Sequence

from .errors import CommandError, ToolMissing
from .process import Completed, default_sigint, deferred_sigint, package_for


def have(tool: str) -> bool:
    """True if ``tool`` is on PATH."""
    return shutil.which(tool) is not None


def run_full(argv: Sequence[str], *, input: str | bytes | None = None) -> Completed:
    """Run ``argv`` and return its exit status and output, whatever the status."""
    import sh

    argv = [str(a) for a in argv]
    path = shutil.which(argv[0])
    if path is None:
        raise ToolMissing(argv[0], package_for(argv[0]))
    with deferred_sigint():
        proc = sh.Command(path)(*argv[1:], _in=input, _ok_code=list(range(256)), _tty_out=False,
                                _return_cmd=True, _preexec_fn=default_sigint)
    return Completed(argv, proc.exit_code, proc.stdout.decode(errors="replace"),
                     proc.stderr.decode(errors="replace"))


def run(argv: Sequence[str], *, input: str | bytes | None = None, ok: Sequence[int] = (0,)) -> str:
    """Run ``argv`` and return its stdout as text; raise on a missing tool or a failure."""
    import sh  # lazy: ~0.1 s, only the shell backend needs it

    argv = [str(a) for a in argv]
    path = shutil.which(argv[0])
    if path is None:
        raise ToolMissing(argv[0], package_for(argv[0]))
    try:
        with deferred_sigint():
            out = sh.Command(path)(*argv[1:], _in=input, _ok_code=list(ok), _tty_out=False,
                                   _decode_errors="replace", _preexec_fn=default_sigint)
    except sh.ErrorReturnCode as exc:
        raise CommandError(argv, exc.exit_code, exc.stderr.decode(errors="replace")) from None
    return str(out)


def stream(argv: Sequence[str], stdin: int):
    """Start ``argv`` reading the file descriptor ``stdin``, its stdout a pipe to read as
    a stream (a decompressor at the head of a pipeline: ``zstd -dc < BLOB | ...``); the
    ``subprocess.Popen``. The caller waits for it and reads its stderr on failure."""
    import subprocess

    argv = [str(a) for a in argv]
    path = shutil.which(argv[0])
    if path is None:
        raise ToolMissing(argv[0], package_for(argv[0]))
    # no preexec_fn (it is unsafe where threads run): exec itself puts the caught SIGINT
    # back to its default, and no Python code runs in the child before it
    return subprocess.Popen([path, *argv[1:]], stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
