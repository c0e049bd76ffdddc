#!/usr/bin/env python3
"""Benchmark: how long the command line takes, start to exit, against a bare ``invoke --version``.

Each variant is a new process, as a user types it, from the checkout:

* ``python -c pass``                      -- the interpreter's own start (the floor);
* ``invoke --version``                    -- invoke imported, no task loaded: the baseline;
* ``invoke --list``                       -- the collection loaded (tasks.py, cli/), no task run;
* ``invoke container-run -- true``        -- the default backend (auto: shell where installed);
* ``invoke container-run --backend native -- true``;
* ``invoke uts-demo --explain``;
* ``nsr container-run -- true``           -- the installed command.

Goal: the three commands of the goal (container-run twice, uts-demo --explain) within 1.5x
of ``invoke --version``, measured in the same run. The variants are interleaved (each round
runs every variant once, in an order rotated each round), each figure is a median, and the
load average is printed beside it. For reference it also prints the container run itself in
this (warm) process, the floor under ``container-run``: ``recipes.container.run_container``,
on each backend (the default, auto, is the shell one where util-linux is installed).

Bytecode: the children run as a user's shell would start them: without
PYTHONDONTWRITEBYTECODE (this machine's sessions set it; a user's does not) and with
PYTHONPYCACHEPREFIX in a temporary directory, so the cache a user's checkout keeps is
there after the warm-up run, and nothing is left in the checkout. Needs root (container-run
makes a cgroup and namespaces).

    .venv/bin/python bench/cli_start.py --runs 9
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
sys.path.insert(0, ROOT)

from nsutil.backend import Runner  # noqa: E402
from recipes import container  # noqa: E402
from recipes.container import rootfs  # noqa: E402

GOAL = 1.5
BASE = "invoke --version"
#: the commands the goal is about
GOAL_VARIANTS = ("invoke container-run -- true", "invoke uts-demo --explain",
                 "nsr container-run -- true")


def variants() -> dict[str, list[str]]:
    """Name -> argv of every variant (this environment's python, invoke and nsr)."""
    bindir = os.path.dirname(sys.executable)
    invoke, nsr = os.path.join(bindir, "invoke"), os.path.join(bindir, "nsr")
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        BASE: [invoke, "--version"],
        "invoke --list": [invoke, "--list"],
        "invoke container-run -- true": [invoke, "container-run", "--", "true"],
        "invoke container-run --backend native -- true":
            [invoke, "container-run", "--backend", "native", "--", "true"],
        "invoke uts-demo --explain": [invoke, "uts-demo", "--explain"],
        "nsr container-run -- true": [nsr, "container-run", "--", "true"],
    }


def child_env(pycache: str) -> dict[str, str]:
    """The environment of each run: a user's (bytecode cached, here under ``pycache``)."""
    env = dict(os.environ, PYTHONPYCACHEPREFIX=pycache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def once(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one run of ``argv`` in seconds; exit on a failure."""
    t = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    took = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} exited {done.returncode}: "
                         f"{done.stderr[-300:]!r}")
    return took


def interleaved(cmds: dict[str, list[str]], runs: int, env: dict[str, str]
                ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``runs`` rounds, each running every variant once in an order rotated by the round:
    the times of each, and the 1-minute load average before each of its runs."""
    names = list(cmds)
    times: dict[str, list[float]] = {n: [] for n in names}
    loads: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            loads[name].append(os.getloadavg()[0])
            times[name].append(once(cmds[name], env))
    return times, loads


def warm_api(runs: int, backend: str) -> list[float]:
    """The container run itself, in this process (after two untimed runs)."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        out = []
        for i in range(runs + 2):
            t = time.perf_counter()
            with Runner(backend=backend) as run:
                code = container.run_container(run, ["true"], stdin=null, stdout=null,
                                               stderr=null)
            if code != 0:
                raise SystemExit(f"bench: container exited {code}")
            if i >= 2:
                out.append(time.perf_counter() - t)
        return out
    finally:
        os.close(null)


def report(times: dict[str, list[float]], loads: dict[str, list[float]],
           api: dict[str, list[float]]) -> bool:
    """Print the table and the goals; True if every goal is met."""
    base = statistics.median(times[BASE])
    print(f"CLI start-to-exit, new process each run, {len(times[BASE])} interleaved rounds, "
          f"{os.cpu_count()} CPUs")
    print(f"{'variant':46} {'median':>8} {'p25':>8} {'p75':>8} {'vs base':>8} {'load':>9}")
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4)
        load = f"{min(loads[name]):.1f}-{max(loads[name]):.1f}"
        print(f"{name:46} {statistics.median(ts) * 1000:6.0f}ms {q[0] * 1000:6.0f}ms "
              f"{q[2] * 1000:6.0f}ms {statistics.median(ts) / base:7.2f}x {load:>9}")
    for backend, ts in api.items():
        print(f"{'container run itself (API, warm, ' + backend + ')':46} "
              f"{statistics.median(ts) * 1000:6.0f}ms {'':8} {'':8} "
              f"{statistics.median(ts) / base:7.2f}x {os.getloadavg()[0]:9.1f}")
    for backend, name in (("shell", "invoke container-run -- true"),
                          ("native", "invoke container-run --backend native -- true")):
        cli = statistics.median(times[name]) - statistics.median(api[backend])
        print(f"{name}: {cli * 1000:.0f}ms besides the container itself ({backend}): "
              f"{base * 1000:.0f}ms {BASE}, {(cli - base) * 1000:.0f}ms loading the tasks, "
              f"parsing, importing the recipes")
    met = True
    for name in GOAL_VARIANTS:
        ratio = statistics.median(times[name]) / base
        ok = ratio <= GOAL
        met &= ok
        print(f"goal: {name} <= {GOAL}x {BASE}: {ratio:.2f}x, {'met' if ok else 'NOT met'}")
    return met


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9,
                    help="interleaved rounds, each running every variant once (default 9, "
                         "at least 5)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root")
    if args.runs < 5:
        raise SystemExit("bench: --runs: at least 5")
    with Runner(backend="native") as run:
        rootfs.ensure_default(run)    # the cached busybox rootfs container-run uses
    pycache = tempfile.mkdtemp(prefix="nsr-bench-pyc-")
    try:
        env = child_env(pycache)
        cmds = variants()
        for argv in cmds.values():    # warm-up: the bytecode cache a user's checkout has
            once(argv, env)
        times, loads = interleaved(cmds, args.runs, env)
    finally:
        shutil.rmtree(pycache, ignore_errors=True)
    report(times, loads, {b: warm_api(args.runs, b) for b in ("native", "shell")})


if __name__ == "__main__":
    main()
