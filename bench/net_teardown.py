#!/usr/bin/env python3
"""Benchmark: tearing down a big lab, native, against deleting as many bare namespaces with
one ``ip -batch`` of ``netns del``, in the same run:

* a star of N hosts (one hub namespace, a bridge per 500 hosts, routed between them);
* a tree of depth 2 and fanout sqrt(N) (a switch namespace with a bridge per 100 hosts,
  the top switch routing).

For each shape: bare namespaces made and deleted (the peer), then the lab built natively
(not timed) and torn down (``topo.down``, timed), ``--runs`` times alternately. Where the
time goes is measured, not guessed:

* the teardown's own calls (``umount2(MNT_DETACH)`` + ``unlink`` of /run/netns/NAME per
  namespace) timed apart for the namespaces with a bridge (hub, switches) and the hosts;
* the kernel's own cleanup, which runs after the calls return (a kworker frees each
  namespace and its devices): the time until the kernel's memory stops falling;
* the CPU time the whole machine spent in the kernel during the teardown (/proc/stat:
  it includes that kworker, and other processes' share on a shared machine).

Goal: each teardown within 1.2x of the bare namespaces' ``ip -batch`` in the same run.

    .venv/bin/python bench/net_teardown.py --hosts 10000
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from net_topo import IP, build_lab, ip_run, leftovers, median, used_kib  # noqa: E402
from nsutil import netlink as nl  # noqa: E402
from nsutil.backend import Runner  # noqa: E402
from recipes.labs import build as topo  # noqa: E402

GOAL = 1.2   #: teardown / bare namespaces' ip -batch


def kernel_ticks() -> int:
    """Clock ticks every CPU has spent in the kernel (system + irq + softirq), /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[3]) + int(fields[6]) + int(fields[7])


def cleanup_seconds(most: float = 300.0) -> float:
    """Seconds until the kernel's memory stops falling (less than 1 MiB in 0.5 s): how long
    the kernel goes on freeing what a teardown let go."""
    start = time.monotonic()
    last = used_kib()
    while time.monotonic() - start < most:
        time.sleep(0.5)
        now = used_kib()
        if last - now < 1024:
            return time.monotonic() - start - 0.5
        last = now
    return most


def timed_teardown(work) -> dict:
    """Run ``work`` (a teardown); its seconds, the machine's kernel CPU seconds during it,
    and the kernel's cleanup afterwards."""
    hz = os.sysconf("SC_CLK_TCK")
    ticks = kernel_ticks()
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    kernel = (kernel_ticks() - ticks) / hz
    return {"down": seconds, "kernel_cpu": kernel, "cleanup": cleanup_seconds(),
            "load": os.getloadavg()[0]}


def bare(names: list[str]) -> dict:
    """As many bare namespaces made (not timed) and deleted by one ``ip -batch``."""
    for start in range(0, len(names), 4000):
        ip_run("-batch", "-", input="".join(f"netns add {ns}\n" for ns in names[start:start + 4000]))
    cleanup_seconds()
    # -force, status not checked: on past one that is gone (a cleanup run beside this one
    # may take nsr- names); what is left is counted
    result = timed_teardown(lambda: subprocess.run([IP, "-force", "-batch", "-"], text=True,
                                                   input="".join(f"netns del {ns}\n" for ns in names),
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    result["left"] = leftovers("nsr-tb-")
    return result


def lab(plan: topo.Plan, settled: bool = True) -> dict:
    """``plan`` built natively (timed apart), then torn down by ``topo.down``, each delete
    call timed by kind (with a bridge: hub and switches; the hosts). ``settled``: once the
    kernel's memory has stopped moving after the build (else right after it)."""
    out = open(os.devnull, "w")
    run = Runner(backend="native", keep=True, out=out)
    build = build_lab(run, plan)
    if settled:
        cleanup_seconds()
    bridged, calls = set(plan.bridges), {"bridged": 0.0, "hosts": 0.0}
    delete = nl.delete_netns

    def timed_delete(name: str, **kwargs) -> bool:
        t = time.perf_counter()
        try:
            return delete(name, **kwargs)
        finally:
            calls["bridged" if name in bridged else "hosts"] += time.perf_counter() - t

    nl.delete_netns = timed_delete
    try:
        result = timed_teardown(lambda: topo.down(Runner(backend="native", keep=True, out=out),
                                                  plan.scope))
    finally:
        nl.delete_netns = delete
        out.close()
    return {**result, "build": build, "calls": calls, "left": leftovers(f"nsr-{plan.scope}-")}


def main(argv: list[str] | None = None) -> int:
    """Star and tree teardowns against bare namespaces; exit 1 if a goal is missed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=10000, help="hosts in each lab (default 10000)")
    ap.add_argument("--shapes", default="star,tree", help="star, tree or both (default)")
    ap.add_argument("--right-after-build", action="store_true",
                    help="also tear each lab down right after its build, without letting the "
                         "kernel settle first (what is left of the build's work then counts)")
    ap.add_argument("--runs", type=int, default=1,
                    help="rounds, alternately (default 1: a 10,000-host round takes minutes)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/net_teardown.py needs root", file=sys.stderr)
        return 2
    fanout = round(math.sqrt(args.hosts))
    shapes = {"star": lambda: topo.plan_shape("star", args.hosts, "ts"),
              "tree": lambda: topo.plan_shape("tree", scope="tt", depth=2, fanout=fanout)}
    shapes = {k: v for k, v in shapes.items() if k in args.shapes.split(",")}
    results: dict[str, dict[str, list[dict]]] = {s: {"bare": [], "lab": [], "unsettled": []}
                                                 for s in shapes}
    counts = {}
    for i in range(args.runs):
        for shape, make in shapes.items():
            plan = make()
            counts[shape] = (len(plan.hosts), len(plan.all_netns()), len(plan.bridges))
            print(f"{shape}: bare namespaces ({i + 1}/{args.runs}) ...", file=sys.stderr, flush=True)
            results[shape]["bare"].append(bare([f"nsr-tb-{k}" for k in range(len(plan.all_netns()))]))
            print(f"{shape}: lab ({i + 1}/{args.runs}) ...", file=sys.stderr, flush=True)
            results[shape]["lab"].append(lab(plan))
            if args.right_after_build:
                print(f"{shape}: lab, right after its build ({i + 1}/{args.runs}) ...",
                      file=sys.stderr, flush=True)
                results[shape]["unsettled"].append(lab(make(), settled=False))
    print(f"bench/net_teardown.py: {os.cpu_count()} CPUs, kernel {os.uname().release}; "
          f"{args.runs} run(s) of each{' (fewer than 5: a round takes minutes)' if args.runs < 5 else ''}, "
          "medians")
    print(f"{'teardown':<34} {'s':>6} {'ratio':>6} {'kernel CPU s':>12} {'cleanup after s':>15} "
          f"{'load':>5}")
    ok = True
    for shape, res in results.items():
        hosts, namespaces, bridged = counts[shape]
        base = median([r["down"] for r in res["bare"]])
        down = median([r["down"] for r in res["lab"]])
        left = any(sum(r["left"]) for r in res["lab"] + res["bare"] + res["unsettled"])
        for name, rs, what in (("bare", res["bare"], f"{namespaces} bare namespaces, ip -batch"),
                               ("lab", res["lab"], f"{shape} of {hosts}, native"),
                               ("unsettled", res["unsettled"], f"{shape}, right after build")):
            if not rs:
                continue
            print(f"{what:<34} {median([r['down'] for r in rs]):6.2f} "
                  f"{median([r['down'] for r in rs]) / base:6.2f} "
                  f"{median([r['kernel_cpu'] for r in rs]):12.2f} "
                  f"{median([r['cleanup'] for r in rs]):15.1f} "
                  f"{min(r['load'] for r in rs):5.1f}")
        calls = res["lab"][-1]["calls"]
        rest = res["lab"][-1]["down"] - calls["bridged"] - calls["hosts"]
        print(f"  {shape}: build {median([r['build'] for r in res['lab']]):.1f} s (not timed above); "
              f"delete calls: {calls['bridged']:.2f} s for {bridged} namespace(s) with a bridge, "
              f"{calls['hosts']:.2f} s for {namespaces - bridged} others "
              f"({1000 * calls['hosts'] / max(1, namespaces - bridged):.3f} ms each; the bare "
              f"ones' ip: {1000 * base / namespaces:.3f} ms each); the rest (/etc/netns, "
              f"the record, Python) {rest:.2f} s; left: {'yes' if left else '0'}")
        met = down / base <= GOAL and not left
        ok = ok and met
        print(f"  goal: {shape} teardown <= {GOAL}x the bare namespaces': {down / base:.2f}x, "
              f"{'met' if met else 'NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
