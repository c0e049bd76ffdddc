"""Is B reachable from A? Real packets between two network namespaces.

Two ways, one per backend: the shell form is a TCP connection made with busybox ``nc`` in
each namespace (``ip netns exec``), a token sent one way; the native form a UDP datagram
from a socket opened inside A to one opened inside B, and its reply, which also tells the
hops from the TTL it arrives with. Used by net-veth, the tour's veth pair and the labs'
``--check``.
"""
from __future__ import annotations

import ipaddress
import secrets
import socket
import subprocess
import sys
import time

from nsutil import netlink as nl
from nsutil.errors import SyscallError
from nsutil.names import ip_of
from nsutil.programs import which

CHECK_PORT = 5555          #: the port the shell form's listener listens on


def udp_socket(ns: str | None, addr: str, port: int = 0) -> socket.socket:
    """A UDP socket opened inside netns ``ns`` and bound to ``addr:port``."""
    ip = ipaddress.ip_address(ip_of(addr) if "/" in addr else addr)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    with nl.in_netns(ns):
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind((str(ip), port))
    except OSError as exc:
        sock.close()
        raise SyscallError.from_oserror(f"bind({ip}:{port}) in {ns or 'root'}", exc,
                                        hint="is the address configured there?") from None
    return sock


IP_RECVTTL = 12        #: linux/in.h (the socket module does not name it)
SEND_TTL = 255


def udp_exchange(a: socket.socket, b: socket.socket, timeout: float = 5.0) -> bool:
    """Send a random token from socket ``a`` to ``b`` and back; True if both arrived."""
    return udp_hops(a, b, timeout) is not None


def udp_hops(a: socket.socket, b: socket.socket, timeout: float = 5.0) -> int | None:
    """:func:`udp_exchange`, measuring the path: ``a`` sends with TTL 255 and ``b`` reads the
    TTL the datagram arrived with, so the IP hops are 256 - TTL (1 on one link, +1 per
    router). None if the token or its reply did not arrive."""
    token = secrets.token_bytes(8)
    deadline = time.monotonic() + timeout
    a.settimeout(0.2)
    b.settimeout(0.2)
    ipv4 = a.family == socket.AF_INET
    if ipv4:
        a.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, SEND_TTL)
        b.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    dest, source = b.getsockname(), a.getsockname()
    while time.monotonic() < deadline:
        try:
            a.sendto(b"nsr-ping " + token, dest)
            data, anc, _flags, peer = b.recvmsg(64, socket.CMSG_SPACE(4))
            if data != b"nsr-ping " + token or peer[:2] != source[:2]:
                continue
            ttl = next((int.from_bytes(d[:4], sys.byteorder) for lvl, kind, d in anc
                        if lvl == socket.IPPROTO_IP and kind == socket.IP_TTL), SEND_TTL)
            b.sendto(b"nsr-pong " + token, peer)
            data, peer = a.recvfrom(64)
            if data == b"nsr-pong " + token and peer[:2] == dest[:2]:
                return SEND_TTL + 1 - ttl if ipv4 else 1
        except (socket.timeout, BlockingIOError):
            continue
        except OSError:
            time.sleep(0.05)
    return None


def udp_check(ns_a: str | None, addr_a: str, ns_b: str | None, addr_b: str,
              timeout: float = 5.0) -> bool:
    """Real packets: a UDP datagram from ``addr_a`` in ``ns_a`` to ``addr_b`` in ``ns_b``
    and a reply back (addresses with or without /prefix). True if both arrived."""
    sa = udp_socket(ns_a, addr_a)
    try:
        sb = udp_socket(ns_b, addr_b)
        try:
            return udp_exchange(sa, sb, timeout)
        finally:
            sb.close()
    finally:
        sa.close()


def _busybox_nc() -> list[str]:
    """``busybox nc`` (or a plain ``nc``), as argv."""
    nc = which("busybox") or which("nc")
    if nc is None:
        from nsutil.errors import ToolMissing
        raise ToolMissing("busybox", "busybox-static")
    return [nc, "nc"] if nc.endswith("busybox") else [nc]


def nc_listen(ns: str, port: int = CHECK_PORT) -> subprocess.Popen:
    """Start ``ip netns exec NS busybox nc -l -p PORT``. Its stdin is a pipe held open until
    it ends: once its stdin is at its end (as /dev/null is at once, under pytest or cron)
    busybox nc shuts down its sending half, the client nc sees the end and quits, perhaps
    before it has sent what it was to send."""
    return subprocess.Popen([which("ip") or "ip", "netns", "exec", ns] + _busybox_nc()
                            + ["-l", "-p", str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def nc_received(server: subprocess.Popen, timeout: float) -> str | None:
    """What a :func:`nc_listen` listener received once its peer closed, or None if that did
    not happen within ``timeout`` seconds. The listener has ended either way."""
    try:
        server.wait(timeout=timeout)
        return server.stdout.read().decode(errors="replace")
    except subprocess.TimeoutExpired:
        return None
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stdin.close()
        server.stdout.close()


def tcp_check_shell(ns_a: str, ns_b: str, addr_b: str, port: int = CHECK_PORT,
                    timeout: float = 10.0) -> bool:
    """The shell form of the check: ``ip netns exec B busybox nc -l -p PORT`` receives a
    token that ``ip netns exec A busybox nc ADDR PORT`` sends over TCP."""
    client_argv = ([which("ip") or "ip", "netns", "exec", ns_a] + _busybox_nc()
                   + ["-w", "1", ip_of(addr_b) if "/" in addr_b else addr_b, str(port)])
    token = secrets.token_hex(8)
    server = nc_listen(ns_b, port)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            client = subprocess.run(client_argv, input=token.encode() + b"\n",
                                    capture_output=True, timeout=timeout)
            if client.returncode == 0:
                break
            time.sleep(0.02)
    except BaseException:
        nc_received(server, 0)       # end the listener at once (Ctrl-C, a hung client)
        raise
    got = nc_received(server, max(0.5, deadline - time.monotonic()))
    return got is not None and token in got
