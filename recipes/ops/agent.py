"""The entry point Fabric runs on each machine of a lab: ``VENV/bin/python -m recipes.ops.agent``.

Document section "Network namespace", across machines. Not a remote-execution layer: Fabric
(:mod:`recipes.labs.machines.controller`) connects and runs this; this runs the same recipes as on one machine
(:func:`recipes.labs.build.build`, :func:`recipes.labs.build.down`, the ``env-*`` recipes) on this
machine's part of the lab, which it reads as JSON on stdin. It answers with JSON lines on
stdout, the first always ``{"version": "..."}`` (the controller refuses another version)::

    build   [--backend B] [--alive-every S]  stdin: the part, then "commit" (or EOF: undo
                           what was built); {"alive": true} every S seconds meanwhile
    down    --scope S      tear down this machine's part of lab S
    check   [--backend B]  stdin: [[netns, address], ...]; answers the replies' TTLs
    env-create NAME [--ns T] [--hostname H] | env-exec NAME -- CMD... | env-rm NAME
    env-ls [--json] | cleanup | version (only the version line: machines-install's check)

(Which namespaces of a lab a machine has -- ``net-topo --show``, ``cleanup`` -- is asked with
``ls /run/netns`` there: no Python start, see :func:`recipes.labs.machines.controller.ask_status`.)

``build`` is a two-phase commit over one SSH session: the part is built and ``{"built": s}``
printed, then it waits. Only when every machine has built does the controller send
``commit``; if it sends none -- another machine failed, or the controller was killed and
sshd closed the session -- stdin ends and the part is undone here.
"""
from __future__ import annotations

import json
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from recipes.labs.machines.wire import version

_SAYING = threading.Lock()     #: one line at a time: the heartbeat speaks from a thread


def say(**fields: object) -> None:
    """One JSON line on stdout, flushed (the controller reads it as it comes)."""
    with _SAYING:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


@contextmanager
def heartbeat(every: float) -> Iterator[None]:
    """``{"alive": true}`` every ``every`` seconds while the body runs (0: never), so that the
    controller tells a machine that is busy from one it has lost: a network cut off
    mid-build leaves the session open and silent, and TCP may not notice for many minutes."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                say(alive=True)
            except (OSError, ValueError):    # the session is gone
                return
    thread = threading.Thread(target=beat, daemon=True)
    if every > 0:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()


def _runner(backend: str, keep: bool = True):
    from nsutil.backend import Runner
    return Runner(backend=backend, keep=keep, out=sys.stderr)


def build(backend: str, alive_every: float = 0) -> int:
    """Build the part read from stdin, then commit or undo (see the module docstring),
    saying ``{"alive": true}`` every ``alive_every`` seconds all the while."""
    with heartbeat(alive_every):
        return _build(backend)


def _build(backend: str) -> int:
    import time
    from recipes.labs import build as topo
    from recipes.labs import vxlan
    line = sys.stdin.readline()
    if not line.strip():
        return 0                      # the controller gave up before sending a part
    part = json.loads(line)
    plan = topo.Plan.from_json(part["plan"])
    run = _runner(backend)
    start = time.perf_counter()
    try:
        topo.build(run, plan, etc_hosts=False)
        for end in part["ends"]:
            vxlan.add_end(run, end)
        for host, routes in part["routes"].items():
            if routes:
                vxlan.add_routes(run, plan.hosts[host], routes)
        topo.write_hosts_files(run, plan, part["segments"], part["names"])
        plan.routes = part["routes"]
        topo.save_record(plan)
    except BaseException as exc:
        run.undo()
        if isinstance(exc, Exception):
            say(error=str(exc))
            return 1
        raise
    try:
        say(built=round(time.perf_counter() - start, 3))
        answer = sys.stdin.readline().strip()
    except BaseException:      # the session is gone (a killed controller: EPIPE on stdout)
        answer = ""
    if answer != "commit":
        run.undo()
        _say_quietly(undone=True)
        return 2
    try:
        _record_committed(plan)
    except Exception as exc:     # e.g. a full state directory: not committed, so undone
        run.undo()
        _say_quietly(error=str(exc))
        return 1
    say(committed=True)
    return 0


def _record_committed(plan) -> None:
    """This machine's record of its part, now ``committed`` (until then -- a builder killed
    before the controller's commit -- ``cleanup`` removes the part, complete or not)."""
    from recipes import net
    from recipes.labs import build as topo
    net.save_record(topo.record_path(plan.scope), {**plan.to_json(), "creator": net.creator(),
                                                    "committed": True})


def _say_quietly(**fields: object) -> None:
    """:func:`say`, where the controller may be gone already (nothing to tell then)."""
    try:
        say(**fields)
    except OSError:
        pass


def down(scope: str, backend: str) -> int:
    """Tear down this machine's part of ``scope``; answers what is left."""
    from nsutil import netlink as nl
    from recipes.labs import build as topo
    with _runner(backend) as run:
        gone = topo.down(run, scope)
    say(down=gone, left=[ns for ns in nl.list_netns() if ns.startswith(f"nsr-{scope}-")])
    return 0


def check(backend: str) -> int:
    """An ICMP echo per [netns, address] of stdin; answers the replies' TTLs (None: lost).
    Natively a raw socket in the namespace; on the shell backend ``ip netns exec NS ping``."""
    from nsutil.backend import Step
    from nsutil.errors import NsrError
    from recipes import net
    from recipes.labs import vxlan
    pairs = json.loads(sys.stdin.read())
    run = _runner(backend)

    def parse(out: str) -> int | None:
        return next((int(w[4:]) for w in out.split() if w.startswith("ttl=")), None)

    def one(ns: str, ip: str, wait: float) -> int | None:
        try:
            return run.run(Step(f"ICMP echo {ns} -> {ip}", argv=net.exec_argv(
                ns, ["ping", "-c", "1", "-W", str(int(wait)), ip]), parse=parse,
                native=lambda: vxlan.echo_ttl(ns, ip, wait)))
        except NsrError:
            return None
    ttls = [one(ns, ip, 3.0) for ns, ip in pairs]
    ttls = [t if t is not None else one(ns, ip, 5.0) for t, (ns, ip) in zip(ttls, pairs)]
    say(ttls=ttls)
    return 0


def env_command(argv: list[str]) -> int:
    """``env-create``, ``env-exec``, ``env-rm`` and ``cleanup``, here (the records,
    leftovers and cleanup are this machine's own)."""
    from recipes import env
    cmd, rest = argv[0], argv[1:]
    if cmd == "cleanup":
        from recipes.ops import cleanup
        removed, failed = cleanup.remove_all()[:2]
        say(removed=[f"{r.kind} {r.name}" for r in removed], failed=[str(e) for _, e in failed])
        return 1 if failed else 0
    if cmd == "env-ls":
        rows = env.list_envs()
        print(env.format_json(rows) if "--json" in rest else env.format_table(rows), flush=True)
        return 0
    name = rest[0]
    if cmd == "env-create":
        opts = dict(zip(rest[1::2], rest[2::2]))
        with _runner(opts.get("--backend", "native")) as run:
            rec = env.create(run, name, opts.get("--ns", env.DEFAULT_TYPES),
                             hostname=opts.get("--hostname"))
        say(created=name, pid=rec.get("holder", {}).get("pid"))
        return 0
    if cmd == "env-rm":
        with _runner("native") as run:
            env.remove(run, name)
        say(removed=name)
        return 0
    if cmd == "env-exec":
        cmdline = rest[rest.index("--") + 1:] if "--" in rest else rest[1:]
        with _runner("native") as run:
            done = env.exec_in(run, name, cmdline, capture=False)
        return done.returncode
    say(error=f"unknown command {cmd!r}")
    return 2


def main(argv: list[str]) -> int:
    """``python -m recipes.ops.agent COMMAND ...``; exit 3 if ``--expect VERSION`` differs."""
    from nsutil.errors import NsrError
    mine = version()
    say(version=mine)
    if "--expect" in argv:
        i = argv.index("--expect")
        expect, argv = argv[i + 1], argv[:i] + argv[i + 2:]
        if expect != mine:
            return 3
    opts = dict(zip(argv[1::2], argv[2::2]))
    backend = opts.get("--backend", "native")
    try:
        if argv[0] == "version":
            return 0
        if argv[0] == "build":
            return build(backend, float(opts.get("--alive-every", 0)))
        if argv[0] == "down":
            return down(opts["--scope"], backend)
        if argv[0] == "check":
            return check(backend)
        return env_command(argv)
    except NsrError as exc:
        say(error=str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
