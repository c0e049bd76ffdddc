#!/usr/bin/env python3
"""Benchmark: start-to-exit time of `true` in a container, on the same busybox rootfs:

* nsrecipes API      -- recipes.container.run_container() in this (warm) Python process,
                        native backend; with and without its own network namespace;
* nsrecipes CLI      -- `invoke container-run --backend native -- true` (a new process each
                        time: interpreter start + imports included);
* runc run           -- Debian's runc with `runc spec`'s default config (pid, net, ipc, uts,
                        mount namespaces, cgroups), the rootfs read-only;
* bwrap              -- bubblewrap: --unshare-pid/uts/ipc/net, --ro-bind the rootfs as /,
                        --proc /proc --dev /dev.

nsrecipes does more per start than bwrap here (a cgroup, an overlay with its own upper dir,
a tmpfs /dev with device nodes, pivot_root) and about what runc does. Prints the median and
the quartiles of each, and the ratio to runc. Needs root.

    .venv/bin/python bench/container_start.py --runs 30
"""
from __future__ import annotations

import argparse
import json
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


def timed(fn, runs: int, warmup: int = 2) -> list[float]:
    """Wall times of ``fn()`` in seconds (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def check(argv: list[str], **kw) -> None:
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} exited {done.returncode}: {done.stderr[-300:]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30, help="timed runs of each (default 30)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root")

    with Runner(backend="native") as run:
        rf = rootfs.ensure_default(run)
    null = os.open(os.devnull, os.O_RDWR)
    results: dict[str, list[float]] = {}

    def api(net: bool = False):
        def go() -> None:
            with Runner(backend="native") as run:
                code = container.run_container(run, ["true"], rootfs=rf, net=net, stdin=null,
                                               stdout=null, stderr=null)
            if code != 0:
                raise SystemExit(f"bench: container exited {code}")
        return go

    results["nsrecipes API (warm)"] = timed(api(), args.runs)
    results["nsrecipes API (warm) --net"] = timed(api(True), args.runs)
    invoke = os.path.join(os.path.dirname(sys.executable), "invoke")   # this environment's
    results["nsrecipes CLI"] = timed(lambda: check(
        [invoke, "container-run", "--rootfs", rf, "--backend", "native", "--", "true"], cwd=ROOT),
        max(5, args.runs // 3), warmup=1)

    work = tempfile.mkdtemp(prefix="nsr-bench-")
    try:
        runc = shutil.which("runc")
        if runc:
            bundle = os.path.join(work, "bundle")
            os.mkdir(bundle)
            check([runc, "spec", "--bundle", bundle])
            with open(os.path.join(bundle, "config.json")) as f:
                cfg = json.load(f)
            cfg["process"]["terminal"] = False
            cfg["process"]["args"] = ["true"]
            cfg["root"] = {"path": rf, "readonly": True}
            with open(os.path.join(bundle, "config.json"), "w") as f:
                json.dump(cfg, f)
            state = os.path.join(work, "runc-state")
            counter = iter(range(10**6))
            results["runc run"] = timed(lambda: check(
                [runc, "--root", state, "run", "--bundle", bundle, f"nsr-bench-{next(counter)}"]),
                args.runs)
        bwrap = shutil.which("bwrap")
        if bwrap:
            results["bwrap"] = timed(lambda: check(
                [bwrap, "--unshare-pid", "--unshare-uts", "--unshare-ipc", "--unshare-net",
                 "--ro-bind", rf, "/", "--proc", "/proc", "--dev", "/dev", "--die-with-parent",
                 "--", "/bin/true"]), args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(null)

    base = statistics.median(results["runc run"]) if "runc run" in results else None
    print(f"container start-to-exit of `true`, busybox rootfs {rf}, {args.runs} runs, "
          f"{os.cpu_count()} CPUs")
    print(f"{'':28} {'median':>9} {'p25':>9} {'p75':>9} {'vs runc':>8}")
    for name, times in results.items():
        q = statistics.quantiles(times, n=4)
        med = statistics.median(times)
        ratio = f"{med / base:.2f}x" if base else "-"
        print(f"{name:28} {med * 1000:7.1f}ms {q[0] * 1000:7.1f}ms {q[2] * 1000:7.1f}ms {ratio:>8}")


if __name__ == "__main__":
    main()
