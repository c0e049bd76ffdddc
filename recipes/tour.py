"""The tour: every demo, in the order of the document "Docker core principles".

namespace资源隔离 -- the four ways to use the namespace API, then UTS, IPC, PID, mount,
network and user namespaces -- then the two namespaces the document predates, marked
"beyond the document" (cgroup: Linux 4.6; time: Linux 5.6), and then the two principles the
document only names: cgroups limit (资源限制) and copy-on-write saves (写时复制).
A section whose module has ``unavailable()`` (time, on a kernel before 5.6) is skipped with a
line saying why.
"""
from __future__ import annotations

import importlib
import sys
from typing import TextIO

from nsutil import rootless
from nsutil.backend import Runner
from nsutil.errors import NsrError
from nsutil.lesson import Lesson

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
    ("recipes.cgroupns", "demo", "cgroup namespace -- beyond the document (Linux 4.6+)"),
    ("recipes.timens", "demo", "time namespace -- beyond the document (Linux 5.6+)"),
    ("recipes.cgroup", "demo", "cgroups实现资源限制 -- cgroups limit"),
    ("recipes.cow", "demo", "写时复制 -- copy-on-write"),
]
#: without root, a section's module is replaced by its rootless form (same function names)
ROOTLESS_FORMS = {"recipes.net": "recipes.net_rootless"}
#: sections that may refuse without root (a cgroup needs root or delegation; overlayfs in a
#: user namespace needs Linux 5.11+): then the tour says why in one line and goes on
MAY_REFUSE_ROOTLESS = ("recipes.cgroup", "recipes.cow")


def tour(backend: str | None = None, explain: bool = False, out: TextIO = sys.stdout,
         lesson: Lesson | None = None) -> dict:
    """Run every section's demo in order, each undone before the next; return their results.
    With ``lesson`` (``--step``) every step waits for the learner; ``q`` ends the tour.
    Without root every namespace is owned by a user namespace of the user's own; a section
    of :data:`MAY_REFUSE_ROOTLESS` that refuses is skipped with its one line."""
    results = {}
    for number, (module, function, title) in enumerate(SECTIONS, 1):
        print(f"\n{'#' * 78}\n# {number}. {title}\n{'#' * 78}", file=out, flush=True)
        recipe = importlib.import_module(ROOTLESS_FORMS.get(module, module) if rootless.decide()
                                         else module)
        demo = getattr(recipe, function)
        why = getattr(recipe, "unavailable", lambda: None)()
        if why:  # a section this kernel cannot show (time namespaces before Linux 5.6)
            print(f"skipped: {why}", file=out, flush=True)
            results[module.split(".")[1]] = {"skipped": why}
            continue
        key = module.split(".")[1] + ("" if function == "demo" else f".{function}")
        try:
            with Runner(backend=backend, explain=explain, out=out, lesson=lesson) as run:
                results[key] = demo(run)
        except NsrError as exc:
            # without root, a section that needs what a user lacks: undone, said, tour goes on
            if not (rootless.decide() and module in MAY_REFUSE_ROOTLESS) or explain:
                raise
            print(f"skipped without root: {exc}", file=out, flush=True)
            results[key] = {"skipped": str(exc)}
    return results
