#!/usr/bin/env python3
"""Benchmark: where one command of a lab's shell build spends its time, with N named network
namespaces on the host: the same ``ip ... -batch -`` of one line (``link set lo up``)

* started three ways: through the ``sh`` package (what the shell backend used),
  ``subprocess.run``, and ``posix_spawn`` with memory files (:mod:`nsutil.shell` now);
* entering the namespace two ways: ``ip -n NS -batch -`` (ip makes a mount namespace of its
  own for the netns' /sys: the kernel copies every mount, and each named netns is one) and
  ``nsenter --net=/run/netns/NS ip -batch -`` (the network namespace only);

and ``/bin/true`` through posix_spawn, the floor of a process start. Medians of ``--runs``
interleaved runs, with the CPU time of the children (the kernel's share is the mount copy).

    .venv/bin/python bench/shell_commands.py --namespaces 10,1000,3000
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nsutil import netlink as nl  # noqa: E402
from nsutil import shell  # noqa: E402

IP = shutil.which("ip") or "ip"
LINE = "link set lo up\n"


def via_sh(argv: list[str]) -> None:
    """The ``sh`` package, as nsutil.shell used it (argument list, stdin, output kept)."""
    import sh
    sh.Command(shutil.which(argv[0]))(*argv[1:], _in=LINE, _tty_out=False)


def via_subprocess(argv: list[str]) -> None:
    """``subprocess.run`` with stdin and captured output."""
    subprocess.run(argv, input=LINE, text=True, capture_output=True, check=True)


def via_spawn(argv: list[str]) -> None:
    """:func:`nsutil.shell.run` (posix_spawn, memory files)."""
    shell.run(argv, input=LINE)


def measure(ns: str, runs: int) -> dict[str, tuple[float, float]]:
    """Each way's median wall time and mean children's CPU time, ms."""
    ways = {"ip -n NS, through sh": (via_sh, ["ip", "-n", ns, "-batch", "-"]),
            "ip -n NS, subprocess": (via_subprocess, [IP, "-n", ns, "-batch", "-"]),
            "ip -n NS, posix_spawn": (via_spawn, ["ip", "-n", ns, "-batch", "-"]),
            "nsenter --net, posix_spawn": (via_spawn, ["nsenter", f"--net={nl.netns_path(ns)}",
                                                       "ip", "-batch", "-"]),
            "/bin/true, posix_spawn": (lambda a: shell.run(a), ["true"])}
    walls: dict[str, list[float]] = {k: [] for k in ways}
    cpu = {k: 0.0 for k in ways}
    for _ in range(runs):
        for name, (fn, argv) in ways.items():
            before = os.times()
            start = time.perf_counter()
            fn(argv)
            walls[name].append(time.perf_counter() - start)
            after = os.times()
            cpu[name] += (after.children_user + after.children_system
                          - before.children_user - before.children_system)
    return {k: (1000 * sorted(v)[len(v) // 2], max(0.0, 1000 * cpu[k] / runs)) for k, v in walls.items()}


def main(argv: list[str] | None = None) -> int:
    """Print the table at every namespace count."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--namespaces", default="10,1000,3000", help="named netns counts (default 10,1000,3000)")
    ap.add_argument("--runs", type=int, default=40, help="runs of each way (default 40)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/shell_commands.py needs root", file=sys.stderr)
        return 2
    counts = [int(c) for c in args.namespaces.split(",")]
    print(f"bench/shell_commands.py: {os.cpu_count()} CPUs, kernel {os.uname().release}; one "
          f"`ip -batch` of one line, medians of {args.runs} interleaved runs, ms")
    print(f"{'namespaces':>10} {'way':<28} {'wall ms':>8} {'CPU ms':>7} {'load':>5}")
    for count in counts:
        names = [f"nsr-sc-{i}" for i in range(count)]
        subprocess.run([IP, "-batch", "-"], input="".join(f"netns add {n}\n" for n in names),
                       text=True, check=True)
        try:
            for way, (wall, cpu) in measure(names[0], args.runs).items():
                print(f"{count:>10} {way:<28} {wall:8.2f} {cpu:7.2f} {os.getloadavg()[0]:5.1f}")
        finally:
            subprocess.run([IP, "-batch", "-"], input="".join(f"netns del {n}\n" for n in names),
                           text=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
