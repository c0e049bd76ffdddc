"""The collection of every task: ``invoke TASK`` in the checkout (tasks.py imports ``ns``)
and the installed ``nsr TASK`` (cli.program) run the same one."""
from __future__ import annotations

import copy

from invoke import Collection, Task
from invoke.parser import ParserContext

from cli import containers, demos, envs, images, labs, machines, ops

#: the modules whose tasks make up the command line
ROOMS = (demos, containers, images, envs, labs, machines, ops)


def tasks_of(*modules) -> list[Task]:
    """The tasks defined in ``modules`` (in the order they are written there)."""
    return [obj for module in modules for obj in vars(module).values()
            if isinstance(obj, Task) and obj.body.__module__ == module.__name__]


def parser_contexts(collection: Collection, words: list[str]) -> list[ParserContext]:
    """A parser context per task of ``collection``: with its options for the tasks named in
    ``words`` (the command line), with its name and aliases only for the others -- all the
    parser needs to tell a task from a mistake, without building (and the parser copying)
    the options of every task, on every run. The tasks' own help text stays where it is
    (get_arguments() pops it off the task it reads: it reads a copy)."""
    named = {w.replace("_", "-") for w in words} | set(words)
    contexts = []
    for name, aliases in collection.task_names.items():
        args = []
        if named & {name, *aliases}:
            task = copy.copy(collection[name])
            task.help = dict(task.help)
            args = task.get_arguments()
        contexts.append(ParserContext(name=name, aliases=aliases, args=args))
    return contexts


class Tasks(Collection):
    """The collection, parsed for one command line: invoke asks it for a parser context
    per task on every run; once :attr:`named` holds the command line's words, only the
    tasks they name get their options (see :func:`parser_contexts`)."""

    #: the command line's words (after the program's name); None: every task's options
    named: list[str] | None = None

    def to_contexts(self, ignore_unknown_help: bool | None = None) -> list[ParserContext]:
        """Invoke's parser contexts, with options only for the tasks :attr:`named`."""
        if self.named is None:
            return super().to_contexts(ignore_unknown_help)
        return parser_contexts(self, self.named)


ns = Tasks(*tasks_of(*ROOMS))
