"""What the controller and each machine's agent agree on before anything else: the version.

The agent (:mod:`recipes.ops.agent`) prints ``{"version": ...}`` first and refuses to work
for a controller that expects another (``--expect V``); the controller
(:mod:`recipes.labs.machines.sessions`) refuses a machine that answers another. A leaf
module: both import it, it imports neither (so neither imports the other for it).
"""
from __future__ import annotations

import importlib.metadata


def version() -> str:
    """The nsrecipes version installed where this runs."""
    return importlib.metadata.version("nsrecipes")
