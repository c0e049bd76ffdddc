"""Impaired links: delay, jitter, loss, corruption, duplication and a rate limit on a veth.

Document section "Network namespace" (a veth pair is a virtual cable; here the cable gets
bad): the kernel's traffic control (``tc``) puts a *queueing discipline* (qdisc) on a
device, and every packet the device sends goes through it.

* **netem** (``sch_netem``) holds each packet back by ``delay`` (± ``jitter``, uniform),
  drops ``loss`` percent of them, flips a bit in ``corrupt`` percent and sends ``duplicate``
  percent twice;
* **tbf** (token bucket filter, ``sch_tbf``) lets ``rate`` bits per second through.

A qdisc shapes **egress only**: what a device sends, never what it receives. So a link is
impaired in both directions by a qdisc on *each* end (``direction`` ``both``, the default);
``a`` impairs only what end a sends (traffic a -> b), ``b`` the other way. Two pings
through a link with ``delay 20ms`` on both ends take 40 ms: the echo waits 20 ms on its way
out, the reply 20 ms on its way back.

What goes on a device (shell form; the native one sends the same rtnetlink requests,
encoded by :mod:`nsutil.tc`)::

    tc -n NS qdisc replace dev D root handle 1: netem delay 20ms 5ms loss 1%
    tc -n NS qdisc replace dev D parent 1: handle 2: tbf rate 10mbit burst 32kb latency 50ms

With only ``rate`` it is one ``tbf`` at the root (handle 1:), so a rate limit also works
on a kernel built without ``sch_netem`` (as this project's development host is); asked for
delay or loss there, :func:`apply` says so in one line. Why ``tbf`` and not netem's own
``rate``: tbf is a separate, simple, always-built qdisc; netem's ``rate`` computes each
packet's send time inside netem's time-sorted queue, so with ``jitter`` it reorders and
bunches packets and the rate is no longer the one asked for.

tbf's two knobs, picked from the rate (:func:`tbf_params`):

* ``burst`` (bucket size): how many bytes may leave back to back. It must hold at least
  one full frame (a 1514-byte frame larger than the bucket is dropped; a 64 KiB GSO
  super-packet larger than it is cut into frames by tbf) and it should outlast the timer
  granularity, since the bucket refills only when the qdisc is woken: ``rate x 4 ms``, but
  at least 32 KiB. Measured here (TCP, 3 s on the receiver): 9.58, 19.07, 95.6 and 940
  Mbit/s of payload through 10mbit, 20mbit, 100mbit and 1gbit -- the rate counts frames,
  and a 1514-byte frame carries 1448 bytes of TCP payload (95.6 %). A bucket of 5 kB or
  125 kB gave the same within 2 % on this host; the floor is for slow (emulated) machines.
* ``latency``: how long a packet may wait in tbf's queue before it is dropped (the queue
  holds ``rate x latency + burst`` bytes). 50 ms: TCP keeps that queue from running dry
  (full rate), but a saturated link adds at most 50 ms of queueing delay, not seconds.

Values (:func:`parse`): times as ``"20ms"``, ``"1.5ms"``, ``"500us"``, ``"1s"`` (a bare
number means milliseconds: TOML ``delay = 20``); percentages as ``"1%"``, ``"0.5%"`` (a
bare number means percent); rates as ``"10mbit"``, ``"512kbit"``, ``"1gbit"`` (SI:
1mbit = 1 000 000 bit/s; tc's ``bps`` means *bytes* per second and is refused as a trap).
"""
from __future__ import annotations

import errno as _errno
import json
import os
import re
import socket
from typing import Any

from nsutil import netlink as nl
from nsutil import tc
from nsutil.tc import CHILD_HANDLE, ROOT_HANDLE, TC_H_ROOT
from nsutil.backend import Runner, Step
from nsutil.errors import CommandError, InvalidInput, NotFound, NsrError, SyscallError

SECTION = "Network namespace (impaired links)"
KEYS = ("delay", "jitter", "loss", "rate", "corrupt", "duplicate")
NETEM_KEYS = ("delay", "jitter", "loss", "corrupt", "duplicate")
DIRECTIONS = ("both", "a", "b")
MAX_TIME_US = 60_000_000          #: delay/jitter above 60 s is refused as absurd
MIN_RATE, MAX_RATE = 8_000, 32_000_000_000   #: 8kbit .. 32gbit (tbf keeps bytes/s in a u32)
BURST_TIME_S, MIN_BURST = 0.004, 32 * 1024
TBF_LATENCY_US = 50_000


# --- parsing ---------------------------------------------------------------------------------

_TIME = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+)\s*(us|usec|ms|msec|s|sec)?\s*$", re.I)
_RATE = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+)\s*([a-z]*)\s*$", re.I)
_PERCENT = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+)\s*(%?)\s*$")
_TIME_UNIT_US = {"us": 1, "usec": 1, "ms": 1000, "msec": 1000, "s": 1_000_000, "sec": 1_000_000}
_RATE_UNIT = {"bit": 1, "kbit": 1000, "mbit": 1000_000, "gbit": 1000_000_000}
_EXAMPLE = {"delay": "20ms", "jitter": "5ms", "loss": "1%", "rate": "10mbit",
            "corrupt": "0.1%", "duplicate": "1%"}


def _bad(where: str, key: str, value: Any, why: str) -> InvalidInput:
    return InvalidInput(f"{where}: {key} {str(value)!r} {why}",
                        hint=f"write it like {key} {_EXAMPLE[key]!r}")


def _number(where: str, key: str, value: Any, pattern: re.Pattern) -> tuple[float, str]:
    """(number, unit) of ``value`` (a string, or an int/float taken with no unit)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _bad(where, key, value, "is not a value")
    match = pattern.match(str(value)) if not isinstance(value, float) else None
    if isinstance(value, float):
        number, unit = value, ""
    elif match is None:
        raise _bad(where, key, value, "does not parse")
    else:
        number, unit = float(match.group(1)), (match.group(2) or "").lower()
    if number != number or number in (float("inf"), float("-inf")):
        raise _bad(where, key, value, "does not parse")
    if number < 0:
        raise _bad(where, key, value, "is negative")
    return number, unit


def parse_time_us(value: Any, key: str = "delay", where: str = "impairment") -> int:
    """A time (``"20ms"``, ``"1.5ms"``, ``"500us"``, ``"1s"``, a number = ms) in microseconds."""
    number, unit = _number(where, key, value, _TIME)
    us = round(number * _TIME_UNIT_US[unit or "ms"])
    if us > MAX_TIME_US:
        raise _bad(where, key, value, f"is more than {MAX_TIME_US // 1_000_000} s")
    return us


def parse_percent(value: Any, key: str = "loss", where: str = "impairment") -> float:
    """A percentage (``"1%"``, ``"0.5%"``, a number = percent) from 0 to 100."""
    number, _unit = _number(where, key, value, _PERCENT)
    if number > 100:
        raise _bad(where, key, value, "is more than 100%")
    return number


def parse_rate_bit(value: Any, key: str = "rate", where: str = "impairment") -> int:
    """A rate (``"10mbit"``, ``"512kbit"``, ``"1gbit"``, ``"64000bit"``) in bit/s."""
    number, unit = _number(where, key, value, _RATE)
    if number == 0:
        raise _bad(where, key, value, "is zero: nothing would get through")
    if isinstance(value, (int, float)):
        raise _bad(where, key, value, "has no unit")
    if unit.endswith("bps"):
        raise InvalidInput(f"{where}: rate {value!r}: tc's 'bps' means bytes per second",
                           hint="write bits: 8mbit for 1 MB/s")
    if unit not in _RATE_UNIT:
        raise _bad(where, key, value, "has no unit bit, kbit, mbit or gbit" if not unit
                   else f"has an unknown unit {unit!r}")
    bits = round(number * _RATE_UNIT[unit])
    if bits < MIN_RATE or bits > MAX_RATE:
        raise _bad(where, key, value, "is outside 8kbit .. 32gbit")
    return bits


def format_time(us: int) -> str:
    """``20000`` -> ``"20ms"``, ``1500`` -> ``"1.5ms"``, ``250`` -> ``"250us"``, ``2e6`` -> ``"2s"``."""
    if us and us % 1_000_000 == 0:
        return f"{us // 1_000_000}s"
    if us >= 1000 or us == 0:
        return f"{us / 1000:g}ms"
    return f"{us}us"


def format_percent(pct: float) -> str:
    """``1.0`` -> ``"1%"``, ``0.5`` -> ``"0.5%"`` (6 significant digits)."""
    return f"{float(f'{pct:.6g}'):g}%"


def format_rate(bits: int) -> str:
    """``10_000_000`` -> ``"10mbit"``, ``1_500_000`` -> ``"1500kbit"``."""
    for unit in ("gbit", "mbit", "kbit"):
        if bits % _RATE_UNIT[unit] == 0:
            return f"{bits // _RATE_UNIT[unit]}{unit}"
    return f"{bits}bit"


def parse(spec: dict | None, where: str = "impairment") -> dict | None:
    """Check an impairment ``{"delay": "20ms", "loss": "1%", "rate": "10mbit", ...}``;
    return it with canonical strings (only the keys given), or None for an empty one.
    ``where`` starts every message (``"link 2 (h1-h2)"``)."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise InvalidInput(f"{where}: an impairment must be a table of keys",
                           hint=f"e.g. {{delay = \"20ms\", loss = \"1%\"}}; keys: {', '.join(KEYS)}")
    unknown = [k for k in spec if k not in KEYS]
    if unknown:
        raise InvalidInput(f"{where}: unknown impairment {unknown[0]!r}",
                           hint=f"the keys are {', '.join(KEYS)}")
    out: dict[str, str] = {}
    for key in KEYS:
        if key not in spec or spec[key] is None:
            continue
        value = spec[key]
        if key in ("delay", "jitter"):
            out[key] = format_time(parse_time_us(value, key, where))
        elif key == "rate":
            out[key] = format_rate(parse_rate_bit(value, key, where))
        else:
            out[key] = format_percent(parse_percent(value, key, where))
    if "jitter" in out and parse_time_us(out.get("delay", 0)) == 0:
        raise InvalidInput(f"{where}: jitter {out['jitter']} without a delay",
                           hint="jitter varies a delay: give --delay too (e.g. 20ms)")
    return out or None


def describe(imp: dict | None) -> str:
    """A short label: ``"20ms ±5ms loss 1% 10mbit"`` (``"none"`` for no impairment)."""
    if not imp:
        return "none"
    parts = []
    if "delay" in imp:
        parts.append(imp["delay"] + (f" ±{imp['jitter']}" if "jitter" in imp else ""))
    parts += [f"{k} {imp[k]}" for k in ("loss", "corrupt", "duplicate") if k in imp]
    if "rate" in imp:
        parts.append(imp["rate"])
    return " ".join(parts)


def check_direction(direction: str) -> str:
    """``both`` (default), ``a`` (what end a sends) or ``b``."""
    if direction not in DIRECTIONS:
        raise InvalidInput(f"unknown direction {direction!r}",
                           hint="both, a (traffic a -> b) or b (traffic b -> a)")
    return direction


# --- what goes on the device -----------------------------------------------------------------

def tbf_params(bits: int) -> tuple[int, int]:
    """(burst bytes, latency us) for a tbf of ``bits``/s (why: the module docstring)."""
    return max(MIN_BURST, round(bits / 8 * BURST_TIME_S)), TBF_LATENCY_US


def netem_words(imp: dict) -> list[str]:
    """netem's arguments as ``tc`` takes them (``delay 20ms 5ms loss 1%``)."""
    words: list[str] = []
    if "delay" in imp:
        words += ["delay", imp["delay"]] + ([imp["jitter"]] if "jitter" in imp else [])
    for key in ("loss", "duplicate", "corrupt"):
        if key in imp:
            words += [key, imp[key]]
    return words or ["delay", "0ms"]


def tbf_words(imp: dict) -> list[str]:
    """tbf's arguments as ``tc`` takes them (``rate 10mbit burst 32768b latency 50ms``)."""
    burst, latency = tbf_params(parse_rate_bit(imp["rate"]))
    return ["rate", imp["rate"], "burst", f"{burst}b", "latency", format_time(latency)]


def layout(imp: dict) -> list[tuple[str, int, int]]:
    """The qdiscs for ``imp``: [(kind, parent, handle)] -- netem at the root with tbf below
    it, or tbf alone at the root for a rate only."""
    uses_netem = any(k in imp for k in NETEM_KEYS)
    if not uses_netem:
        return [("tbf", TC_H_ROOT, ROOT_HANDLE)]
    return [("netem", TC_H_ROOT, ROOT_HANDLE)] + ([("tbf", ROOT_HANDLE, CHILD_HANDLE)]
                                                   if "rate" in imp else [])


def _handle(value: int) -> str:
    return "root" if value == TC_H_ROOT else f"{value >> 16:x}:"


def tc_argv(ns: str, dev: str, kind: str, parent: int, handle: int, imp: dict) -> list[str]:
    """``tc -n NS qdisc replace dev D root|parent 1: handle H KIND ARGS``."""
    where = ["root"] if parent == TC_H_ROOT else ["parent", _handle(parent)]
    words = netem_words(imp) if kind == "netem" else tbf_words(imp)
    return ["tc", "-n", ns, "qdisc", "replace", "dev", dev] + where + ["handle", _handle(handle),
                                                                       kind] + words


# --- native form: rtnetlink requests, the same bytes tc sends (nsutil.tc) --------------------

def qdisc_options(kind: str, imp: dict) -> bytes:
    """TCA_OPTIONS of a ``netem`` or ``tbf`` qdisc for ``imp`` (:mod:`nsutil.tc` encodes)."""
    if kind == "netem":
        pct = {k: parse_percent(imp[k]) for k in ("loss", "duplicate", "corrupt") if k in imp}
        return tc.netem_options(parse_time_us(imp.get("delay", 0)),
                                parse_time_us(imp.get("jitter", 0)), **pct)
    bits = parse_rate_bit(imp["rate"])
    return tc.tbf_options(bits, *tbf_params(bits))


def qdisc_body(index: int, kind: str, parent: int, handle: int, imp: dict | None) -> bytes:
    """struct tcmsg + TCA_KIND (+ TCA_OPTIONS of ``imp``): one RTM_NEWQDISC / RTM_DELQDISC
    body (:func:`nsutil.tc.qdisc_body`)."""
    return tc.qdisc_body(index, kind, parent, handle,
                         None if imp is None else qdisc_options(kind, imp))


def _ifindex(ns: str, dev: str) -> int:
    with nl.in_netns(ns):
        try:
            return socket.if_nametoindex(dev)
        except OSError:
            raise NotFound(f"no device {dev} in netns {ns}", hint="is the link up? (ip -n NS link)") from None


def _no_netem(exc: NsrError | None) -> NsrError:
    """A kernel without sch_netem (or ENOENT "qdisc kind is unknown" from one), said plainly."""
    return NsrError("this kernel has no netem qdisc (sch_netem, CONFIG_NET_SCH_NETEM): "
                    "delay, jitter, loss, corrupt and duplicate need it",
                    errno_name=getattr(exc, "errno_name", None),
                    hint="modprobe sch_netem, or use a kernel that has it; a rate alone "
                         "works without it (tbf)")


def netem_available() -> bool:
    """False if this kernel surely has no netem qdisc: not loaded (/sys/module), not built
    in or a module (/proc/config.gz, /lib/modules/RELEASE). True when it has, or cannot be
    told (the kernel then answers the request itself)."""
    import gzip
    if os.path.isdir("/sys/module/sch_netem"):
        return True
    release = os.uname().release
    for name in ("modules.builtin", "modules.dep"):
        try:
            with open(f"/lib/modules/{release}/{name}") as f:
                if "sch_netem" in f.read():
                    return True
        except OSError:
            pass
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            config = f.read()
    except OSError:
        return True
    if "CONFIG_NET_SCH_NETEM=y" in config:
        return True
    return False      # "not set", or =m without the module file for this kernel


def require_netem(imp: dict | None) -> None:
    """Refuse (before anything is changed) an impairment that needs netem on a kernel
    without it."""
    if imp and any(k in imp for k in NETEM_KEYS) and not netem_available():
        raise _no_netem(None)


def _apply_native(ns: str, dev: str, imp: dict) -> None:
    index = _ifindex(ns, dev)
    _reset_native(ns, dev)
    with nl.Rtnl(nl.rtnl_socket(ns)) as r:
        for kind, parent, handle in layout(imp):
            r.add(tc.RTM_NEWQDISC, qdisc_body(index, kind, parent, handle, imp),
                  " ".join(tc_argv(ns, dev, kind, parent, handle, imp)),
                  tc.NLM_F_CREATE | tc.NLM_F_REPLACE)
            try:
                r.flush()
            except SyscallError as exc:
                raise _no_netem(exc) if kind == "netem" and exc.errno == _errno.ENOENT else exc


def _reset_native(ns: str, dev: str) -> None:
    if not nl.netns_exists(ns):
        return
    try:
        index = _ifindex(ns, dev)
    except NotFound:
        return
    roots = [q for q in tc.qdiscs(ns, index) if q["parent"] == TC_H_ROOT and q["handle"]]
    if roots:
        try:
            with nl.Rtnl(nl.rtnl_socket(ns)) as r:
                r.add(tc.RTM_DELQDISC, qdisc_body(index, "", TC_H_ROOT, 0, None),
                      f"tc -n {ns} qdisc del dev {dev} root")
                r.flush()
        except SyscallError as exc:
            # the device went in between: a veth whose peer's namespace was deleted goes
            # with it, a moment later (seen on 6.1), and its qdiscs with it
            if exc.errno not in (_errno.ENODEV, _errno.ENOENT):
                raise


def _rate_of(bytes_per_s: int) -> dict:
    """A tbf rate as the kernel keeps it (bytes/s) as parse() writes it (bit/s)."""
    return {"rate": format_rate(bytes_per_s * 8)} if bytes_per_s else {}


def _canonical(raw: dict) -> dict:
    """Times in us and percentages read back from the kernel, as parse() writes them
    (zeros left out: netem has no "unset", a 0 means none)."""
    out: dict[str, str] = {}
    for key in ("delay", "jitter"):
        if raw.get(key):
            out[key] = format_time(int(raw[key]))
    for key in ("loss", "corrupt", "duplicate"):
        if raw.get(key):
            out[key] = format_percent(raw[key])
    if raw.get("jitter") and not raw.get("delay"):
        out.pop("jitter", None)
    return out


def _merge(qdiscs: list[dict], options: Any) -> dict | None:
    """The impairment a device's qdiscs make: netem at the root and/or tbf (ours only)."""
    root = next((q for q in qdiscs if q["parent"] == TC_H_ROOT and q["handle"]), None)
    if root is None or root["kind"] not in ("netem", "tbf"):
        return None
    imp = dict(options(root))
    child = next((q for q in qdiscs if q["parent"] == root["handle"] and q["kind"] == "tbf"), None)
    if root["kind"] == "netem" and child is not None:
        imp.update(options(child))
    return dict(sorted(imp.items(), key=lambda kv: KEYS.index(kv[0]))) or None


def _show_native(ns: str, dev: str) -> dict | None:
    def options(q: dict) -> dict:
        return _canonical(tc.netem_values(q["options"])) if q["kind"] == "netem" \
            else _rate_of(tc.tbf_rate(q["options"]))
    return _merge(tc.qdiscs(ns, _ifindex(ns, dev)), options)


# --- shell form: tc, and tc -j read back ---------------------------------------------------

def _handle_of(text: str | None) -> int:
    if not text:
        return 0
    major = text.split(":")[0]
    return int(major, 16) << 16 if major else 0


def parse_tc_json(text: str) -> dict | None:
    """The impairment in ``tc -j qdisc show dev D`` output (iproute2 >= 5.x JSON: delay and
    jitter in seconds, percentages as fractions, a tbf rate in bytes/s)."""
    try:
        items = json.loads(text or "[]")
    except json.JSONDecodeError:
        raise NsrError("tc -j printed something that is not JSON", hint="is iproute2 >= 5.0?") from None
    qdiscs = [{"kind": q.get("kind"), "handle": _handle_of(q.get("handle")),
               "parent": TC_H_ROOT if q.get("root") else _handle_of(q.get("parent")),
               "options": q.get("options") or {}} for q in items]

    def options(q: dict) -> dict:
        o = q["options"]
        if q["kind"] == "tbf":
            return {"rate": format_rate(int(o["rate"]) * 8)} if o.get("rate") else {}
        delay = o.get("delay") or {}
        return _canonical({"delay": round(float(delay.get("delay", 0)) * 1e6),
                           "jitter": round(float(delay.get("jitter", 0)) * 1e6),
                           "loss": float((o.get("loss-random") or {}).get("loss", 0)) * 100,
                           "duplicate": float((o.get("duplicate") or {}).get("duplicate", 0)) * 100,
                           "corrupt": float((o.get("corrupt") or {}).get("corrupt", 0)) * 100})
    return _merge(qdiscs, options)


def _tc(argv: list[str]) -> str:
    from nsutil import shell
    return shell.run(argv)


def _apply_shell(ns: str, dev: str, imp: dict) -> None:
    _reset_shell(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"])
    for kind, parent, handle in layout(imp):
        try:
            _tc(tc_argv(ns, dev, kind, parent, handle, imp))
        except CommandError as exc:
            if kind == "netem" and "kind is unknown" in exc.stderr:
                raise _no_netem(exc) from None
            raise


def _reset_shell(argv: list[str]) -> None:
    """``tc qdisc del dev D root``, quiet when there is nothing to delete (the default qdisc
    has handle 0) or when the namespace or device is gone already."""
    if not nl.netns_exists(argv[2]):
        return
    try:
        _tc(argv)
    except CommandError as exc:
        gone = ("handle of zero", "Cannot find device", "No such file", "Invalid handle")
        if not any(text in exc.stderr for text in gone):
            raise


# --- steps -----------------------------------------------------------------------------------

def reset_step(ns: str, dev: str) -> Step:
    """Step: remove the root qdisc of ``dev`` (netem/tbf and what hangs below it); the
    device gets its default back. Quiet if there is none, or the netns is gone."""
    argv = ["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"]
    return Step(f"remove the impairment of {dev} in {ns} (its root qdisc)", argv=argv,
                shell=_reset_shell, native=lambda: _reset_native(ns, dev))


def apply(run: Runner, ns: str, dev: str, imp: dict | None) -> None:
    """Steps: impair what ``dev`` in netns ``ns`` sends (``imp`` as :func:`parse` returns
    it; None removes an impairment); undo: remove it again.

    The old root qdisc is removed and fresh ones are added, never changed in place: a tbf
    whose bucket is made smaller than a packet already in its queue never sends again
    (seen here: 299 packets stuck behind a 64 KiB one after ``burst 128kb`` -> ``10kb``)."""
    if not imp:
        reset(run, ns, dev)
        return
    if not run.explain:
        require_netem(imp)
    argvs = [tc_argv(ns, dev, kind, parent, handle, imp) for kind, parent, handle in layout(imp)]
    run.run(Step(f"impair what {dev} in {ns} sends: {describe(imp)}", argv=argvs[0],
                 shell=lambda _a: _apply_shell(ns, dev, imp),
                 native=lambda: _apply_native(ns, dev, imp),
                 display="\n      $ ".join([" ".join(reset_step(ns, dev).argv) + "  # the old one, if any"]
                                          + [" ".join(a) for a in argvs]),
                 undo=reset_step(ns, dev)))


def apply_link(run: Runner, link: Any, imp: dict | None, direction: str = "both") -> None:
    """Impair a :class:`recipes.labs.plan.Link`: both ends (``both``), or only what end ``a``
    (or ``b``) sends. The other end's impairment is removed."""
    check_direction(direction)
    if not run.explain:
        require_netem(imp)
    apply(run, link.a_ns, link.a_if, imp if direction in ("both", "a") else None)
    apply(run, link.b_ns, link.b_if, imp if direction in ("both", "b") else None)


def reset(run: Runner, ns: str, dev: str) -> None:
    """Step: remove the impairment of ``dev`` in ``ns`` (nothing to do is fine)."""
    run.run(reset_step(ns, dev))


def show(ns: str, dev: str, run: Runner | None = None) -> dict | None:
    """The impairment on ``dev`` in ``ns`` read back from the kernel, as :func:`parse`
    returns it (None: none). With ``run`` it is a step of that runner's backend
    (``tc -j -n NS qdisc show dev D`` or an RTM_GETQDISC dump); without, native."""
    if run is None:
        return _show_native(ns, dev)
    return run.run(Step(f"read the qdiscs of {dev} in {ns}",
                        argv=["tc", "-j", "-n", ns, "qdisc", "show", "dev", dev],
                        parse=parse_tc_json, native=lambda: _show_native(ns, dev),
                        placeholder={}))


def find_link(plan: Any, a: str, b: str) -> Any:
    """The link of ``plan`` between hosts ``a`` and ``b`` (short names or netns names, in
    either order); NotFound lists the links there are."""
    def names(host: str) -> set[str]:
        return {host, plan.hosts.get(host, host)}
    for link in plan.links:
        ends = ({link.a_host, link.a_ns}, {link.b_host, link.b_ns})
        if (names(a) & ends[0] and names(b) & ends[1]) or (names(a) & ends[1] and names(b) & ends[0]):
            return link
    there = [f"{ln.a_host or ln.a_ns}:{ln.b_host or ln.b_ns}" for ln in plan.links]
    raise NotFound(f"no link {a}:{b} in topology {plan.scope}",
                   hint=f"links: {', '.join(there[:8])}{' ...' if len(there) > 8 else ''}"
                   if there else "this topology has no links")


def link_end(link: Any, end: str) -> tuple[str, str]:
    """(netns, device) of end ``a`` or ``b`` of ``link``."""
    return (link.a_ns, link.a_if) if end == "a" else (link.b_ns, link.b_if)


def parse_link_arg(text: str | None) -> tuple[str, str]:
    """``"h1:h2"`` -> ("h1", "h2")."""
    parts = (text or "").split(":")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise InvalidInput(f"--link {text!r} is not A:B", hint="name the two hosts: --link h1:h2")
    return parts[0].strip(), parts[1].strip()


def link_status(plan: Any, links: list, run: Runner | None = None) -> list[dict]:
    """For each link: its name and, per end, netns, device and the impairment the kernel
    has on what that end sends (read back with :func:`show`)."""
    rows = []
    for ln in links:
        ends = {}
        for end in ("a", "b"):
            ns, dev = link_end(ln, end)
            ends[end] = {"host": getattr(ln, f"{end}_host") or ns, "netns": ns, "dev": dev,
                         "impair": show(ns, dev, run)}
        rows.append({"link": f"{ends['a']['host']}:{ends['b']['host']}", **ends})
    return rows


def format_status(rows: list[dict]) -> str:
    """A table: LINK, then each end with what it sends through (``a -> b: 20ms loss 1%``)."""
    lines = []
    for row in rows:
        a, b = row["a"], row["b"]
        lines.append(f"{row['link']}: {a['host']} -> {b['host']}: {describe(a['impair'])}; "
                     f"{b['host']} -> {a['host']}: {describe(b['impair'])}  "
                     f"({a['netns']}/{a['dev']}, {b['netns']}/{b['dev']})")
    return "\n".join(lines)
