"""Labs across machines: the ``[machines]`` table of a TOML lab, where each host is built,
and the VXLAN tunnel of every link between two machines (nothing is made here).

Document section "Network namespace", past one machine::

    [machines.m1]                   # the first machine: hosts without `machine` go here
    ssh = "root@10.250.0.11"        # user@host[:port], as ssh takes it (Fabric connects)
    underlay = "10.250.0.11"        # the address the tunnels use (UDP to and from it)
    venv = "/opt/nsrecipes"         # optional: where nsrecipes is installed there
                                    #   (default: this process's sys.prefix, the same path)
    vxlan_port = 4789               # optional: the UDP port of its tunnels (default 4789)
    identity = "~/.ssh/id_lab"      # optional: the SSH key (default: what ssh would use)
    [machines.m2]
    ssh = "root@10.250.0.12:22"
    underlay = "10.250.0.12"
    [hosts.web]
    machine = "m2"
    [[links]]
    a = "db"
    b = "web"
    vni = 100                       # optional: the link's VXLAN id (default: automatic)

A link whose ends are on two machines becomes a VXLAN tunnel (:mod:`recipes.labs.vxlan`): one VNI
per link, unicast between the two machines' underlay addresses, on a UDP port both ends
share. Refused before anything is made, in one line with the file and line: an unknown
machine, an SSH target that does not parse, two machines with the same underlay address,
two links with the same VNI or one outside 1..16777215, and a port collision -- two
machines at one SSH host and port (they would be one machine, building the same names
twice), or a link between machines whose ``vxlan_port`` differ (a VXLAN device sends to
and listens on one port, so both ends must use the same). A VXLAN port cannot collide with
the SSH port: one is UDP, the other TCP.
"""
from __future__ import annotations

import ipaddress
import os
import re
import sys

from nsutil.errors import InvalidInput

from recipes.labs.plan import Plan

MACHINE_KEYS = ("ssh", "underlay", "venv", "vxlan_port", "identity")
VXLAN_PORT = 4789          #: IANA's VXLAN port (the kernel's default is 8472, Linux's old one)
VNI_MAX = 16777215         #: a VNI is 24 bits
AUTO_VNI = 1000            #: automatic VNIs count up from here, past the ones given
SSH_HINT = "write it user@host or user@host:port"
_SSH = re.compile(r"^(?P<user>[A-Za-z_][A-Za-z0-9_.-]*)@(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*"
                  r"|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


def parse_ssh(text: object, where: str = "ssh") -> tuple[str, str, int]:
    """``user@host[:port]`` -> (user, host, port); InvalidInput if it does not parse."""
    m = _SSH.match(text) if isinstance(text, str) else None
    port = int(m["port"]) if m and m["port"] else 22
    if not m or not 1 <= port <= 65535:
        raise InvalidInput(f"{where}: SSH target {text!r} does not parse", hint=SSH_HINT)
    return m["user"], m["host"].strip("[]"), port


def _machine(name: str, spec: object, err) -> dict:
    """One checked machine record; ``err(message, hint, key)`` raises with the line."""
    if not _NAME.match(name):
        raise err(f"machine name {name!r} must be letters, digits, '-' or '_'", "e.g. [machines.m1]", None)
    if not isinstance(spec, dict):
        raise err(f"machine {name} must be a table", '[machines.m1] ssh = "root@host"', None)
    for key in spec:
        if key not in MACHINE_KEYS:
            raise err(f"unknown machine key {key!r} (machine {name})",
                      f"machine keys are {', '.join(MACHINE_KEYS)}", key)
    for key in ("ssh", "underlay"):
        if key not in spec:
            raise err(f"machine {name} has no {key!r}", 'give ssh = "user@host[:port]" and '
                      'underlay = "ADDR"', None)
    try:
        user, host, port = parse_ssh(spec["ssh"], f"machine {name}")
    except InvalidInput as exc:
        raise err(exc.what, exc.hint, "ssh") from None
    try:
        underlay = str(ipaddress.ip_address(str(spec["underlay"])))
    except ValueError:
        raise err(f"machine {name}: underlay {spec['underlay']!r} is not an IP address",
                  'underlay = "10.250.0.11"', "underlay") from None
    vport = spec.get("vxlan_port", VXLAN_PORT)
    if not isinstance(vport, int) or isinstance(vport, bool) or not 1 <= vport <= 65535:
        raise err(f"machine {name}: vxlan_port {vport!r} is not a port (1..65535)",
                  f"vxlan_port = {VXLAN_PORT}", "vxlan_port")
    venv = spec.get("venv", sys.prefix)
    if not isinstance(venv, str) or not venv.startswith("/"):
        raise err(f"machine {name}: venv {venv!r} is not an absolute path",
                  'venv = "/opt/nsrecipes"', "venv")
    identity = spec.get("identity")
    if identity is not None and not isinstance(identity, str):
        raise err(f"machine {name}: identity must be a path", 'identity = "~/.ssh/id_lab"', "identity")
    return {"name": name, "ssh": spec["ssh"], "user": user, "host": host, "port": port,
            "underlay": underlay, "venv": venv, "vxlan_port": vport,
            "identity": os.path.expanduser(identity) if identity else None}


def check_machines(table: object, src) -> dict[str, dict]:
    """The machines, checked: each on its own, then against each other."""
    if not isinstance(table, dict) or not table:
        raise src.error("machines must be [machines.NAME] tables", '[machines.m1] ssh = "root@host"',
                        src.line_of("machines"))
    out: dict[str, dict] = {}
    underlays: dict[str, str] = {}
    targets: dict[tuple[str, int], str] = {}
    for name, spec in table.items():
        def err(message: str, hint: str, key: str | None, name: str = name) -> InvalidInput:
            line = src.line_of(key, f"machines.{name}") if key else None
            return src.error(message, hint, line or src.line_of(name, "machines")
                             or src.line_of(f"machines.{name}"))
        m = _machine(name, spec, err)
        if m["underlay"] in underlays:
            raise err(f"machines {underlays[m['underlay']]} and {name} have the same underlay "
                      f"address {m['underlay']}", "give each machine its own underlay address",
                      "underlay")
        if (m["host"], m["port"]) in targets:
            raise err(f"port collision: machines {targets[(m['host'], m['port'])]} and {name} are "
                      f"both {m['host']}:{m['port']} (one SSH server is one machine)",
                      "give each machine its own SSH host or port", "ssh")
        underlays[m["underlay"]] = targets[(m["host"], m["port"])] = name
        out[name] = m
    return out


def _placement(plan: Plan, data: dict, src, machines: dict[str, dict]) -> dict[str, str]:
    """host -> machine: its ``machine`` key, else the first machine."""
    first = next(iter(machines))
    hosts = data.get("hosts") if isinstance(data.get("hosts"), dict) else {}
    out = {}
    for host in plan.hosts:
        name = (hosts.get(host) or {}).get("machine", first)
        if name not in machines:
            raise src.error(f"host {host} names machine {name!r}, which is not in [machines]",
                            f"machines: {', '.join(machines)}",
                            src.line_of("machine", f"hosts.{host}"))
        out[host] = name
    return out


def _vnis(plan: Plan, src, links_raw: list[dict]) -> None:
    """Give every link between two machines its tunnel: the VNI given or the next free one."""
    given: dict[int, int] = {}
    for n, (ln, item) in enumerate(zip(plan.links, links_raw), 1):
        if "vni" not in item:
            continue
        vni = item["vni"]
        line = src.line_of("vni", "links", n)
        if not isinstance(vni, int) or isinstance(vni, bool) or not 1 <= vni <= VNI_MAX:
            raise src.error(f"link {n} ({ln.a_host}-{ln.b_host}): vni {vni!r} is not in 1..{VNI_MAX}",
                            "vni = 100", line)
        if vni in given:
            raise src.error(f"links {given[vni]} and {n} have the same vni {vni}",
                            "one VNI per link (or leave vni out: it is automatic)", line)
        if plan.placement[ln.a_host] == plan.placement[ln.b_host]:
            raise src.error(f"link {n} ({ln.a_host}-{ln.b_host}) has a vni but both ends are on "
                            f"machine {plan.placement[ln.a_host]}", "a vni is for a link between "
                            "two machines; drop it", line)
        given[vni] = n
    auto = AUTO_VNI
    for n, (ln, item) in enumerate(zip(plan.links, links_raw), 1):
        ma, mb = (plan.machines[plan.placement[h]] for h in (ln.a_host, ln.b_host))
        if ma is mb:
            continue
        if ma["vxlan_port"] != mb["vxlan_port"]:
            raise src.error(f"port collision: link {n} ({ln.a_host}-{ln.b_host}) joins {ma['name']} "
                            f"(vxlan_port {ma['vxlan_port']}) and {mb['name']} (vxlan_port "
                            f"{mb['vxlan_port']})", "a tunnel uses one UDP port at both ends: give "
                            "the two machines the same vxlan_port", src.table_line("links", n))
        if "vni" in item:
            vni = item["vni"]
        else:
            while auto in given:
                auto += 1
            vni, given[auto] = auto, n
        ln.vxlan = {"vni": vni, "port": ma["vxlan_port"]}


def wanted(data: dict, machines: dict | None = None) -> bool:
    """True if the lab is spread over machines (a table, ``machines``, or a host naming one)."""
    hosts = data.get("hosts") if isinstance(data.get("hosts"), dict) else {}
    return (machines is not None or "machines" in data
            or any(isinstance(h, dict) and "machine" in h for h in hosts.values()))


def place(plan: Plan, data: dict, src, links_raw: list[dict], machines: dict | None = None) -> Plan:
    """Spread ``plan`` over the machines of ``data["machines"]`` (or ``machines``, which
    replaces that table: the Python API's ``topology(file=..., machines=...)``)."""
    table = machines if machines is not None else data.get("machines")
    if table is None:
        host = next(h for h, spec in data["hosts"].items() if "machine" in spec)
        raise src.error(f"host {host} names machine {data['hosts'][host]['machine']!r}, but the lab "
                        "has no [machines] table", '[machines.m1] ssh = "root@host" underlay = "ADDR"',
                        src.line_of("machine", f"hosts.{host}"))
    plan.machines = check_machines(table, src)
    plan.placement = _placement(plan, data, src, plan.machines)
    _vnis(plan, src, links_raw)
    return plan


def machine_of(plan: Plan, name: str) -> dict:
    """The machine ``name`` of ``plan``; InvalidInput naming the ones there are."""
    if name not in plan.machines:
        raise InvalidInput(f"no machine {name!r} in the lab",
                           hint=f"machines: {', '.join(plan.machines) or 'none ([machines] table)'}")
    return plan.machines[name]
