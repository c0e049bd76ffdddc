"""Network namespaces and rtnetlink for the native backend (the ``ip`` of nsrecipes).

Two layers:

* **Named network namespaces** the way ``ip netns add`` makes them: an empty file
  ``/run/netns/NAME`` with the namespace bind-mounted on it, and ``/run/netns`` itself made a
  shared mount (taking ip's flock on the directory while doing so), so ``ip netns list``,
  ``ip -n NAME``, ``lsns`` and ``nsenter --net=/run/netns/NAME`` all see what we made. A
  namespace is created in *this* process: the calling thread unshares ``CLONE_NEWNET``,
  bind-mounts ``/proc/thread-self/ns/net``, optionally opens a netlink socket there (a socket
  stays bound to the namespace it was opened in), and setns() back -- no fork, no child
  process (pyroute2's ``netns.create`` forks one per namespace).
* **Batched rtnetlink**: :class:`Rtnl` queues requests and sends many of them in one
  ``send()``; the kernel processes the messages of one buffer in order and acks each, so a
  host of a topology (veth created in place in both namespaces, enslaved, up; address; ``lo``
  up) costs one round trip. The hot path encodes its few message kinds with ``struct``
  (measured here: pyroute2's generic encoder takes ~0.37 ms per veth request, and importing
  pyroute2 ~0.28 s, which is most of a 300-host budget). Reading state back -- links,
  addresses, veth peers -- is parsed with pyroute2's message classes, imported lazily.

Deleting a namespace (umount + unlink, as ``ip netns del``) removes every link in it; the
kernel frees it asynchronously, so teardown of a whole topology costs about the same as of one
host.
"""
from __future__ import annotations

import errno as _errno
import fcntl
import os
import socket
import struct
from contextlib import contextmanager
from typing import Any, Iterator

from . import mountinfo
from . import syscalls as sc
from .errors import Conflict, SyscallError

NETNS_RUN_DIR = "/run/netns"

# rtnetlink constants (linux/rtnetlink.h, linux/if_link.h, linux/netlink.h)
NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO = 1, 3, 10, 18
IFLA_NET_NS_FD = 28
IFLA_AF_SPEC, IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 26, 8, 1
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
IFF_UP = 0x1
AF_UNSPEC = 0

_HDR = struct.Struct("=IHHII")          # nlmsghdr
_IFI = struct.Struct("=BxHiII")         # ifinfomsg
_IFA = struct.Struct("=BBBBI")          # ifaddrmsg
_RTA = struct.Struct("=HH")             # rtattr
_RTM = struct.Struct("=BBBBBBBBI")      # rtmsg
RTA_DST, RTA_GATEWAY = 1, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1


# --- named network namespaces ---------------------------------------------------------------

def netns_path(name: str) -> str:
    """``/run/netns/NAME``."""
    return os.path.join(NETNS_RUN_DIR, name)


def list_netns() -> list[str]:
    """Names under /run/netns (what ``ip netns list`` shows)."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    """True if /run/netns/NAME exists."""
    return os.path.exists(netns_path(name))


_RUN_DIR_READY = False


def ensure_run_dir() -> None:
    """Make /run/netns exist and be a shared mount, as ``ip netns add`` does, except that a
    mount that is there already keeps its propagation (it is not ours to change).

    ip takes an exclusive flock on the directory (so that parallel runs do not stack bind
    mounts); if it is not a mount point yet, it bind-mounts it on itself and makes that
    shared, so namespaces named later show in every mount namespace that shares it.
    """
    global _RUN_DIR_READY
    if _RUN_DIR_READY:
        return
    try:
        os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise SyscallError.from_oserror(f"mkdir({NETNS_RUN_DIR!r})", exc) from None
    lock = os.open(NETNS_RUN_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not mountinfo.is_mountpoint(NETNS_RUN_DIR):
            sc.mount(NETNS_RUN_DIR, NETNS_RUN_DIR, "none", sc.MS_BIND | sc.MS_REC)
            sc.mount("", NETNS_RUN_DIR, "none", sc.MS_SHARED | sc.MS_REC)
    finally:
        os.close(lock)  # closing drops the flock
    _RUN_DIR_READY = True


def ip_would_reshare_run_dir() -> bool:
    """True if /run/netns is a mount point that is not shared: a mount of someone else's
    (``ip netns add`` leaves its own shared), whose propagation ``ip netns add`` and ``ip netns
    attach`` would change, as they make /run/netns shared every time. The shell forms then name
    the namespace natively instead (:func:`create_netns`), which leaves that mount as it is."""
    m = mountinfo.covering(NETNS_RUN_DIR)
    return m is not None and m.propagation != "shared"


def create_netns(name: str, *, open_socket: bool = False, home: int | None = None,
                 sysctls: dict[str, str] | None = None) -> socket.socket | None:
    """``ip netns add NAME`` in this process; with ``open_socket`` return an rtnetlink
    socket opened inside the new namespace (for configuring it without setns later).
    ``home``: an open fd of the calling thread's netns (saves an open per namespace).
    ``sysctls``: ``{"net.ipv6.conf.default.addr_gen_mode": "1"}`` written inside it."""
    ensure_run_dir()
    path = netns_path(name)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError:
        raise Conflict(f"network namespace {name!r} exists already",
                       hint=f"remove it (ip netns del {name}) or pick another name") from None
    except OSError as exc:
        raise SyscallError.from_oserror(f"open({path!r}, O_CREAT|O_EXCL)", exc) from None
    own_home = home is None
    if own_home:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    sock = None
    try:
        sc.unshare(sc.CLONE_NEWNET)
        try:
            sc.mount("/proc/thread-self/ns/net", path, "none", sc.MS_BIND)
            for key, value in (sysctls or {}).items():
                write_sysctl(key, value)
            if open_socket:
                sock = rtnl_socket()
        finally:
            sc.setns(home, sc.CLONE_NEWNET)
    except BaseException:
        if sock is not None:
            sock.close()
        sc.remove_if_present(path)
        raise
    finally:
        if own_home:
            os.close(home)
    return sock


def write_sysctl(key: str, value: str) -> None:
    """Write ``/proc/sys/KEY`` (dots as slashes); net.* keys act on the calling thread's
    network namespace."""
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise SyscallError.from_oserror(f"write({path!r})", exc) from None


def delete_netns(name: str, *, missing_ok: bool = True) -> bool:
    """``ip netns del NAME``: lazy-unmount and unlink; its links go with it. True if removed."""
    path = netns_path(name)
    if not os.path.exists(path):
        if missing_ok:
            return False
        raise SyscallError(f"delete netns {name!r}", _errno.ENOENT)
    try:
        sc.umount(path, sc.MNT_DETACH)
    except SyscallError as exc:
        if exc.errno != _errno.EINVAL:  # EINVAL: not mounted (a half-made namespace)
            raise
    sc.remove_if_present(path)
    return True


def open_netns(name: str | None) -> int:
    """An O_RDONLY fd for the named netns (``None`` = the calling thread's own, as ``ip``
    without ``netns`` means: the root namespace when run on the host)."""
    path = netns_path(name) if name else "/proc/thread-self/ns/net"
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SyscallError.from_oserror(f"open({path!r})", exc,
                                        hint=f"does netns {name!r} exist? (ip netns list)") from None


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside netns ``name`` (sockets made there stay)."""
    if name is None:
        yield
        return
    target = open_netns(name)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(target, sc.CLONE_NEWNET)
        try:
            yield
        finally:
            sc.setns(home, sc.CLONE_NEWNET)
    finally:
        os.close(home)
        os.close(target)


def rtnl_socket(ns: str | None = None) -> socket.socket:
    """An rtnetlink socket bound in netns ``ns`` (None = where this thread is)."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 21)  # SO_RCVBUFFORCE (root): room for acks
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sock.bind((0, 0))
    return sock


# --- message encoding -----------------------------------------------------------------------

def attr(kind: int, payload: bytes) -> bytes:
    """One rtattr: length, type, ``payload``, padded to 4 bytes."""
    size = _RTA.size + len(payload)
    return _RTA.pack(size, kind) + payload + b"\0" * (-size % 4)


def _str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def link_body(ifname: str | None = None, *, index: int = 0, up: bool | None = None,
              kind: str | None = None, netns_fd: int | None = None, master: int | None = None,
              peer: bytes | None = None, addrgenmode_none: bool = False) -> bytes:
    """An ifinfomsg with attributes; ``peer`` is another link_body (for veth);
    ``addrgenmode_none``: no IPv6 link-local address (``ip link set DEV addrgenmode none``;
    send it before the link goes up, in a message of its own)."""
    flags = IFF_UP if up else 0
    change = IFF_UP if up is not None else 0
    out = _IFI.pack(AF_UNSPEC, 0, index, flags, change)
    if ifname:
        out += _str(IFLA_IFNAME, ifname)
    if netns_fd is not None:
        out += _u32(IFLA_NET_NS_FD, netns_fd)
    if master is not None:
        out += _u32(IFLA_MASTER, master)
    if kind:
        info = _str(IFLA_INFO_KIND, kind)
        if peer is not None:
            info += attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer))
        out += attr(IFLA_LINKINFO, info)
    if addrgenmode_none:
        mode = attr(IFLA_INET6_ADDR_GEN_MODE, struct.pack("=B", IN6_ADDR_GEN_MODE_NONE))
        out += attr(IFLA_AF_SPEC, attr(socket.AF_INET6, mode))
    return out


def addr_body(index: int, cidr: str) -> bytes:
    """An ifaddrmsg for ``ip addr add CIDR dev INDEX`` (IPv4 gets its broadcast too)."""
    import ipaddress
    iface = ipaddress.ip_interface(cidr)
    packed = iface.ip.packed
    family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
    out = _IFA.pack(family, iface.network.prefixlen, 0, 0, index)
    out += attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
    if iface.version == 4 and iface.network.prefixlen < 31:
        out += attr(IFA_BROADCAST, iface.network.broadcast_address.packed)
    return out


def route_body(dst: str, via: str) -> bytes:
    """An rtmsg for ``ip route add DST via VIA`` (main table, proto boot, as ip does)."""
    import ipaddress
    net, gw = ipaddress.ip_network(dst), ipaddress.ip_address(via)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    out = _RTM.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                    RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
    return out + attr(RTA_DST, net.network_address.packed) + attr(RTA_GATEWAY, gw.packed)


class NetlinkError(SyscallError):
    """An rtnetlink request was refused; names the request (``ip`` words) and the errno."""


class Rtnl:
    """A batch of rtnetlink requests on one socket.

    ``add()`` queues a request; ``flush()`` sends everything queued (in buffers of up to
    ``chunk`` messages) and reads one ack per request. All requests are processed by the
    kernel even when one fails; ``flush`` then raises the first error, naming the request.
    """

    def __init__(self, sock: socket.socket | None = None, chunk: int = 128):
        self.sock = sock or rtnl_socket()
        self.chunk = chunk
        self.seq = 0
        self.pending: list[tuple[int, bytes, str]] = []

    def add(self, msg_type: int, body: bytes, what: str, flags: int = 0) -> None:
        """Queue one request (acked); ``what`` is how an error names it."""
        self.seq += 1
        hdr = _HDR.pack(_HDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK | flags,
                        self.seq, 0)
        self.pending.append((self.seq, hdr + body, what))

    def new_link(self, body: bytes, what: str) -> None:
        """Queue RTM_NEWLINK create (fails if the name exists)."""
        self.add(RTM_NEWLINK, body, what, NLM_F_CREATE | NLM_F_EXCL)

    def set_link(self, body: bytes, what: str) -> None:
        """Queue RTM_NEWLINK without create (``ip link set``)."""
        self.add(RTM_NEWLINK, body, what)

    def del_link(self, body: bytes, what: str) -> None:
        """Queue RTM_DELLINK."""
        self.add(RTM_DELLINK, body, what)

    def new_addr(self, index: int, cidr: str, what: str) -> None:
        """Queue RTM_NEWADDR (``ip addr add CIDR dev INDEX``)."""
        self.add(RTM_NEWADDR, addr_body(index, cidr), what, NLM_F_CREATE | NLM_F_EXCL)

    def new_route(self, dst: str, via: str, what: str) -> None:
        """Queue RTM_NEWROUTE (``ip route add DST via VIA``)."""
        self.add(RTM_NEWROUTE, route_body(dst, via), what, NLM_F_CREATE | NLM_F_EXCL)

    def send(self) -> list[tuple[int, str]]:
        """Send what is queued without waiting; returns the (seq, what) to collect later."""
        waiting = []
        for start in range(0, len(self.pending), self.chunk):
            part = self.pending[start:start + self.chunk]
            self.sock.send(b"".join(m for _, m, _ in part))
            waiting.extend((seq, what) for seq, _, what in part)
        self.pending.clear()
        return waiting

    def collect(self, waiting: list[tuple[int, str]]) -> list[NetlinkError]:
        """Read the acks for ``waiting``; return the errors (empty if all succeeded)."""
        names = dict(waiting)
        errors: list[NetlinkError] = []
        left = len(names)
        while left:
            data = self.sock.recv(1 << 20)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, mtype, _flags, seq, _pid = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    break
                if mtype == NLMSG_ERROR and seq in names:
                    code = -struct.unpack_from("=i", data, offset + _HDR.size)[0]
                    if code:
                        errors.append(NetlinkError(names[seq], code))
                    left -= 1
                offset += (length + 3) & ~3
        return errors

    def flush(self) -> None:
        """Send everything queued, ``chunk`` requests a buffer, read every ack; raise the
        first error (the kernel has still processed the requests after it)."""
        errors: list[NetlinkError] = []
        queued, self.pending = self.pending, []
        for start in range(0, len(queued), self.chunk):
            self.pending = queued[start:start + self.chunk]
            errors += self.collect(self.send())
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --- reading state (pyroute2 parses the replies) ---------------------------------------------

def dump(sock: socket.socket, msg_type: int, body: bytes) -> list[bytes]:
    """Send a dump request (``msg_type`` with ``body``) on ``sock``; return every reply
    message (header included) up to NLMSG_DONE."""
    hdr = _HDR.pack(_HDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    sock.send(hdr + body)
    out: list[bytes] = []
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + _HDR.size <= len(data):
            length, mtype = _HDR.unpack_from(data, offset)[:2]
            if mtype == NLMSG_DONE:
                return out
            if mtype == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, offset + _HDR.size)[0]
                if code:
                    raise NetlinkError("netlink dump", code)
                return out
            out.append(data[offset:offset + length])
            offset += (length + 3) & ~3


def links(ns: str | None = None) -> list[dict]:
    """The links of netns ``ns`` (None = root): name, index, kind, up, master, peer_netnsid,
    addresses (``ip -n NS -d addr`` in dicts)."""
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    sock = rtnl_socket(ns)
    try:
        raw_links = dump(sock, RTM_GETLINK, _IFI.pack(AF_UNSPEC, 0, 0, 0, 0))
        raw_addrs = dump(sock, RTM_GETADDR, _IFA.pack(AF_UNSPEC, 0, 0, 0, 0))
    finally:
        sock.close()
    by_index: dict[int, dict] = {}
    for raw in raw_links:
        msg = ifinfmsg(raw)
        msg.decode()
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        by_index[msg["index"]] = {
            "name": msg.get_attr("IFLA_IFNAME"), "index": msg["index"], "kind": kind,
            "up": bool(msg["flags"] & IFF_UP), "master": msg.get_attr("IFLA_MASTER"),
            "link": msg.get_attr("IFLA_LINK"), "link_netnsid": msg.get_attr("IFLA_LINK_NETNSID"),
            "addrs": [],
        }
    for raw in raw_addrs:
        msg = ifaddrmsg(raw)
        msg.decode()
        entry = by_index.get(msg["index"])
        if entry is not None:
            entry["addrs"].append(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
    return list(by_index.values())


def link(ns: str | None, ifname: str) -> dict | None:
    """One link of netns ``ns`` by name, or None."""
    return next((item for item in links(ns) if item["name"] == ifname), None)


def netns_inode(name: str) -> int:
    """Inode of the namespace bound at /run/netns/NAME (what ``lsns`` lists)."""
    try:
        return os.stat(netns_path(name)).st_ino
    except OSError as exc:
        raise SyscallError.from_oserror(f"stat({netns_path(name)!r})", exc) from None


def is_veth_pair(ns: str | None, ifname: str, peer_ns: str | None, peer_ifname: str) -> bool:
    """True if ``ifname`` in ``ns`` and ``peer_ifname`` in ``peer_ns`` are the two ends of
    one veth pair (each names the other's ifindex as its link)."""
    one, other = link(ns, ifname), link(peer_ns, peer_ifname)
    if not one or not other or one["kind"] != "veth" or other["kind"] != "veth":
        return False
    return one["link"] == other["index"] and other["link"] == one["index"]
