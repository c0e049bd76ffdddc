"""Topology plans: which namespaces, links and addresses a topology has (nothing is made
by planning; :mod:`recipes.topo` builds, checks and tears down a plan).

Document section "Network namespace", taken to many hosts: ``star`` (every host on a Linux
bridge in a hub namespace, one subnet), ``line`` / ``ring`` (host i linked to host i+1, a /30
per link) and a TOML file (``hosts``, ``[[links]]``, optional addresses and ``subnet``; the
format is in :mod:`recipes.topo`). Every value is checked here, before anything exists.
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
SHAPES = ("star", "line", "ring")
MAX_HOSTS = 4000          #: more than this is refused as absurd (names, memory, minutes)
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
    #: tc netem/tbf impairment of this link (both directions), checked by
    #: :func:`recipes.impair.parse`: keys delay, jitter, loss, rate, corrupt, duplicate
    impair: dict | None = None
    #: short host names of the two ends (the bridge's name for a bridge end)
    a_host: str = ""
    b_host: str = ""

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

    def all_netns(self) -> list[str]:
        """Every namespace of the plan (hub first)."""
        return ([self.hub] if self.hub else []) + list(self.hosts.values())

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
                "links": [ln.to_json() for ln in self.links]}

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        """A plan back from its record (enough for exec, check and teardown)."""
        return cls(scope=data["scope"], shape=data["shape"], hosts=dict(data["hosts"]),
                   hub=data.get("hub"), segments=[[tuple(m) for m in s] for s in data["segments"]],
                   links=[Link(**ln) for ln in data.get("links", [])])


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


def plan_shape(shape: str, hosts: int | str, scope: str | None = None,
               subnet: str | None = None, ipv6: bool = False) -> Plan:
    """Plan a star, line or ring of ``hosts`` hosts (validated; nothing is created)."""
    if shape not in SHAPES:
        raise InvalidInput(f"unknown shape {shape!r}", hint=f"choose {', '.join(SHAPES)} or --file")
    count = check_hosts(hosts)
    scope = check_scope(scope)
    if shape == "line" and count < 2:
        raise InvalidInput(f"a line needs at least 2 hosts, not {count}", hint="give --hosts 2 or more")
    if shape == "ring" and count < 3:
        raise InvalidInput(f"a ring needs at least 3 hosts, not {count}", hint="give --hosts 3 or more")
    plan = Plan(scope=scope, shape=shape, ipv6=ipv6)
    for i in range(1, count + 1):
        plan.hosts[f"h{i}"] = _name(scope, f"h{i}")
    if shape == "star":
        pool = _subnet(subnet or STAR_SUBNET)
        if pool.num_addresses - 2 < count:
            raise InvalidInput(f"subnet {pool} has room for {pool.num_addresses - 2} hosts, not {count}",
                               hint="give a bigger subnet")
        plan.hub, plan.bridge = _name(scope, "hub"), _name(scope, "br")
        seg = []
        for i, (host, ns) in enumerate(plan.hosts.items(), 1):
            cidr = f"{pool.network_address + i}/{pool.prefixlen}"
            plan.links.append(Link(a_ns=plan.hub, a_if=ns, b_ns=ns, b_if=plan.hub, b_addr=cidr,
                                   a_host="hub", b_host=host,
                                   a_index=i + 2, b_index=2, a_master=plan.bridge, a_master_index=2))
            seg.append((host, cidr))
        plan.segments.append(seg)
        return plan
    pairs = [(i, i + 1) for i in range(1, count)] + ([(count, 1)] if shape == "ring" else [])
    nets = _link_subnets(subnet or LINK_POOL, len(pairs), [])
    next_index = {ns: 2 for ns in plan.hosts.values()}
    for (i, j), sub in zip(pairs, nets):
        _add_link(plan, f"h{i}", f"h{j}", f"{sub.network_address + 1}/{sub.prefixlen}",
                  f"{sub.network_address + 2}/{sub.prefixlen}", next_index)
    return plan


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


def plan_file(path: str, scope: str | None = None, ipv6: bool = False) -> Plan:
    """Plan a topology from a TOML file (format in the module docstring)."""
    import tomllib
    scope = check_scope(scope)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidInput(f"topology file {path!r} does not exist", hint="give a .toml file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"topology file {path!r} is not valid TOML: {exc}",
                           hint="see the format in `invoke net-topo --help`") from None
    unknown = set(data) - {"hosts", "links", "subnet"}
    if unknown:
        raise InvalidInput(f"topology file {path!r}: unknown key {sorted(unknown)[0]!r}",
                           hint="the keys are hosts, links and subnet")
    hosts_raw = data.get("hosts", [])
    names = list(hosts_raw) if isinstance(hosts_raw, (list, dict)) else None
    if names is None or not all(isinstance(h, str) for h in names):
        raise InvalidInput(f"topology file {path!r}: hosts must be a list of names",
                           hint='hosts = ["h1", "h2"]')
    links_raw = data.get("links", [])
    if not isinstance(links_raw, list) or not all(isinstance(x, dict) for x in links_raw):
        raise InvalidInput(f"topology file {path!r}: links must be [[links]] tables",
                           hint='[[links]] a = "h1" b = "h2"')
    listed = "hosts" in data        # a file that lists its hosts: a link to another is a typo
    for n, item in enumerate(links_raw, 1):
        for key in ("a", "b"):
            if not isinstance(item.get(key), str):
                raise InvalidInput(f"topology file {path!r}: a link without {key!r}",
                                   hint='every [[links]] needs a = "HOST" and b = "HOST"')
            if item[key] in names:
                continue
            if listed:
                raise InvalidInput(f"topology file {path!r}: link {n} ({item['a']}-{item.get('b')}) "
                                   f"names host {item[key]!r}, which is not in hosts",
                                   hint="fix the name, or add it to hosts = [...]")
            names.append(item[key])
        extra = set(item) - {"a", "b", "a_addr", "b_addr"}
        if extra:
            raise InvalidInput(f"topology file {path!r}: unknown link key {sorted(extra)[0]!r}",
                               hint="link keys are a, b, a_addr, b_addr")
    if not names:
        raise InvalidInput(f"topology file {path!r} has no hosts", hint='hosts = ["h1", "h2"]')
    check_hosts(len(names))
    plan = Plan(scope=scope, shape="file", ipv6=ipv6)
    for host in names:
        _check_host_name(scope, host)
        if host in plan.hosts:
            raise InvalidInput(f"host {host!r} is listed twice", hint="list each host once")
        plan.hosts[host] = _name(scope, host)
    given: dict[str, str] = {}
    seen_pairs: set[frozenset] = set()
    for n, item in enumerate(links_raw, 1):
        a, b = item["a"], item["b"]
        if a == b:
            raise InvalidInput(f"link {n} joins {a!r} to itself", hint="a link joins two hosts")
        key = frozenset((a, b))
        if key in seen_pairs:
            raise InvalidInput(f"two links between {a!r} and {b!r}", hint="one link per pair of hosts")
        seen_pairs.add(key)
        if ("a_addr" in item) != ("b_addr" in item):
            raise InvalidInput(f"link {n} ({a}-{b}) has only one address",
                               hint="give both a_addr and b_addr, or neither")
        if "a_addr" in item:
            ca = net.check_addr(str(item["a_addr"]), f"link {n} a_addr")
            cb = net.check_addr(str(item["b_addr"]), f"link {n} b_addr")
            if ipaddress.ip_interface(ca).network != ipaddress.ip_interface(cb).network:
                raise InvalidInput(f"link {n} ({a}-{b}): {ca} and {cb} are in different subnets",
                                   hint="put both ends in one subnet")
            if ipaddress.ip_interface(ca).ip == ipaddress.ip_interface(cb).ip:
                raise InvalidInput(f"link {n} ({a}-{b}): both ends are {ca}", hint="give two addresses")
            given[f"link {n} ({a}-{b})"] = ca
    net.check_no_overlap(given)
    taken = [ipaddress.ip_interface(c).network for c in given.values()]
    auto = iter(_link_subnets(str(data.get("subnet", LINK_POOL)),
                              sum(1 for x in links_raw if "a_addr" not in x), taken))
    next_index = {ns: 2 for ns in plan.hosts.values()}
    for item in links_raw:
        if "a_addr" in item:
            ca, cb = str(ipaddress.ip_interface(item["a_addr"])), str(ipaddress.ip_interface(item["b_addr"]))
        else:
            sub = next(auto)
            ca, cb = f"{sub.network_address + 1}/{sub.prefixlen}", f"{sub.network_address + 2}/{sub.prefixlen}"
        _add_link(plan, item["a"], item["b"], ca, cb, next_index)
    for host in plan.hosts:
        if not any(host == h for seg in plan.segments for h, _ in seg):
            plan.segments.append([])  # a lone host: nothing to reach
    plan.segments = [s for s in plan.segments if s]
    return plan
