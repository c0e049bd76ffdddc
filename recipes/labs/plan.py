"""Topology plans: which namespaces, links, addresses and routes a topology has (nothing is
made by planning; :mod:`recipes.labs.build` builds, checks and tears down a plan).

Document section "Network namespace", taken to many hosts:

* ``star``: every host on a Linux bridge in a hub namespace, one subnet;
* ``tree --depth D --fanout F``: as Mininet's ``TreeTopo``, a bridge namespace (``s1``,
  ``s2``, ...) at every inner node and F**D hosts at the leaves, one subnet;
* ``line`` / ``ring``: host i linked to host i+1 (a /30 per link); the inner hosts (all of a
  ring's) are routers, with static shortest-path routes (:mod:`recipes.labs.routes`), so every
  host reaches every other;
* a TOML file (:mod:`recipes.labs.labfile`).
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
    #: :func:`recipes.labs.impair.parse`: keys delay, jitter, loss, rate, corrupt, duplicate
    impair: dict | None = None
    #: short host names of the two ends (the bridge's name for a bridge end)
    a_host: str = ""
    b_host: str = ""
    #: a link between hosts on two machines (:mod:`recipes.labs.machines.controller`): the VXLAN tunnel
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
    #: host -> its static routes [[destination, gateway], ...] (:mod:`recipes.labs.routes`)
    routes: dict[str, list[list[str]]] = field(default_factory=dict)
    #: netns -> {bridge: its address} where a bridge is a segment's gateway
    bridge_addrs: dict[str, dict[str, str]] = field(default_factory=dict)
    #: host -> the L2 segment it is on, in bridged shapes cut into segments joined by
    #: routers: a star's bridge number, or a tree's path from its top router (the child
    #: taken at each routed level; :func:`recipes.labs.routes.lan_hops`)
    lan: dict[str, int | list[int]] = field(default_factory=dict)
    #: a lab across machines (:mod:`recipes.labs.machines.labfile`): name -> {"ssh", "user", "host",
    #: "port", "underlay", "venv", "vxlan_port", "identity"}; empty on one machine
    machines: dict[str, dict] = field(default_factory=dict)
    #: host -> the machine it is built on (every host, when ``machines`` is given)
    placement: dict[str, str] = field(default_factory=dict)
    #: without root: the process that holds the lab's user namespace, ``{"pid", "start",
    #: "ready"}`` (:mod:`recipes.labs.userlab`); None for root's labs
    holder: dict | None = None

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
                **({"machines": self.machines, "placement": self.placement} if self.machines else {}),
                **({"holder": self.holder} if self.holder else {})}

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        """A plan back from its record (enough for exec, check and teardown)."""
        return cls(scope=data["scope"], shape=data["shape"], hosts=dict(data["hosts"]),
                   hub=data.get("hub"), segments=[[tuple(m) for m in s] for s in data["segments"]],
                   links=[Link(**ln) for ln in data.get("links", [])],
                   routers=list(data.get("routers", [])), switches=dict(data.get("switches", {})),
                   bridges=dict(data.get("bridges", {})), routes=dict(data.get("routes", {})),
                   bridge_addrs=dict(data.get("bridge_addrs", {})), lan=dict(data.get("lan", {})),
                   machines=dict(data.get("machines", {})), placement=dict(data.get("placement", {})),
                   holder=data.get("holder") or None)


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


def host_netns(scope: str, host: str) -> str:
    """The network namespace of ``host`` in lab ``scope``: ``nsr-SCOPE-HOST``."""
    return prefixed(scope, host)


def check_host_name(scope: str, host: str) -> str:
    """A host name of a lab file: fits an interface name with the ``nsr-SCOPE-`` prefix."""
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


def subnet_of(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A subnet as the user wrote it (host bits allowed), or one line saying it is none."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise InvalidInput(f"subnet {text!r} is not a network", hint="write it like 10.200.0.0/16") from None


def link_subnets(pool_text: str, count: int, taken: list) -> list:
    """``count`` /30s (/126s) of the pool ``pool_text`` that overlap none of ``taken``."""
    pool = subnet_of(pool_text)
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


def add_link(plan: Plan, a: str, b: str, a_addr: str, b_addr: str, next_index: dict) -> None:
    """Add a point-to-point link between hosts ``a`` and ``b`` (its own segment) to ``plan``;
    ``next_index`` numbers each namespace's interfaces."""
    a_ns, b_ns = plan.hosts[a], plan.hosts[b]
    link = Link(a_ns=a_ns, a_if=b_ns, b_ns=b_ns, b_if=a_ns, a_addr=a_addr, b_addr=b_addr,
                a_host=a, b_host=b,
                a_index=next_index[a_ns], b_index=next_index[b_ns])
    next_index[a_ns] += 1
    next_index[b_ns] += 1
    plan.links.append(link)
    plan.segments.append([(a, a_addr), (b, b_addr)])


