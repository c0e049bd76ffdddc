#!/usr/bin/env python3
"""Benchmark: an environment's life through the CLI, rootless against root, same run:
``invoke env-create NAME`` + ``invoke env-exec NAME -- true`` + ``invoke env-rm NAME`` (three
process starts each, interpreter and imports included), on each backend.

Root's runs use /run/nsrecipes; the rootless ones run as uid 65534 (setpriv, no
capabilities) with a fresh home and XDG_RUNTIME_DIR, as tests/asuser.py does. Prints the
median of ``--runs`` of each and the ratio rootless / root. Needs root (to become the user);
the checkout's .venv must be one uid 65534 can run (./bootstrap makes it so).

    .venv/bin/python bench/rootless_env.py --runs 3
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INVOKE = os.path.join(ROOT, ".venv", "bin", "invoke")
UID = 65534
AS_USER = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
           "--inh-caps=-all", "--bounding-set=-all", "--"]


def one_life(prefix: list[str], env: dict, name: str, backend: str) -> float:
    """Seconds for create + exec true + rm of environment ``name``."""
    start = time.perf_counter()
    for args in (["env-create", name], ["env-exec", name, "--", "true"], ["env-rm", name]):
        subprocess.run(prefix + [INVOKE, *args, "--backend", backend] if args[0] != "env-exec"
                       else prefix + [INVOKE, "env-exec", "--backend", backend, *args[1:]],
                       cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def user_home() -> str:
    """A home of uid 65534's own with ``run/`` for its XDG_RUNTIME_DIR."""
    home = tempfile.mkdtemp(prefix="nsr-bench-home-", dir="/tmp")
    os.mkdir(os.path.join(home, "run"), 0o700)
    for path in (home, os.path.join(home, "run")):
        os.chown(path, UID, UID)
    return home


def main() -> None:
    """Run each case ``--runs`` times, interleaved, and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each case (median)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/rootless_env.py: needs root (to run the rootless half as uid 65534)")
    home = user_home()
    try:
        base = {k: v for k, v in os.environ.items() if k != "NSR_STATE_DIR"}
        user_env = dict(base, HOME=home, XDG_RUNTIME_DIR=os.path.join(home, "run"))
        times: dict[tuple[str, str], list[float]] = {}
        for i in range(args.runs):
            for backend in ("native", "shell"):
                for who, prefix, env in (("root", [], base), ("rootless", AS_USER, user_env)):
                    name = f"nsr-bench-{who[:2]}{backend[0]}{os.getpid()}-{i}"
                    times.setdefault((backend, who), []).append(
                        one_life(prefix, env, name, backend))
        print(f"env-create + env-exec true + env-rm through the CLI, median of {args.runs}:")
        for backend in ("native", "shell"):
            root = statistics.median(times[(backend, "root")])
            user = statistics.median(times[(backend, "rootless")])
            print(f"  {backend:<6}  root {root:6.3f} s   rootless {user:6.3f} s   "
                  f"rootless/root {user / root:4.2f}x")
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
