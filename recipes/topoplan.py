"""Topology plans: which namespaces, links, addresses and routes a topology has (nothing is
made by planning; :mod:`recipes.topo` builds, checks and tears down a plan).

Document section "Network namespace", taken to many hosts:

* ``star``: every host on a Linux bridge in a hub namespace, one subnet;
* ``tree --depth D --fanout F``: as Mininet's ``TreeTopo``, a bridge namespace (``s1``,
  ``s2``, ...) at every inner node and F**D hosts at the leaves, one subnet;
* ``line`` / ``ring``: host i linked to host i+1 (a /30 per link); the inner hosts (all of a
  ring's) are routers, with static shortest-path routes (:mod:`recipes.toporoute`), so every
  host reaches every other;
* a TOML file (:mod:`recipes.topofile`).
Every value is checked here, before anything exists.

One L2 segment holds at most :data:`SEGMENT_MAX` hosts. A broadcast (every ARP request) is
copied to every port of the segment within one softirq, and a veth hands each copy to the
receiving CPU's backlog queue, which drops what is beyond ``net.core.netdev_max_backlog``
(1000, one value for the whole kernel, which nsrecipes leaves alone): measured here, a
3000-host segment lost the ARP requests of half the checked pairs (``/proc/net/softnet_stat``
counted the drops). So, as real networks are, big labs are cut into segments joined by a
router: a bigger star gets one bridge (and subnet) per :data:`SEGMENT_MAX` hosts in the hub,
which forwards between them; a bigger tree's top levels forward (as few levels as keep
every subtree below them within the limit: ``--depth 4 --fanout 10`` routes at its root
and the root's 10 children, 100 segments of 100 hosts). A bridge would hold at most 1023
ports anyway (``BR_MAX_PORTS`` is 1024).
"""
from __future__ import annotations

import ipaddress
import itertools
import random
from dataclasses import dataclass, field

from nsutil.errors import InvalidInput, NotFound
from nsutil.limits import parse_number
from nsutil.names import IFNAMSIZ, check_name, prefixed, scope_id

from . import net

IPV6_NOTE = """IPv6 link-local autoconf is off on the lab links by default (ip link set DEV
addrgenmode none): on a bridge every host's DAD, router and MLD multicast is flooded to every
other host, O(n^2) packets -- measured here with 1000 hosts it more than doubled the build
time and dropped real packets (38 of 40 checked pairs got through). --ipv6 turns it on."""
SHAPES = ("star", "line", "ring", "tree")
MAX_HOSTS = 10000         #: more than this is refused (names must fit 15 bytes, and minutes)
SEGMENT_MAX = 500         #: hosts on one bridge / L2 segment (see the module docstring)
PORTS_PER_BRIDGE = SEGMENT_MAX
MAX_FANOUT = 1000         #: a tree's fanout (plus its uplink) must fit one bridge (1023 ports)
MAX_DEPTH = 16
STAR_SUBNET = "10.200.0.0/16"
LINK_POOL = "10.201.0.0/16"


@dataclass
class Link:
    """One veth pair: end ``a_if`` in netns ``a_ns``, end ``b_if`` in ``b_ns``."""

    a_ns: str
    a_if: str
    b_ns: str
    b_if: str
    a_addr: str | None = None
    b_addr: str | None = None
    a_index: int = 0
    b_index: int = 0
    a_master: str | None = None       # bridge in a_ns the a end is enslaved to
    a_master_index: int = 0
    b_master: str | None = None       # bridge in b_ns the b end is enslaved to (trees, trunks)
    b_master_index: int = 0
    #: tc netem/tbf impairment of this link (both directions), checked by
    #: :func:`recipes.impair.parse`: keys delay, jitter, loss, rate, corrupt, duplicate
    impair: dict | None = None
    #: short host names of the two ends (the bridge's name for a bridge end)
    a_host: str = ""
    b_host: str = ""
    #: a link between hosts on two machines (:mod:`recipes.machines`): the VXLAN tunnel
    #: that carries it, ``{"vni": N, "port": UDP_PORT}``; None for a veth pair
    vxlan: dict | None = None

    def to_json(self) -> dict:
        """The link as its record keeps it."""
        return {k: v for k, v in self.__dict__.items() if v not in (None, "")}


@dataclass
class Plan:
    """What a topology is made of (nothing is created by making a plan)."""

    scope: str
    shape: str
    hosts: dict[str, str] = field(default_factory=dict)            # short name -> netns
    hub: str | None = None
    bridge: str | None = None
    links: list[Link] = field(default_factory=list)
    segments: list[list[tuple[str, str]]] = field(default_factory=list)  # [(host, cidr)] that reach each other
    #: IPv6 link-local autoconf on the lab links (off by default, see IPV6_NOTE)
    ipv6: bool = False
    #: hosts that forward IPv4 (net.ipv4.ip_forward=1 in their namespace)
    routers: list[str] = field(default_factory=list)
    #: bridge namespaces of a tree (short name -> netns), made after the hub
    switches: dict[str, str] = field(default_factory=dict)
    #: netns -> the bridges in it, made first (ifindex 2, 3, ...)
    bridges: dict[str, list[str]] = field(default_factory=dict)
    #: host -> its static routes [[destination, gateway], ...] (:mod:`recipes.toporoute`)
    routes: dict[str, list[list[str]]] = field(default_factory=dict)
    #: netns -> {bridge: its address} where a bridge is a segment's gateway
    bridge_addrs: dict[str, dict[str, str]] = field(default_factory=dict)
    #: host -> the L2 segment it is on, in bridged shapes cut into segments joined by
    #: routers: a star's bridge number, or a tree's path from its top router (the child
    #: taken at each routed level; :func:`recipes.toporoute.lan_hops`)
    lan: dict[str, int | list[int]] = field(default_factory=dict)
    #: a lab across machines (:mod:`recipes.machinefile`): name -> {"ssh", "user", "host",
    #: "port", "underlay", "venv", "vxlan_port", "identity"}; empty on one machine
    machines: dict[str, dict] = field(default_factory=dict)
    #: host -> the machine it is built on (every host, when ``machines`` is given)
    placement: dict[str, str] = field(default_factory=dict)

    def all_netns(self) -> list[str]:
        """Every namespace of the plan (hub and switches first)."""
        return ([self.hub] if self.hub else []) + list(self.switches.values()) + list(self.hosts.values())

    def nodes(self) -> dict[str, str]:
        """Every node's short name -> its netns (``hub``, switches, hosts)."""
        return {**({"hub": self.hub} if self.hub else {}), **self.switches, **self.hosts}

    @property
    def routed(self) -> bool:
        """True if some host forwards (line, ring, a file lab with routers)."""
        return bool(self.routers)

    def kind(self, name: str) -> str:
        """``host``, ``router`` or ``bridge`` for a short name (or ``hub``): a bridge
        namespace that also routes (a big star's hub) is a bridge, a routing switch of a
        big tree (no bridge in it) a router."""
        if name == "hub" or (name in self.switches and self.switches[name] in self.bridges):
            return "bridge"
        return "router" if name in self.routers else "host"

    def netns(self, host: str) -> str:
        """The netns of host ``host`` (short name or netns name)."""
        if host in self.hosts:
            return self.hosts[host]
        if host in self.hosts.values():
            return host
        raise NotFound(f"no host {host!r} in topology {self.scope}",
                       hint=f"hosts: {', '.join(list(self.hosts)[:8])}")

    def addrs(self) -> dict[str, list[str]]:
        """Host -> its addresses (CIDR)."""
        out: dict[str, list[str]] = {h: [] for h in self.hosts}
        for seg in self.segments:
            for host, cidr in seg:
                out[host].append(cidr)
        return out

    def pair_count(self) -> int:
        """How many host pairs should reach each other."""
        return sum(len(s) * (len(s) - 1) // 2 for s in self.segments)

    def pairs(self, limit: int = 200, seed: int | None = None) -> list[tuple[str, str, str, str]]:
        """Pairs (host_a, cidr_a, host_b, cidr_b) to check: all of them up to ``limit``,
        beyond that a sample that still touches every host once, then random pairs."""
        if self.pair_count() <= limit:
            return [(a, ca, b, cb) for seg in self.segments
                    for (a, ca), (b, cb) in itertools.combinations(seg, 2)]
        rng = random.Random(seed)
        out: list[tuple[str, str, str, str]] = []
        seen: set[tuple[str, str]] = set()
        for seg in self.segments:
            if len(seg) < 2:
                continue
            order = seg[:]
            rng.shuffle(order)
            for (a, ca), (b, cb) in zip(order, order[1:]):
                if len(out) >= limit // 2:
                    break
                out.append((a, ca, b, cb))
                seen.add((a, b))
        big = [s for s in self.segments if len(s) >= 2]
        while len(out) < limit and big:
            seg = rng.choice(big)
            (a, ca), (b, cb) = rng.sample(seg, 2)
            if (a, b) not in seen and (b, a) not in seen:
                seen.add((a, b))
                out.append((a, ca, b, cb))
        return out

    def to_json(self) -> dict:
        """The record written under the state directory (``net/topo-SCOPE.json``)."""
        return {"scope": self.scope, "shape": self.shape, "hosts": self.hosts, "hub": self.hub,
                "netns": self.all_netns(), "segments": self.segments,
                "links": [ln.to_json() for ln in self.links], "routers": self.routers,
                "switches": self.switches, "bridges": self.bridges, "routes": self.routes,
                "bridge_addrs": self.bridge_addrs, "lan": self.lan,
                **({"machines": self.machines, "placement": self.placement} if self.machines else {})}

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        """A plan back from its record (enough for exec, check and teardown)."""
        return cls(scope=data["scope"], shape=data["shape"], hosts=dict(data["hosts"]),
                   hub=data.get("hub"), segments=[[tuple(m) for m in s] for s in data["segments"]],
                   links=[Link(**ln) for ln in data.get("links", [])],
                   routers=list(data.get("routers", [])), switches=dict(data.get("switches", {})),
                   bridges=dict(data.get("bridges", {})), routes=dict(data.get("routes", {})),
                   bridge_addrs=dict(data.get("bridge_addrs", {})), lan=dict(data.get("lan", {})),
                   machines=dict(data.get("machines", {})), placement=dict(data.get("placement", {})))


# --- planning -------------------------------------------------------------------------------

def check_hosts(count: int | str) -> int:
    """A host count: a whole number from 1 to MAX_HOSTS."""
    return parse_number(count, "host count", minimum=1, maximum=MAX_HOSTS, example="--hosts 3")


def check_scope(scope: str | None) -> str:
    """A scope: 1 to 4 letters/digits (it goes into every name, which must fit 15 bytes)."""
    if scope is None:
        return scope_id()
    if not scope or len(scope) > 4 or not scope.isalnum() or not scope.isascii():
        raise InvalidInput(f"scope {scope!r} must be 1 to 4 letters or digits",
                           hint="e.g. --scope t1 (default: random)")
    return scope.lower()


def _name(scope: str, host: str) -> str:
    return prefixed(scope, host)


def _check_host_name(scope: str, host: str) -> str:
    check_name(host, what="host name", max_bytes=IFNAMSIZ)
    if "." in host:
        raise InvalidInput(f"host name {host!r} has a '.'", hint="use letters, digits, '-' and '_'")
    room = IFNAMSIZ - len(f"nsr-{scope}-")
    if len(host.encode()) > room:
        raise InvalidInput(f"host name {host!r} is {len(host.encode())} bytes; with the prefix "
                           f"nsr-{scope}- the limit is {room} (interface names: 15 bytes)",
                           hint="use a shorter host name")
    if host in ("hub", "br"):
        raise InvalidInput(f"host name {host!r} is reserved", hint="pick another name")
    return host


def check_tree(depth: int | str, fanout: int | str) -> tuple[int, int]:
    """A tree's depth and fanout: whole numbers, at most MAX_HOSTS leaves."""
    d = parse_number(depth, "tree depth", minimum=1, maximum=MAX_DEPTH, example="--depth 2")
    f = parse_number(fanout, "tree fanout", minimum=1, maximum=MAX_FANOUT, example="--fanout 3")
    if f ** d > MAX_HOSTS:
        raise InvalidInput(f"a tree of depth {d} and fanout {f} has {f ** d} hosts; the limit is "
                           f"{MAX_HOSTS}", hint="give a smaller --depth or --fanout")
    return d, f


def plan_shape(shape: str, hosts: int | str = 3, scope: str | None = None,
               subnet: str | None = None, ipv6: bool = False, *, depth: int | str = 2,
               fanout: int | str = 2) -> Plan:
    """Plan a star, line, ring (``hosts`` hosts) or tree (``depth``, ``fanout``); validated,
    nothing is created."""
    from . import toporoute
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
        plan.hosts[f"h{i}"] = _name(scope, f"h{i}")
    if shape == "star":
        return _plan_star(plan, count, subnet)
    toporoute.check_diameter(shape, count)
    pairs = [(i, i + 1) for i in range(1, count)] + ([(count, 1)] if shape == "ring" else [])
    nets = _link_subnets(subnet or LINK_POOL, len(pairs), [])
    next_index = {ns: 2 for ns in plan.hosts.values()}
    for (i, j), sub in zip(pairs, nets):
        _add_link(plan, f"h{i}", f"h{j}", f"{sub.network_address + 1}/{sub.prefixlen}",
                  f"{sub.network_address + 2}/{sub.prefixlen}", next_index)
    plan.routers = list(plan.hosts) if shape == "ring" else [f"h{i}" for i in range(2, count)]
    toporoute.route(plan)
    return plan


def _host_pool(subnet: str | None, count: int):
    pool = _subnet(subnet or STAR_SUBNET)
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
    plan.hub, plan.bridge = _name(plan.scope, "hub"), _name(plan.scope, "br")
    nbr = -(-count // SEGMENT_MAX)
    names = [plan.bridge] + [_name(plan.scope, f"br{k}") for k in range(2, nbr + 1)]
    plan.bridges[plan.hub] = names
    subs = [pool] if nbr == 1 else _segments(pool, nbr, SEGMENT_MAX)
    if nbr > 1:
        plan.routers = ["hub"]
        plan.bridge_addrs[plan.hub] = {br: f"{sub.network_address + 1}/{sub.prefixlen}"
                                       for br, sub in zip(names, subs)}
    index = 2 + nbr                    # lo is 1, the bridges 2 .. nbr + 1
    seg = []
    for i, (host, ns) in enumerate(plan.hosts.items(), 1):
        k, j = divmod(i - 1, SEGMENT_MAX)
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
    keep every subtree below them within SEGMENT_MAX hosts."""
    levels = 0
    while fanout ** (depth - levels) > SEGMENT_MAX:
        levels += 1
    return levels


def _plan_tree(plan: Plan, depth: int, fanout: int, subnet: str | None) -> Plan:
    """Switches s1, s2, ... breadth first (a bridge namespace each), hosts at the leaves.

    Above SEGMENT_MAX hosts the top :func:`routed_levels` levels of switches forward instead
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
    plan.switches["s1"] = _name(plan.scope, "s1")
    plan.routers = ["s1"] if levels else []
    for d in range(1, depth + 1):
        children = []
        for parent in level:
            for _ in range(fanout):
                if d < depth:
                    child = f"s{len(plan.switches) + 1}"
                    plan.switches[child] = _name(plan.scope, child)
                    if d < levels:
                        plan.routers.append(child)
                else:
                    child = f"h{len(plan.hosts) + 1}"
                    plan.hosts[child] = _name(plan.scope, child)
                children.append((parent, child))
        for parent, child in children:
            _add_tree_link(plan, parent, child, next_index)
        level = [c for _, c in children]
        order.append(level)
    for name, ns in plan.switches.items():
        if name not in plan.routers:
            plan.bridges[ns] = [_name(plan.scope, "br")]
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
    for ln, sub in zip(uplinks, _link_subnets(LINK_POOL, len(uplinks), [pool])):
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
    bridge = _name(plan.scope, "br")
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


def _subnet(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise InvalidInput(f"subnet {text!r} is not a network", hint="write it like 10.200.0.0/16") from None


def _link_subnets(pool_text: str, count: int, taken: list) -> list:
    pool = _subnet(pool_text)
    plen = 30 if pool.version == 4 else 126
    out = []
    if pool.prefixlen > plen:
        raise InvalidInput(f"subnet pool {pool} is smaller than one /{plen}", hint="give a bigger pool")
    for sub in pool.subnets(new_prefix=plen):
        if len(out) == count:
            break
        if any(sub.overlaps(t) for t in taken):
            continue
        out.append(sub)
    if len(out) < count:
        raise InvalidInput(f"subnet pool {pool} has room for {len(out)} links, not {count}",
                           hint="give a bigger subnet")
    return out


def _add_link(plan: Plan, a: str, b: str, a_addr: str, b_addr: str, next_index: dict) -> None:
    a_ns, b_ns = plan.hosts[a], plan.hosts[b]
    link = Link(a_ns=a_ns, a_if=b_ns, b_ns=b_ns, b_if=a_ns, a_addr=a_addr, b_addr=b_addr,
                a_host=a, b_host=b,
                a_index=next_index[a_ns], b_index=next_index[b_ns])
    next_index[a_ns] += 1
    next_index[b_ns] += 1
    plan.links.append(link)
    plan.segments.append([(a, a_addr), (b, b_addr)])


