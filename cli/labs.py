"""Network lab tasks: net-topo, net-exec, net-link (see README "Network labs")."""
from __future__ import annotations

from typing import Any

from invoke import Exit

from cli.common import command_argv, make_runner, nsr_task


@nsr_task(help={"shape": "star (hosts on a bridge in a hub namespace), line or ring (inner "
                         "hosts route), tree (bridges at the inner nodes, hosts at the leaves)",
                "hosts": "number of hosts of a star, line or ring (1 to 10000; default 3)",
                "depth": "levels of bridges of a tree (default 2)",
                "fanout": "children of every inner node of a tree (default 2): fanout**depth hosts",
                "file": "build the hosts, routers, links, addresses and impairments of a TOML "
                        "file instead (format below)",
                "check": "prove with real packets that the pairs reach each other along their "
                         "shortest paths, printing each path's hops (all pairs up to a size, "
                         "a sample beyond)",
                "down": "tear down the topology of --scope (every recorded one without --scope)",
                "scope": "1-4 letters/digits put in every name (default: random per run)",
                "status": "list the topologies that are up (scope, shape, hosts)",
                "show": "show the topology of --scope (every one without): hosts, interfaces, "
                        "addresses, routes and impairments, as containerlab inspect",
                "json": "with --show: print JSON",
                "draw": "also draw the lab into FILE.svg (hosts, bridges, routers, links with "
                        "addresses and impairments; above 100 hosts a summary); with --show, "
                        "or with the --scope of a lab that is up, draw that one",
                "etc_hosts": "write /etc/netns/NS/hosts so hosts reach each other by name "
                             "(default on; skipped above 256 hosts; without root one hosts "
                             "file for the lab, over /etc/hosts in its mount namespace)",
                "ipv6": "keep IPv6 link-local autoconf on the links (default off: on a big "
                        "bridge its multicast from every host floods every other)"})
def net_topo(c, shape="star", hosts="3", depth="2", fanout="2", file=None, check=False,
             down=False, scope=None, status=False, show=False, json=False, draw=None,
             etc_hosts=True, ipv6=False, backend=None, explain=False):
    """Build a lab of network namespaces: star, line, ring, tree or a TOML file.

    Routers (a line's inner hosts, a ring's hosts, router = true in a file) forward IPv4
    inside their namespaces, with static shortest-path routes. --down tears it down; until
    then the namespaces stay for `net-exec`, `net-link`, `ip netns`, `nsenter`.

    lab.toml: [hosts.r1] router = true; [[links]] a = "web" b = "r1" (a_addr/b_addr, delay,
    jitter, loss, rate, corrupt, duplicate optional; subnet = "10.210.0.0/16" is the pool
    for automatic addresses).

    Without root: a holder process's user namespace (you mapped to root) owns every
    namespace of the lab; their names are pinned inside the lab's own mount namespace (not
    /run/netns), its records are in $XDG_RUNTIME_DIR/nsrecipes. net-exec, net-link and
    --check join it first; enter it yourself with nsenter -t HOLDER -U -m -n
    --preserve-credentials (the holder's pid: --status). --down kills the holder, and the
    lab goes with it. Labs across machines ([machines]) need root.
    """
    from recipes.labs import build as topo
    from nsutil.rootless import require_namespaces
    if draw:
        from recipes.common import pictures
        pictures.check_path(draw)
    if status or show or (draw and scope and not down and _is_up(topo, scope)):
        _show_topologies(topo, scope, status, json, draw)   # --draw: the lab that is up
        return
    if down:
        if not explain:
            require_namespaces("net-topo --down")
        with make_runner(backend, explain, keep=True) as run:
            from recipes.labs.machines import controller as machines
            if not machines.down(run, scope) or not scope:
                topo.down(run, scope)
        return
    plan = topo.plan_file(file, scope, ipv6) if file else topo.plan_shape(
        shape, hosts, scope, ipv6=ipv6, depth=depth, fanout=fanout)
    if plan.machines:
        _machines_need_root()
    if not explain:
        require_namespaces("net-topo")
    if plan.machines:
        _net_topo_machines(plan, check, backend, explain)
        return
    with make_runner(backend, explain, keep=True) as run:
        seconds, _ = topo.timed(topo.build, run, plan, etc_hosts=etc_hosts)
        run.say(f"built {len(plan.all_netns())} namespaces and {len(plan.links)} veth pairs "
                f"in {seconds:.2f} s (scope {plan.scope}); first hosts: "
                + ", ".join(f"{h}={plan.hosts[h]}" for h in list(plan.hosts)[:3]))
        run.say(f"try: invoke net-exec {next(iter(plan.hosts))} -- ip addr; "
                f"tear down: invoke net-topo --down --scope {plan.scope}")
        if plan.holder is not None and not explain:
            from recipes.labs import userlab
            run.say(f"without root the lab is held by pid {plan.holder['pid']}; enter it: "
                    f"{' '.join(map(str, userlab.join_argv(plan.holder['pid'])))} ip netns list")
        if draw and not explain:
            run.say(f"drew {pictures.topology(topo.show_data(plan), draw)}")
        if check:
            result = topo.check(run, plan)
            if result["failed"]:
                raise Exit(f"nsrecipes: check: {len(result['failed'])} of {result['pairs']} pairs "
                           "got no packets through or took a longer path (hint: see the list "
                           "above)", code=1)


def _machines_need_root() -> None:
    """Labs across machines stay root's: one line when a user asks for one."""
    from nsutil import rootless
    from nsutil.errors import NotRoot
    if rootless.decide():
        raise NotRoot("a lab across machines ([machines] in the lab file)")


def _is_up(topo: Any, scope: str) -> bool:
    """A topology with ``scope`` is recorded (on this machine or across machines)."""
    from recipes.labs.machines import controller as machines
    return bool(topo.recorded(topo.check_scope(scope)) or machines.recorded(scope))


def _net_topo_machines(plan: Any, check: bool, backend: str | None, explain: bool) -> None:
    """net-topo --file LAB.toml with a [machines] table: every machine's part through Fabric."""
    from recipes.labs.machines import controller as machines
    from recipes.labs import build as topo
    with make_runner(backend, explain, keep=True) as run:
        seconds, parts = topo.timed(machines.build, run, plan)
        run.say(f"built {len(plan.hosts)} hosts on {len(plan.machines)} machines in {seconds:.2f} s "
                f"(scope {plan.scope}; per machine: "
                + ", ".join(f"{m} {s:.2f} s" for m, s in parts.items()) + ")")
        run.say(f"tear down: invoke net-topo --down --scope {plan.scope}")
        if check and not explain:
            result = machines.check(run, plan)
            if result["failed"]:
                raise Exit(f"nsrecipes: check: {len(result['failed'])} of {result['pairs']} pairs "
                           "got no packets through or took a longer path (hint: see the list "
                           "above)", code=1)


def _show_topologies(topo: Any, scope: str | None, status: bool, as_json: bool,
                     draw: str | None) -> None:
    """net-topo --status / --show [--json] [--draw]: what the records say, and what is up."""
    import json as js
    plans = topo.recorded(topo.check_scope(scope) if scope else None)
    from recipes.labs.machines import controller as machines
    across = machines.recorded(scope)
    if status:
        for plan in across:
            print(f"{plan.scope}  file  {len(plan.hosts)} hosts  on {', '.join(plan.machines)}")
    if scope and not plans and across and not status:
        data = [machines.show_data(p) for p in across]
        print(js.dumps({"topologies": data}, indent=2) if as_json
              else "\n".join(line for d in data for line in machines.show_lines(d)))
        return
    if status:
        for plan in plans:
            print(f"{plan.scope}  {plan.shape}  {len(plan.hosts)} hosts  "
                  f"{' '.join(plan.all_netns()[:4])}{' ...' if len(plan.all_netns()) > 4 else ''}"
                  + _holder_note(plan))
        return
    if scope and not plans:
        from nsutil.errors import NotFound
        raise NotFound(f"no topology with scope {scope}", hint="see invoke net-topo --status")
    data = [topo.show_data(p) for p in plans]
    if draw:
        if len(data) != 1:
            from nsutil.errors import InvalidInput
            raise InvalidInput(f"--draw needs one topology, {len(data)} are up", hint="give --scope")
        from recipes.common import pictures
        print(f"drew {pictures.topology(data[0], draw)}")
    elif as_json:
        print(js.dumps({"topologies": data}, indent=2))
    else:
        for d in data:
            print("\n".join(topo.show_lines(d)))
        if not data:
            print("no topologies are up")


def _holder_note(plan: Any) -> str:
    """Without root: which process holds the lab (or that it is dead)."""
    if plan.holder is None:
        return ""
    from recipes.labs import userlab
    if userlab.alive(plan.holder):
        return f"  (holder pid {plan.holder['pid']})"
    return "  (dead: its holder is gone; `invoke cleanup` removes it)"


@nsr_task(help={"host": "a host of a topology (h1, or its namespace nsr-SCOPE-h1) or an "
                        "nsrecipes namespace (nsr-a)",
                "scope": "which topology, when several have that host"})
def net_exec(c, host, scope=None, backend=None, explain=False):
    """Run a command in a host's network namespace (invoke net-exec HOST -- CMD ARGS).

    Like `ip netns exec`: /etc/netns/NAME/hosts is seen as /etc/hosts, so hosts reach each
    other by name. Without root it first joins the lab's user and mount namespaces (those
    of its holder), where the lab's hosts file is /etc/hosts. Exits with the command's status.
    """
    from recipes.labs import build as topo
    from recipes.labs import userlab
    from nsutil.rootless import require_namespaces
    argv = command_argv("net-exec", "HOST" if scope is None else f"HOST --scope {scope}")
    if not explain:
        require_namespaces("net-exec")
    with make_runner(backend, explain, keep=True, announce_owner=explain) as run:
        ns = topo.resolve_host(host, scope, rootless=run.rootless) if not explain else host
        userlab.enter_lab_of(run, ns)
        done = topo.exec_in(run, ns, argv, capture=False)
    if not explain and done.returncode:
        raise Exit(code=done.returncode)


@nsr_task(help={"scope": "which topology (default: the only one that is up)",
                "link": "the link, by its two hosts: h1:h2 (either order)",
                "delay": "added delay per direction, e.g. 20ms, 1.5ms, 1s (RTT grows by twice it)",
                "jitter": "random variation of the delay, e.g. 5ms (needs --delay)",
                "loss": "share of packets dropped, e.g. 1%, 0.5%",
                "rate": "bandwidth limit, e.g. 10mbit, 512kbit, 1gbit (tbf)",
                "corrupt": "share of packets with a bit flipped, e.g. 0.1%",
                "duplicate": "share of packets sent twice, e.g. 1%",
                "direction": "both (default: a qdisc on each end, as netem shapes only what "
                             "a device sends), a (only traffic A -> B) or b (B -> A)",
                "show": "print the impairments the kernel has (every link without --link)",
                "json": "with --show: print JSON",
                "reset": "remove the impairment of --link (both ends)"})
def net_link(c, scope=None, link=None, delay=None, jitter=None, loss=None, rate=None,
             corrupt=None, duplicate=None, direction="both", show=False, json=False,
             reset=False, backend=None, explain=False):
    """Impair a link of a topology: delay, jitter, loss, rate, corrupt, duplicate.

    tc netem (delay/jitter/loss/corrupt/duplicate) and tbf (rate) on both ends of the
    veth: `tc -n NS qdisc show dev DEV` shows them. A new setting replaces the old one.
    invoke net-link --scope S --link h1:h2 --delay 20ms --loss 1% --rate 10mbit;
    --show [--json]; --reset.
    """
    import json as _json
    from recipes.labs import impair
    from recipes.labs import build as topo
    from nsutil.errors import InvalidInput, NotFound
    from nsutil.rootless import require_namespaces
    given = dict(delay=delay, jitter=jitter, loss=loss, rate=rate, corrupt=corrupt,
                 duplicate=duplicate)
    imp = impair.parse({k: v for k, v in given.items() if v is not None}, "net-link")
    impair.check_direction(direction)
    if sum(map(bool, (imp, show, reset))) != 1:
        raise InvalidInput("net-link needs exactly one of: impairments (--delay ...), --show, "
                           "--reset", hint="e.g. invoke net-link --link h1:h2 --delay 20ms")
    ends = impair.parse_link_arg(link) if link or not show else None
    plans = topo.recorded(topo.check_scope(scope) if scope else None)
    if not plans or (len(plans) > 1 and not scope):
        raise (NotFound(f"no topology{f' with scope {scope}' if scope else ''} is up",
                        hint="build one: invoke net-topo --shape line --hosts 2") if not plans
               else InvalidInput(f"{len(plans)} topologies are up", hint="give --scope"))
    plan = plans[0]
    links = [impair.find_link(plan, *ends)] if ends else plan.links
    if not explain:
        impair.require_netem(imp)
        require_namespaces("net-link")
    with make_runner(backend, explain, keep=True) as run:
        topo.enter_lab(run, plan)
        if show:
            rows = impair.link_status(plan, links, run)
            if not explain:
                print(_json.dumps({"scope": plan.scope, "links": rows}, indent=2) if json
                      else impair.format_status(rows) or "(no links)")
            return
        run.heading(f"{impair.SECTION}: {links[0].a_host}:{links[0].b_host} in {plan.scope}")
        impair.apply_link(run, links[0], imp, direction)
        if not explain:
            links[0].impair = None if reset else imp if direction == "both" \
                else {"direction": direction, **imp}
            topo.save_record(plan)
            run.say(impair.format_status(impair.link_status(plan, links)))
