"""See and prove a built lab: what it is made of (``net-topo --show``, as ``containerlab
inspect``) and whether every pair reaches every other along its shortest path (``--check``,
real packets).

Document section "Network namespace" (topologies). Both read what :mod:`recipes.labs.build` built;
neither changes it.
"""
from __future__ import annotations

import ipaddress

from nsutil import netlink as nl
from nsutil.backend import Runner, Step
from nsutil.errors import NsrError
from nsutil.limits import raise_nofile

from recipes.common import reach
from recipes import net
from recipes.labs import routes as toporoute
from recipes.labs.plan import Plan

SECTION = "Network namespace (topologies)"


def uses_native(run: Runner) -> bool:
    """True if ``run`` builds and checks topologies natively (netlink, sockets)."""
    return run.form_for(Step("probe", argv=["ip"], native=lambda: None)) == "native"


def check_limit(run: Runner) -> int:
    """How many pairs ``check`` sends packets between by default: 200 natively (30 on the
    shell backend, a process per pair), and never more than a third of the kernel's
    neighbour-table threshold ``gc_thresh2``. That table is one for the whole kernel (its
    thresholds exist in the initial namespace only, and nsrecipes never changes the host's),
    so each checked pair's two ARP entries count against the host's own."""
    limit = 200 if uses_native(run) else 30
    try:
        with open("/proc/sys/net/ipv4/neigh/default/gc_thresh2") as f:
            limit = min(limit, max(10, int(f.read()) // 6))
    except (OSError, ValueError):
        pass
    return limit


def check(run: Runner, plan: Plan, limit: int | None = None) -> dict:
    """Prove connectivity with real packets between every pair that should reach each other
    (all pairs up to ``limit``, a sample beyond), and measure each path's IP hops from the
    TTL a datagram arrives with (a router takes one off). A pair whose packets do not get
    through, or take another number of hops than the shortest path has, fails.
    Returns {"pairs", "ok", "failed", "total", "hops": {(a, b): hops}}."""
    pairs = plan.pairs(limit if limit is not None else check_limit(run))
    total = plan.pair_count()
    what = "all pairs" if len(pairs) == total else f"a sample of {len(pairs)} of {total} pairs"
    run.heading(f"{SECTION}: check {plan.scope} with real packets ({what})")
    if run.explain:
        if pairs:
            a, ca, b, cb = pairs[0]
            net.check_pair(run, plan.hosts[a], ca, plan.hosts[b], cb)
        return {"pairs": len(pairs), "ok": 0, "failed": [], "total": total, "hops": {}}
    if uses_native(run):
        measured = _check_native(plan, pairs)
    else:
        measured = {(a, b): _measure_shell(run, plan, a, ca, b, cb) for a, ca, b, cb in pairs}
        for a, ca, b, cb in pairs:     # once more, after the others, as on the native backend
            if measured[(a, b)] is None:
                measured[(a, b)] = _measure_shell(run, plan, a, ca, b, cb)
    return report(run, plan, pairs, measured, what)


def report(run: Runner, plan: Plan, pairs: list, measured: dict, what: str) -> dict:
    """Compare the measured hops {(a, b): hops or None} with the shortest paths, say each
    pair and the verdict (also what :func:`recipes.labs.machines.controller.check` measured across machines)."""
    total = plan.pair_count()
    cache: dict = {}
    failed, hops = [], {}
    for (a, b), got in measured.items():
        want = toporoute.hops(plan, a, b, cache)
        if got is not None:
            hops[(a, b)] = got
            run.say(f"  {a} -> {b}: {got} hop{'s' if got != 1 else ''}"
                    + ("" if got == want else f" (WRONG: the shortest path has {want})"))
        if got is None or got != want:
            failed.append((a, b))
    ok = len(pairs) - len(failed)
    run.say(f"check: {ok}/{len(pairs)} pairs exchanged packets along their shortest paths ({what})"
            + (f"; FAILED: {', '.join(f'{a}->{b}' for a, b in failed[:10])}" if failed else ""))
    return {"pairs": len(pairs), "ok": ok, "failed": failed, "total": total, "hops": hops}


def _measure_shell(run: Runner, plan: Plan, a: str, ca: str, b: str, cb: str) -> int | None:
    """Steps: packets a -> b and back (TCP through busybox nc), then the hops; None if either fails."""
    if not net.check_pair(run, plan.hosts[a], ca, plan.hosts[b], cb):
        return None
    return _hops_shell(run, plan, a, b, cb)


def _hops_shell(run: Runner, plan: Plan, a: str, b: str, cb: str) -> int | None:
    """Step: ``ping -c1`` from a to b; hops from the reply's TTL (b sends with its default:
    255 in a routed lab, 64 otherwise)."""
    start = toporoute.initial_ttl(plan)
    ip_b = str(ipaddress.ip_interface(cb).ip)

    def parse(out: str) -> int | None:
        ttl = next((int(w[4:]) for w in out.split() if w.startswith("ttl=")), None)
        return None if ttl is None else start + 1 - ttl
    try:
        return run.run(Step(f"count the hops {a} -> {b} (the TTL of ping's reply)",
                            argv=net.exec_argv(plan.hosts[a], ["ping", "-c", "1", "-W", "3", ip_b]),
                            parse=parse, native=lambda: None))
    except NsrError:
        return None


def _check_native(plan: Plan, pairs: list[tuple[str, str, str, str]]) -> dict:
    """One UDP socket per (host, address) in its namespace; a datagram and reply per pair.
    Returns {(a, b): hops or None}."""
    socks: dict[tuple[str, str], object] = {}
    raise_nofile(2 * len(pairs) + 256)
    out = {}
    try:
        for a, ca, b, cb in pairs:
            for host, cidr in ((a, ca), (b, cb)):
                if (host, cidr) not in socks:
                    socks[(host, cidr)] = reach.udp_socket(plan.hosts[host], cidr)
        for a, ca, b, cb in pairs:
            out[(a, b)] = reach.udp_hops(socks[(a, ca)], socks[(b, cb)], timeout=3.0)
        for a, ca, b, cb in pairs:     # once more, after the others: ARP may have been slow
            if out[(a, b)] is None:
                out[(a, b)] = reach.udp_hops(socks[(a, ca)], socks[(b, cb)], timeout=5.0)
    finally:
        for s in socks.values():
            s.close()
    return out


def show_data(plan: Plan) -> dict:
    """The lab as data (``net-topo --show --json``, and what ``--draw`` draws): every node
    (host, router or bridge namespace) with its interfaces, addresses and routes, every link
    with its impairment, and whether each namespace really exists now."""
    if plan.holder is not None:    # without root: what the lab's holder has pinned
        from recipes.labs import userlab
        present = userlab.netns_present(plan.holder)
    else:
        present = set(nl.list_netns())
    nodes: dict[str, dict] = {}

    def node(name: str, ns: str) -> dict:
        if name not in nodes:
            nodes[name] = {"name": name, "netns": ns, "kind": plan.kind(name),
                           "up": ns in present, "bridges": plan.bridges.get(ns, []),
                           "interfaces": [], "routes": [{"dst": d, "via": v}
                                                        for d, v in plan.routes.get(name, [])]}
        return nodes[name]

    if plan.hub:
        node("hub", plan.hub)
    for name, ns in list(plan.switches.items()) + list(plan.hosts.items()):
        node(name, ns)
    links = []
    for ln in plan.links:
        for me, ns, dev, addr, other in ((ln.a_host, ln.a_ns, ln.a_if, ln.a_addr, ln.b_host),
                                         (ln.b_host, ln.b_ns, ln.b_if, ln.b_addr, ln.a_host)):
            node(me or "hub", ns)["interfaces"].append({"name": dev, "addr": addr, "peer": other})
        links.append({"a": ln.a_host, "a_if": ln.a_if, "a_addr": ln.a_addr, "b": ln.b_host,
                      "b_if": ln.b_if, "b_addr": ln.b_addr, "impair": ln.impair})
    return {"scope": plan.scope, "shape": plan.shape, "hosts": len(plan.hosts),
            "routers": plan.routers, "nodes": list(nodes.values()), "links": links}


def show_lines(data: dict, most: int = 60) -> list[str]:
    """``net-topo --show`` as text: a node table and a link table (the first ``most`` rows
    of each, and how many more)."""
    from recipes.labs import impair
    up = sum(1 for n in data["nodes"] if n["up"])
    out = [f"lab {data['scope']}: {data['shape']}, {data['hosts']} hosts, {len(data['links'])} links, "
           f"{len(data['routers'])} routers; {up}/{len(data['nodes'])} namespaces up",
           f"  {'NODE':<10} {'KIND':<7} {'NETNS':<16} {'ADDRESSES':<34} ROUTES"]
    for n in data["nodes"][:most]:
        addrs = " ".join(i["addr"] for i in n["interfaces"] if i["addr"]) or "-"
        routes = f"{len(n['routes'])}: " + ", ".join(f"{r['dst']} via {r['via']}" for r in n["routes"][:2]) \
            + (" ..." if len(n["routes"]) > 2 else "") if n["routes"] else "-"
        if len(addrs) > 34:
            addrs = addrs[:31] + "..."
        out.append(f"  {n['name']:<10} {n['kind']:<7} {n['netns']:<16} {addrs:<34} {routes}"
                   + ("" if n["up"] else "   (MISSING)"))
    if len(data["nodes"]) > most:
        out.append(f"  ... {len(data['nodes']) - most} more nodes (--json lists all)")
    out.append(f"  {'LINK':<24} {'A END':<34} {'B END':<34} IMPAIRMENT")
    for ln in data["links"][:most]:
        a = f"{ln['a_if']} {ln['a_addr'] or ''}".strip()
        b = f"{ln['b_if']} {ln['b_addr'] or ''}".strip()
        out.append(f"  {ln['a'] + ' - ' + ln['b']:<24} {a:<34} {b:<34} "
                   f"{impair.describe(ln['impair']) if ln['impair'] else '-'}")
    if len(data["links"]) > most:
        out.append(f"  ... {len(data['links']) - most} more links (--json lists all)")
    return out
