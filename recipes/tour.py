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

#: (module, title) in the document's order; each module has ``demo(run)``
SECTIONS = [
    ("recipes.api", "4种操作namespace API的方式 -- four ways to use the namespace API"),
    ("recipes.uts", "UTS namespace"),
    ("recipes.ipc", "IPC namespace"),
    ("recipes.pid", "PID namespace"),
    ("recipes.mount", "mount namespace"),
    ("recipes.net", "network namespace"),
    ("recipes.user", "user namespace"),
    ("recipes.cgroup", "cgroups实现资源限制 -- cgroups limit"),
    ("recipes.cow", "写时复制 -- copy-on-write"),
]


def tour(backend: str | None = None, explain: bool = False, out: TextIO = sys.stdout) -> dict:
    """Run every section's demo in order, each undone before the next; return their results."""
    results = {}
    for number, (module, title) in enumerate(SECTIONS, 1):
        print(f"\n{'#' * 78}\n# {number}. {title}\n{'#' * 78}", file=out, flush=True)
        demo = importlib.import_module(module).demo
        with Runner(backend=backend, explain=explain, out=out) as run:
            results[module.split(".")[1]] = demo(run)
    return results
