"""VXLAN ends: one machine's half of a lab link whose other end is on another machine.

Document section "Network namespace", across machines. A veth pair joins two namespaces of
one kernel; between two kernels, the kernel's ``vxlan`` device carries the link's Ethernet
frames in UDP datagrams over the machines' own network (the *underlay*), one VNI per link,
unicast to the other machine's underlay address. Each end is made with one command, run
from the machine's own network namespace (where the underlay address is)::

    ip link add nsr-t1-h2 mtu 1450 netns nsr-t1-h1 type vxlan id 1000 \\
        remote 10.250.0.12 local 10.250.0.11 dstport 4789

The device goes straight into the lab host's namespace (``netns``), but its UDP socket is
opened in the namespace that *created* it (the device's "link netns", ``ip -d link`` shows
``link-netns``): the tunnel runs over the underlay while the host sees only a plain
Ethernet device. Natively that is one RTM_NEWLINK from a socket of the machine's namespace,
``IFLA_NET_NS_FD`` naming the host's, with IFLA_INFO_KIND ``vxlan`` and its data
IFLA_VXLAN_ID (1), IFLA_VXLAN_GROUP (2, the unicast remote), IFLA_VXLAN_LOCAL (4) and
IFLA_VXLAN_PORT (15, big-endian) -- numbers from linux/if_link.h. The MTU is the underlay's
1500 less the 50 bytes VXLAN adds (outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14); the
kernel would give 1500 to a device without a lower one, and big packets would be lost.
Addresses, routes and impairments then go on the end as on a veth end.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct

from nsutil import netlink as nl
from nsutil.backend import Runner, Step

SECTION = "Network namespace (VXLAN across machines)"
IFLA_MTU = 4
IFLA_VXLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_LOCAL, IFLA_VXLAN_PORT = 1, 2, 4, 15
IFLA_VXLAN_GROUP6, IFLA_VXLAN_LOCAL6 = 16, 17
OVERHEAD = 50              #: bytes VXLAN adds to a frame (IPv4 underlay)
MTU = 1500 - OVERHEAD      #: the ends' MTU over a 1500-byte underlay


def create_argv(end: dict) -> list[str]:
    """``ip link add`` of one end, run in the machine's own namespace."""
    return ["ip", "link", "add", end["dev"], "mtu", str(MTU), "netns", end["ns"], "type", "vxlan",
            "id", str(end["vni"]), "remote", end["remote"], "local", end["local"],
            "dstport", str(end["port"])]


def create_request(end: dict, netns_fd: int) -> bytes:
    """The RTM_NEWLINK body of :func:`create_argv`."""
    remote, local = ipaddress.ip_address(end["remote"]), ipaddress.ip_address(end["local"])
    six = remote.version == 6
    data = (nl.attr(IFLA_VXLAN_ID, struct.pack("=I", end["vni"]))
            + nl.attr(IFLA_VXLAN_GROUP6 if six else IFLA_VXLAN_GROUP, remote.packed)
            + nl.attr(IFLA_VXLAN_LOCAL6 if six else IFLA_VXLAN_LOCAL, local.packed)
            + nl.attr(IFLA_VXLAN_PORT, struct.pack("!H", end["port"])))
    info = nl.attr(nl.IFLA_INFO_KIND, b"vxlan\0") + nl.attr(nl.IFLA_INFO_DATA, data)
    return (nl.link_body(end["dev"], netns_fd=netns_fd) + nl.attr(IFLA_MTU, struct.pack("=I", MTU))
            + nl.attr(nl.IFLA_LINKINFO, info))


def _create_native(end: dict) -> None:
    fd = nl.open_netns(end["ns"])
    try:
        with nl.Rtnl() as r:         # a socket of this (the machine's) namespace
            r.new_link(create_request(end, fd), " ".join(create_argv(end)))
            r.flush()
    finally:
        os.close(fd)


def _setup_lines(end: dict) -> list[str]:
    lines = [f"link set dev {end['dev']} addrgenmode none", f"link set dev {end['dev']} up"]
    return lines + ([f"addr add {end['addr']} dev {end['dev']}"] if end.get("addr") else [])


def _setup_native(end: dict) -> None:
    index = nl.link(end["ns"], end["dev"])["index"]
    with nl.Rtnl(nl.rtnl_socket(end["ns"])) as r:
        r.set_link(nl.link_body(index=index, up=True), f"ip -n {end['ns']} link set dev {end['dev']} up")
        if end.get("addr"):
            r.new_addr(index, end["addr"], f"ip -n {end['ns']} addr add {end['addr']} dev {end['dev']}")
        r.flush()


def batch_step(ns: str, lines: list[str], title: str, native) -> Step:
    """Step: ``ip -n NS -batch -`` with ``lines`` (natively: ``native()``)."""
    return Step(title, argv=["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n",
                display=f"ip -n {ns} -batch - <<EOF\n        " + "\n        ".join(lines)
                        + "\n        EOF", native=native)


def add_end(run: Runner, end: dict) -> None:
    """Steps: one VXLAN end (``end``: dev, ns, addr, vni, port, local, remote, impair) made from
    this process's network namespace into the host's, then addressed, up and impaired.
    No undo of its own: deleting the host's namespace deletes the device (and so its socket)."""
    run.run(Step(f"VXLAN end {end['dev']} in {end['ns']}: VNI {end['vni']}, UDP {end['local']} <-> "
                 f"{end['remote']}:{end['port']} (the socket stays in this machine's namespace)",
                 argv=create_argv(end), native=lambda: _create_native(end)))
    run.run(batch_step(end["ns"], _setup_lines(end), f"address {end['dev']} in {end['ns']} and "
                       "bring it up", lambda: _setup_native(end)))
    if end.get("impair"):
        from recipes.labs import impair
        impair.apply(run, end["ns"], end["dev"], end["impair"])


def add_routes(run: Runner, ns: str, routes: list[list[str]]) -> None:
    """Step: the static routes of one host (after its VXLAN ends: a gateway may be on one)."""
    def native() -> None:
        with nl.Rtnl(nl.rtnl_socket(ns)) as r:
            for dst, via in routes:
                r.new_route(dst, via, f"ip -n {ns} route add {dst} via {via}")
            r.flush()
    run.run(batch_step(ns, [f"route add {dst} via {via}" for dst, via in routes],
                       f"{len(routes)} static route(s) in {ns}", native))


def echo_ttl(ns: str, ip: str, timeout: float = 3.0) -> int | None:
    """One ICMP echo from netns ``ns`` to ``ip`` (IPv4) over a raw socket; the TTL of the
    reply (from its IP header), None if none came back in ``timeout`` seconds."""
    import select
    import time
    with nl.in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.IPPROTO_ICMP)
    try:
        ident, deadline = os.getpid() & 0xFFFF, time.monotonic() + timeout
        body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"nsr-check"
        csum = _checksum(body)
        sock.sendto(body[:2] + struct.pack("!H", csum) + body[4:], (ip, 0))
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            pkt, (src, _) = sock.recvfrom(2048)
            hl = (pkt[0] & 0x0F) * 4
            if src == ip and pkt[hl] == 0 and struct.unpack("!H", pkt[hl + 4:hl + 6])[0] == ident:
                return pkt[8]
        return None
    finally:
        sock.close()


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data[:len(data) // 2 * 2]))
    if len(data) % 2:
        total += data[-1] << 8
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
