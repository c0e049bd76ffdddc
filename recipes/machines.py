"""Labs across machines: the same recipes on every machine through Fabric, joined by VXLAN.

Document section "Network namespace", past one machine. A lab with a ``[machines]`` table
(:mod:`recipes.machinefile`) is split into one *part* per machine: its hosts, the links
between them, its VXLAN ends of the links to other machines (:mod:`recipes.vxlan`) and its
hosts' routes. Fabric -- Invoke's sibling for running commands over SSH -- connects to every
machine at once (a thread each) and runs the installed nsrecipes there
(``VENV/bin/python -m recipes.remote``, :mod:`recipes.remote`), which builds the part with
:func:`recipes.topo.build`: the recipes stay unaware of where they run.

One build is a two-phase commit over one SSH session per machine:

1. every machine answers its nsrecipes version first; another version than this one's is
   refused (one line naming the machine) before any part is sent;
2. every machine builds its part and says so;
3. when all have, each is told ``commit``. If one fails (SSH refused, a step failed), the
   others' stdin is closed instead and each undoes its own part; the error names the
   machine. A controller killed half-way closes every session, which undoes the same way.
   A machine lost between "built" and "commit", after others committed, is the one case a
   session's end cannot undo: the controller then takes every machine's part down itself.

The lab is recorded here too (``net/machines-SCOPE.json``, before anything is made), so
``net-topo --down --scope S`` and ``--show`` know its machines; each machine records its
own part as a topology of its own (its ``cleanup`` finds leftovers there).
"""
from __future__ import annotations

import errno
import json
import os
import queue
import shlex
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from nsutil import state
from nsutil.backend import Runner
from nsutil.errors import InvalidInput, NotFound, NsrError

from . import net, toporoute
from .topoplan import Plan

SECTION = "Network namespace (labs across machines)"
CONNECT_TIMEOUT = 60       #: seconds to open an SSH connection (generous: slow VMs)
STEP_TIMEOUT = 1800        #: seconds a machine may take for one phase of a build
HEARTBEAT = 5.0            #: seconds between a building machine's ``{"alive": true}`` lines
SILENT_AFTER = 60.0        #: a building machine silent this long is taken for lost
NETNS_DIR = "/run/netns"  #: where ``ip netns`` keeps the named namespaces, on every machine
INSTALL_HINT = "install this checkout there: invoke machines-install --file LAB.toml"


# --- parts ----------------------------------------------------------------------------------

def _end(plan: Plan, ln, side: str) -> dict:
    """The VXLAN end of ``ln`` on the machine of its ``side`` (a or b) end."""
    other = "b" if side == "a" else "a"
    me = plan.machines[plan.placement[getattr(ln, f"{side}_host")]]
    peer = plan.machines[plan.placement[getattr(ln, f"{other}_host")]]
    return {"dev": getattr(ln, f"{side}_if"), "ns": getattr(ln, f"{side}_ns"),
            "addr": getattr(ln, f"{side}_addr"), "host": getattr(ln, f"{side}_host"),
            "peer": getattr(ln, f"{other}_host"), "vni": ln.vxlan["vni"], "port": ln.vxlan["port"],
            "local": me["underlay"], "remote": peer["underlay"], "impair": ln.impair}


def parts(plan: Plan) -> dict[str, dict]:
    """machine -> its part: ``plan`` (a Plan of its hosts and local links, as JSON, routes
    left out), ``ends`` (its VXLAN ends), ``routes`` (added after the ends), and for its
    /etc/netns hosts files ``segments`` (all its hosts are on, other machines' hosts too) and
    ``names`` (host -> netns of the hosts on them)."""
    out = {}
    for name in plan.machines:
        hosts = {h: ns for h, ns in plan.hosts.items() if plan.placement[h] == name}
        local = [ln for ln in plan.links if ln.vxlan is None and ln.a_host in hosts]
        ends = [_end(plan, ln, side) for ln in plan.links if ln.vxlan
                for side in ("a", "b") if getattr(ln, f"{side}_host") in hosts]
        segments = [seg for seg in plan.segments if all(h in hosts for h, _ in seg)]
        part = Plan(scope=plan.scope, shape=plan.shape, hosts=hosts, links=local, segments=segments,
                    ipv6=plan.ipv6, routers=list(plan.routers), lan=dict(plan.lan),
                    machines={name: plan.machines[name]}, placement=dict.fromkeys(hosts, name))
        touching = [seg for seg in plan.segments if any(h in hosts for h, _ in seg)]
        out[name] = {"plan": part.to_json(), "ends": ends,
                     "routes": {h: plan.routes.get(h, []) for h in hosts},
                     "segments": touching,
                     "names": {h: plan.hosts[h] for seg in touching for h, _ in seg}}
    return out


# --- sessions: one Fabric connection and remote command per machine ------------------------

class Feed:
    """What Invoke reads as a command's stdin: the text put so far, then EOF once closed
    (Invoke shuts the channel's write side, so the remote end reads EOF)."""

    def __init__(self) -> None:
        self.chunks: queue.SimpleQueue = queue.SimpleQueue()
        self.done = False

    def put(self, text: str) -> None:
        """Queue ``text`` for the remote command's stdin."""
        self.chunks.put(text)

    def close(self) -> None:
        """End the remote command's stdin."""
        self.chunks.put(None)

    def read(self, size: int = -1) -> str | None:
        """Everything queued (Invoke asks for one byte at a time and naps between reads);
        None while there is nothing yet, "" once closed."""
        if self.done:
            return ""
        try:
            item = self.chunks.get_nowait()
        except queue.Empty:
            return None
        if item is None:
            self.done = True
            return ""
        return item

    def isatty(self) -> bool:
        """Not a terminal (so Invoke treats "" as the end)."""
        return False


class Session:
    """One machine's remote command, run by Fabric in a thread; its JSON lines as events."""

    def __init__(self, machine: dict, args: list[str], feed: Feed | None = None,
                 passthrough=None) -> None:
        self.machine, self.args, self.feed, self.passthrough = machine, args, feed, passthrough
        self.events: list[dict] = []
        self.error: str | None = None
        self.result = None
        self.finished = False
        self._buf = ""
        self.changed = threading.Condition()
        self.heard = time.monotonic()     #: when the machine last said anything
        self.lost = False                 #: silent too long (cut off, or hung)

    @property
    def label(self) -> str:
        """``machine m2 (root@10.250.0.12)``."""
        return f"machine {self.machine['name']} ({self.machine['ssh']})"

    def command(self) -> str:
        """The command line run there."""
        venv = self.machine["venv"]
        from .remote import version
        return shlex.join([f"{venv}/bin/python", "-m", "recipes.remote", self.args[0],
                           "--expect", version(), *self.args[1:]])

    def write(self, text: str) -> None:
        """Invoke's out_stream: JSON lines become events (the rest passes through)."""
        self.heard = time.monotonic()
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line.startswith("{") and (not self.passthrough or not self.events):
                try:
                    self._event(json.loads(line))
                    continue
                except ValueError:
                    pass
            if self.passthrough:
                self.passthrough.write(line + "\n")
                self.passthrough.flush()

    def flush(self) -> None:
        """Invoke's out_stream: nothing buffered to flush."""
        if self.passthrough and self._buf and self.events:
            self.passthrough.write(self._buf)
            self._buf = ""

    def _event(self, ev: dict) -> None:
        with self.changed:
            self.events.append(ev)
            self.changed.notify_all()

    def silent(self, limit: float | None) -> bool:
        """True (and ``lost``, with the error saying so) if the session still runs and the
        machine has said nothing for more than ``limit`` seconds (None: no limit)."""
        if limit is None or self.finished or time.monotonic() - self.heard <= limit:
            return False
        self.lost = True
        self.error = self.error or (f"no word from it for {limit:.0f} s: cut off from the "
                                    "network, or hung")
        return True

    def has(self, key: str) -> dict | None:
        """The first event with ``key``."""
        return next((e for e in self.events if key in e), None)

    def run(self) -> None:
        """Connect and run (in a thread); failures are kept as one line in ``error``."""
        try:
            conn = connection(self.machine)
            try:
                self.result = conn.run(self.command(), in_stream=self.feed or False, out_stream=self,
                                       err_stream=_Discard(), hide=True, warn=True, pty=False)
            finally:
                conn.close()
            self.flush()
            self.error = self._failure(self.result)
        except Exception as exc:    # whatever Fabric, paramiko or the socket raise
            self.error = f"ssh: {ssh_reason(exc)}"
            if self.has("version"):             # it had started: not a connection failure
                self.error = f"its nsrecipes ended half-way, killed or cut off ({self.error})"
        finally:
            with self.changed:
                self.finished = True
                self.changed.notify_all()

    def _failure(self, result) -> str | None:
        seen = self.has("version")
        if seen and seen["version"] != _local_version():
            return (f"nsrecipes {seen['version']} is installed there ({self.machine['venv']}), "
                    f"{_local_version()} here")
        err = self.has("error")
        if err:
            return err["error"]
        if result.exited in (0, 2) or (self.passthrough and seen):
            return None
        tail = (result.stderr or "").strip().splitlines()
        if not seen:
            return (f"no nsrecipes in {self.machine['venv']} there "
                    f"({tail[-1] if tail else f'exit {result.exited}'})")
        if result.exited < 0:                   # no exit status: a signal, or the link gone
            return "its nsrecipes ended half-way, killed or cut off (no exit status)"
        return f"remote nsrecipes failed with exit {result.exited}: {tail[-1] if tail else ''}"


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def _local_version() -> str:
    from .remote import version
    return version()


def connection(machine: dict):
    """A Fabric connection to ``machine`` (its key when the lab names one)."""
    from fabric import Connection
    kwargs = {"key_filename": [machine["identity"]], "look_for_keys": False,
              "allow_agent": False} if machine.get("identity") else {}
    return Connection(machine["host"], user=machine["user"], port=machine["port"],
                      connect_timeout=CONNECT_TIMEOUT, connect_kwargs=kwargs)


def ssh_reason(exc: BaseException) -> str:
    """One line for what went wrong connecting: the errno name when there is one."""
    inner = getattr(exc, "errors", None)         # paramiko's NoValidConnectionsError
    if isinstance(inner, dict) and inner:
        exc = next(iter(inner.values()))
    wrapped = getattr(exc, "exceptions", None)   # Invoke's ThreadException (its stdin thread)
    if isinstance(wrapped, (list, tuple)) and wrapped and hasattr(wrapped[0], "value"):
        exc = wrapped[0].value
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "connection timed out"
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno).lower()} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _fail(s: Session) -> NsrError:
    if s.lost:
        return NsrError(f"{s.label}: {s.error}", hint="the other machines' parts are undone; its "
                        "own is undone there once the session's end reaches it, else run "
                        f"`invoke cleanup` on it (ssh {s.machine['ssh'].split(':')[0]})")
    hint = INSTALL_HINT if "nsrecipes" in (s.error or "") and "installed" in (s.error or "") \
        or (s.error or "").startswith("no nsrecipes") else \
        "is its sshd up and the key authorized? (ssh " + s.machine["ssh"].split(":")[0] + ")" \
        if (s.error or "").startswith("ssh:") else "see the message; nothing is left on any machine"
    return NsrError(f"{s.label}: {s.error}", hint=hint)


def _wait_all(sessions: list[Session], key: str, timeout: float = STEP_TIMEOUT,
              silent_after: float | None = None) -> None:
    """Until every session has an event ``key``; the first that ends without it raises, and
    so does one silent for more than ``silent_after`` seconds (None: no limit)."""
    deadline = time.monotonic() + timeout
    for s in sessions:
        with s.changed:
            while not s.has(key) and not s.finished:
                if not s.changed.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
                    if time.monotonic() >= deadline:
                        s.error = s.error or f"no answer in {timeout:.0f} s"
                        raise _fail(s)
                    failed = next((o for o in sessions if (o.finished and o.error)
                                   or o.silent(silent_after)), None)
                    if failed:
                        raise _fail(failed)
        if not s.has(key):
            s.error = s.error or f"it stopped before {key}"
            raise _fail(s)


def run_all(machines: list[dict], args: list[str], inputs: dict[str, str] | None = None,
            passthrough=None) -> dict[str, Session]:
    """Run ``recipes.remote ARGS`` on every machine at once; raises the first failure (one
    line naming the machine). ``inputs``: machine -> its stdin."""
    sessions = {}
    for m in machines:
        feed = None
        if inputs is not None:
            feed = Feed()
            feed.put(inputs.get(m["name"], ""))
            feed.close()
        sessions[m["name"]] = Session(m, args, feed, passthrough)
    with ThreadPoolExecutor(max_workers=len(sessions)) as pool:
        list(pool.map(Session.run, sessions.values()))
    for s in sessions.values():
        if s.error:
            raise _fail(s)
    return sessions


# --- records --------------------------------------------------------------------------------

def record_path(scope: str) -> str:
    """``net/machines-SCOPE.json`` under the state directory."""
    return os.path.join(state.state_dir("net", create=False), f"machines-{scope}.json")


def save_record(plan: Plan) -> None:
    """Record the lab and its machines here (before anything is made)."""
    net.save_record(record_path(plan.scope), {**plan.to_json(), "creator": net.creator()})


def recorded(scope: str | None = None) -> list[Plan]:
    """The labs across machines recorded here (all, or the one with ``scope``)."""
    return [Plan.from_json(rec) for rec in net.records("machines-")
            if scope is None or rec.get("scope") == scope]


# --- build, down, check, show ---------------------------------------------------------------

def build(run: Runner, plan: Plan) -> dict[str, float]:
    """Build every machine's part at once (see the module docstring); returns machine ->
    seconds its build took there. On any failure every part is undone and one NsrError
    names the machine."""
    run.heading(f"{SECTION}: build {plan.scope} on {len(plan.machines)} machines "
                f"({len(plan.hosts)} hosts, {sum(1 for ln in plan.links if ln.vxlan)} VXLAN links)")
    for name, part in parts(plan).items():
        m = plan.machines[name]
        run.say(f"  {name} ({m['ssh']}): {len(part['plan']['hosts'])} hosts, "
                f"{len(part['ends'])} VXLAN ends, via {m['venv']}/bin/python -m recipes.remote build")
    if run.explain:
        return {}
    save_record(plan)
    try:
        return _two_phase(plan, run.backend if run.backend != "auto" else "native")
    except _PartlyCommitted as exc:
        raise _take_down_committed(plan, exc.session) from None
    except BaseException:
        net.drop_record(record_path(plan.scope))
        raise


class _PartlyCommitted(Exception):
    """Other machines committed their parts; ``session``'s machine did not."""

    def __init__(self, session: Session) -> None:
        super().__init__(session.error)
        self.session = session


def _take_down_committed(plan: Plan, failed: Session) -> NsrError:
    """The error of ``failed``, whose machine did not commit, once every machine's part (the
    others' committed ones too) is down and the record gone; where that cannot be done, the
    record stays (``--down`` and ``cleanup`` finish it) and the error says so."""
    try:
        _down_parts(plan)
    except NsrError as exc:
        return NsrError(f"{failed.label}: {failed.error}; taking the committed parts down "
                        f"failed too: {exc}", hint="once every machine answers: invoke "
                        f"net-topo --down --scope {plan.scope}")
    net.drop_record(record_path(plan.scope))
    return NsrError(f"{failed.label}: {failed.error}; the other machines' committed parts "
                   "were taken down", hint="nothing is left on any machine; build it again")


def _two_phase(plan: Plan, backend: str) -> dict[str, float]:
    split = parts(plan)
    sessions = [Session(m, ["build", "--backend", backend, "--alive-every", str(HEARTBEAT)], Feed())
                for m in plan.machines.values()]
    threads = [threading.Thread(target=s.run, daemon=True) for s in sessions]
    for t in threads:
        t.start()
    committed = False
    try:
        _wait_all(sessions, "version", CONNECT_TIMEOUT * 3)
        for s in sessions:
            s.feed.put(json.dumps(split[s.machine["name"]]) + "\n")
        _wait_all(sessions, "built", silent_after=SILENT_AFTER)
        for s in sessions:
            s.feed.put("commit\n")
        committed = True
    finally:
        for s in sessions:
            s.feed.close()
        _join(sessions, threads)
    failed = next((s for s in sessions if s.error or not s.has("committed")), None)
    if committed and failed:
        failed.error = failed.error or "it did not commit"
        raise _PartlyCommitted(failed)
    return {s.machine["name"]: s.has("built")["built"] for s in sessions}


def _join(sessions: list[Session], threads: list[threading.Thread]) -> None:
    """Wait for every session's thread to end, but not for a machine silent for more than
    SILENT_AFTER seconds (its thread is a daemon: it ends when the session does)."""
    deadline = time.monotonic() + STEP_TIMEOUT
    for s, t in zip(sessions, threads):
        while t.is_alive() and time.monotonic() < deadline and not s.silent(SILENT_AFTER):
            t.join(1.0)


def down(run: Runner, scope: str | None = None) -> list[str]:
    """Tear down the recorded labs across machines (``scope``, or all): every machine's
    part; the record goes when every machine is done."""
    plans = recorded(scope)
    for plan in plans:
        run.heading(f"{SECTION}: tear down {plan.scope} on {', '.join(plan.machines)}")
        if run.explain:
            continue
        _down_parts(plan)
        net.drop_record(record_path(plan.scope))
        run.say(f"tore down {plan.scope} on {len(plan.machines)} machines")
    return [p.scope for p in plans]


def _down_parts(plan: Plan) -> None:
    """Every machine's part of ``plan`` torn down there (committed or not); raises when a
    machine cannot be asked or has some of it left."""
    sessions = run_all(list(plan.machines.values()), ["down", "--scope", plan.scope])
    left = {n: s.has("down")["left"] for n, s in sessions.items() if s.has("down")["left"]}
    if left:
        raise NsrError(f"tear down {plan.scope}: left {left}", hint="run it again")


def check(run: Runner, plan: Plan, limit: int | None = None) -> dict:
    """Every pair (a sample beyond ``limit``) with real packets across machines: an ICMP
    echo from each source host's namespace on its own machine, the hops from the reply's
    TTL; the same verdict and output as :func:`recipes.toposhow.check`."""
    from . import toposhow
    pairs = plan.pairs(limit if limit is not None else 200)
    total = plan.pair_count()
    what = "all pairs" if len(pairs) == total else f"a sample of {len(pairs)} of {total} pairs"
    run.heading(f"{SECTION}: check {plan.scope} across {len(plan.machines)} machines "
                f"with real packets ({what})")
    if run.explain:
        return {"pairs": len(pairs), "ok": 0, "failed": [], "total": total, "hops": {}}
    import ipaddress
    by_machine: dict[str, list] = {}
    for a, _ca, b, cb in pairs:
        by_machine.setdefault(plan.placement[a], []).append(
            (a, b, [plan.hosts[a], str(ipaddress.ip_interface(cb).ip)]))
    machines = [plan.machines[n] for n in by_machine]
    backend = run.backend if run.backend != "auto" else "native"
    sessions = run_all(machines, ["check", "--backend", backend],
                       {n: json.dumps([q for _, _, q in items]) for n, items in by_machine.items()})
    start = toporoute.initial_ttl(plan)
    measured = {}
    for name, items in by_machine.items():
        for (a, b, _), ttl in zip(items, sessions[name].has("ttls")["ttls"]):
            measured[(a, b)] = None if ttl is None else start + 1 - ttl
    return toposhow.report(run, plan, pairs, measured, what)


def show_data(plan: Plan) -> dict:
    """:func:`recipes.toposhow.show_data`, with each node's machine and whether its
    namespace exists *there* (asked of every machine)."""
    from . import toposhow
    data = toposhow.show_data(plan)
    answers = ask_status(plan)
    failed = next((a for a in answers.values() if isinstance(a, str)), None)
    if failed:
        raise NsrError(failed, hint="is its sshd up and the key authorized?")
    present = {ns for a in answers.values() for ns in a}
    for node in data["nodes"]:
        node["machine"] = plan.placement.get(node["name"])
        node["up"] = node["netns"] in present
    data["machines"] = {n: {"ssh": m["ssh"], "underlay": m["underlay"]} for n, m in plan.machines.items()}
    for ln, item in zip(plan.links, data["links"]):
        item["vxlan"] = ln.vxlan
    return data


def show_lines(data: dict) -> list[str]:
    """``net-topo --show`` of a lab across machines: its machines, then the usual tables."""
    from . import toposhow
    out = toposhow.show_lines(data)
    hosts = {}
    for n in data["nodes"]:
        hosts.setdefault(n.get("machine"), []).append(n["name"])
    out[1:1] = [f"  machine {name}: {m['ssh']}, underlay {m['underlay']}, hosts "
                f"{' '.join(hosts.get(name, [])[:8])}" for name, m in data["machines"].items()]
    tunnels = [f"{ln['a']}-{ln['b']} vni {ln['vxlan']['vni']}" for ln in data["links"] if ln.get("vxlan")]
    if tunnels:
        out.append(f"  VXLAN links: {', '.join(tunnels[:12])}{' ...' if len(tunnels) > 12 else ''}")
    return out


def ssh_overhead(plan: Plan) -> dict[str, float]:
    """Seconds to connect and run ``true`` on every machine at once (the SSH part of any
    remote command, without nsrecipes): machine -> seconds, and ``all`` (wall clock)."""
    def one(m: dict) -> tuple[str, float]:
        t = time.perf_counter()
        conn = connection(m)
        try:
            conn.run("true", hide=True, in_stream=False)
        finally:
            conn.close()
        return m["name"], time.perf_counter() - t
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(plan.machines)) as pool:
        out = dict(pool.map(one, plan.machines.values()))
    out["all"] = time.perf_counter() - start
    return out


def _netns_there(m: dict, scope: str) -> list[str] | str:
    """The namespaces of lab ``scope`` on machine ``m`` (``ls /run/netns`` there, no Python
    start), or why it could not be asked."""
    try:
        conn = connection(m)
        try:
            out = conn.run(f"ls -1 {NETNS_DIR}", hide=True, warn=True, in_stream=False).stdout
        finally:
            conn.close()
    except Exception as exc:    # whatever Fabric, paramiko or the socket raise
        return f"machine {m['name']} ({m['ssh']}): ssh: {ssh_reason(exc)}"
    return sorted(n for n in out.split() if n.startswith(f"nsr-{scope}-"))


def ask_status(plan: Plan) -> dict[str, list[str] | str]:
    """machine -> the namespaces of ``plan`` it has, or why it could not be asked (a
    string); every machine at once, and one failing does not stop the others."""
    with ThreadPoolExecutor(max_workers=len(plan.machines)) as pool:
        answers = pool.map(lambda m: _netns_there(m, plan.scope), plan.machines.values())
        return dict(zip(plan.machines, answers))


def why_keep(plan: Plan) -> str | None:
    """What ``cleanup`` on the controller says of the record of ``plan`` whose creator is
    gone: None (remove it) once every machine answers that none of its namespaces is
    there; else why it stays -- complete, partly there, or a machine that cannot be asked
    (its part may still be there, and the record is the only map of it)."""
    answers = ask_status(plan)
    down = f"`invoke net-topo --down --scope {plan.scope}`"
    unreachable = [a for a in answers.values() if isinstance(a, str)]
    if unreachable:
        return (f"cannot ask {unreachable[0]} (its part may be there): {down} once it is "
                f"back; `invoke cleanup --all` drops the record")
    have = {n: len(a) for n, a in answers.items()}
    if not any(have.values()):
        return None
    want = {n: len(Plan.from_json(p["plan"]).all_netns()) for n, p in parts(plan).items()}
    if have == want:
        return f"complete on {', '.join(plan.machines)}"
    counts = ", ".join(f"{n} {have[n]}/{want[n]}" for n in plan.machines)
    return f"partly there (namespaces: {counts}): {down} tears it down"


def one_machine(plan: Plan, name: str | None) -> dict:
    """The machine ``name`` of ``plan`` (for ``env-* --machine``)."""
    if not plan.machines:
        raise InvalidInput("the lab file has no [machines] table", hint="add [machines.NAME] tables")
    if name not in plan.machines:
        raise NotFound(f"no machine {name!r} in the lab", hint=f"machines: {', '.join(plan.machines)}")
    return plan.machines[name]


class Lab:
    """A built lab across machines (what ``topology(file=..., machines=...)`` yields):
    ``lab.check()``, ``lab.plan``, ``lab.hosts``, ``lab.machine("h1")``."""

    def __init__(self, run: Runner, plan: Plan, seconds: dict[str, float]):
        self.runner, self.plan, self.seconds = run, plan, seconds

    @property
    def hosts(self) -> list[str]:
        """Short host names."""
        return list(self.plan.hosts)

    def machine(self, host: str) -> str:
        """The machine ``host`` is on."""
        return self.plan.placement[host]

    def check(self, limit: int | None = None) -> dict:
        """Connectivity with real packets across machines (see :func:`check`)."""
        return check(self.runner, self.plan, limit)

    def show(self) -> dict:
        """What ``net-topo --show`` says of it (see :func:`show_data`)."""
        return show_data(self.plan)


def lab(plan: Plan, run: Runner):
    """Build ``plan`` on its machines and tear it down when the block ends (a generator for
    :func:`recipes.topo.topology`)."""
    seconds = build(run, plan)
    try:
        yield Lab(run, plan, seconds)
    finally:
        down(run, plan.scope)


def machine_from_file(file: str | None, name: str) -> dict:
    """Machine ``name`` of the ``[machines]`` table of lab ``file`` (``env-* --machine``)."""
    from .topofile import plan_file
    if not file:
        raise InvalidInput(f"--machine {name} needs --file LAB.toml (its [machines] table)",
                           hint="give --file")
    return one_machine(plan_file(file), name)


def env_remote(machine: dict, args: list[str], passthrough=None) -> Session:
    """Run an ``env-*`` (or ``cleanup``) command of :mod:`recipes.remote` on ``machine``:
    the environment's records, leftovers and cleanup are that machine's own."""
    return run_all([machine], args, passthrough=passthrough)[machine["name"]]
