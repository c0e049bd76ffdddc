"""Impaired links (recipes.labs.impair) against the real kernel, measured with real packets.

* delay: 100 UDP echoes through a link with ``delay D`` on both ends take 2 x D on
  average (within 10 % + 1 ms over the RTT of the same link without impairment);
* loss: 1000 datagrams through ``loss 10%`` on one direction; the number lost lies within
  4 standard deviations of the binomial mean (sigma = sqrt(n p (1-p)) = 9.5, so 62..138
  lost; a correct kernel fails this by chance with probability 6e-5);
* rate: TCP through a ``rate 20mbit`` link, measured on the receiver over 3 s after 0.5 s
  of slow start, is within 10 % of 20 Mbit/s;
* ``tc -n NS qdisc show`` shows what was set, show() reads it back on both backends,
  reset removes it and undo leaves nothing; bad input is refused before anything changes.

Traffic only between namespaces the tests made. netem tests skip on a kernel without
``sch_netem`` (the development host's has only tbf; the Debian VM's has both).
"""
from __future__ import annotations

import math
import os
import socket
import statistics
import subprocess
import threading
import time

import pytest

from helpers import cli, one_line_error
from nsutil import netlink as nl
from nsutil.backend import Runner
from nsutil.errors import InvalidInput, NotFound, NsrError

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _netem() -> bool:
    from recipes.labs import impair
    return impair.netem_available()


needs_netem = pytest.mark.skipif(not _netem(), reason="this kernel has no sch_netem")


# --- measuring with real packets -------------------------------------------------------------

def _sock(ns: str, kind: int, addr: str, port: int = 0) -> socket.socket:
    with nl.in_netns(ns):
        sock = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
    sock.bind((addr, port))
    return sock


def udp_rtts(ns_a: str, addr_a: str, ns_b: str, addr_b: str, count: int = 100,
             interval: float = 0.002, timeout: float = 5.0) -> list[float]:
    """``count`` UDP echoes a -> b -> a, one at a time; the round-trip times (s) of those
    that came back (the echo is answered by this same process, as ping's by the kernel)."""
    a, b = _sock(ns_a, socket.SOCK_DGRAM, addr_a), _sock(ns_b, socket.SOCK_DGRAM, addr_b)
    a.settimeout(timeout)
    b.settimeout(timeout)
    rtts = []
    try:
        for seq in range(count):
            payload = seq.to_bytes(4, "big") + b"x" * 52          # 56 bytes, as ping's
            start = time.perf_counter()
            a.sendto(payload, b.getsockname())
            try:
                data, peer = b.recvfrom(2048)
                b.sendto(data, peer)
                data, _ = a.recvfrom(2048)
            except socket.timeout:
                continue
            if data == payload:
                rtts.append(time.perf_counter() - start)
            time.sleep(interval)
    finally:
        a.close()
        b.close()
    return rtts


def payload(seq: int) -> bytes:
    """Datagram ``seq`` of :func:`udp_arrivals`: its number and a fixed pattern."""
    return seq.to_bytes(4, "big") + b"loss"


def udp_arrivals(ns_a: str, addr_a: str, ns_b: str, addr_b: str, count: int = 1000,
                 batch: int = 50, settle: float = 3.0) -> list[bytes]:
    """Send ``count`` numbered datagrams (:func:`payload`) a -> b in batches, b drained after
    each until nothing more comes for 50 ms (so neither its socket buffer nor the CPU's
    backlog queue overflows); every datagram b got, duplicates and changed ones too."""
    a, b = _sock(ns_a, socket.SOCK_DGRAM, addr_a), _sock(ns_b, socket.SOCK_DGRAM, addr_b)
    b.setsockopt(socket.SOL_SOCKET, 33, 1 << 23)                 # SO_RCVBUFFORCE
    b.setblocking(False)
    got: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                got.append(b.recv(64))
            except BlockingIOError:
                return
    try:
        for start in range(0, count, batch):
            for seq in range(start, min(count, start + batch)):
                a.sendto(payload(seq), b.getsockname())
            quiet_since, had = time.monotonic(), len(got)
            until = time.monotonic() + 2.0
            while time.monotonic() < until and time.monotonic() - quiet_since < 0.05:
                time.sleep(0.005)
                drain()
                if len(got) != had:
                    quiet_since, had = time.monotonic(), len(got)
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            time.sleep(0.05)
            drain()
    finally:
        a.close()
        b.close()
    return got


def udp_delivered(ns_a: str, addr_a: str, ns_b: str, addr_b: str, count: int = 1000,
                  settle: float = 3.0) -> int:
    """How many distinct datagrams of :func:`udp_arrivals` b got."""
    return len({int.from_bytes(d[:4], "big") for d in udp_arrivals(ns_a, addr_a, ns_b, addr_b,
                                                                    count, settle=settle)})


def resolve_neighbours(link, a: str, b: str) -> None:
    """Both ends' ARP entries, before an impairment that loses or changes what a sends: a
    lost ARP request (1 in 10 at loss 10%) leaves the datagrams sent in the second until
    its retry in the neighbour's queue, which drops all past ~270 of them (CI's VM lost 708
    and 749 of 1000 so)."""
    assert udp_delivered(link.a_ns, a, link.b_ns, b, count=5, settle=0.2) == 5
    assert udp_delivered(link.b_ns, b, link.a_ns, a, count=5, settle=0.2) == 5


FRAME_OVERHEAD = 14 + 20 + 32   #: Ethernet, IPv4 and TCP (with timestamps) headers per segment


def shaped_rate(measure, rate: float, within: float = 0.10, tries: int = 3) -> float:
    """The best of up to ``tries`` calls of ``measure`` (bit/s through a shaper of ``rate``):
    a shaper never passes more than its rate, so one measurement over it fails at once, but
    a busy shared host passes less (CI measured 8.39 Mbit/s through 10mbit once), so one
    under is taken again."""
    best = 0.0
    for _ in range(tries):
        got = measure()
        assert got <= (1 + within) * rate, f"{got / 1e6:.2f} Mbit/s through {rate / 1e6:g} Mbit/s"
        best = max(best, got)
        if best >= (1 - within) * rate:
            break
    return best


def tcp_throughput(ns_a: str, addr_a: str, ns_b: str, addr_b: str, seconds: float = 3.0,
                   skip: float = 0.5, frames: bool = True) -> float:
    """Bit/s of one TCP stream a -> b, counted on the receiver from ``skip`` s after the
    first byte (slow start) for ``seconds``; the sender stops on its own. ``frames``: in
    bits of Ethernet frames, as tbf counts them (payload x (MSS + 66) / MSS), else payload."""
    server = _sock(ns_b, socket.SOCK_STREAM, addr_b)
    server.listen(1)
    server.settimeout(10)
    port = server.getsockname()[1]
    stop = threading.Event()
    errors: list[OSError] = []

    def send() -> None:
        client = _sock(ns_a, socket.SOCK_STREAM, addr_a)
        try:
            client.settimeout(10)
            client.connect((addr_b, port))
            chunk = b"\0" * 65536
            deadline = time.monotonic() + skip + seconds + 10
            while not stop.is_set() and time.monotonic() < deadline:
                client.sendall(chunk)
        except OSError as exc:
            errors.append(exc)
        finally:
            client.close()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    conn = None
    try:
        try:
            conn, _ = server.accept()
        except socket.timeout:
            raise AssertionError(f"no TCP connection to {addr_b}:{port}: {errors}") from None
        conn.settimeout(10)
        first = conn.recv(65536)
        t0 = time.perf_counter()
        assert first
        counted, begin, end = 0, t0 + skip, t0 + skip + seconds
        while True:
            data = conn.recv(1 << 20)
            now = time.perf_counter()
            if not data or now >= end:
                break
            if now >= begin:
                counted += len(data)
        if not frames:
            return counted * 8 / seconds
        mss = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        return counted * 8 / seconds * (mss + FRAME_OVERHEAD) / mss
    finally:
        stop.set()
        if conn is not None:
            conn.close()
        server.close()
        sender.join(20)


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture
def pair(backend, tag):
    """A built line of 2 hosts (h1 -- h2) on ``backend``, and a Runner that undoes."""
    from recipes.labs import build as topo
    with topo.topology("line", 2, backend=backend, scope=tag) as net, \
            Runner(backend=backend, out=open(os.devnull, "w")) as run:
        yield net, run, net.plan.links[0]


def _tc_show(ns: str, dev: str) -> str:
    return subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev], capture_output=True,
                          text=True, check=True).stdout


def _addrs(net) -> tuple[str, str]:
    return net.addr("h1"), net.addr("h2")


# --- parse, describe, find_link (no kernel) --------------------------------------------------

@pytest.mark.userspace
@pytest.mark.parametrize("spec,want", [
    ({"delay": "20ms"}, {"delay": "20ms"}),
    ({"delay": "1.5ms", "jitter": "500us"}, {"delay": "1.5ms", "jitter": "500us"}),
    ({"delay": "1s", "jitter": "0.25s"}, {"delay": "1s", "jitter": "250ms"}),
    ({"delay": 20, "loss": 1}, {"delay": "20ms", "loss": "1%"}),        # bare numbers: ms, %
    ({"loss": "0.5%", "corrupt": "0.1 %", "duplicate": "100%"},
     {"loss": "0.5%", "corrupt": "0.1%", "duplicate": "100%"}),
    ({"rate": "10mbit"}, {"rate": "10mbit"}),
    ({"rate": "512kbit"}, {"rate": "512kbit"}),
    ({"rate": "1.5Mbit"}, {"rate": "1500kbit"}),
    ({"rate": "1gbit", "loss": "0%"}, {"loss": "0%", "rate": "1gbit"}),
    ({}, None),
])
def test_parse_normalises(spec, want):
    from recipes.labs import impair
    assert impair.parse(spec, "link 1 (h1-h2)") == want


@pytest.mark.userspace
@pytest.mark.parametrize("spec,words", [
    ({"delay": "-5ms"}, "delay '-5ms' is negative"),
    ({"delay": "fast"}, "does not parse"),
    ({"delay": "20 parsecs"}, "does not parse"),
    ({"delay": "2min"}, "does not parse"),
    ({"delay": "61s"}, "more than 60 s"),
    ({"delay": True}, "is not a value"),
    ({"delay": float("nan")}, "does not parse"),
    ({"delay": "5ms", "jitter": "-1ms"}, "jitter '-1ms' is negative"),
    ({"jitter": "5ms"}, "without a delay"),
    ({"loss": "101%"}, "more than 100%"),
    ({"loss": "-1%"}, "negative"),
    ({"loss": "lots"}, "does not parse"),
    ({"corrupt": "200"}, "more than 100%"),
    ({"duplicate": "1%%"}, "does not parse"),
    ({"rate": "0mbit"}, "is zero"),
    ({"rate": "0"}, "is zero"),
    ({"rate": 10}, "has no unit"),
    ({"rate": "10"}, "has no unit"),
    ({"rate": "10mbps"}, "bytes per second"),
    ({"rate": "10furlongs"}, "unknown unit"),
    ({"rate": "-1mbit"}, "negative"),
    ({"rate": "100tbit"}, "unknown unit"),
    ({"rate": "1bit"}, "outside 8kbit"),
    ({"bandwidth": "10mbit"}, "unknown impairment 'bandwidth'"),
])
def test_parse_refuses(spec, words):
    from recipes.labs import impair
    with pytest.raises(InvalidInput) as err:
        impair.parse(spec, "link 2 (h1-h2)")
    text = str(err.value)
    assert text.startswith("link 2 (h1-h2): ") and words in text and "(hint: " in text, text
    assert "\n" not in text


@pytest.mark.userspace
def test_describe_and_words():
    from recipes.labs import impair
    imp = impair.parse({"delay": "20ms", "jitter": "5ms", "loss": "1%", "rate": "10mbit"})
    assert impair.describe(imp) == "20ms ±5ms loss 1% 10mbit"
    assert impair.describe(None) == "none"
    assert impair.netem_words(imp) == ["delay", "20ms", "5ms", "loss", "1%"]
    assert impair.tbf_words(imp) == ["rate", "10mbit", "burst", "32768b", "latency", "50ms"]
    assert impair.layout(imp) == [("netem", impair.TC_H_ROOT, 0x10000), ("tbf", 0x10000, 0x20000)]
    assert impair.layout({"rate": "1gbit"}) == [("tbf", impair.TC_H_ROOT, 0x10000)]
    assert impair.tbf_params(1_000_000_000) == (500_000, 50_000)      # 4 ms at 1gbit


@pytest.mark.userspace
def test_find_link_either_order_and_hint():
    from recipes.labs import impair
    from recipes.labs import build as topo
    plan = topo.plan_shape("line", 3, "zq1")
    assert impair.find_link(plan, "h1", "h2") is plan.links[0]
    assert impair.find_link(plan, "h3", "h2") is plan.links[1]
    assert impair.find_link(plan, "nsr-zq1-h2", "h3") is plan.links[1]
    with pytest.raises(NotFound) as err:
        impair.find_link(plan, "h1", "h3")
    assert "no link h1:h3" in str(err.value) and "links: h1:h2, h2:h3" in str(err.value)
    with pytest.raises(InvalidInput):
        impair.parse_link_arg("h1-h2")


# --- against the kernel ----------------------------------------------------------------------

@root
def test_rate_is_measured_and_shown(pair):
    """tbf at 10mbit on both ends: tc shows it, show() reads it on both backends, TCP gets
    10 Mbit/s within 10 % (the best of up to 3 runs; counted in frames, as tbf does: a 1514-byte frame carries 1448
    payload bytes, payload alone runs 4.4 % under), the other direction is limited too;
    reset and undo leave nothing."""
    from recipes.labs import impair
    net, run, link = pair
    a, b = _addrs(net)
    before = tcp_throughput(link.a_ns, a, link.b_ns, b, seconds=0.5, skip=0.2)
    imp = impair.parse({"rate": "10mbit"}, "link 1")
    impair.apply_link(run, link, imp)
    for ns, dev in ((link.a_ns, link.a_if), (link.b_ns, link.b_if)):
        text = _tc_show(ns, dev)
        assert "qdisc tbf 1: root" in text and "rate 10Mbit" in text and "burst 32Kb" in text, text
        assert impair.show(ns, dev) == imp
        assert impair.show(ns, dev, Runner(backend="shell")) == imp
        assert impair.show(ns, dev, run) == imp
    got = shaped_rate(lambda: tcp_throughput(link.a_ns, a, link.b_ns, b, seconds=3.0, skip=0.5),
                      10e6)
    assert got >= 0.9 * 10e6, f"{got / 1e6:.2f} Mbit/s at best through 10mbit"
    assert before > 3 * 10e6, f"{before / 1e6:.1f} Mbit/s without impairment: the link is slow anyway"
    # 2 s, not less: on a loaded emulated VM the receiver can be descheduled, and what
    # piled up in its socket buffer then counts in a short window as if it came at once
    back = tcp_throughput(link.b_ns, b, link.a_ns, a, seconds=2.0, skip=0.5)
    assert back <= 1.1 * 10e6, f"{back / 1e6:.2f} Mbit/s b -> a"
    impair.reset(run, link.a_ns, link.a_if)
    assert impair.show(link.a_ns, link.a_if) is None and "tbf" not in _tc_show(link.a_ns, link.a_if)
    impair.reset(run, link.a_ns, link.a_if)                       # nothing there: quiet
    assert run.undo() == []
    assert "tbf" not in _tc_show(link.b_ns, link.b_if)


@root
def test_one_direction_and_replace(pair):
    """direction a: only what end a sends; a new setting replaces the old, never merges."""
    from recipes.labs import impair
    net, run, link = pair
    impair.apply_link(run, link, impair.parse({"rate": "20mbit"}), direction="a")
    assert impair.show(link.a_ns, link.a_if) == {"rate": "20mbit"}
    assert impair.show(link.b_ns, link.b_if) is None
    impair.apply_link(run, link, impair.parse({"rate": "1mbit"}), direction="b")
    assert impair.show(link.a_ns, link.a_if) is None
    assert impair.show(link.b_ns, link.b_if) == {"rate": "1mbit"}
    with pytest.raises(InvalidInput):
        impair.apply_link(run, link, {"rate": "1mbit"}, direction="up")


@root
def test_undo_tolerates_a_deleted_namespace(pair):
    from recipes.labs import impair
    net, run, link = pair
    impair.apply(run, link.a_ns, link.a_if, impair.parse({"rate": "5mbit"}))
    nl.delete_netns(link.b_ns)
    impair.reset(run, link.b_ns, link.b_if)       # the netns is gone: nothing to do
    assert run.undo() == []


@root
@pytest.mark.skipif(_netem(), reason="this kernel has sch_netem")
def test_without_netem_refused_and_nothing_changed(pair):
    """A kernel without sch_netem: delay is refused in one line before anything changes."""
    from recipes.labs import impair
    net, run, link = pair
    impair.apply_link(run, link, impair.parse({"rate": "10mbit"}))
    with pytest.raises(NsrError) as err:
        impair.apply_link(run, link, impair.parse({"delay": "20ms", "rate": "10mbit"}))
    assert "no netem" in str(err.value) and "hint:" in str(err.value)
    assert impair.show(link.a_ns, link.a_if) == {"rate": "10mbit"}
    assert "rate 10Mbit" in _tc_show(link.b_ns, link.b_if)


@root
@needs_netem
def test_netem_shown_by_tc_and_read_back(pair):
    from recipes.labs import impair
    net, run, link = pair
    imp = impair.parse({"delay": "20ms", "jitter": "5ms", "loss": "1%", "corrupt": "0.1%",
                        "duplicate": "0.5%", "rate": "10mbit"})
    impair.apply_link(run, link, imp)
    text = _tc_show(link.a_ns, link.a_if)
    for words in ("qdisc netem 1: root", "delay 20ms  5ms", "loss 1%", "duplicate 0.5%",
                  "corrupt 0.1%", "qdisc tbf 2: parent 1:", "rate 10Mbit"):
        assert words in text, text
    for reader in (None, Runner(backend="shell"), run):
        assert impair.show(link.b_ns, link.b_if, reader) == imp
    assert run.undo() == [] and "netem" not in _tc_show(link.a_ns, link.a_if)


@root
@needs_netem
def test_delay_doubles_the_rtt(pair):
    """delay 10ms on both ends: the median of 100 echoes at 2 ms intervals is 20 ms more
    than the same link's median RTT without it, within 10 % + 1 ms. The median, not the mean:
    netem delays every packet by exactly 10 ms, while a loaded machine (a TCG VM beside other
    work) stalls a few echoes by tens of ms, which moved the mean by 6.8 ms once."""
    from recipes.labs import impair
    net, run, link = pair
    a, b = _addrs(net)
    base = udp_rtts(link.a_ns, a, link.b_ns, b, count=50)
    baseline = statistics.median(base)
    impair.apply_link(run, link, impair.parse({"delay": "10ms"}))
    rtts = udp_rtts(link.a_ns, a, link.b_ns, b, count=100)
    assert len(rtts) == 100
    median = statistics.median(rtts)
    assert abs(median - baseline - 0.020) <= 0.1 * 0.020 + 0.001, \
        f"median RTT {median * 1000:.2f} ms, baseline {baseline * 1000:.3f} ms, want 20 ms more"


@root
@needs_netem
def test_loss_is_binomial(pair):
    """loss 10% on what end a sends: of 1000 datagrams a -> b, 100 +- 4 sigma are lost
    (sigma = sqrt(1000 * 0.1 * 0.9) = 9.5; a right kernel fails with probability 6e-5);
    b -> a loses none."""
    from recipes.labs import impair
    net, run, link = pair
    a, b = _addrs(net)
    n, p = 1000, 0.10
    resolve_neighbours(link, a, b)
    impair.apply_link(run, link, impair.parse({"loss": "10%"}), direction="a")
    lost = n - udp_delivered(link.a_ns, a, link.b_ns, b, count=n)
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(lost - n * p) <= 4 * sigma, f"{lost} of {n} lost, want {n * p:.0f} +- {4 * sigma:.0f}"
    assert udp_delivered(link.b_ns, b, link.a_ns, a, count=200) == 200


@root
@needs_netem
def test_duplicate_and_corrupt_are_counted(pair):
    """duplicate 20% on what a sends: of 1000 datagrams all arrive and 200 +- 4 sigma twice
    (sigma = 12.6). corrupt 20%: netem flips one bit of the frame's linear part; the
    receiver's checksums drop the datagram, or it arrives changed, unless the bit is in the
    source MAC address, which nothing checks: 6 of at least 42 bytes (Ethernet, IPv4, UDP
    headers), so 171 to 200 +- 4 sigma are lost or changed."""
    from recipes.labs import impair
    net, run, link = pair
    a, b = _addrs(net)
    n, p = 1000, 0.20
    four_sigma = 4 * math.sqrt(n * p * (1 - p))
    resolve_neighbours(link, a, b)
    impair.apply_link(run, link, impair.parse({"duplicate": "20%"}), direction="a")
    got = udp_arrivals(link.a_ns, a, link.b_ns, b, count=n)
    assert len({int.from_bytes(d[:4], "big") for d in got}) == n
    assert abs(len(got) - n - n * p) <= four_sigma, f"{len(got) - n} of {n} came twice"
    impair.apply_link(run, link, impair.parse({"corrupt": "20%"}), direction="a")
    got = udp_arrivals(link.a_ns, a, link.b_ns, b, count=n)
    seqs = [int.from_bytes(d[:4], "big") for d in got]
    intact = {seq for seq, d in zip(seqs, got) if seq < n and d == payload(seq)}
    hit = n - len(intact)
    assert n * p * (1 - 6 / 42) - four_sigma <= hit <= n * p + four_sigma, \
        f"{hit} of {n} lost or changed, want 171 to 200 +- {four_sigma:.0f}"


@root
@pytest.mark.skipif(subprocess.run(["which", "strace"], capture_output=True).returncode,
                    reason="needs strace")
def test_native_requests_are_the_bytes_tc_sends(pair, backend):
    """The native form's RTM_NEWQDISC for netem equals tc's byte for byte (tc sends it even
    where the kernel lacks netem), and tbf's parameters equal tc's."""
    from nsutil import tc
    from recipes.labs import impair
    if backend != "native":
        pytest.skip("one run is enough")
    net, run, link = pair
    index = impair._ifindex(link.a_ns, link.a_if)
    imp = impair.parse({"delay": "20ms", "jitter": "5ms", "loss": "1.5%", "duplicate": "1%",
                        "corrupt": "0.5%", "rate": "10mbit"})
    for kind, parent, handle in impair.layout(imp):
        sent = _strace_request(impair.tc_argv(link.a_ns, link.a_if, kind, parent, handle, imp))
        mine = impair.qdisc_body(index, kind, parent, handle, imp)
        if kind == "netem":
            assert sent == mine
        else:
            opts = lambda body: tc.attrs(body, 0, len(body))  # noqa: E731
            tc_opts = opts(tc.attrs(sent, 20, len(sent))[tc.TCA_OPTIONS])
            my_opts = opts(tc.attrs(mine, 20, len(mine))[tc.TCA_OPTIONS])
            for key in (tc.TCA_TBF_PARMS, tc.TCA_TBF_BURST):
                assert tc_opts[key] == my_opts[key], key
    assert run.undo() == []
    subprocess.run(["tc", "-n", link.a_ns, "qdisc", "del", "dev", link.a_if, "root"],
                   capture_output=True)


def _strace_request(argv: list[str]) -> bytes:
    """The body (after nlmsghdr) of the RTM_NEWQDISC that ``argv`` (a tc command) sends
    (strace writes to a file of its own: the VM's /dev has no /dev/stderr link)."""
    import re
    import tempfile
    with tempfile.NamedTemporaryFile("r", prefix="nsr-strace-", suffix=".txt") as log:
        subprocess.run(["strace", "-f", "-e", "trace=sendmsg", "-xx", "-s", "65536", "-o",
                        log.name, "--"] + argv, capture_output=True, text=True)
        out = log.read()
    line = next(ln for ln in out.splitlines() if "nlmsg_type=0x24" in ln or "RTM_NEWQDISC" in ln)
    hexed = re.search(r'\}, "((?:\\x[0-9a-f]{2})+)"', line).group(1)
    return bytes.fromhex(hexed.replace("\\x", ""))


# --- the CLI ---------------------------------------------------------------------------------

@pytest.mark.userspace
def test_cli_refuses_bad_values_in_one_line():
    for args, words in ((["--delay", "-5ms"], "negative"), (["--loss", "150%"], "100%"),
                        (["--rate", "0"], "zero")):
        line = one_line_error(cli("net-link", "--scope", "zz9", "--link", "h1:h2", *args))
        assert line.startswith("nsrecipes: net-link: ") and words in line, line


@root
def test_cli_sets_shows_and_refuses_a_missing_link(tag):
    from recipes.labs import build as topo
    with topo.topology("line", 2, backend="native", scope=tag) as net:
        link = net.plan.links[0]
        done = cli("net-link", "--scope", tag, "--link", "h2:h1", "--rate", "10mbit")
        assert done.returncode == 0, done.stderr
        assert "h1 -> h2: 10mbit; h2 -> h1: 10mbit" in done.stdout
        assert "rate 10Mbit" in _tc_show(link.a_ns, link.a_if)
        assert topo.recorded(tag)[0].links[0].impair == {"rate": "10mbit"}
        shown = cli("net-link", "--scope", tag, "--show", "--json")
        import json
        rows = json.loads(shown.stdout)["links"]
        assert rows[0]["link"] == "h1:h2" and rows[0]["b"]["impair"] == {"rate": "10mbit"}
        line = one_line_error(cli("net-link", "--scope", tag, "--link", "h1:h3", "--rate", "1mbit"))
        assert "no link h1:h3" in line and "links: h1:h2" in line
        assert "rate 10Mbit" in _tc_show(link.b_ns, link.b_if)       # nothing changed


def _topology_takes_links() -> bool:
    import inspect
    from recipes.labs import build as topo
    return "links" in inspect.signature(topo.topology).parameters


@root
@pytest.mark.skipif(not _topology_takes_links(), reason="topo.topology() has no links= yet")
@pytest.mark.nsr_topology(shape="line", hosts=3, links={("h2", "h1"): {"rate": "10mbit"}})
def test_plugin_marker_impairs_the_named_link(nsr_topology):
    """The fixture passes ``links=`` through: h1-h2 is rate limited, h2-h3 is not."""
    from recipes.labs import impair
    one, two = nsr_topology.plan.links
    assert impair.show(one.a_ns, one.a_if) == impair.show(one.b_ns, one.b_if) == {"rate": "10mbit"}
    assert impair.show(two.a_ns, two.a_if) is None
