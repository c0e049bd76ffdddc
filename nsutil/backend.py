"""Steps and the runner that executes them through a backend.

A recipe is a sequence of :class:`Step` objects. Each step has

* a shell form -- ``argv``, the command line a learner would type (``unshare --uts ...``),
  run by the shell backend (:mod:`nsutil.shell`) and printed by ``--explain``;
* a native form -- ``native``, a callable doing the same with syscalls or netlink;
* optionally ``parse``, which turns the shell form's stdout into the value ``native`` returns,
  so both backends give the same observable result;
* optionally ``undo``, the step that reverts it. The :class:`Runner` keeps those on a stack
  and, when something fails half-way (or Ctrl-C), runs them last-in first-out.

Backend choice: ``auto`` (shell where the tool is installed, native otherwise), ``shell`` or
``native``; from the ``--backend`` option or the ``NSR_BACKEND`` environment variable.

Lessons (``--shell``, ``--step``) belong to the Runner, which sees every step go by: with a
:class:`~nsutil.lesson.Lesson` it pauses before each step, and opens a learner's shell where
a recipe says "now the learner's shell" (:meth:`Runner.learner_shell`) in the namespaces
the recipe declared (:meth:`Runner.inside`). The mechanics are in :mod:`nsutil.lesson`.
"""
from __future__ import annotations

import os
import shlex
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TextIO

from .errors import InvalidInput, NsrError, ToolMissing
from .programs import package_for
from . import rootless, shell, timeline

if TYPE_CHECKING:   # the lessons (--step, --shell) load only when a run has one
    from .lesson import Inside, Lesson

BACKENDS = ("auto", "shell", "native")
#: the Ctrl-C (KeyboardInterrupt) received during one undo that cuts it short
UNDO_CUT_SHORT_AT = 3


@dataclass(eq=False)
class _Undo:
    """One undo stack running now: in which thread, and how many Ctrl-C it has received."""

    thread: int = field(default_factory=threading.get_ident)
    interrupts: int = 0

    @property
    def cut_short(self) -> bool:
        """True once the Ctrl-C that cuts this undo short has come."""
        return self.interrupts >= UNDO_CUT_SHORT_AT

    def interrupt(self) -> bool:
        """Count one Ctrl-C; True if it is the one that cuts the undo short."""
        self.interrupts += 1
        return self.cut_short


_undoing: list[_Undo] = []    #: one entry per undo stack running now (any thread)
#: the rootless owner line was printed in this process (it is said once, not per Runner)
_owner_said: list[bool] = []


def undoing() -> bool:
    """True while a Runner runs its undo stack: a signal handler that would interrupt it
    should let it finish (a hung-up terminal both fails the read and sends SIGHUP; the
    second must not cut the undo the first began short)."""
    return bool(_undoing)


def interrupt_undo() -> bool:
    """A Ctrl-C came while an undo runs and was not raised (a handler ignored it so the
    running step goes on): count it on that undo (the calling thread's innermost, else the
    latest), which raises KeyboardInterrupt once its stack is empty. True if it is the
    third during that undo: then raise KeyboardInterrupt now, to cut the undo short."""
    if not _undoing:
        return False
    mine = [u for u in _undoing if u.thread == threading.get_ident()]
    return (mine or _undoing)[-1].interrupt()


#: the Runners entered while a command line task runs (:func:`kept_until_done`); None: not
#: tracked (a library's own use)
_kept: list["Runner"] | None = None


@contextmanager
def kept_until_done() -> Iterator[None]:
    """What the Runners entered in the body keep (``keep=True``) is kept only once the body
    is done: a Ctrl-C (KeyboardInterrupt) before then undoes what is left on their stacks,
    the last Runner first, and is raised again -- also one that lands as a Runner leaves its
    ``with`` block. A run that printed "ready" and was interrupted before it ended is an
    interrupted run all the same: it leaves nothing behind."""
    global _kept
    _kept = []
    try:
        yield
        for runner in _kept:
            runner.undo_stack.clear()
    except KeyboardInterrupt:
        for runner in reversed(_kept):
            if not runner.cut_short:    # the third Ctrl-C during its undo: leave the rest
                runner.undo()
        raise
    finally:
        _kept = None


def resolve_backend(name: str | None = None) -> str:
    """The backend to use: ``name``, else ``$NSR_BACKEND``, else ``auto``; validated."""
    chosen = (name or os.environ.get("NSR_BACKEND") or "auto").strip().lower()
    if chosen not in BACKENDS:
        raise InvalidInput(f"unknown backend {chosen!r}", hint="choose auto, shell or native")
    return chosen


class Placeholder(str):
    """Stands for a value that only exists when the recipe really runs (``--explain``)."""

    def __getattr__(self, name: str) -> "Placeholder":
        if name.startswith("__"):
            raise AttributeError(name)
        return Placeholder(f"{self}.{name}" if not self.startswith("$") else f"${name.upper()}")


def derived(text: str, *sources: Any) -> str:
    """``text`` (built from ``sources``, e.g. ``f"/proc/{pid}/status"``) as a
    :class:`Placeholder` when any source is one, so ``--explain`` prints ``/proc/$PID/status``
    unquoted, as a learner would type it."""
    return Placeholder(text) if any(isinstance(s, Placeholder) for s in sources) else text


@dataclass
class Step:
    """One step of a recipe; see the module docstring."""

    title: str
    argv: Sequence[Any] | None = None
    native: Callable[[], Any] | None = None
    parse: Callable[[str], Any] | None = None
    shell: Callable[[list[str]], Any] | None = None
    undo: "Step | None" = None
    #: what this step returns under --explain (e.g. Placeholder("$PID"))
    placeholder: Any = None
    #: stdin for the shell form
    input: str | None = None
    #: shown instead of argv when the shell form is not a plain command (e.g. a file write)
    display: str | None = None

    def command_line(self) -> str:
        """The equivalent shell command line, as --explain prints it."""
        if self.display is not None:
            return self.display
        if self.argv is None:
            return "(native only)"
        return " ".join(a if isinstance(a, Placeholder) else shlex.quote(str(a)) for a in self.argv)


@dataclass
class Runner:
    """Runs steps through the chosen backend and keeps the undo stack.

    Use it as a context manager: on an exception (including Ctrl-C) everything done so far
    is undone, last in first out. With ``keep=False`` it is also undone on success (demos);
    with ``keep=True`` what was made stays (``net-veth``, ``env-create``).

    A Ctrl-C during the undo does not leave the rest of the stack behind: :meth:`undo` goes
    on with the remaining steps and raises KeyboardInterrupt once the stack is empty (out
    of the ``with`` block). The third Ctrl-C during the same undo cuts it short at once,
    leaving the rest on the stack. With Python's default SIGINT handler the step a Ctrl-C
    lands in is abandoned; the command line's handler (:func:`cli.common.nsr_task`) instead
    lets that step finish, counting the Ctrl-C with :func:`interrupt_undo`.
    """

    backend: str | None = None   # None: $NSR_BACKEND, else auto
    explain: bool = False
    keep: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    undo_stack: list[Step] = field(default_factory=list)
    count: int = 0
    #: --shell / --step (None: neither)
    lesson: Lesson | None = None
    #: the namespaces declared so far (:meth:`inside`), where `s` at a step opens a shell
    insides: list[Inside] = field(default_factory=list)
    #: the third Ctrl-C during an undo cut it short, leaving the rest of the stack
    cut_short: bool = False
    #: without root: every namespace owned by a user namespace made first (None: decided
    #: once here, by :func:`nsutil.rootless.decide`)
    rootless: bool | None = None
    #: print :func:`nsutil.rootless.owner_line` once without root (False where the output is
    #: a command's own, as container-run's)
    announce_owner: bool = True

    def __post_init__(self) -> None:
        self.backend = resolve_backend(self.backend)
        if self.rootless is None:
            self.rootless = rootless.decide()
        if self.lesson is not None and not self.explain:
            self.lesson.check()  # a stdin the learner cannot type on: refused before anything

    # -- output ---------------------------------------------------------------------------
    def say_owner(self) -> None:
        """Without root, once per process (in --explain too): which outside uid is "root"
        in the user namespace that owns everything this run makes
        (:func:`nsutil.rootless.owner_line`)."""
        if self.rootless and self.announce_owner and not _owner_said:
            _owner_said.append(True)
            print(rootless.owner_line(), file=self.out, flush=True)

    def heading(self, text: str) -> None:
        """Print a section heading (in --explain too)."""
        self.say_owner()
        print(f"\n== {text} ==", file=self.out, flush=True)

    def say(self, text: str = "") -> None:
        """Print what the demo observed (not under --explain, where nothing runs)."""
        if not self.explain:
            print(text, file=self.out, flush=True)

    # -- running --------------------------------------------------------------------------
    def form_for(self, step: Step) -> str:
        """``shell`` or ``native``: which form of ``step`` this runner uses."""
        has_shell = step.argv is not None or step.shell is not None
        if self.backend == "native" and step.native is not None:
            return "native"
        if self.backend == "shell" and has_shell:
            return "shell"
        if step.native is None:
            return "shell"
        if not has_shell:
            return "native"
        tool = str(step.argv[0]) if step.argv else ""
        return "shell" if tool and shell.have(tool) else "native"

    def run(self, step: Step) -> Any:
        """Run one step (or, under --explain, print it) and push its undo step."""
        self.count += 1
        self.say_owner()
        self._pause(step)
        if self.explain:
            print(f"  [{self.count}] {step.title}\n      $ {step.command_line()}",
                  file=self.out, flush=True)
            if step.undo is not None:
                self.undo_stack.append(step.undo)
            return step.placeholder if step.placeholder is not None else Placeholder("$OUTPUT")
        value = self._execute(step)
        if step.undo is not None:
            self.undo_stack.append(step.undo)
        return value

    def run_together(self, steps: Sequence[Step], width: int | None = None) -> list[Any]:
        """Run ``steps``, which do not depend on each other, as :meth:`run` would one by one,
        but their commands up to ``width`` at once (default: one per CPU) where every step
        is a plain command on the shell backend (``argv`` and ``input``, no ``shell``
        callable) and no ``--step`` lesson pauses; otherwise one after the other. Under
        ``--explain`` each is printed as :meth:`run` prints it, the first saying which run
        side by side. Their values, in order."""
        plain = all(s.shell is None and s.argv is not None and self.form_for(s) == "shell"
                    for s in steps)
        if plain and len(steps) > 1:
            steps = [replace(steps[0], title=f"{steps[0].title} -- it and the next "
                             f"{len(steps) - 1} run side by side, up to one per CPU (as xargs "
                             "-P $(nproc))"), *steps[1:]]
        if self.explain or not plain or len(steps) < 2 or (self.lesson and self.lesson.step):
            return [self.run(s) for s in steps]
        self.say_owner()
        self.count += len(steps)
        commands = [([str(a) for a in s.argv or ()], s.input) for s in steps]
        texts = shell.run_many(commands, width)
        self.undo_stack += [s.undo for s in steps if s.undo is not None]
        return [s.parse(t) if s.parse else t for s, t in zip(steps, texts)]

    def _execute(self, step: Step) -> Any:
        if timeline.on():
            timeline.mark(f"> {step.title}")
            try:
                return self._execute_step(step)
            finally:
                timeline.mark(f"< {step.title}")
        return self._execute_step(step)

    def _execute_step(self, step: Step) -> Any:
        if self.form_for(step) == "native":
            return step.native()  # type: ignore[misc]
        argv = [str(a) for a in step.argv] if step.argv is not None else []
        if argv and not shell.have(argv[0]):
            raise ToolMissing(argv[0], package_for(argv[0]))
        if step.shell is not None:
            return step.shell(argv)
        text = shell.run(argv, input=step.input)
        return step.parse(text) if step.parse else text

    def defer(self, step: Step) -> None:
        """Push an undo step without running anything now."""
        self.undo_stack.append(step)

    def finish(self, step: Step) -> None:
        """Run a deferred undo step now (e.g. "the child exits") and drop it from the stack."""
        self.undo_stack = [s for s in self.undo_stack if s is not step]
        self.count += 1
        self._pause(step)
        if self.explain:
            print(f"  [{self.count}] {step.title}\n      $ {step.command_line()}", file=self.out)
            return
        self._execute(step)

    # -- lessons ------------------------------------------------------------------------------
    @property
    def wants_shell(self) -> bool:
        """True with --shell: the recipe may make what its learner's shell needs."""
        return self.lesson is not None and self.lesson.shell

    def inside(self, where: Inside) -> None:
        """A recipe declares namespaces it made: `s` at a later step opens a shell there."""
        self.insides.append(where)

    def learner_shell(self, where: Inside | None = None, hint: str = "") -> None:
        """The demo's "now the learner's shell" moment: with --shell, a shell in ``where``
        (default: the namespaces declared last); the demo goes on when it exits."""
        where = where or (self.insides[-1] if self.insides else None)
        if not self.wants_shell or where is None:
            return
        if not self.explain:
            from .lesson import banner
            banner(where, hint, self.lesson.interactive, self.out)
        self.run(self._shell_step(where))

    def _shell_step(self, where: Inside) -> Step:
        from .lesson import open_native, open_shell
        fd = self.lesson.fd if self.lesson else 0
        bash = self.lesson.shell_argv() if self.lesson and not self.explain else ["bash", "-i"]
        return Step(f"open a shell in {where.describe()}", argv=where.argv(bash),
                    shell=lambda argv: open_shell(argv, where, fd),
                    native=lambda: open_native(where, bash, fd))

    def _pause(self, step: Step) -> None:
        """--step: show the step and wait for Enter (run it), s (a shell) or q (quit)."""
        if self.lesson is None or not self.lesson.step or self.explain:
            return
        while self.lesson.ask(self.count, step.title, step.command_line(), self.out) == "shell":
            alive = [w for w in self.insides if w.alive()]
            if not alive:
                print("   (no namespaces made yet: nothing to enter)", file=self.out, flush=True)
                continue
            from .lesson import banner
            banner(alive[-1], "", self.lesson.interactive, self.out)
            self._execute(self._shell_step(alive[-1]))

    def undo(self) -> list[NsrError]:
        """Run the undo stack last-in first-out; keep going past failures and return them.

        A KeyboardInterrupt in a step (Ctrl-C) is remembered and the remaining steps run;
        it is raised again once the stack is empty, as is one a signal handler counted with
        :func:`interrupt_undo` instead of raising it. The third during this undo
        (:data:`UNDO_CUT_SHORT_AT`) is raised at once, leaving the rest on the stack.
        """
        errors: list[NsrError] = []
        record = _Undo()
        pending: KeyboardInterrupt | None = None
        _undoing.append(record)
        try:
            while self.undo_stack:
                try:
                    self._undo_step(self.undo_stack.pop(), errors)
                except KeyboardInterrupt as exc:
                    if record.cut_short or record.interrupt():
                        self.cut_short = True
                        raise    # the third Ctrl-C (perhaps counted by a handler that raised it)
                    pending = pending or exc
        finally:
            _undoing.remove(record)
        if record.interrupts:
            raise pending or KeyboardInterrupt()
        return errors

    def _undo_step(self, step: Step, errors: list[NsrError]) -> None:
        """Run (or, under --explain, print) one undo step; an NsrError goes to ``errors``."""
        if self.explain:
            print(f"  [undo] {step.title}\n      $ {step.command_line()}", file=self.out)
            return
        try:
            self._execute(step)
        except NsrError as exc:
            errors.append(exc)

    def __enter__(self) -> "Runner":
        if _kept is not None:
            _kept.append(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self.keep:
            errors = self.undo()
            if errors and exc_type is None:
                raise errors[0]
        elif _kept is None:       # else kept_until_done keeps it once the task is done
            self.undo_stack.clear()

