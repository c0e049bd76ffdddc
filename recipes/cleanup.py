"""Cleanup: find and remove every leftover of nsrecipes, and nothing else.

Each recipe module that creates lasting objects has a ``leftovers()`` function returning
:class:`recipes.common.Leftover` items: only objects carrying the ``nsr`` prefix or recorded
under the state directory. ``cleanup`` asks them all, in an order where holders and
processes go before the namespaces, links, cgroups and mounts they use.
"""
from __future__ import annotations

import importlib

from nsutil import state
from nsutil.errors import NsrError

from .common import Leftover

#: modules asked for leftovers, in removal order
PROVIDERS = ["recipes.env", "recipes.container", "recipes.cgroup", "recipes.cow", "recipes.net"]


def find() -> list[Leftover]:
    """Every leftover the providers know of (nothing is removed)."""
    found: list[Leftover] = []
    for name in PROVIDERS:
        found.extend(importlib.import_module(name).leftovers())
    return found


def remove_all(dry_run: bool = False) -> tuple[list[Leftover], list[tuple[Leftover, NsrError]]]:
    """Remove every leftover (or only list them); returns (removed, failed)."""
    removed: list[Leftover] = []
    failed: list[tuple[Leftover, NsrError]] = []
    for item in find():
        if dry_run:
            removed.append(item)
            continue
        try:
            item.remove()
            removed.append(item)
        except NsrError as exc:
            failed.append((item, exc))
    if not dry_run:
        state.prune()
    return removed, failed
