"""The tour: every demo, in the order of the document "Docker core principles".

namespace资源隔离 -- the four ways to use the namespace API, then UTS, IPC, PID, mount,
network and user namespaces -- and then the two principles the document only names:
cgroups limit (资源限制) and copy-on-write saves (写时复制).
"""
from __future__ import annotations

import importlib
import sys
from typing import TextIO

from nsutil.backend import Runner

#: (module, function, title) in the document's order; each function takes a Runner
SECTIONS = [
    ("recipes.api", "demo", "4种操作namespace API的方式 -- four ways to use the namespace API"),
    ("recipes.uts", "demo", "UTS namespace"),
    ("recipes.ipc", "demo", "IPC namespace"),
    ("recipes.pid", "demo", "PID namespace"),
    ("recipes.mount", "demo", "mount namespace"),
    ("recipes.net", "demo", "network namespace"),
    ("recipes.net", "pair_demo", "network namespace: a veth pair"),
    ("recipes.user", "demo", "user namespace"),
    ("recipes.cgroup", "demo", "cgroups实现资源限制 -- cgroups limit"),
    ("recipes.cow", "demo", "写时复制 -- copy-on-write"),
]


def tour(backend: str | None = None, explain: bool = False, out: TextIO = sys.stdout) -> dict:
    """Run every section's demo in order, each undone before the next; return their results."""
    results = {}
    for number, (module, function, title) in enumerate(SECTIONS, 1):
        print(f"\n{'#' * 78}\n# {number}. {title}\n{'#' * 78}", file=out, flush=True)
        demo = getattr(importlib.import_module(module), function)
        with Runner(backend=backend, explain=explain, out=out) as run:
            key = module.split(".")[1] + ("" if function == "demo" else f".{function}")
            results[key] = demo(run)
    return results
