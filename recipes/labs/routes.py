"""Routed labs: which hosts forward, and the static routes that let every host reach every
other (nothing is made here; :mod:`recipes.labs.build` turns the routes into ``ip route add``).

Document section "Network namespace", taken past one link: a namespace forwards IPv4 only
when ``net.ipv4.ip_forward=1`` is set *inside it* (the sysctl is per network namespace, so
the host's own forwarding never changes). A ``line``'s inner hosts and every host of a
``ring`` are routers; in a TOML lab the hosts marked ``router = true`` are.

Routes are shortest paths, found breadth first from every host, where a path may pass
*through* routers only. Every link subnet a host is not on gets a route via the first hop of
the shortest path to the nearer end of that link; the routes of one gateway are then merged
into as few prefixes as cover exactly the same subnets (``ipaddress.collapse_addresses``),
so a host of a 200-host line has a handful of routes, not 200. Where both ends of a link are
equally far (the link opposite a host in a ring) the subnet's route leads to one end, and the
other end's primary address gets a /32 route of its own along its own shortest path. Each host's *primary* address
(the one the check and ``/etc/netns`` hosts use) is its address on a link to a router, so a
packet to it may arrive through that router.

A packet loses one TTL per router: a path of more than :data:`MAX_HOPS` links cannot work, so
longer lines and rings are refused, and lab namespaces send with TTL 255
(``net.ipv4.ip_default_ttl``, also per namespace) instead of 64.
"""
from __future__ import annotations

import ipaddress
from collections import deque
from typing import TYPE_CHECKING

from nsutil.errors import InvalidInput

if TYPE_CHECKING:
    from recipes.labs.plan import Link, Plan

MAX_HOPS = 255              #: links on the longest path (TTL 255, one lost per router)
MAX_ROUTED_HOSTS = 2000     #: routes are computed from every host: O(hosts x links)
DEFAULT_TTL = "255"


def check_diameter(shape: str, count: int) -> None:
    """Refuse a line or ring whose longest shortest path is more than MAX_HOPS links."""
    longest = count - 1 if shape == "line" else count // 2
    if longest > MAX_HOPS:
        most = MAX_HOPS + 1 if shape == "line" else 2 * MAX_HOPS + 1
        raise InvalidInput(f"a routed {shape} of {count} hosts has paths of {longest} hops; IP's "
                           f"TTL allows {MAX_HOPS} (at most {most} hosts)",
                           hint="use --shape tree or star for big labs (at most 2 hops between hosts)")


def graph(plan: "Plan") -> dict[str, list[tuple[str, "Link"]]]:
    """Host -> [(neighbour, link)], in link order (host-to-host links only)."""
    adj: dict[str, list[tuple[str, Link]]] = {h: [] for h in plan.hosts}
    for ln in plan.links:
        if ln.a_host in adj and ln.b_host in adj:
            adj[ln.a_host].append((ln.b_host, ln))
            adj[ln.b_host].append((ln.a_host, ln))
    return adj


def shortest(adj: dict, routers: set[str], src: str) -> tuple[dict[str, int], dict[str, tuple[str, "Link"]]]:
    """Breadth first from ``src``, passing through routers only: (links to each reached
    host, the first hop (neighbour, link) towards it)."""
    dist = {src: 0}
    first: dict[str, tuple[str, Link]] = {}
    queue = deque([src])
    while queue:
        node = queue.popleft()
        if node != src and node not in routers:
            continue                         # reached, but it does not forward
        for nbr, ln in adj[node]:
            if nbr not in dist:
                dist[nbr] = dist[node] + 1
                first[nbr] = first[node] if node != src else (nbr, ln)
                queue.append(nbr)
    return dist, first


def _addr_of(ln: "Link", host: str) -> str:
    """``host``'s address (CIDR) on link ``ln``."""
    return ln.a_addr if ln.a_host == host else ln.b_addr  # type: ignore[return-value]


def _ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


def primary(plan: "Plan", adj: dict) -> dict[str, str]:
    """Each host's primary address: on a link to a router if it has one, else its first."""
    out = {}
    for host, nbrs in adj.items():
        if nbrs:
            via = [ln for nbr, ln in nbrs if nbr in plan.routers] or [nbrs[0][1]]
            out[host] = _addr_of(via[0], host)
    return out


def route(plan: "Plan") -> list[tuple[str, str]]:
    """Fill ``plan.routes`` and ``plan.segments`` (one per group of hosts that reach each
    other, with primary addresses); return the pairs of hosts that cannot reach each other."""
    if len(plan.hosts) > MAX_ROUTED_HOSTS and plan.routers:
        raise InvalidInput(f"a routed lab of {len(plan.hosts)} hosts: routes are computed for at "
                           f"most {MAX_ROUTED_HOSTS}", hint="use a tree or star for big labs")
    adj = graph(plan)
    routers = set(plan.routers)
    prim = primary(plan, adj)
    subnets = [(ipaddress.ip_interface(ln.a_addr).network, ln) for ln in plan.links
               if ln.a_host in adj and ln.b_host in adj and ln.a_addr]
    plan.routes, groups, seen, unreachable = {}, [], set(), []
    for src in plan.hosts:
        dist, first = shortest(adj, routers, src)
        by_gateway: dict[str, list] = {}
        towards: dict = {}
        for net, ln in subnets:
            if src in (ln.a_host, ln.b_host):
                continue                      # on the link itself: the kernel's own route
            ends = [h for h in (ln.a_host, ln.b_host) if h in dist]
            if not ends:
                continue
            end = towards[net] = min(ends, key=lambda h: (dist[h], h not in routers))
            nbr, hop = first[end]
            by_gateway.setdefault(_ip(_addr_of(hop, nbr)), []).append(net)
        for host, cidr in prim.items():
            # the far end of a subnet at a tie (a ring's opposite link): the subnet's route
            # goes to the other end, one hop too many for this host; a /32 goes straight
            iface = ipaddress.ip_interface(cidr)
            end = towards.get(iface.network)
            if end is not None and end != host and host in dist and dist[host] <= dist[end]:
                nbr, hop = first[host]
                by_gateway.setdefault(_ip(_addr_of(hop, nbr)), []).append(
                    ipaddress.ip_network(f"{iface.ip}/{iface.max_prefixlen}"))
        plan.routes[src] = [[str(n), gw] for gw, nets in by_gateway.items()
                            for n in ipaddress.collapse_addresses(nets)]
        unreachable += [(src, h) for h in plan.hosts if h not in dist and src < h]
        if src not in seen:
            seen.update(dist)
            groups.append([(h, prim[h]) for h in plan.hosts if h in dist and h in prim])
    plan.segments = [g for g in groups if g]
    plan.routes = {h: r for h, r in plan.routes.items() if r}
    return unreachable


def hops(plan: "Plan", a: str, b: str, cache: dict | None = None) -> int:
    """IP hops from host ``a`` to host ``b``: links on the shortest path (1 on one L2 segment:
    a star's or tree's bridges do not count, they forward frames, not packets)."""
    if plan.lan:              # segments of a star or tree joined by routers above them
        return lan_hops(plan.lan[a], plan.lan[b])
    if not plan.routed:
        return 1
    cache = cache if cache is not None else {}
    if a not in cache:
        cache[a] = shortest(graph(plan), set(plan.routers), a)[0]
    return cache[a].get(b, 0)


def lan_hops(a: int | list[int], b: int | list[int]) -> int:
    """IP hops between two segments of a star or tree, each given by its path from the top
    router (the child taken at each routed level; a star's segment: its bridge's number):
    1 on one segment, else 2 per routed level up to the router where the paths part."""
    pa, pb = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
    if pa == pb:
        return 1
    same = next(i for i, (x, y) in enumerate(zip(pa, pb)) if x != y)
    return 2 * (len(pa) - same)


def initial_ttl(plan: "Plan") -> int:
    """The TTL the lab's hosts send with: 255 where paths may be long (routed lines, rings
    and files), the kernel's 64 where they are not (one segment, or segments joined by one
    router)."""
    return int(DEFAULT_TTL) if plan.routed and not plan.lan else 64


def sysctls(plan: "Plan", host: str) -> dict[str, str]:
    """The sysctls set inside ``host``'s namespace (a host, or ``hub``/a switch): forwarding
    for routers, TTL 255 where paths may be long (never the host's own)."""
    out = {}
    if initial_ttl(plan) != 64:
        out["net.ipv4.ip_default_ttl"] = DEFAULT_TTL
    if host in plan.routers:
        out["net.ipv4.ip_forward"] = "1"
    return out
