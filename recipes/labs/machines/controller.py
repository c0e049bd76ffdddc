"""Labs across machines: the same recipes on every machine through Fabric, joined by VXLAN.

Document section "Network namespace", past one machine. A lab with a ``[machines]`` table
(:mod:`recipes.labs.machines.labfile`) is split into one *part* per machine: its hosts, the links
between them, its VXLAN ends of the links to other machines (:mod:`recipes.labs.vxlan`) and its
hosts' routes. Fabric -- Invoke's sibling for running commands over SSH -- connects to every
machine at once (a thread each, :mod:`recipes.labs.machines.sessions`) and runs the installed nsrecipes there
(``VENV/bin/python -m recipes.ops.agent``, :mod:`recipes.ops.agent`), which builds the part with
:func:`recipes.labs.build.build`: the recipes stay unaware of where they run.

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

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from nsutil import state
from nsutil.backend import Runner
from nsutil.errors import InvalidInput, NotFound, NsrError
from nsutil.netlink import NETNS_RUN_DIR

from recipes import net
from recipes.labs import routes as toporoute
from recipes.labs.machines.sessions import (CONNECT_TIMEOUT, Feed, Session, connection, fail, join, run_all,
                       ssh_reason, wait_all)
from recipes.labs.plan import Plan

SECTION = "Network namespace (labs across machines)"
HEARTBEAT = 5.0            #: seconds between a building machine's ``{"alive": true}`` lines
SILENT_AFTER = 60.0        #: a building machine silent this long is taken for lost


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
                f"{len(part['ends'])} VXLAN ends, via {m['venv']}/bin/python -m recipes.ops.agent build")
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
        wait_all(sessions, "version", CONNECT_TIMEOUT * 3)
        other = next((s for s in sessions if s.version_error()), None)
        if other:                       # refused before any part is sent
            other.error = other.version_error()
            raise fail(other)
        for s in sessions:
            s.feed.put(json.dumps(split[s.machine["name"]]) + "\n")
        wait_all(sessions, "built", silent_after=SILENT_AFTER)
        for s in sessions:
            s.feed.put("commit\n")
        committed = True
    finally:
        for s in sessions:
            s.feed.close()
        join(sessions, threads, SILENT_AFTER)
    failed = next((s for s in sessions if s.error or not s.has("committed")), None)
    if committed and failed:
        failed.error = failed.error or "it did not commit"
        raise _PartlyCommitted(failed)
    return {s.machine["name"]: s.has("built")["built"] for s in sessions}


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
    TTL; the same verdict and output as :func:`recipes.labs.show.check`."""
    from recipes.labs import show as toposhow
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
    """:func:`recipes.labs.show.show_data`, with each node's machine and whether its
    namespace exists *there* (asked of every machine)."""
    from recipes.labs import show as toposhow
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
    from recipes.labs import show as toposhow
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
            out = conn.run(f"ls -1 {NETNS_RUN_DIR}", hide=True, warn=True, in_stream=False).stdout
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
    :func:`recipes.labs.build.topology`)."""
    seconds = build(run, plan)
    try:
        yield Lab(run, plan, seconds)
    finally:
        down(run, plan.scope)


def machine_from_file(file: str | None, name: str) -> dict:
    """Machine ``name`` of the ``[machines]`` table of lab ``file`` (``env-* --machine``)."""
    from recipes.labs.labfile import plan_file
    if not file:
        raise InvalidInput(f"--machine {name} needs --file LAB.toml (its [machines] table)",
                           hint="give --file")
    return one_machine(plan_file(file), name)


def env_remote(machine: dict, args: list[str], passthrough=None) -> Session:
    """Run an ``env-*`` (or ``cleanup``) command of :mod:`recipes.ops.agent` on ``machine``:
    the environment's records, leftovers and cleanup are that machine's own."""
    return run_all([machine], args, passthrough=passthrough)[machine["name"]]
