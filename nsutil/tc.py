"""Traffic control over rtnetlink: the qdisc messages ``tc`` sends, for the native backend.

A queueing discipline (qdisc) hangs on a device and every packet the device sends goes
through it. ``tc qdisc replace dev D root handle 1: netem delay 20ms`` is one RTM_NEWQDISC
request: a ``struct tcmsg`` (ifindex, handle, parent) followed by the attributes TCA_KIND
(``"netem"``) and TCA_OPTIONS (the qdisc's own parameters). This module encodes those bodies
byte for byte as tc does (:func:`netem_options`, :func:`tbf_options`, :func:`qdisc_body`) and
reads a device's qdiscs back with an RTM_GETQDISC dump (:func:`qdiscs`, :func:`netem_values`,
:func:`tbf_rate`). What the values mean, and which to pick, is :mod:`recipes.labs.impair`'s.

Units as the kernel keeps them: times in psched ticks of 64 ns (``/proc/net/psched``),
probabilities as a fraction of 2**32 - 1, a tbf rate in bytes per second.
"""
from __future__ import annotations

import socket
import struct

from . import netlink as nl

# rtnetlink traffic control (linux/rtnetlink.h, linux/pkt_sched.h)
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
TC_H_ROOT = 0xFFFFFFFF
ROOT_HANDLE, CHILD_HANDLE = 0x10000, 0x20000          # "1:" and "2:"
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_NETEM_CORRUPT = 4
TCA_TBF_PARMS, TCA_TBF_BURST = 1, 6
TC_LINKLAYER_ETHERNET = 1
PSCHED_TICK_NS = 64                # a psched tick (PSCHED_SHIFT 6; /proc/net/psched 1000/64)
U32_MAX = 0xFFFFFFFF
NETEM_LIMIT = 1000                 #: packets netem may hold (tc's default)

_TCMSG = struct.Struct("=BxxxiIII")                     # struct tcmsg
_NETEM_QOPT = struct.Struct("=IIIIII")                  # latency limit loss gap duplicate jitter
_RATESPEC = struct.Struct("=BBHhHI")                    # struct tc_ratespec
_TBF_QOPT_TAIL = struct.Struct("=III")                  # limit buffer mtu


# --- encoding: the bytes tc sends -------------------------------------------------------------

def _ticks(us: int) -> int:
    return us * 1000 // PSCHED_TICK_NS


def _u32_of_percent(pct: float) -> int:
    return round(pct / 100 * U32_MAX)                   # tc: rint(fraction * UINT32_MAX)


def _percent_of_u32(value: int) -> float:
    return value / U32_MAX * 100


def netem_options(delay_us: int = 0, jitter_us: int = 0, loss: float = 0.0,
                  duplicate: float = 0.0, corrupt: float = 0.0) -> bytes:
    """TCA_OPTIONS of netem: struct tc_netem_qopt (times in us, percentages 0..100), then
    TCA_NETEM_CORRUPT if asked."""
    out = _NETEM_QOPT.pack(_ticks(delay_us), NETEM_LIMIT, _u32_of_percent(loss), 0,
                           _u32_of_percent(duplicate), _ticks(jitter_us))
    if _u32_of_percent(corrupt):
        out += nl.attr(TCA_NETEM_CORRUPT, struct.pack("=II", _u32_of_percent(corrupt), 0))
    return out


def tbf_options(bits: int, burst: int, latency_us: int) -> bytes:
    """TCA_OPTIONS of tbf: TCA_TBF_PARMS (rate, limit, buffer) and TCA_TBF_BURST, for
    ``bits``/s, a bucket of ``burst`` bytes and a queue of ``latency_us``. The rate says link
    layer ethernet, so the kernel computes packet times itself (no rate table)."""
    rate = bits // 8
    limit = rate * latency_us // 1_000_000 + burst
    buffer = _ticks(burst * 1_000_000 // rate)
    parms = (_RATESPEC.pack(3, TC_LINKLAYER_ETHERNET, 0, -1, 0, rate) + _RATESPEC.pack(0, 0, 0, 0, 0, 0)
             + _TBF_QOPT_TAIL.pack(limit, buffer, 0))
    return nl.attr(TCA_TBF_PARMS, parms) + nl.attr(TCA_TBF_BURST, struct.pack("=I", burst))


def qdisc_body(index: int, kind: str, parent: int, handle: int, options: bytes | None) -> bytes:
    """struct tcmsg + TCA_KIND (+ TCA_OPTIONS): one RTM_NEWQDISC / RTM_DELQDISC body."""
    body = _TCMSG.pack(socket.AF_UNSPEC, index, handle, parent, 0)
    if kind:
        body += nl.attr(TCA_KIND, kind.encode() + b"\0")
    if options is not None:
        body += nl.attr(TCA_OPTIONS, options)
    return body


# --- decoding: a device's qdiscs read back ----------------------------------------------------

def attrs(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    """rtattrs from ``data[offset:end]`` as {type: payload}."""
    out: dict[int, bytes] = {}
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x7FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def qdiscs(ns: str, index: int) -> list[dict]:
    """The qdiscs of ifindex ``index`` in ``ns``: kind, parent, handle, raw options."""
    sock = nl.rtnl_socket(ns)
    try:
        raw = nl.dump(sock, RTM_GETQDISC, _TCMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
    finally:
        sock.close()
    out = []
    for msg in raw:
        _fam, ifindex, handle, parent, _info = _TCMSG.unpack_from(msg, 16)
        if ifindex != index:
            continue
        found = attrs(msg, 16 + _TCMSG.size, len(msg))
        out.append({"kind": found.get(TCA_KIND, b"").rstrip(b"\0").decode(), "parent": parent,
                    "handle": handle, "options": found.get(TCA_OPTIONS, b"")})
    return out


def netem_values(opts: bytes) -> dict:
    """netem's TCA_OPTIONS as numbers: delay and jitter in us, loss, duplicate and corrupt
    in percent (0 where unset)."""
    latency, _limit, loss, _gap, duplicate, jitter = _NETEM_QOPT.unpack_from(opts)
    corrupt = attrs(opts, _NETEM_QOPT.size, len(opts)).get(TCA_NETEM_CORRUPT)
    return {"delay": round(latency * PSCHED_TICK_NS / 1000), "jitter": round(jitter * PSCHED_TICK_NS / 1000),
            "loss": _percent_of_u32(loss), "duplicate": _percent_of_u32(duplicate),
            "corrupt": _percent_of_u32(struct.unpack_from("=I", corrupt)[0]) if corrupt else 0.0}


def tbf_rate(opts: bytes) -> int:
    """tbf's rate in bytes per second from its TCA_OPTIONS (0 if it has none)."""
    parms = attrs(opts, 0, len(opts)).get(TCA_TBF_PARMS, b"")
    return _RATESPEC.unpack_from(parms)[5] if len(parms) >= _RATESPEC.size else 0


__all__ = ["CHILD_HANDLE", "ROOT_HANDLE", "TC_H_ROOT", "attrs", "netem_options", "netem_values",
           "qdisc_body", "qdiscs", "tbf_options", "tbf_rate"]
