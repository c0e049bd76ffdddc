#!/usr/bin/env python3
"""Benchmark: a detached container's life cycle, from the command line, in one run.

* ``container-run --detach`` to its row in ``container-ls``: the wall time from starting
  ``invoke container-run --detach -- sleep 600`` until ``invoke container-ls --json`` (run
  right after it returns) lists it running -- two CLI starts, the supervisor's Python start,
  and the container's setup;
* ``container-exec NAME -- true`` against ``nsenter --target PID1 --mount --uts --ipc --pid
  --cgroup -- true`` into the same namespaces (nsenter joins no cgroup and sets no
  environment; it is the floor of any exec), each with both backends for container-exec,
  and the Python API's exec in this process (what is left without the CLI's start).

Median of ``--runs`` (default 5) each; the container is removed at the end. Needs root.

    .venv/bin/python bench/container_life.py
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INVOKE = os.path.join(os.path.dirname(sys.executable), "invoke")


def cli(*args: str) -> str:
    done = subprocess.run([INVOKE, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench: invoke {' '.join(args)} exited {done.returncode}: "
                         f"{done.stderr.strip()}")
    return done.stdout


def run_to_row(name: str) -> tuple[float, int]:
    """Seconds from ``container-run --detach`` to its row in ``container-ls``; PID 1."""
    t = time.perf_counter()
    cid = cli("container-run", "--detach", "--name", name, "--", "sleep", "600").strip()
    rows = [r for r in json.loads(cli("container-ls", "--json")) if r["id"] == cid]
    took = time.perf_counter() - t
    if not rows or rows[0]["state"] != "running":
        raise SystemExit(f"bench: {name} is not listed running: {rows}")
    return took, rows[0]["pid"]


def timed(argv: list[str], runs: int) -> float:
    """Median wall time of ``argv`` (after one untimed run)."""
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def api_exec(name: str, runs: int) -> float:
    """Median of ``Container.exec(["true"])`` in this process (native): the exec itself,
    without the CLI's interpreter start and imports."""
    sys.path.insert(0, ROOT)
    from recipes.container.lifecycle import Container
    c = Container.get(name, backend="native")
    out = []
    with open(os.devnull, "w") as null:
        fds = (null.fileno(), null.fileno(), null.fileno())
        c.exec(["true"], fds=fds)
        for _ in range(runs):
            t = time.perf_counter()
            c.exec(["true"], fds=fds)
            out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each (default 5)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: containers need root")
    names = [f"nsr-c-bench{os.getpid()}x{i}" for i in range(args.runs)]
    try:
        starts = [run_to_row(n) for n in names]
        pid1 = starts[0][1]
        ns = ["nsenter", f"--target={pid1}", "--mount", "--uts", "--ipc", "--pid", "--cgroup",
              "--", "true"]
        exec_shell = timed([INVOKE, "container-exec", "--backend", "shell", names[0], "--",
                            "true"], args.runs)
        exec_native = timed([INVOKE, "container-exec", "--backend", "native", names[0], "--",
                             "true"], args.runs)
        bare = timed(ns, args.runs)
        in_process = api_exec(names[0], args.runs)
    finally:
        for n in names:
            subprocess.run([INVOKE, "container-rm", "--force", n], cwd=ROOT,
                           capture_output=True)
    run_row = statistics.median(t for t, _ in starts)
    print(f"median of {args.runs}:")
    print(f"  container-run --detach -> row in container-ls   {run_row * 1000:8.1f} ms")
    print(f"  container-exec -- true (shell: nsenter)          {exec_shell * 1000:8.1f} ms")
    print(f"  container-exec -- true (native: setns)           {exec_native * 1000:8.1f} ms")
    print(f"  Container.exec(['true']) in-process (native)     {in_process * 1000:8.1f} ms")
    print(f"  nsenter -t PID1 -m -u -i -p -C -- true           {bare * 1000:8.1f} ms")
    print(f"  container-exec / nsenter                          {exec_native / bare:8.1f}x "
          f"(native), {exec_shell / bare:.1f}x (shell)")


if __name__ == "__main__":
    main()
