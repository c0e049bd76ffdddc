"""What cleanup deals in: one object an earlier run made, with the way to remove it.

Every section and composition that makes something lasting has a ``leftovers()`` that lists
its objects as :class:`Leftover`; :mod:`recipes.ops.cleanup` decides which of them are broken
or orphaned and calls their ``remove()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class Leftover:
    """Something an earlier run made and did not remove; ``cleanup`` calls ``remove()``."""

    kind: str                      # "netns", "link", "env", "cgroup", "mount", ...
    name: str                      # what `cleanup --dry-run` prints
    remove: Callable[[], None]     # removes exactly this object, nothing else
