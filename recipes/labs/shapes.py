"""Lab shapes: a star, line, ring or tree planned from a few numbers (Mininet's
``SingleSwitchTopo``, ``LinearTopo`` and ``TreeTopo``; a TOML file is :mod:`.labfile`).

What a plan holds is :mod:`.plan`; the shapes whose hosts route get their static routes from
:mod:`.routes` (lines, rings, and the routed top levels of a big tree or star).
"""
from __future__ import annotations

import ipaddress
import itertools

from nsutil.errors import InvalidInput

from recipes import net
from recipes.labs import routes as toporoute
from recipes.labs import plan as lab_plan
from recipes.labs.plan import (LINK_POOL, SHAPES, STAR_SUBNET, Link, Plan,
                               add_link, check_hosts, check_scope, check_tree, host_netns,
                               link_subnets, subnet_of)


def plan_shape(shape: str, hosts: int | str = 3, scope: str | None = None,
               subnet: str | None = None, ipv6: bool = False, *, depth: int | str = 2,
               fanout: int | str = 2) -> Plan:
    """Plan a star, line, ring (``hosts`` hosts) or tree (``depth``, ``fanout``); validated,
    nothing is created."""
    if shape not in SHAPES:
        raise InvalidInput(f"unknown shape {shape!r}", hint=f"choose {', '.join(SHAPES)} or --file")
    scope = check_scope(scope)
    if shape == "tree":
        d, f = check_tree(depth, fanout)
        return _plan_tree(Plan(scope=scope, shape=shape, ipv6=ipv6), d, f, subnet)
    count = check_hosts(hosts)
    if shape == "line" and count < 2:
        raise InvalidInput(f"a line needs at least 2 hosts, not {count}", hint="give --hosts 2 or more")
    if shape == "ring" and count < 3:
        raise InvalidInput(f"a ring needs at least 3 hosts, not {count}", hint="give --hosts 3 or more")
    plan = Plan(scope=scope, shape=shape, ipv6=ipv6)
    for i in range(1, count + 1):
        plan.hosts[f"h{i}"] = host_netns(scope, f"h{i}")
    if shape == "star":
        return _plan_star(plan, count, subnet)
    toporoute.check_diameter(shape, count)
    pairs = [(i, i + 1) for i in range(1, count)] + ([(count, 1)] if shape == "ring" else [])
    nets = link_subnets(subnet or LINK_POOL, len(pairs), [])
    next_index = {ns: 2 for ns in plan.hosts.values()}
    for (i, j), sub in zip(pairs, nets):
        add_link(plan, f"h{i}", f"h{j}", f"{sub.network_address + 1}/{sub.prefixlen}",
                  f"{sub.network_address + 2}/{sub.prefixlen}", next_index)
    plan.routers = list(plan.hosts) if shape == "ring" else [f"h{i}" for i in range(2, count)]
    toporoute.route(plan)
    return plan


def _host_pool(subnet: str | None, count: int):
    pool = subnet_of(subnet or STAR_SUBNET)
    if pool.num_addresses - 2 < count:
        raise InvalidInput(f"subnet {pool} has room for {pool.num_addresses - 2} hosts, not {count}",
                           hint="give a bigger subnet")
    return pool


def _segments(pool, count: int, size: int) -> list:
    """``count`` subnets of ``pool``, each with room for ``size`` hosts and a gateway."""
    plen = 32 - (size + 2).bit_length() if pool.version == 4 else 128 - (size + 2).bit_length()
    subs = list(itertools.islice(pool.subnets(new_prefix=max(plen, pool.prefixlen)), count))
    if len(subs) < count or plen < pool.prefixlen:
        raise InvalidInput(f"subnet {pool} has no room for {count} segments of {size} hosts",
                           hint="give a bigger subnet")
    return subs


def _plan_star(plan: Plan, count: int, subnet: str | None) -> Plan:
    """One hub namespace with a bridge per SEGMENT_MAX hosts; with more than one, each bridge
    is a subnet of its own with the hub's address on it, and the hub forwards."""
    pool = _host_pool(subnet, count)
    plan.hub, plan.bridge = host_netns(plan.scope, "hub"), host_netns(plan.scope, "br")
    nbr = -(-count // lab_plan.SEGMENT_MAX)
    names = [plan.bridge] + [host_netns(plan.scope, f"br{k}") for k in range(2, nbr + 1)]
    plan.bridges[plan.hub] = names
    subs = [pool] if nbr == 1 else _segments(pool, nbr, lab_plan.SEGMENT_MAX)
    if nbr > 1:
        plan.routers = ["hub"]
        plan.bridge_addrs[plan.hub] = {br: f"{sub.network_address + 1}/{sub.prefixlen}"
                                       for br, sub in zip(names, subs)}
    index = 2 + nbr                    # lo is 1, the bridges 2 .. nbr + 1
    seg = []
    for i, (host, ns) in enumerate(plan.hosts.items(), 1):
        k, j = divmod(i - 1, lab_plan.SEGMENT_MAX)
        cidr = f"{subs[k].network_address + j + (1 if nbr == 1 else 2)}/{subs[k].prefixlen}"
        plan.links.append(Link(a_ns=plan.hub, a_if=ns, b_ns=ns, b_if=plan.hub, b_addr=cidr,
                               a_host="hub", b_host=host, a_index=index, b_index=2,
                               a_master=names[k], a_master_index=2 + k))
        if nbr > 1:
            plan.lan[host] = k
            plan.routes[host] = [["0.0.0.0/0", str(subs[k].network_address + 1)]]
        index += 1
        seg.append((host, cidr))
    plan.segments.append(seg)
    return plan


def routed_levels(depth: int, fanout: int) -> int:
    """How many top levels of a tree route (0: the whole tree is one L2 segment): as few as
    keep every subtree below them within lab_plan.SEGMENT_MAX hosts."""
    levels = 0
    while fanout ** (depth - levels) > lab_plan.SEGMENT_MAX:
        levels += 1
    return levels


def _plan_tree(plan: Plan, depth: int, fanout: int, subnet: str | None) -> Plan:
    """Switches s1, s2, ... breadth first (a bridge namespace each), hosts at the leaves.

    Above lab_plan.SEGMENT_MAX hosts the top :func:`routed_levels` levels of switches forward instead
    of bridging: each subtree below them is a segment and subnet of its own, with its
    router's address on the link to it as the gateway. A router reaches the segments below
    a child router through that child (one route per child, merged prefixes) and everything
    else through its parent (a default route); routers are joined by /30 links."""
    count = fanout ** depth
    pool = _host_pool(subnet, count)
    levels = routed_levels(depth, fanout)
    next_index: dict[str, int] = {}
    level = ["s1"]
    order = [level]                                      # the nodes level by level
    plan.switches["s1"] = host_netns(plan.scope, "s1")
    plan.routers = ["s1"] if levels else []
    for d in range(1, depth + 1):
        children = []
        for parent in level:
            for _ in range(fanout):
                if d < depth:
                    child = f"s{len(plan.switches) + 1}"
                    plan.switches[child] = host_netns(plan.scope, child)
                    if d < levels:
                        plan.routers.append(child)
                else:
                    child = f"h{len(plan.hosts) + 1}"
                    plan.hosts[child] = host_netns(plan.scope, child)
                children.append((parent, child))
        for parent, child in children:
            _add_tree_link(plan, parent, child, next_index)
        level = [c for _, c in children]
        order.append(level)
    for name, ns in plan.switches.items():
        if name not in plan.routers:
            plan.bridges[ns] = [host_netns(plan.scope, "br")]
    if levels:
        _route_tree(plan, pool, order, fanout, levels)
        return plan
    down = {ln.b_host: ln for ln in plan.links}
    for j, host in enumerate(plan.hosts, 1):             # one segment: the pool, no gateway
        down[host].b_addr = f"{pool.network_address + j}/{pool.prefixlen}"
    plan.segments.append([(host, down[host].b_addr) for host in plan.hosts])
    return plan


def _route_tree(plan: Plan, pool, order: list[list[str]], fanout: int, levels: int) -> None:
    """Addresses and routes of a tree whose top ``levels`` levels route (see :func:`_plan_tree`);
    ``order``: its nodes level by level, breadth first (0: s1; the last: the hosts)."""
    per = fanout ** (len(order) - 1 - levels)           # hosts in one segment
    subs = _segments(pool, fanout ** levels, per)       # segment k: the k-th subtree at that level
    down = {ln.b_host: ln for ln in plan.links}         # child -> the link from its parent
    uplinks = [down[r] for r in plan.routers if r != "s1"]
    for ln, sub in zip(uplinks, link_subnets(LINK_POOL, len(uplinks), [pool])):
        ln.a_addr, ln.b_addr = f"{sub.network_address + 1}/30", f"{sub.network_address + 2}/30"
    for k, top in enumerate(order[levels]):             # the segments' tops: bridges, or hosts
        down[top].a_addr = f"{subs[k].network_address + 1}/{subs[k].prefixlen}"
    seg = []
    for i, host in enumerate(plan.hosts):
        k, j = divmod(i, per)
        down[host].b_addr = f"{subs[k].network_address + j + 2}/{subs[k].prefixlen}"
        seg.append((host, down[host].b_addr))
        plan.lan[host] = [(k // fanout ** (levels - 1 - n)) % fanout for n in range(levels)]
        plan.routes[host] = [["0.0.0.0/0", str(subs[k].network_address + 1)]]
    plan.segments.append(seg)
    for lvl in range(levels):
        for p, router in enumerate(order[lvl]):
            routes = []
            if lvl + 1 < levels:                          # child routers: their subtrees
                span = fanout ** (levels - lvl - 1)
                for c, child in enumerate(order[lvl + 1][p * fanout:(p + 1) * fanout]):
                    first = (p * fanout + c) * span
                    nets = ipaddress.collapse_addresses(subs[first:first + span])
                    routes += [[str(n), net.ip_of(down[child].b_addr)] for n in nets]
            if router != "s1":
                routes.append(["0.0.0.0/0", net.ip_of(down[router].a_addr)])
            if routes:
                plan.routes[router] = routes


def _add_tree_link(plan: Plan, parent: str, child: str, next_index: dict) -> None:
    """One tree link: enslaved to the bridge at either end that is a bridge, not a router."""
    a_ns = plan.switches[parent]
    b_ns = plan.switches.get(child) or plan.hosts[child]
    bridge = host_netns(plan.scope, "br")
    a_bridged = parent not in plan.routers
    b_bridged = child in plan.switches and child not in plan.routers
    for ns, name in ((a_ns, parent), (b_ns, child)):
        has_bridge = name in plan.switches and name not in plan.routers
        next_index.setdefault(ns, 3 if has_bridge else 2)  # the bridge is 2
    plan.links.append(Link(a_ns=a_ns, a_if=b_ns, b_ns=b_ns, b_if=a_ns, a_host=parent, b_host=child,
                           a_index=next_index[a_ns], b_index=next_index[b_ns],
                           a_master=bridge if a_bridged else None, a_master_index=2 if a_bridged else 0,
                           b_master=bridge if b_bridged else None, b_master_index=2 if b_bridged else 0))
    next_index[a_ns] += 1
    next_index[b_ns] += 1
