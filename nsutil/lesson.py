"""Lessons: a learner's own shell inside a demo's namespaces (``--shell``), and a demo run
one step at a time (``--step``).

The document's programs end in ``execv("/bin/bash")`` inside the new namespaces: the reader
types ``hostname``, ``echo $$``, ``ipcs -q``, then ``exit``, and is back on the host. Here
the :class:`~nsutil.backend.Runner` does that; this module holds the mechanics:

* :class:`Inside` -- where a shell goes: the namespaces of a process (``nsenter -t PID
  --uts --ipc``), a named network namespace (``nsenter --net=/run/netns/NAME``), optionally
  as PID 1 of one more, new PID namespace (``unshare --pid --fork --mount-proc``);
* :func:`open_shell` / :func:`open_native` -- the shell and native forms: ``nsenter`` +
  bash, or setns() (+ fork for a PID namespace) + exec of bash. Bash gets the terminal: it
  puts itself in its own process group and makes it the terminal's foreground group (job
  control); we ignore Ctrl-C and SIGTTOU while it runs and take the terminal back after;
* :class:`Lesson` -- the options and the terminal: which stdin works (a terminal; a pipe
  runs the shell non-interactively, as ``bash -s``), and the step prompt (Enter / s / q).
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TextIO

from . import process, procfs, programs
from . import syscalls as sc
from .errors import InvalidInput, NsrError, ToolMissing
from .nstypes import parse_types

#: the document's prompt: ``[root@NewNamespace]#`` (bash expands \u, \h and \$ itself)
PROMPT = "[\\u@\\h{label}]\\$ "
#: signals the demo process leaves to the shell while it runs
HANDED_OVER = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTOU, signal.SIGTTIN)
PR_SET_CHILD_SUBREAPER = 36
STEP_KEYS = "Enter: run it   s: a shell in the namespaces made so far   q: undo all and quit"


class LessonQuit(NsrError):
    """The learner pressed ``q`` (or ended the input) at a step: everything is undone."""

    exit_code = 0


# --- where a shell goes ------------------------------------------------------------------------

@dataclass
class Inside:
    """Namespaces a learner's shell can be opened in."""

    pid: Any = None                 # join this process's namespaces ...
    types: tuple[str, ...] = ()     # ... of these types (user first, as nsenter does)
    netns: str | None = None        # or the named network namespace /run/netns/NAME
    new_pid: bool = False           # and be PID 1 of a new PID namespace with its own /proc

    def alive(self) -> bool:
        """True while these namespaces can still be entered."""
        if self.netns is not None:
            return os.path.exists(f"/run/netns/{self.netns}")
        return isinstance(self.pid, int) and procfs.pid_alive(self.pid)

    def describe(self) -> str:
        """"the UTS+IPC namespaces of pid 4711", "network namespace nsr-a", ..."""
        if self.netns is not None:
            where = f"network namespace {self.netns}"
        else:
            where = f"the {'+'.join(t.upper() for t in self.types)} namespaces of pid {self.pid}"
        return where + (", as PID 1 of a new PID namespace" if self.new_pid else "")

    def label(self) -> str:
        """Added to the prompt where the hostname alone does not say "inside"."""
        if self.netns is not None:
            return f" netns:{self.netns}"
        if "uts" in self.types:
            return ""
        return " " + "+".join(self.types) + (",pid" if self.new_pid else "")

    def argv(self, shell: list[str]) -> list[str]:
        """The shell form: ``nsenter ... -- [unshare --pid --fork --mount-proc --] bash``."""
        if self.new_pid:
            shell = ["unshare", "--pid", "--fork", "--mount-proc", "--"] + shell
        if self.netns is not None:
            return ["nsenter", f"--net=/run/netns/{self.netns}", "--"] + shell
        opts = [t.option for t in parse_types(list(self.types))]
        if "--user" in opts and os.geteuid() != 0:
            opts.append("--preserve-credentials")  # as recipes.common.holder.nsenter_argv
        pid = self.pid if isinstance(self.pid, str) else str(self.pid)  # $PID under --explain
        return ["nsenter", "-t", pid] + opts + ["--"] + shell

    def joins_pid(self) -> bool:
        """True if the shell must be a child of the joining process (a PID namespace)."""
        return self.new_pid or "pid" in self.types

    def enter(self) -> None:
        """Native: setns() into these namespaces (in a forked child), as nsenter does."""
        if self.netns is not None:
            process.enter_all(f"/run/netns/{self.netns}", ["net"])
        else:
            process.enter_all(self.pid, self.types)
        if self.new_pid:
            sc.unshare(sc.CLONE_NEWPID | sc.CLONE_NEWNS)
            sc.make_propagation("/", "private", recursive=True)


# --- the terminal ------------------------------------------------------------------------------

def stdin_kind(fd: int = 0) -> str:
    """``tty``, ``pipe`` (a FIFO or socket) or what else stdin is (``file``, ``closed``)."""
    try:
        if os.isatty(fd):
            return "tty"
        mode = os.fstat(fd).st_mode
    except OSError:
        return "closed"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "pipe"
    return "/dev/null" if stat.S_ISCHR(mode) else "file"


@dataclass
class Lesson:
    """``--shell`` and ``--step`` of one run (shared by the Runners of a tour)."""

    shell: bool = False
    step: bool = False
    fd: int = 0   # where the learner's keys (and the shell's input) come from

    def check(self) -> None:
        """Refuse, before anything is made, a stdin a learner cannot type on."""
        kind = stdin_kind(self.fd)
        if kind not in ("tty", "pipe"):
            option = "--shell" if self.shell else "--step"
            raise InvalidInput(f"{option} needs a terminal to type on, and stdin is {kind}",
                               hint="run it in a terminal, or pipe the commands in: "
                                    "echo hostname | invoke uts-demo --shell")
        if self.shell and programs.which("bash") is None:
            raise ToolMissing("bash", "bash")

    @property
    def interactive(self) -> bool:
        """True on a terminal; False on a pipe (the shell reads its commands from it)."""
        return stdin_kind(self.fd) == "tty"

    def shell_argv(self) -> list[str]:
        """``bash --norc -i`` (job control, the prompt) or ``bash --norc -s`` on a pipe."""
        return ["bash", "--norc", "-i" if self.interactive else "-s"]

    def ask(self, number: int, title: str, command: str, out: TextIO) -> str:
        """Show step ``number`` and read the learner's answer: ``run``, ``shell`` or ``quit``."""
        print(f"\n-- step {number}: {title}\n   $ {command}", file=out, flush=True)
        while True:
            print(f"   [{STEP_KEYS}] > ", end="", file=out, flush=True)
            line = _read_line(self.fd)
            if not os.isatty(self.fd) and line is not None:
                print(line, file=out, flush=True)  # what a terminal would have echoed
            if line is None:
                print("", file=out, flush=True)
                raise LessonQuit(f"input ended at step {number}: what this run made is undone",
                                 hint="answer with Enter, s or q")
            answer = line.strip().lower()
            if answer in ("", "y", "r"):
                return "run"
            if answer in ("s", "sh", "shell"):
                return "shell"
            if answer in ("q", "quit"):
                raise LessonQuit(f"quit at step {number}: what this run made is undone",
                                 hint="run it again to go further")
            print(f"   ({answer!r}? type Enter, s or q)", file=out, flush=True)


def _read_line(fd: int) -> str | None:
    """One line from ``fd``, a byte at a time (so a pipe's next lines stay for the shell);
    None at end of input."""
    data = b""
    while True:
        try:
            byte = os.read(fd, 1)
        except OSError:      # a hung-up terminal: EIO
            return None
        if not byte:
            return data.decode(errors="replace") if data else None
        if byte == b"\n":
            return data.decode(errors="replace")
        data += byte


def shell_env(inside: Inside) -> dict[str, str]:
    """Our environment with the document's prompt and no history file."""
    env = {k: v for k, v in os.environ.items() if k not in ("PROMPT_COMMAND", "HISTFILE")}
    env.update(PS1=PROMPT.format(label=inside.label()), HISTFILE="", NSR_LESSON=inside.describe())
    return env


def _default_signals() -> None:
    """In the shell's process, before exec: the signals we ignore are the shell's again."""
    for sig in HANDED_OVER + (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def terminal_handed_over(fd: int) -> Iterator[None]:
    """While the shell runs: Ctrl-C, Ctrl-Z and background-terminal signals are its, not ours;
    a hang-up or SIGTERM ends the wait (and so the demo, which undoes). We are the shell's
    subreaper: what the learner left running (``sleep 1000 &``, a nohup) is re-parented to
    us and killed when the shell ends, so it cannot keep a namespace alive. After: take the
    terminal back (the shell may have died without giving it back)."""
    main = os.getpid()
    before = set(procfs.children_of(main))
    sc.LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def on_hangup(signum: int, frame: Any) -> None:
        if os.getpid() != main:
            os._exit(128 + signum)   # a fork of ours before its exec
        _interrupt(signum, frame)

    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in HANDED_OVER}
    old.update({sig: signal.signal(sig, on_hangup) for sig in (signal.SIGHUP, signal.SIGTERM)})
    try:
        yield
    finally:
        sc.LIBC.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        for child in set(procfs.children_of(main)) - before:
            _kill_tree(child)
        if os.isatty(fd):
            try:
                os.tcsetpgrp(fd, os.getpgrp())
            except OSError:
                pass  # the terminal is gone
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _kill_tree(pid: int) -> None:
    """SIGKILL our child ``pid`` and everything below it; reap it."""
    for p in procfs.descendants(pid) + [pid]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _finish(wait: Callable[[], int]) -> int:
    """Wait for the shell; its exit status (if we are interrupted, the shell and everything
    it started are killed on the way out of :func:`terminal_handed_over`)."""
    code = wait()
    if code in (128 + signal.SIGHUP, 128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGHUP,
                -signal.SIGINT, -signal.SIGTERM):
        raise KeyboardInterrupt  # the terminal hung up, or Ctrl-C ended a non-interactive shell
    return code


def open_shell(argv: list[str], inside: Inside, fd: int = 0) -> int:
    """The shell form: run ``nsenter ... -- bash`` on this terminal; its exit status."""
    if programs.which(argv[0]) is None:
        raise ToolMissing(argv[0], programs.package_for(argv[0]))
    with terminal_handed_over(fd):
        proc = subprocess.Popen(argv, env=shell_env(inside), stdin=fd,
                                preexec_fn=_default_signals)
        return _finish(proc.wait)


def open_native(inside: Inside, shell: list[str], fd: int = 0) -> int:
    """The native form: setns() into ``inside`` and exec bash there (through one more fork
    when a PID namespace is joined or made: only children land in it)."""
    path = programs.which(shell[0]) or shell[0]
    env = shell_env(inside)

    def mount_proc() -> None:
        _default_signals()
        if inside.new_pid:
            sc.mount("proc", "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)

    with terminal_handed_over(fd):
        if not inside.joins_pid():
            def enter_then_exec() -> None:
                _default_signals()
                inside.enter()
            proc = subprocess.Popen([path] + shell[1:], env=env, stdin=fd,
                                    preexec_fn=enter_then_exec)
            return _finish(proc.wait)

        def middle() -> int:   # the native `nsenter --pid` / `unshare --fork`: wait for it
            inside.enter()
            code = subprocess.Popen([path] + shell[1:], env=env, stdin=fd,
                                    preexec_fn=mount_proc).wait()
            return code if code >= 0 else 128 - code

        pid = process.fork()
        if pid == 0:
            process.in_child(middle)
        return _finish(lambda: process.wait_child(pid))


def banner(inside: Inside, hint: str, interactive: bool, out: TextIO = sys.stdout) -> None:
    """What the learner reads before the shell opens."""
    tail = "type exit (or Ctrl-D) to go on" if interactive else "reading commands from stdin"
    print(f"\n-- your shell in {inside.describe()}; {tail} --"
          + (f"\n   try: {hint}" if hint else ""), file=out, flush=True)
