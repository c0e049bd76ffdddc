#!/usr/bin/env python3
"""Benchmark: a star of N hosts (bridge in a hub namespace, an address on every host, all
links up) or a tree, built, checked and torn down several ways, side by side:

* iproute2 best      -- one `ip -batch` for the namespaces and in-place veths, one
                        `ip -n NS -batch` per namespace for addresses and links up, one after
                        the other, as people write it; teardown one `ip -batch` of `netns del`;
* best script, xargs -P -- the same script, its per-namespace batches run by
                        `xargs -P $(nproc)` (a reference);
* nsrecipes shell    -- recipes.labs.build on the shell backend (the default where the tools
                        are installed): one `ip -batch` of `netns add`, then one `ip -batch`
                        inside each namespace, those of a round side by side
                        (recipes.labs.batches);
* nsrecipes native   -- recipes.labs.build on the native backend (one process, netlink, in-place
                        peers, one buffer per namespace, teardown by deleting namespaces);
* tutorial loop      -- (a star up to --tutorial-upto) one `ip` command a step, each veth made
                        in the root namespace and then moved; teardown one `ip netns del` each.

Every variant does the same work. Lab links carry IPv4 only: IPv6 link-local autoconf is
off on them (``addrgenmode none``; nsrecipes' default, see recipes.labs.build.IPV6_NOTE) unless
``--ipv6``, which leaves it on everywhere (then every host's DAD/RS/MLD multicast is flooded
to every other host by the bridge, an O(n^2) storm that dominates all variants at 1000).

Every variant runs ``--runs`` times (default 5), the variants interleaved; the medians are
printed with the load, and the goals: shell build <= 1.0x the best script, native <= 0.35x.
Ratios are to the iproute2 best script. After every teardown it counts what is left with the
benchmark's prefix (namespaces under /run/netns, links in the root namespace): must be 0.
Every build is checked with real UDP packets (a sample of pairs) before it is torn down.

    .venv/bin/python bench/net_topo.py --sizes 300,1000 --skip-tutorial
    .venv/bin/python bench/net_topo.py --hosts 3000 --runs 3
    .venv/bin/python bench/net_topo.py --shape tree --fanout 10 --hosts 1000

Teardown of 10,000 hosts against bare namespaces: bench/net_teardown.py.

``--rootless`` compares, at each size, nsrecipes native as root with nsrecipes native run by
an unprivileged user (uid 65534 through setpriv, as tests/asuser.py does: a lab owned by a
user namespace its holder keeps, see recipes.labs.userlab), alternately ``--repeat`` times
in the same run; the goal is a rootless build and teardown within 1.2x of root's:

    .venv/bin/python bench/net_topo.py --rootless --hosts 1000 --repeat 3
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nsutil import netlink as nl  # noqa: E402
from nsutil.backend import Runner  # noqa: E402
from recipes.labs import batches  # noqa: E402
from recipes.labs import build as topo  # noqa: E402

IP = shutil.which("ip") or "ip"


def leftovers(prefix: str) -> tuple[int, int]:
    """(namespaces, root-namespace links) whose names start with ``prefix``."""
    netns = sum(1 for n in nl.list_netns() if n.startswith(prefix))
    links = sum(1 for n in os.listdir("/sys/class/net") if n.startswith(prefix))
    return netns, links


def settle(seconds: float = 2.0, most: float = 120.0) -> None:
    """Let the kernel finish freeing the previous run's namespaces (it does so async, and
    10,000 take longer than a few seconds): wait ``seconds``, then until its memory in use
    stops falling (less than 1 MiB in a second), at most ``most`` seconds."""
    time.sleep(seconds)
    deadline = time.monotonic() + most
    last = used_kib()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = used_kib()
        if last - now < 1024:
            return
        last = now


def sample_check(plan: topo.Plan, pairs: int = 40) -> str:
    """Real UDP packets between a sample of host pairs (not timed)."""
    run = Runner(backend="native", out=open(os.devnull, "w"))
    result = topo.check(run, plan, limit=pairs)
    run.out.close()
    return f"{result['ok']}/{result['pairs']}"


# --- nsrecipes ------------------------------------------------------------------------------

IPV6 = False  #: set by --ipv6


SHAPE = "star"  #: set by --shape
OPTS: dict = {}  #: depth/fanout for trees


def plan_for(hosts: int, scope: str) -> "topo.Plan":
    """The plan every variant builds (the same names, addresses, bridges and routes)."""
    if SHAPE == "tree":
        fanout = OPTS["fanout"]
        depth = max(1, round(__import__("math").log(hosts, fanout)))
        return topo.plan_shape("tree", scope=scope, ipv6=IPV6, depth=depth, fanout=fanout)
    return topo.plan_shape(SHAPE, hosts, scope, ipv6=IPV6)


def build_lab(run: Runner, plan: "topo.Plan") -> float:
    """Build ``plan`` with recipes.labs.build (undone if it fails half-way); its seconds."""
    start = time.perf_counter()
    try:
        topo.build(run, plan, etc_hosts=False)
    except BaseException:
        run.undo()
        raise
    return time.perf_counter() - start


def used_kib() -> int:
    """Kernel memory in use, KiB: Slab + Percpu + KernelStack + PageTables of /proc/meminfo
    (a namespace and its devices live there; the page cache, which other processes move,
    does not count)."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            info[key] = int(value.split()[0])
    return sum(info.get(k, 0) for k in ("Slab", "Percpu", "KernelStack", "PageTables"))


def run_nsrecipes(backend: str, hosts: int, scope: str) -> dict:
    """Build, check and tear down with recipes.labs.build on ``backend``."""
    plan = plan_for(hosts, scope)
    out = open(os.devnull, "w")
    run = Runner(backend=backend, keep=True, out=out)
    before = used_kib()
    build = build_lab(run, plan)
    memory = (used_kib() - before) / len(plan.hosts)
    checked = sample_check(plan)
    run = Runner(backend=backend, keep=True, out=out)
    start = time.perf_counter()
    topo.down(run, plan.scope)
    teardown = time.perf_counter() - start
    out.close()
    return {"build": build, "teardown": teardown, "check": checked, "kib": memory,
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


def ip_run(*args: str, input: str | None = None) -> None:
    proc = subprocess.run([IP, *args], input=input, text=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    if proc.returncode:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[:300]}")


def tutorial_build(hosts: int, scope: str) -> None:
    """One ip command a step; each veth made in the root namespace, then both ends moved."""
    hub, br, names = _names(hosts, scope)
    ip_run("netns", "add", hub)
    ip_run("-n", hub, "link", "add", br, "type", "bridge")
    for line in _quiet(br):
        ip_run("-n", hub, *line.split())
    ip_run("-n", hub, "link", "set", br, "up")
    ip_run("-n", hub, "link", "set", "lo", "up")
    for i, ns in enumerate(names, 1):
        host_if, hub_if = f"nsr-{scope}-e{i}", f"nsr-{scope}-p{i}"
        ip_run("netns", "add", ns)
        ip_run("link", "add", host_if, "type", "veth", "peer", "name", hub_if)
        ip_run("link", "set", host_if, "netns", ns)
        ip_run("link", "set", hub_if, "netns", hub)
        ip_run("-n", ns, "addr", "add", _addr(i), "dev", host_if)
        for line in _quiet(host_if):
            ip_run("-n", ns, *line.split())
        ip_run("-n", ns, "link", "set", host_if, "up")
        ip_run("-n", ns, "link", "set", "lo", "up")
        ip_run("-n", hub, "link", "set", hub_if, "master", br)
        for line in _quiet(hub_if):
            ip_run("-n", hub, *line.split())
        ip_run("-n", hub, "link", "set", hub_if, "up")


def tutorial_teardown(hosts: int, scope: str) -> None:
    """One ``ip netns del`` a namespace."""
    hub, _br, names = _names(hosts, scope)
    for ns in names + [hub]:
        ip_run("netns", "del", ns)


def best_lines(plan: "topo.Plan") -> tuple[list[str], dict[str, list[str]], list[str]]:
    """The best iproute2 script for ``plan``: one ``ip -batch`` making every namespace,
    bridge and in-place veth from the root namespace; one ``ip -n NS -batch`` per namespace
    for its addresses, links up and routes; one ``ip -batch`` of ``netns exec NS sysctl``
    for the routers. The same work as nsrecipes does, with no Python in between."""
    root = [f"netns add {ns}" for ns in plan.all_netns()]
    for ns, bridges in plan.bridges.items():
        root += [f"link add name {br} netns {ns} type bridge" for br in bridges]
    root += [f"link add name {ln.a_if} netns {ln.a_ns} type veth peer name {ln.b_if} netns {ln.b_ns}"
             for ln in plan.links]
    return root, batches.ns_lines(plan), batches.sysctl_lines(plan)


ROOT_CHUNK = 4000   #: ip keeps an fd open per ``netns NAME`` it has read: 2 a veth line


def best_build(plan: "topo.Plan") -> None:
    """Run :func:`best_lines` (the root batch in chunks: one ``ip -batch`` of 10,000 veth
    lines runs out of file descriptors, "Invalid netns value", at the 20,000 limit here)."""
    root, per_ns, sysctls = best_lines(plan)
    for start in range(0, len(root), ROOT_CHUNK):
        ip_run("-batch", "-", input="\n".join(root[start:start + ROOT_CHUNK]) + "\n")
    for ns, lines in per_ns.items():
        ip_run("-n", ns, "-batch", "-", input="\n".join(lines) + "\n")
    if sysctls:
        ip_run("-batch", "-", input="\n".join(sysctls) + "\n")


def xargs_build(plan: "topo.Plan") -> None:
    """The same script, its per-namespace loop run by ``xargs -P $(nproc)``: each
    namespace's batch in a file, ``xargs -P N -I{} ip -n {} -batch DIR/{}`` over their names
    (a reference: the goal is to the plain script, as people write it)."""
    import tempfile
    root, per_ns, sysctls = best_lines(plan)
    for start in range(0, len(root), ROOT_CHUNK):
        ip_run("-batch", "-", input="\n".join(root[start:start + ROOT_CHUNK]) + "\n")
    with tempfile.TemporaryDirectory(prefix="nsr-bench-") as tmp:
        for ns, lines in per_ns.items():
            with open(os.path.join(tmp, ns), "w") as f:
                f.write("\n".join(lines) + "\n")
        proc = subprocess.run(["xargs", "-P", str(os.cpu_count() or 1), "-I{}", IP, "-n", "{}",
                               "-batch", os.path.join(tmp, "{}")], input="\n".join(per_ns) + "\n",
                              text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode:
            raise RuntimeError(f"xargs ip -n NS -batch failed: {proc.stderr.strip()[:300]}")
    if sysctls:
        ip_run("-batch", "-", input="\n".join(sysctls) + "\n")


def best_teardown(plan: "topo.Plan") -> None:
    """One ip -batch of ``netns del``."""
    ip_run("-batch", "-", input="".join(f"netns del {ns}\n" for ns in plan.all_netns()))


def run_iproute2(kind: str, hosts: int, scope: str) -> dict:
    """Build, check, tear down with the tutorial loop (a star) or the best script."""
    plan = plan_for(hosts, scope)   # the same namespaces and addresses: the check
    if kind == "tutorial":
        build_fn, down_fn = (lambda: tutorial_build(hosts, scope)), (lambda: tutorial_teardown(hosts, scope))
    elif kind == "xargs":
        build_fn, down_fn = (lambda: xargs_build(plan)), (lambda: best_teardown(plan))
    else:
        build_fn, down_fn = (lambda: best_build(plan)), (lambda: best_teardown(plan))
    before = used_kib()
    start = time.perf_counter()
    try:
        build_fn()
    except BaseException:
        for ns in nl.list_netns():
            if ns.startswith(f"nsr-{scope}-"):
                nl.delete_netns(ns)
        raise
    build = time.perf_counter() - start
    memory = (used_kib() - before) / hosts
    checked = sample_check(plan)
    start = time.perf_counter()
    down_fn()
    teardown = time.perf_counter() - start
    return {"build": build, "teardown": teardown, "check": checked, "kib": memory,
            "left": leftovers(f"nsr-{scope}-")}


# --- without root ---------------------------------------------------------------------------

USER_UID = 65534   #: the unprivileged user the rootless variant runs as


def rootless_child(hosts: int, scope: str) -> int:
    """In the user's process: build, check and tear down a native star; print the timings
    as JSON (the parent cannot time a process of another user from outside fairly)."""
    result = run_nsrecipes("native", hosts, scope)
    holder = result["plan"].holder or {}
    print(json.dumps({"build": result["build"], "teardown": result["teardown"],
                      "check": result["check"], "kib": result["kib"],
                      "holder": holder.get("pid")}))
    return 0


def run_rootless(hosts: int, scope: str) -> dict:
    """The same as :func:`run_nsrecipes` native, by uid 65534 in a home of its own; what is
    left afterwards: the user's state directory, and whether the holder still runs."""
    import tempfile
    home = tempfile.mkdtemp(prefix="nsr-bench-home-", dir="/tmp")
    run_dir = os.path.join(home, "run")
    os.mkdir(run_dir, 0o700)
    for path in (home, run_dir):
        os.chown(path, USER_UID, USER_UID)
        os.chmod(path, 0o700)
    env = {k: v for k, v in os.environ.items() if k not in ("NSR_STATE_DIR",)}
    env.update(HOME=home, XDG_RUNTIME_DIR=run_dir, USER="nobody", LOGNAME="nobody")
    argv = ["setpriv", f"--reuid={USER_UID}", f"--regid={USER_UID}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--", sys.executable,
            os.path.abspath(__file__), "--rootless-child", str(hosts), scope]
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if proc.returncode:
            raise RuntimeError(f"rootless run failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        time.sleep(0.2)
        alive = os.path.exists(f"/proc/{result['holder']}") and \
            open(f"/proc/{result['holder']}/stat").read().split(")")[-1].split()[0] not in "ZX"
        left = os.listdir(run_dir)
        result["left"] = (len(left), int(alive))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return result


def main_rootless(sizes: list[int], args: argparse.Namespace) -> int:
    """Root native against rootless native at every size, alternately ``args.repeat`` times;
    the best of each (the least disturbed by the other processes of a shared machine)."""
    ok = True
    print(f"\n{'hosts':>6} {'variant':<18} {'build s':>8} {'teardown s':>10} {'check':>7} "
          f"{'left':>5}")
    for n in sizes:
        runs: dict[str, list[dict]] = {"root native": [], "rootless native": []}
        for i in range(args.repeat):
            for name, fn in (("root native", lambda: run_nsrecipes("native", n, "rr")),
                             ("rootless native", lambda: run_rootless(n, "ru"))):
                settle(args.settle)
                print(f"{n} hosts: {name} ({i + 1}/{args.repeat}) ...", file=sys.stderr, flush=True)
                runs[name].append(fn())
        best = {}
        for name, results in runs.items():
            build = min(r["build"] for r in results)
            down = min(r["teardown"] for r in results)
            left = max(sum(r["left"]) for r in results)
            best[name] = (build, down)
            print(f"{n:>6} {name:<18} {build:8.2f} {down:10.3f} {results[-1]['check']:>7} "
                  f"{left:>5}   (all builds: {' '.join('%.2f' % r['build'] for r in results)})")
            ok = ok and not left
        (rb, rd), (ub, ud) = best["root native"], best["rootless native"]
        ratio = (ub + ud) / (rb + rd)
        ok = ok and ratio <= 1.2
        print(f"{n:>6} rootless/root: build {ub / rb:.2f}x, teardown {ud / rd:.2f}x, "
              f"build+teardown {ratio:.2f}x")
    print(f"goal: rootless build+teardown within 1.2x of root's, nothing left: "
          f"{'met' if ok else 'MISSED'}")
    return 0 if ok else 1


# --- main -----------------------------------------------------------------------------------

SHELL_GOAL, NATIVE_GOAL = 1.0, 0.35   #: build time, as a share of the best script's


def variants(n: int, args: argparse.Namespace) -> list[tuple[str, object]]:
    """The variants run at size ``n``, in the order of the first round."""
    order = [("iproute2 best script", lambda: run_iproute2("best", n, "bb")),
             ("best script, xargs -P", lambda: run_iproute2("xargs", n, "bx")),
             ("nsrecipes shell", lambda: run_nsrecipes("shell", n, "bs")),
             ("nsrecipes native", lambda: run_nsrecipes("native", n, "bn"))]
    if SHAPE == "star" and n <= args.tutorial_upto and n <= topo.PORTS_PER_BRIDGE:
        order.append(("tutorial loop", lambda: run_iproute2("tutorial", n, "bt")))
    return order


def run_size(n: int, args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every variant at one size, ``args.runs`` rounds, interleaved (each round starts one
    variant later, so none is always first after the pause); each result with its load."""
    order = variants(n, args)
    results: dict[str, list[dict]] = {name: [] for name, _fn in order}
    for i in range(args.runs):
        for name, fn in order[i % len(order):] + order[:i % len(order)]:
            settle(args.settle)
            print(f"{n} hosts: {name} ({i + 1}/{args.runs}) ...", file=sys.stderr, flush=True)
            result = fn()
            result["load"] = os.getloadavg()[0]
            results[name].append(result)
    return results


def median(values: list[float]) -> float:
    """The median (of an even count, the mean of the two middle ones)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def print_size(n: int, results: dict[str, list[dict]], runs: int) -> dict[str, float]:
    """One size's table of medians; returns each variant's median build / the best's."""
    best = median([r["build"] for r in results["iproute2 best script"]])
    plan = results["nsrecipes native"][0]["plan"]
    loads = [r["load"] for rs in results.values() for r in rs]
    note = "" if runs >= 5 else " (fewer than 5: --runs, for a size whose round takes minutes)"
    print(f"\n{SHAPE} of {len(plan.hosts)} hosts ({len(plan.all_netns())} namespaces, "
          f"{len(plan.links)} veth pairs, {len(plan.routers)} routers, IPv6 autoconf "
          f"{'on' if IPV6 else 'off'}); medians of {runs} interleaved runs{note}; "
          f"load {min(loads):.1f}-{max(loads):.1f}")
    print(f"{'variant':<22} {'build s':>8} {'ms/host':>8} {'teardown s':>10} {'KiB/host':>9} "
          f"{'build/best':>10} {'check':>7} {'left ns/links':>13}  all builds s")
    ratios = {}
    for name, rs in results.items():
        build = median([r["build"] for r in rs])
        ratios[name] = build / best
        left = max(sum(r["left"]) for r in rs)
        print(f"{name:<22} {build:8.2f} {1000 * build / len(plan.hosts):8.2f} "
              f"{median([r['teardown'] for r in rs]):10.3f} {median([r['kib'] for r in rs]):9.1f} "
              f"{ratios[name]:10.2f} {rs[-1]['check']:>7} {'0/0' if not left else 'LEFT':>6}"
              f"{'':7}  {' '.join('%.2f' % r['build'] for r in rs)}")
    return ratios


def main(argv: list[str] | None = None) -> int:
    """Run the variants at every size and print the tables; exit 1 if a goal is missed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="300", help="host counts, comma separated (default 300)")
    ap.add_argument("--hosts", type=int, help="one size (same as --sizes N)")
    ap.add_argument("--shape", default="star", choices=("star", "tree"),
                    help="star (a bridge per 500 hosts in a hub) or tree (--fanout; the depth "
                         "that gives the size)")
    ap.add_argument("--fanout", type=int, default=10, help="a tree's fanout (default 10)")
    ap.add_argument("--runs", type=int, default=5,
                    help="rounds of every variant, interleaved; medians are printed (default 5)")
    ap.add_argument("--tutorial-upto", type=int, default=300,
                    help="run the tutorial loop up to this size (default 300)")
    ap.add_argument("--skip-tutorial", action="store_true", help="skip the slow tutorial loop")
    ap.add_argument("--ipv6", action="store_true",
                    help="leave IPv6 link-local autoconf on in every variant")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds to let the kernel free namespaces between variants")
    ap.add_argument("--rootless", action="store_true",
                    help="root native against rootless native (uid 65534) instead")
    ap.add_argument("--repeat", type=int, default=1, help="with --rootless: runs of each")
    ap.add_argument("--rootless-child", nargs=2, metavar=("HOSTS", "SCOPE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rootless_child:
        return rootless_child(int(args.rootless_child[0]), args.rootless_child[1])
    if os.geteuid() != 0:
        print("bench/net_topo.py needs root", file=sys.stderr)
        return 2
    global IPV6, SHAPE
    IPV6, SHAPE = args.ipv6, args.shape
    OPTS["fanout"] = args.fanout
    if args.skip_tutorial:
        args.tutorial_upto = 0
    sizes = [args.hosts] if args.hosts else [topo.check_hosts(s) for s in args.sizes.split(",")]
    print(f"bench/net_topo.py: {os.cpu_count()} CPUs, kernel {os.uname().release}")
    if args.rootless:
        return main_rootless(sizes, args)
    ok, summary = True, []
    for n in sizes:
        results = run_size(n, args)
        ratios = print_size(n, results, args.runs)
        left = any(sum(r["left"]) for rs in results.values() for r in rs)
        hosts = len(results["nsrecipes native"][0]["plan"].hosts)
        shell_ok = ratios["nsrecipes shell"] <= SHELL_GOAL
        native_ok = ratios["nsrecipes native"] <= NATIVE_GOAL
        ok = ok and shell_ok and native_ok and not left
        summary.append((hosts, ratios, shell_ok, native_ok, left))
    print(f"\n{SHAPE:<5} {'hosts':>6} {'shell/best':>10} {'native/best':>11} {'xargs/best':>10}  goals")
    for hosts, ratios, shell_ok, native_ok, left in summary:
        print(f"{SHAPE:<5} {hosts:>6} {ratios['nsrecipes shell']:10.2f} {ratios['nsrecipes native']:11.2f} "
              f"{ratios['best script, xargs -P']:10.2f}  shell <= {SHELL_GOAL}x: "
              f"{'met' if shell_ok else 'NOT MET'}; native <= {NATIVE_GOAL}x: "
              f"{'met' if native_ok else 'NOT MET'}; left: {'yes' if left else '0'}")
    print(f"goals: build on the shell backend <= {SHELL_GOAL}x the best iproute2 script and on the "
          f"native backend <= {NATIVE_GOAL}x at every size; 0 namespaces and 0 links left: "
          f"{'met' if ok else 'NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
