#!/usr/bin/env python3
"""Benchmark: a star of N hosts (bridge in a hub namespace, an address on every host, all
links up), built, checked and torn down four ways, side by side:

* nsrecipes native  -- recipes.topo on the native backend (one process, netlink, in-place
                       peers, one buffer per namespace, teardown by deleting namespaces);
* nsrecipes shell   -- recipes.topo on the shell backend (ip -batch + ip -n NS -batch);
* tutorial loop     -- one `ip` command a step, each veth made in the root namespace and
                       then moved into its namespaces; teardown one `ip netns del` each;
* iproute2 best     -- one `ip -batch` for the namespaces and in-place veths, one
                       `ip -n NS -batch` per namespace for addresses and links up; teardown
                       one `ip -batch` of `netns del`.

Every variant does the same work. Lab links carry IPv4 only: IPv6 link-local autoconf is
off on them (``addrgenmode none``; nsrecipes' default, see recipes.topo.IPV6_NOTE) unless
``--ipv6``, which leaves it on everywhere (then every host's DAD/RS/MLD multicast is flooded
to every other host by the bridge, an O(n^2) storm that dominates all variants at 1000).

Ratios are to the iproute2 best script. After every teardown it counts what is left with the
benchmark's prefix (namespaces under /run/netns, links in the root namespace): must be 0.
Every build is checked with real UDP packets (a sample of pairs) before it is torn down.

    .venv/bin/python bench/net_topo.py --hosts 300
    .venv/bin/python bench/net_topo.py --hosts 1000 --skip-tutorial
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nsutil import netlink as nl  # noqa: E402
from nsutil.backend import Runner  # noqa: E402
from recipes import topo  # noqa: E402

IP = shutil.which("ip") or "ip"


def leftovers(prefix: str) -> tuple[int, int]:
    """(namespaces, root-namespace links) whose names start with ``prefix``."""
    netns = sum(1 for n in nl.list_netns() if n.startswith(prefix))
    links = sum(1 for n in os.listdir("/sys/class/net") if n.startswith(prefix))
    return netns, links


def settle(seconds: float = 2.0) -> None:
    """Let the kernel finish freeing the previous run's namespaces (it does so async)."""
    time.sleep(seconds)


def sample_check(plan: topo.Plan, pairs: int = 40) -> str:
    """Real UDP packets between a sample of host pairs (not timed)."""
    run = Runner(backend="native", out=open(os.devnull, "w"))
    result = topo.check(run, plan, limit=pairs)
    run.out.close()
    return f"{result['ok']}/{result['pairs']}"


# --- nsrecipes ------------------------------------------------------------------------------

IPV6 = False  #: set by --ipv6


def run_nsrecipes(backend: str, hosts: int, scope: str) -> dict:
    """Build, check and tear down with recipes.topo on ``backend``."""
    plan = topo.plan_shape("star", hosts, scope, ipv6=IPV6)
    out = open(os.devnull, "w")
    run = Runner(backend=backend, keep=True, out=out)
    start = time.perf_counter()
    try:
        topo.build(run, plan, etc_hosts=False)
    except BaseException:
        run.undo()
        raise
    build = time.perf_counter() - start
    checked = sample_check(plan)
    run = Runner(backend=backend, keep=True, out=out)
    start = time.perf_counter()
    topo.down(run, plan.scope)
    teardown = time.perf_counter() - start
    out.close()
    return {"build": build, "teardown": teardown, "check": checked,
            "left": leftovers(f"nsr-{scope}-"), "plan": plan}


# --- iproute2 peers -------------------------------------------------------------------------

def _names(hosts: int, scope: str) -> tuple[str, str, list[str]]:
    hub, br = f"nsr-{scope}-hub", f"nsr-{scope}-br"
    return hub, br, [f"nsr-{scope}-h{i}" for i in range(1, hosts + 1)]


def _addr(i: int) -> str:
    return f"{ipaddress.ip_network(topo.STAR_SUBNET).network_address + i}/16"


def _quiet(dev: str) -> list[str]:
    """``addrgenmode none`` for ``dev`` unless --ipv6 (a separate batch line / step)."""
    return [] if IPV6 else [f"link set {dev} addrgenmode none"]


def _ip(*args: str, input: str | None = None) -> None:
    subprocess.run([IP, *args], input=input, text=True, check=True,
                   stdout=subprocess.DEVNULL)


def tutorial_build(hosts: int, scope: str) -> None:
    """One ip command a step; each veth made in the root namespace, then both ends moved."""
    hub, br, names = _names(hosts, scope)
    _ip("netns", "add", hub)
    _ip("-n", hub, "link", "add", br, "type", "bridge")
    for line in _quiet(br):
        _ip("-n", hub, *line.split())
    _ip("-n", hub, "link", "set", br, "up")
    _ip("-n", hub, "link", "set", "lo", "up")
    for i, ns in enumerate(names, 1):
        host_if, hub_if = f"nsr-{scope}-e{i}", f"nsr-{scope}-p{i}"
        _ip("netns", "add", ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", hub_if)
        _ip("link", "set", host_if, "netns", ns)
        _ip("link", "set", hub_if, "netns", hub)
        _ip("-n", ns, "addr", "add", _addr(i), "dev", host_if)
        for line in _quiet(host_if):
            _ip("-n", ns, *line.split())
        _ip("-n", ns, "link", "set", host_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", hub, "link", "set", hub_if, "master", br)
        for line in _quiet(hub_if):
            _ip("-n", hub, *line.split())
        _ip("-n", hub, "link", "set", hub_if, "up")


def tutorial_teardown(hosts: int, scope: str) -> None:
    """One ``ip netns del`` a namespace."""
    hub, _br, names = _names(hosts, scope)
    for ns in names + [hub]:
        _ip("netns", "del", ns)


def best_build(hosts: int, scope: str) -> None:
    """One ip -batch for namespaces and in-place veths; one ip -n NS -batch per namespace."""
    hub, br, names = _names(hosts, scope)
    lines = [f"netns add {hub}"] + [f"netns add {ns}" for ns in names]
    lines.append(f"link add {br} netns {hub} type bridge")
    lines += [f"link add {ns} netns {hub} type veth peer name {hub} netns {ns}" for ns in names]
    _ip("-batch", "-", input="\n".join(lines) + "\n")
    hub_lines = _quiet(br) + [f"link set {br} up", "link set lo up"]
    for ns in names:
        hub_lines += _quiet(ns) + [f"link set {ns} master {br} up"]
    _ip("-n", hub, "-batch", "-", input="\n".join(hub_lines) + "\n")
    for i, ns in enumerate(names, 1):
        lines = [f"addr add {_addr(i)} dev {hub}"] + _quiet(hub) + [f"link set {hub} up",
                                                                     "link set lo up"]
        _ip("-n", ns, "-batch", "-", input="\n".join(lines) + "\n")


def best_teardown(hosts: int, scope: str) -> None:
    """One ip -batch of ``netns del``."""
    hub, _br, names = _names(hosts, scope)
    _ip("-batch", "-", input="".join(f"netns del {ns}\n" for ns in names + [hub]))


def run_iproute2(kind: str, hosts: int, scope: str) -> dict:
    """Build, check, tear down with the tutorial loop or the best script."""
    build_fn, down_fn = (tutorial_build, tutorial_teardown) if kind == "tutorial" else \
        (best_build, best_teardown)
    start = time.perf_counter()
    try:
        build_fn(hosts, scope)
    except BaseException:
        for ns in nl.list_netns():
            if ns.startswith(f"nsr-{scope}-"):
                nl.delete_netns(ns)
        raise
    build = time.perf_counter() - start
    plan = topo.plan_shape("star", hosts, scope)  # same namespaces and addresses: the check
    checked = sample_check(plan)
    start = time.perf_counter()
    down_fn(hosts, scope)
    teardown = time.perf_counter() - start
    return {"build": build, "teardown": teardown, "check": checked,
            "left": leftovers(f"nsr-{scope}-")}


# --- main -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Run the four variants and print the table; exit 1 if a goal is missed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=300, help="hosts in the star (default 300)")
    ap.add_argument("--skip-tutorial", action="store_true", help="skip the slow tutorial loop")
    ap.add_argument("--ipv6", action="store_true",
                    help="leave IPv6 link-local autoconf on in every variant")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds to let the kernel free namespaces between variants")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/net_topo.py needs root", file=sys.stderr)
        return 2
    n = topo.check_hosts(args.hosts)
    global IPV6
    IPV6 = args.ipv6
    results: dict[str, dict] = {}
    order = [("iproute2 best script", lambda: run_iproute2("best", n, "bb")),
             ("nsrecipes native", lambda: run_nsrecipes("native", n, "bn")),
             ("nsrecipes shell", lambda: run_nsrecipes("shell", n, "bs"))]
    if not args.skip_tutorial:
        order.append(("tutorial loop", lambda: run_iproute2("tutorial", n, "bt")))
    for name, fn in order:
        settle(args.settle)
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = fn()
    best = results["iproute2 best script"]
    print(f"\nstar of {n} hosts (bridge in a hub netns, address on every host, all links up, "
          f"IPv6 autoconf {'on' if IPV6 else 'off'}); {os.cpu_count()} CPUs, "
          f"kernel {os.uname().release}, load {os.getloadavg()[0]:.1f}")
    print(f"{'variant':<22} {'build s':>8} {'teardown s':>10} {'total s':>8} "
          f"{'build/best':>10} {'total/best':>10} {'check':>7} {'left ns/links':>13}")
    for name, r in results.items():
        total = r["build"] + r["teardown"]
        best_total = best["build"] + best["teardown"]
        print(f"{name:<22} {r['build']:8.3f} {r['teardown']:10.3f} {total:8.3f} "
              f"{r['build'] / best['build']:10.2f} {total / best_total:10.2f} {r['check']:>7} "
              f"{r['left'][0]:>6}/{r['left'][1]:<6}")
    nat = results["nsrecipes native"]
    ok = nat["build"] / best["build"] < 1.0 and not any(sum(r["left"]) for r in results.values())
    print(f"\ngoal: native build/best < 1.0 (aim 0.7): {nat['build'] / best['build']:.2f}")
    if "tutorial loop" in results:
        speedup = results["tutorial loop"]["build"] / nat["build"]
        print(f"goal: native >= 20x faster than the tutorial loop: {speedup:.1f}x")
        ok = ok and speedup >= 20
    print(f"goal: 0 namespaces and 0 links left: "
          f"{'yes' if not any(sum(r['left']) for r in results.values()) else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
