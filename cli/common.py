"""What every task of the command line shares: :func:`nsr_task` (the common option help,
--shell/--step, and every NsrError as one line with a hint and a non-zero exit) and the
Runner a task runs its recipe in."""
from __future__ import annotations

import atexit
import functools
import inspect
import os
import signal
import sys
from typing import Any, Callable

from invoke import Exit, task

from nsutil.errors import NsrError

COMMON_HELP = {
    "backend": "auto | shell | native: run steps with util-linux/iproute2 commands or with "
               "syscalls/netlink (default: $NSR_BACKEND, else auto = shell where installed)",
    "explain": "print the steps with the document section and the equivalent shell "
               "commands, and change nothing",
}


INTERRUPTED = "nsrecipes: interrupted; what this run made has been undone"

LESSON_HELP = {
    "shell": "open an interactive shell inside the demo's namespaces, where the document's "
             "program does (prompt [root@NewNamespace]#); exit or Ctrl-D goes on: the host's "
             "side, then everything undone. With stdin a pipe, the shell reads it (bash -s)",
    "step": "pause before each step, showing its title and command: Enter runs it, s opens "
            "a shell in the namespaces made so far, q undoes everything and quits",
}
#: which lesson options each kind of task gets (nsr_task(lesson=...))
LESSONS = {"shell": ("shell", "step"), "step": ("step",), None: ()}
#: --shell/--step of the task running now: set by nsr_task, read by current_lesson()
_LESSON: dict[str, bool] = {}


def _undoing() -> bool:
    """A Runner's undo stack runs now (:func:`nsutil.backend.undoing`; no Runner before the
    module is imported)."""
    backend = sys.modules.get("nsutil.backend")
    return bool(backend and backend.undoing())


def _undo_goes_on() -> bool:
    """A Ctrl-C came: True if a Runner's undo stack runs now and should go on with the step
    it is in. The Ctrl-C is counted on that undo (:func:`nsutil.backend.interrupt_undo`),
    which raises KeyboardInterrupt once its stack is empty; the third during one undo
    (False here) cuts it short."""
    backend = sys.modules.get("nsutil.backend")
    return bool(backend and backend.undoing() and not backend.interrupt_undo())


def nsr_task(help: dict[str, str] | None = None, lesson: str | None = None,
             **kwargs: Any) -> Callable:
    """@task, plus: the common option help, and NsrError -> one line and a non-zero exit.

    ``lesson="shell"`` adds the options --shell and --step, ``lesson="step"`` only --step;
    they reach the Runner :func:`_runner` makes, and a hang-up or SIGTERM then undoes as
    Ctrl-C does (a closed terminal must leave nothing behind).

    A Ctrl-C while a Runner's undo stack runs is not raised, so the step it came in
    finishes; the undo goes on and raises KeyboardInterrupt once its stack is empty. The
    third Ctrl-C during that undo (not counting the one that began it) cuts it short.
    """
    def decorate(fn: Callable) -> Any:
        params = inspect.signature(fn).parameters
        added = LESSONS[lesson]
        merged = {k: v for k, v in COMMON_HELP.items() if k in params}
        merged.update({k: LESSON_HELP[k] for k in added})
        merged.update(help or {})

        @functools.wraps(fn)
        def body(c, *args: Any, **kw: Any) -> Any:
            interrupted: list[int] = []
            finished: list[bool] = []   # the run is done: a Ctrl-C now comes too late
            main_pid = os.getpid()
            _LESSON.clear()
            _LESSON.update({k: bool(kw.pop(k, False)) for k in added})

            def on_sigint(signum: int, frame: Any) -> None:
                if os.getpid() != main_pid:
                    # a fork that has not exec'd yet (sh's or ours): die, never unwind into
                    # the parent's code; the parent sees the signal itself
                    os._exit(128 + signum)
                if finished:
                    return    # it succeeded and said so; its exit status says so too
                interrupted.append(signum)
                if _undo_goes_on():
                    return    # the undo goes on; the third Ctrl-C during it cuts it short
                raise KeyboardInterrupt

            def on_hangup(signum: int, frame: Any) -> None:
                if os.getpid() != main_pid:
                    os._exit(128 + signum)
                interrupted.append(signum)
                if not _undoing():                # else the undo already runs: let it finish
                    os.kill(main_pid, signal.SIGINT)  # undone as Ctrl-C is (held back in forks)

            previous = {sig: signal.getsignal(sig)
                        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)}
            signal.signal(signal.SIGINT, on_sigint)
            if any(_LESSON.values()):
                for sig in (signal.SIGHUP, signal.SIGTERM):
                    signal.signal(sig, on_hangup)
            try:
                from nsutil.backend import kept_until_done
                with kept_until_done():
                    result = fn(c, *args, **kw)
                    finished.append(True)
                    if _run_as_program():
                        atexit.register(_late_sigint_ignored)
                        record_exit_status(0)
                return result
            except NsrError as exc:
                if interrupted:  # Ctrl-C also killed a child we were waiting for
                    raise Exit(INTERRUPTED, code=130) from None
                raise Exit(f"nsrecipes: {exc}", code=exc.exit_code) from None
            except BrokenPipeError:  # `invoke tour | head`: stop quietly, like coreutils
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise Exit(code=141) from None
            except KeyboardInterrupt:
                raise Exit(INTERRUPTED, code=130) from None
            finally:
                if not _run_as_program():  # called from Python: the caller's handlers back
                    for sig, handler in previous.items():
                        if handler is not None:
                            signal.signal(sig, handler)

        if added:  # invoke reads the options from the signature
            sig = inspect.signature(fn)
            body.__signature__ = sig.replace(parameters=list(sig.parameters.values()) + [
                inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=False)
                for k in added])
        kwargs.setdefault("auto_shortflags", False)  # no -h clash with --help
        return task(body, help=merged, **kwargs)
    return decorate


def program_name() -> str:
    """The command a user typed: ``nsr`` (installed) or ``invoke`` (in the checkout)."""
    return "nsr" if os.path.basename(sys.argv[0]) == "nsr" else "invoke"


def command_argv(task_name: str, usage: str, required: bool = True) -> list[str]:
    """The command given after ``--`` on the command line (``invoke`` and ``nsr`` both leave
    it in sys.argv); none and ``required``: one line with the usage ``TASK USAGE -- CMD``."""
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    if not argv and required:
        from nsutil.errors import InvalidInput
        raise InvalidInput(f"{task_name}: no command given",
                           hint=f"{program_name()} {task_name} {usage} -- CMD ARGS...")
    return argv


def _run_as_program() -> bool:
    """This process is the command line (``invoke`` or ``nsr``), not a script or a test
    that calls a task as a function: its task's signal handlers stay until it exits."""
    return os.path.basename(sys.argv[0]) in ("invoke", "inv", "nsr")


#: the exit status the command line asked for (the last ``sys.exit``), once it has
_EXIT_STATUS: list[int] = []


def end_without_teardown() -> None:
    """Once the command line's work is done, end the process without the interpreter's
    teardown of the 300 modules it loaded (about 20 ms of a 120 ms ``nsr container-run``;
    ``invoke --version`` loads far fewer). Call it before the other exit hooks are
    registered: its own hook then runs after them and after the threads were joined, flushes
    stdout and stderr, and ends with the status ``sys.exit`` was given. Temporary files and
    the like are removed by their own exit hooks as before; an exception no one caught
    clears the status, and Python then ends as it always does."""
    real_exit = sys.exit

    def recorded_exit(status: object = None) -> None:
        _EXIT_STATUS[:] = [status if isinstance(status, int) else 0 if status is None else 1]
        real_exit(status)

    def end_now() -> None:
        if not _EXIT_STATUS:
            return
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass            # a reader that left, a closed stream: nothing more to say
        os._exit(_EXIT_STATUS[0] & 0xFF)

    sys.exit = recorded_exit
    atexit.register(end_now)


def record_exit_status(status: int) -> None:
    """The status the process ends with so far (a task that succeeded: 0; a ``sys.exit``
    later replaces it). ``sys.exit(main())`` looked sys.exit up before the wrapper of
    :func:`end_without_teardown` was in place, so a success would otherwise go unrecorded."""
    _EXIT_STATUS[:] = [status]


def forget_exit_status() -> None:
    """An exception no one caught: let Python end as it always does (status 1)."""
    _EXIT_STATUS.clear()


def _late_sigint_ignored() -> None:
    """At exit after a task succeeded, ignore Ctrl-C: the interpreter puts SIGINT back to its
    default as it shuts down, and a late Ctrl-C would end a finished run with status 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def current_lesson():
    """The Lesson for --shell/--step of the running task, or None."""
    if not any(_LESSON.values()):
        return None
    from nsutil.lesson import Lesson
    return Lesson(**_LESSON)


def make_runner(backend: str | None, explain: bool, keep: bool = False,
                announce_owner: bool = True):
    """The Runner of a task: its backend, --explain, keep what it made or not, its lesson;
    ``announce_owner=False`` where what is printed is a command's own (container-run)."""
    from nsutil.backend import Runner
    return Runner(backend=backend, explain=explain, keep=keep, lesson=current_lesson(),
                  announce_owner=announce_owner)


def root_demo(task_name: str, module: str, backend: str | None, explain: bool,
               **kwargs: Any) -> None:
    """Run ``recipes.MODULE.demo(run, **kwargs)`` for a demo that makes namespaces (unless it
    only explains): import the recipe, check that this process may make them (root, or
    without root a user namespace: :func:`nsutil.rootless.require_namespaces`, naming
    ``task_name``), run it in a Runner."""
    import importlib
    from nsutil.rootless import require_namespaces
    recipe = importlib.import_module(f"recipes.{module}")
    if not explain:
        require_namespaces(task_name)
    with make_runner(backend, explain) as run:
        recipe.demo(run, **kwargs)
