"""Drive a recipe one step at a time from another process, as ``--step`` does for a learner.

A :class:`Stepped` child runs one call of the Python API with a Runner whose lesson pauses
before every step and reads the answer (Enter) from a pipe: the test sees each step's title
before it runs, can let it run, and can SIGKILL the child between any two steps -- a crash at
a known point of a real run, on the real kernel, with no code of the recipe replaced.
"""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

#: the child: ``WHAT NAME BACKEND [ARGS]``; WHAT is create (ARGS: the types) or remove
CHILD = r"""
import sys
from nsutil.backend import Runner
from nsutil.lesson import Lesson
from recipes import env
what, name, backend = sys.argv[1:4]
with Runner(backend=backend, keep=True, out=sys.stdout,
            lesson=Lesson(step=True, fd=0)) as run:
    if what == "create":
        env.create(run, name, sys.argv[4])
    else:
        env.remove(run, name)
print("== done", flush=True)
"""

HEADER = re.compile(r"^-- step (\d+): (.*)$")


class Stepped:
    """A child running ``env.create``/``env.remove`` that waits before every step."""

    def __init__(self, what: str, name: str, backend: str, *args: str,
                 environ: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([PY, "-c", CHILD, what, name, backend, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": ROOT, **(environ or {})})
        self.titles: list[str] = []
        self.waiting: str | None = None    #: the title of the step it waits before
        self._buf = b""

    @property
    def pid(self) -> int:
        """The child's pid (the creator or remover)."""
        return self.proc.pid

    def _line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line from the child in {timeout} s: {self._buf!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return None
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def pause(self, timeout: float = 120) -> str | None:
        """Wait until the child stops before its next step; that step's title (None: it
        finished). Asked again before :meth:`go`, the same step."""
        if self.waiting is not None:
            return self.waiting
        while True:
            line = self._line(timeout)
            if line is None or line.startswith("== done"):
                return None
            m = HEADER.match(line)
            if m:
                self.titles.append(m.group(2))
                self.waiting = m.group(2)
                return self.waiting

    def go(self) -> None:
        """Let the step it waits before run."""
        self.waiting = None
        self.proc.stdin.write(b"\n")
        self.proc.stdin.flush()

    def until(self, words: str, timeout: float = 120) -> None:
        """Run steps until the next one's title contains ``words`` (it waits before it)."""
        title = self.pause(timeout)
        while title is not None and words not in title:
            self.go()
            title = self.pause(timeout)
        if title is None:
            raise AssertionError(f"no step with {words!r}: {self.titles}")

    def steps(self, count: int, timeout: float = 120) -> None:
        """Run ``count`` steps (fewer if it finishes first); it then waits before the next."""
        for _ in range(count):
            if self.pause(timeout) is None:
                return
            self.go()
        self.pause(timeout)

    def finish(self, timeout: float = 120) -> int:
        """Run every remaining step; the exit status."""
        while self.pause(timeout) is not None:
            self.go()
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the child (a crash between two steps) and reap it."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(60)

    def stderr(self) -> str:
        """What it wrote on stderr (once it has ended)."""
        return self.proc.stderr.read().decode(errors="replace")
