"""The collection of every task: ``invoke TASK`` in the checkout (tasks.py imports ``ns``)
and the installed ``nsr TASK`` (cli.program) run the same one."""
from __future__ import annotations

from invoke import Collection, Task

from cli import containers, demos, envs, images, labs, machines, ops

#: the modules whose tasks make up the command line
ROOMS = (demos, containers, images, envs, labs, machines, ops)


def tasks_of(*modules) -> list[Task]:
    """The tasks defined in ``modules`` (in the order they are written there)."""
    return [obj for module in modules for obj in vars(module).values()
            if isinstance(obj, Task) and obj.body.__module__ == module.__name__]


ns = Collection(*tasks_of(*ROOMS))
