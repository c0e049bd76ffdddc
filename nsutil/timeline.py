"""Where a run's time goes: marks from every process of a run, in one file.

Off unless :func:`enable` (or ``$NSR_TIMELINE=PATH``) names a file: then :func:`mark` appends
one line ``NANOSECONDS PID LABEL`` to it (CLOCK_MONOTONIC, which every process of the
machine shares), and the :class:`~nsutil.backend.Runner` marks the start and end of every
step it runs. The descriptor is inherited by forked processes (a container's process
outside, its PID 1, the command until its exec), so a bench reads one file with the marks
of all of them, in the order the machine did the work. Each line is one ``write()`` to an
``O_APPEND`` file: lines of concurrent processes never mix.

Off, a mark costs one comparison; on, one ``write()`` (about 2 us).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

_fd = -1


def enable(path: str) -> None:
    """Append marks to ``path`` from now on (in this process and the ones it forks)."""
    global _fd
    disable()
    _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def disable() -> None:
    """Stop marking (a forked process that kept the descriptor marks on until it exits)."""
    global _fd
    if _fd >= 0:
        os.close(_fd)
        _fd = -1


def on() -> bool:
    """True while marks are written."""
    return _fd >= 0


def mark(label: str) -> None:
    """One mark ``label`` now (nothing unless enabled)."""
    if _fd >= 0:
        try:
            os.write(_fd, f"{time.monotonic_ns()} {os.getpid()} {label}\n".encode())
        except OSError:
            pass


@dataclass(frozen=True)
class Mark:
    """One line of a timeline file."""

    ns: int
    pid: int
    label: str


def read(path: str) -> list[Mark]:
    """The marks in ``path``, in time order."""
    with open(path) as f:
        rows = [line.rstrip("\n").split(" ", 2) for line in f if line.strip()]
    return sorted((Mark(int(ns), int(pid), label) for ns, pid, label in rows),
                  key=lambda m: m.ns)


if os.environ.get("NSR_TIMELINE"):     # pragma: no cover - set by a bench around a command
    enable(os.environ["NSR_TIMELINE"])
