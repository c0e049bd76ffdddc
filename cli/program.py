"""The ``nsr`` command (``nsr TASK [OPTIONS]``, from any directory once installed), and what
it shares with ``invoke TASK`` in the checkout: the same collection, ``TASK ARG --help`` shown
as the task's help, a command line invoke cannot parse told in one line with a hint, and a
reader that stops early (``| head``) ending the output quietly."""
from __future__ import annotations

import atexit
import os
import re
import sys
from typing import Any, Callable

from invoke import Collection, Exit, ParseError, Program
from invoke.parser import Parser

from cli.collection import ns, parser_contexts
from cli.common import (end_without_teardown, forget_exit_status, program_name,
                        record_exit_status)

#: the tasks that run a command given after ``--``
COMMAND_TASKS = frozenset({"env-exec", "net-exec", "container-run"})


#: a task's command line in a message: ``invoke`` then a word (a task's name, ``--help``)
_TASK_LINE = re.compile(r"\binvoke (--help\b|[a-z][a-z0-9-]*\b)")


def as_typed(text: str) -> str:
    """``text`` (an error's line, a hint) with each ``invoke TASK`` as the user would type
    it: ``nsr TASK`` when they typed ``nsr``. The recipes name the checkout's command, since
    they cannot know which one ran them. Only a task's name or ``--help`` may follow: the
    package in ``pip download invoke pyroute2`` stays invoke."""
    if program_name() != "nsr" or "invoke " not in text:
        return text
    names = set(ns.task_names)
    return _TASK_LINE.sub(lambda m: f"nsr {m.group(1)}" if m.group(1) == "--help"
                          or m.group(1) in names else m.group(0), text)


class AsTyped:
    """A text stream that writes what it is given through :func:`as_typed`: what nsrecipes
    prints (a recipe's "remove with: invoke net-veth ...", a record's "`invoke container-rm
    NAME` removes it", a task's help) names the command the user typed. Everything else
    (``fileno``, ``isatty``, ``buffer``, ``encoding``) is the stream's own."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        """Write ``text`` as typed."""
        return self.stream.write(as_typed(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def print_as_typed() -> None:
    """Under ``nsr``: stdout and stderr name tasks as ``nsr TASK``, whatever printed them."""
    if program_name() == "nsr":
        sys.stdout = AsTyped(sys.stdout)     # type: ignore[assignment]
        sys.stderr = AsTyped(sys.stderr)     # type: ignore[assignment]


def help_argv(argv: list[str], names: set[str]) -> list[str] | None:
    """``PROG TASK ARG --help`` -> ``PROG --help TASK``; None if there is nothing to route.

    Invoke would take ``--help`` as the value of a task's positional argument (``env-rm
    --help`` would try to remove an environment called "--help"); route it to the help.
    """
    args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    given = [i for i, a in enumerate(args) if a.replace("_", "-") in names]
    if given and any(a in ("--help", "-h") for a in args[given[0] + 1:]):
        return [argv[0], *args[:given[0]], "--help", args[given[0]]]
    return None


def parse_mistake(exc: ParseError, argv: list[str], binary: str) -> str:
    """One line with a hint for what invoke's parser refused (it says only "No idea what
    'true' is!")."""
    from nsutil.errors import InvalidInput
    task = getattr(getattr(exc, "context", None), "name", None)
    unknown = re.fullmatch(r"No idea what '(.*)' is!", str(exc))
    words = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if unknown and task in COMMAND_TASKS and unknown.group(1) in words:
        at = len(words) - 1 - words[::-1].index(unknown.group(1))
        fixed = " ".join([binary, *words[:at], "--", *words[at:]])
        error = InvalidInput(f"{task}: {unknown.group(1)!r} is none of its options",
                             hint=f"the command goes after --: {fixed}")
    elif unknown:
        error = InvalidInput(f"{task + ': ' if task else ''}no idea what "
                             f"{unknown.group(1)!r} is",
                             hint=f"{binary} --help {task} lists its options" if task
                             else f"{binary} --list lists the tasks")
    else:
        missing = re.fullmatch(r"'.*' did not receive required positional arguments: (.*)",
                               str(exc))
        novalue = re.fullmatch(r"Flag <Argument: ([^ >(]+).*> needed value and was not "
                               r"given one!", str(exc))
        what = (f"missing {missing.group(1)}" if missing
                else f"--{novalue.group(1).replace('_', '-')} needs a value" if novalue
                else str(exc).rstrip("!"))
        error = InvalidInput(f"{task + ': ' if task else ''}{what}",
                             hint=f"{binary} --help {task or ''}".rstrip() + " shows the usage")
    return f"nsrecipes: {error}"


def parse_tasks_in_one_line(parse: Callable[[], None], argv: list[str], binary: str) -> None:
    """Run a Program's task parsing ``parse``; what it refuses becomes one line and a hint
    (exit status 2)."""
    try:
        parse()
    except ParseError as exc:
        from nsutil.errors import InvalidInput
        raise Exit(parse_mistake(exc, argv, binary), code=InvalidInput.exit_code) from None


def check_argv(argv: list[str], program: Program, collection: Collection,
               binary: str) -> None:
    """Parse ``argv`` in the two passes ``program`` makes (its core options, then the tasks);
    raise Exit with one line and a hint (exit status 2) if it cannot be parsed."""
    def parse() -> None:
        core = Parser(initial=program.initial_context, ignore_unknown=True).parse_argv(argv[1:])
        contexts = parser_contexts(collection, core.unparsed)
        Parser(initial=program.initial_context, contexts=contexts).parse_argv(core.unparsed)
    parse_tasks_in_one_line(parse, argv, binary)


def running_invoke() -> Program | None:
    """The Program of the ``invoke`` command that is loading tasks.py right now (it has
    parsed its core options, not yet the tasks); None if tasks.py was loaded another way."""
    program = getattr(sys.modules.get("invoke.main"), "program", None)
    if isinstance(program, Program) and hasattr(program, "core") and not hasattr(program, "tasks"):
        return program
    return None


def cache_bytecode() -> None:
    """Let Python cache the bytecode of the modules imported from here on (a task's recipes),
    as it does for any package. Invoke turns the cache off before it loads the tasks (unless
    ``--write-pyc``), and every run then compiled the recipes it imported again: about 0.1 s
    of each ``container-run``. ``python -B`` and PYTHONDONTWRITEBYTECODE still turn it off
    (``sys.flags`` keeps what the interpreter was started with)."""
    sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)


def _stdout_to_devnull() -> None:
    """Point fd 1 at /dev/null: what is still buffered for a reader that has gone is dropped."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)


def quiet_broken_pipe() -> None:
    """A reader that stops early (``nsr TASK --help | head``) ends the output quietly, as
    coreutils do: no BrokenPipeError traceback, from a print or from the last flush."""
    previous = sys.excepthook

    def on_uncaught(kind, exc, tb) -> None:
        forget_exit_status()    # Python ends as it always does after a traceback
        if not issubclass(kind, BrokenPipeError):
            previous(kind, exc, tb)
            return
        _stdout_to_devnull()
        os._exit(141)           # 128 + SIGPIPE, the status `yes | head` leaves

    def flush_at_exit() -> None:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_to_devnull()

    sys.excepthook = on_uncaught
    atexit.register(flush_at_exit)


def task_names(collection: Collection) -> set[str]:
    """The names a user types for the tasks of ``collection`` (env-rm, not env_rm)."""
    return set(collection.task_names)


class NsrProgram(Program):
    """Invoke's Program with nsrecipes' collection bundled: ``nsr TASK [OPTIONS]``."""

    def run(self, argv: list[str] | None = None, exit: bool = True) -> None:
        """Route ``TASK ARG --help`` to the task's help, then run as Invoke's Program does."""
        argv = list(sys.argv if argv is None else argv)
        argv = help_argv(argv, task_names(self.namespace)) or argv
        self.namespace.named = argv[1:]
        super().run(argv, exit)

    def parse_core(self, argv: list[str] | None) -> None:
        """Invoke's core options, then the bytecode cache on again (:func:`cache_bytecode`)."""
        super().parse_core(argv)
        cache_bytecode()

    def parse_tasks(self) -> None:
        """Invoke's parsing, with what it refuses told in one line and a hint."""
        parse_tasks_in_one_line(super().parse_tasks, self.argv, self.binary)

    def print_version(self) -> None:
        """``nsr --version``: nsrecipes and the version installed."""
        from recipes.labs.machines.wire import version
        print(f"nsrecipes {version()}")


program = NsrProgram(namespace=ns, name="nsrecipes", binary="nsr", binary_names=["nsr"])


def main() -> None:
    """The ``nsr`` console script."""
    end_without_teardown()
    quiet_broken_pipe()
    print_as_typed()
    program.run()
    record_exit_status(0)


def invoke_in_checkout(argv: list[str]) -> None:
    """What tasks.py does when ``invoke`` (the checkout's command) loads it: the same help
    routing, one-line parse mistakes, quiet broken pipe and quick end as ``nsr``. The parse
    mistakes come from invoke's own parse of the tasks (:func:`running_invoke`; parsing the
    command line once more here cost 3 ms of every run), and that parse reads ``ns``, which
    builds the options of the named tasks only (3-4 ms less than invoke's copy of it)."""
    if not argv or not os.path.basename(argv[0]).startswith("inv"):
        return
    end_without_teardown()
    quiet_broken_pipe()
    cache_bytecode()
    if any(a in ("--complete", "--print-completion-script") for a in argv):
        return
    routed = help_argv(argv, task_names(ns))
    if routed:
        os.execv(argv[0], routed)
    ns.named = argv[1:]
    program = running_invoke()
    if program is None:     # not loaded by invoke's own command: parse here, once more
        check_argv(argv, Program(), ns, "invoke")
        return
    parse = program.parse_tasks

    def parse_tasks() -> None:
        """Its own parse, with mistakes told in one line, of ``ns`` itself: the collection
        invoke made of this file is a plain copy, which builds every task's options."""
        program.collection = program.scoped_collection = ns
        parse_tasks_in_one_line(parse, argv, "invoke")

    program.parse_tasks = parse_tasks  # type: ignore[method-assign]
