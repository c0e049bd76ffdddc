"""TOML labs: a topology's hosts, links, addresses, routers and impairments from a file
(nothing is made here; :mod:`recipes.labs.build` builds the plan).

Document section "Network namespace", for labs drawn by hand::

    subnet = "10.210.0.0/16"        # optional: pool for automatic /30 link subnets
    hosts = ["web", "db"]           # optional: hosts are also taken from the links
    [hosts.r1]                      # or a table per host ...
    router = true                   # ... which may say it forwards (routes are computed)
    [[links]]
    a = "web"
    b = "r1"
    a_addr = "10.1.0.1/24"          # optional (both or neither)
    b_addr = "10.1.0.2/24"
    delay = "20ms"                  # optional impairments, both directions:
    jitter = "5ms"                  #   delay jitter loss rate corrupt duplicate
    loss = "1%"                     #   (see recipes.labs.impair)
    rate = "10mbit"
    [[links]]
    a = "db"
    b = "r1"

Across machines (:mod:`recipes.labs.machines.labfile`): ``[machines.NAME]`` tables with ``ssh`` and
``underlay``, ``machine = "NAME"`` on a host, ``vni = N`` on a link.

Every mistake is refused before anything is made, in one line naming the file, the line and
the key: an unknown key (a typo), a bad address or impairment, a host no link or router
joins to the others (the pairs are named).
"""
from __future__ import annotations

import ipaddress
import re

from nsutil.errors import InvalidInput

from recipes import net
from recipes.labs import routes as toporoute
from recipes.labs.plan import (LINK_POOL, Plan, add_link, check_host_name, check_hosts, check_scope,
                               host_netns, link_subnets)

TOP_KEYS = ("hosts", "links", "subnet", "machines")
HOST_KEYS = ("router", "machine")
LINK_KEYS = ("a", "b", "a_addr", "b_addr", "vni")
FORMAT_HINT = "see the format in `invoke net-topo --help`"


class Source:
    """The file's text, to point an error at the line of a key."""

    def __init__(self, path: str, text: str):
        self.path, self.lines = path, text.splitlines()

    def line_of(self, key: str, table: str | None = None, nth: int = 1) -> int | None:
        """The line (1-based) of ``key = ...``: after the ``nth`` ``[[table]]`` header (or in
        ``[table]``/``[hosts.NAME]``) when given, else anywhere."""
        start = 0
        if table is not None:
            header = re.compile(r"^\s*\[\[?\s*" + re.escape(table) + r"\s*\]\]?")
            found = [i for i, ln in enumerate(self.lines) if header.match(ln)]
            if len(found) < nth:
                return None
            start = found[nth - 1]
        pattern = re.compile(r"^\s*" + re.escape(key) + r"\s*=|^\s*\[\[?\s*" + re.escape(key) + r"\s*[\].]")
        for i in range(start, len(self.lines)):
            if table is not None and i > start and re.match(r"^\s*\[", self.lines[i]):
                break
            if pattern.search(self.lines[i]):
                return i + 1
        return None

    def table_line(self, table: str, nth: int = 1) -> int | None:
        """The line of the ``nth`` ``[[table]]`` header."""
        header = re.compile(r"^\s*\[\[\s*" + re.escape(table) + r"\s*\]\]")
        found = [i + 1 for i, ln in enumerate(self.lines) if header.match(ln)]
        return found[nth - 1] if len(found) >= nth else None

    def error(self, message: str, hint: str = FORMAT_HINT, line: int | None = None) -> InvalidInput:
        """``lab.toml:7: MESSAGE`` (without the line when it cannot be found)."""
        where = f"{self.path}:{line}" if line else self.path
        return InvalidInput(f"{where}: {message}", hint=hint)


def _load(path: str) -> tuple[dict, Source]:
    import tomllib
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InvalidInput(f"topology file {path!r} does not exist", hint="give a .toml file") from None
    except OSError as exc:
        raise InvalidInput(f"topology file {path!r} cannot be read: {exc.strerror}",
                           hint="give a readable .toml file") from None
    src = Source(path, raw.decode(errors="replace"))
    try:
        return tomllib.loads(raw.decode(errors="replace")), src
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"topology file {path!r} is not valid TOML: {exc}", hint=FORMAT_HINT) from None


def _hosts_table(data: dict, src: Source) -> tuple[list[str], list[str]]:
    """(host names in order, routers) from ``hosts = [...]`` or ``[hosts.NAME]`` tables."""
    raw = data.get("hosts", [])
    if isinstance(raw, list):
        if not all(isinstance(h, str) for h in raw):
            raise src.error("hosts must be a list of names", 'hosts = ["h1", "h2"]', src.line_of("hosts"))
        return list(raw), []
    if not isinstance(raw, dict):
        raise src.error("hosts must be a list of names or [hosts.NAME] tables",
                        'hosts = ["h1", "h2"]', src.line_of("hosts"))
    routers = []
    for name, spec in raw.items():
        spec = spec if isinstance(spec, dict) else None
        if spec is None:
            raise src.error(f"host {name!r} must be a table", "[hosts.NAME] router = true",
                            src.line_of(name, "hosts"))
        for key in spec:
            if key not in HOST_KEYS:
                raise src.error(f"unknown host key {key!r} (host {name})",
                                f"host keys are {', '.join(HOST_KEYS)}",
                                src.line_of(key, f"hosts.{name}") or src.line_of(key))
        if not isinstance(spec.get("router", False), bool):
            raise src.error(f"host {name}: router must be true or false", "router = true",
                            src.line_of("router", f"hosts.{name}"))
        if spec.get("router"):
            routers.append(name)
    return list(raw), routers


def _links_table(data: dict, src: Source, names: list[str]) -> list[dict]:
    from recipes.labs import impair
    links = data.get("links", [])
    if not isinstance(links, list) or not all(isinstance(x, dict) for x in links):
        raise src.error("links must be [[links]] tables", '[[links]] a = "h1" b = "h2"', src.line_of("links"))
    listed = "hosts" in data        # a file that lists its hosts: a link to another is a typo
    for n, item in enumerate(links, 1):
        for key in item:
            if key not in LINK_KEYS + impair.KEYS:
                raise src.error(f"unknown link key {key!r} (link {n})",
                                f"link keys are {', '.join(LINK_KEYS + impair.KEYS)}",
                                src.line_of(key, "links", n))
        for key in ("a", "b"):
            if not isinstance(item.get(key), str):
                raise src.error(f"link {n} has no {key!r}", 'every [[links]] needs a = "HOST" and b = "HOST"',
                                src.table_line("links", n))
            if item[key] in names:
                continue
            if listed:
                raise src.error(f"link {n} ({item['a']}-{item.get('b')}) names host {item[key]!r}, "
                                "which is not in hosts", "fix the name, or add it to hosts",
                                src.line_of(key, "links", n))
            names.append(item[key])
        spec = {k: v for k, v in item.items() if k in impair.KEYS}
        where = f"link {n} ({item['a']}-{item['b']})"
        try:
            item["_impair"] = impair.parse(spec, where)
        except InvalidInput as exc:
            bad = next((k for k in spec if repr(str(spec[k])) in str(exc) or k in str(exc)), None)
            line = src.line_of(bad, "links", n) if bad else None
            raise src.error(exc.what, exc.hint or FORMAT_HINT, line) from None
    return links


def plan_file(path: str, scope: str | None = None, ipv6: bool = False,
              machines: dict | None = None) -> Plan:
    """Plan a topology from a TOML file (format in the module docstring); a ``[machines]``
    table (or ``machines``, which replaces it) spreads it over machines
    (:mod:`recipes.labs.machines.labfile`)."""
    scope = check_scope(scope)
    data, src = _load(path)
    for key in data:
        if key not in TOP_KEYS:
            raise src.error(f"unknown key {key!r}", f"the keys are {', '.join(TOP_KEYS)}",
                            src.line_of(key))
    names, routers = _hosts_table(data, src)
    links_raw = _links_table(data, src, names)
    if not names:
        raise src.error("no hosts", 'hosts = ["h1", "h2"]')
    check_hosts(len(names))
    plan = Plan(scope=scope, shape="file", ipv6=ipv6, routers=routers)
    for host in names:
        check_host_name(scope, host)
        if host in plan.hosts:
            raise src.error(f"host {host!r} is listed twice", "list each host once")
        plan.hosts[host] = host_netns(scope, host)
    given = _given_addresses(src, links_raw)
    taken = [ipaddress.ip_interface(c).network for c in given.values()]
    auto = iter(link_subnets(str(data.get("subnet", LINK_POOL)),
                              sum(1 for x in links_raw if "a_addr" not in x), taken))
    next_index = {ns: 2 for ns in plan.hosts.values()}
    for item in links_raw:
        if "a_addr" in item:
            ca, cb = str(ipaddress.ip_interface(item["a_addr"])), str(ipaddress.ip_interface(item["b_addr"]))
        else:
            sub = next(auto)
            ca, cb = f"{sub.network_address + 1}/{sub.prefixlen}", f"{sub.network_address + 2}/{sub.prefixlen}"
        add_link(plan, item["a"], item["b"], ca, cb, next_index)
        plan.links[-1].impair = item["_impair"]
    unreachable = toporoute.route(plan)
    if unreachable:
        shown = ", ".join(f"{a}-{b}" for a, b in unreachable[:6])
        more = f" and {len(unreachable) - 6} more" if len(unreachable) > 6 else ""
        raise src.error(f"hosts that cannot reach each other: {shown}{more}",
                        "add a link, or mark the host between them router = true ([hosts.NAME])")
    from recipes.labs.machines import labfile as machinefile
    if machinefile.wanted(data, machines):
        machinefile.place(plan, data, src, links_raw, machines)
    return plan


def _given_addresses(src: Source, links: list[dict]) -> dict[str, str]:
    """Check the links' given addresses (both or neither, one subnet, no overlaps)."""
    given: dict[str, str] = {}
    pairs: set[frozenset] = set()
    for n, item in enumerate(links, 1):
        a, b = item["a"], item["b"]
        if a == b:
            raise src.error(f"link {n} joins {a!r} to itself", "a link joins two hosts",
                            src.line_of("b", "links", n))
        if frozenset((a, b)) in pairs:
            raise src.error(f"two links between {a!r} and {b!r}", "one link per pair of hosts",
                            src.line_of("a", "links", n))
        pairs.add(frozenset((a, b)))
        if ("a_addr" in item) != ("b_addr" in item):
            raise src.error(f"link {n} ({a}-{b}) has only one address",
                            "give both a_addr and b_addr, or neither", src.line_of("a_addr", "links", n)
                            or src.line_of("b_addr", "links", n))
        if "a_addr" in item:
            try:
                ca = net.check_addr(str(item["a_addr"]), f"link {n} a_addr")
                cb = net.check_addr(str(item["b_addr"]), f"link {n} b_addr")
            except InvalidInput as exc:
                key = "a_addr" if "a_addr" in str(exc) else "b_addr"
                raise src.error(exc.what, exc.hint or FORMAT_HINT, src.line_of(key, "links", n)) from None
            if ipaddress.ip_interface(ca).network != ipaddress.ip_interface(cb).network:
                raise src.error(f"link {n} ({a}-{b}): {ca} and {cb} are in different subnets",
                                "put both ends in one subnet", src.line_of("b_addr", "links", n))
            if ipaddress.ip_interface(ca).ip == ipaddress.ip_interface(cb).ip:
                raise src.error(f"link {n} ({a}-{b}): both ends are {ca}", "give two addresses",
                                src.line_of("b_addr", "links", n))
            given[f"link {n} ({a}-{b})"] = ca
    net.check_no_overlap(given)
    return given
