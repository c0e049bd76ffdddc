#!/usr/bin/env python3
"""Benchmark: what making a child costs a Python tool, the stretch where the container start
spends most above the C floor (bench/container_start.py, "fork PID 1: until it runs").

Three ways to make a child, each in a new interpreter of its own, in three states:

* ``os.fork()``: what nsrecipes does; the interpreter repairs itself in the child (its locks,
  thread states, the ``os.register_at_fork`` hooks such as ``threading``'s);
* ``fork()`` through ctypes: the same system call without those repairs (unsafe where
  threads run: a lock another thread held stays held in the child);
* ``clone(CLONE_VM|CLONE_VFORK)`` through ctypes: the child runs Python in the tool's own
  memory while the tool waits (nothing is copied, nothing torn down at its exit);

in an interpreter that is bare, that has imported ``threading``, and that has loaded
nsrecipes' container modules. Per way: the median time until the child runs Python, until it
is reaped, and the child's page faults (``ru_minflt``). Rounds interleave the nine cases.

    .venv/bin/python bench/fork_cost.py --runs 200 --rounds 5
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATES = ("bare", "threading", "nsrecipes")
WAYS = ("os.fork", "ctypes fork", "ctypes clone VM|VFORK")


def child_side(state: str, runs: int) -> dict[str, list[float]]:
    """In the new interpreter: load ``state``, then make ``runs`` children each way; per way
    [ms until the child runs, ms until it is reaped, the child's page faults], medians.
    Only os, sys, ctypes, resource and time are loaded before: "bare" is bare."""
    import ctypes
    import resource
    import time
    if state != "bare":
        import threading  # noqa: F401
    if state == "nsrecipes":
        sys.path.insert(0, HERE)
        import recipes.api
        import recipes.container.run  # noqa: F401
    libc = ctypes.CDLL(None, use_errno=True)
    r, w = os.pipe()

    def forked(make) -> tuple[float, float, float]:
        t0 = time.perf_counter_ns()
        pid = make()
        if pid == 0:
            ran = time.perf_counter_ns()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            os.write(w, ran.to_bytes(8, "little") + faults.to_bytes(8, "little"))
            os._exit(0)
        got = os.read(r, 16)
        os.waitpid(pid, 0)
        t2 = time.perf_counter_ns()
        return ((int.from_bytes(got[:8], "little") - t0) / 1e6, (t2 - t0) / 1e6,
                int.from_bytes(got[8:], "little"))

    seen: list[float] = [0, 0]
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)

    def in_clone(_arg) -> int:
        seen[0] = time.perf_counter_ns()
        seen[1] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        return 0
    callback = callback_type(in_clone)
    stack = ctypes.create_string_buffer(1 << 18)
    top = ctypes.c_void_p(ctypes.addressof(stack) + (1 << 18) - 64)
    libc.clone.argtypes = [callback_type, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    clone_vm_vfork_sigchld = 0x100 | 0x4000 | 17

    def cloned() -> tuple[float, float, float]:
        t0 = time.perf_counter_ns()
        pid = libc.clone(callback, top, clone_vm_vfork_sigchld, None)
        os.waitpid(pid, 0)
        t2 = time.perf_counter_ns()
        return (seen[0] - t0) / 1e6, (t2 - t0) / 1e6, seen[1]

    ways = {"os.fork": lambda: forked(os.fork), "ctypes fork": lambda: forked(libc.fork),
            "ctypes clone VM|VFORK": cloned}
    out = {}
    for name, way in ways.items():
        samples = [way() for _ in range(runs)]
        out[name] = [sorted(s[i] for s in samples)[runs // 2] for i in range(3)]
    return out


def main() -> int:
    """Run the rounds and print the table (medians of the rounds' medians)."""
    if sys.argv[1:2] == ["--child"]:          # before argparse: "bare" loads nothing more
        result = child_side(sys.argv[2], int(sys.argv[3]))
        import json
        print(json.dumps(result))
        return 0
    import argparse
    import json
    import statistics
    import subprocess
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="children per way per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args()
    results: dict[tuple[str, str], list[list[float]]] = {}
    for _ in range(args.rounds):
        for state in STATES:
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", state,
                                   str(args.runs)], capture_output=True, text=True,
                                  check=True)
            for way, values in json.loads(done.stdout).items():
                results.setdefault((state, way), []).append(values)
    print(f"{'interpreter':<11} {'way':<22} {'child runs':>11} {'reaped':>8} {'faults':>7}")
    for state in STATES:
        for way in WAYS:
            rows = results[(state, way)]
            runs_ms, reaped_ms, faults = (statistics.median(r[i] for r in rows) for i in range(3))
            print(f"{state:<11} {way:<22} {runs_ms:>8.3f} ms {reaped_ms:>5.3f} ms {faults:>7.0f}")
    print("load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + " at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
