"""nsrecipes command line: `invoke --list` shows every task, `invoke TASK --help` its options.

This file is thin on purpose: it parses options, calls a recipe and prints. Every error
nsrecipes raises becomes one line on stderr with a hint and a non-zero exit status.
"""
from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
from typing import Any, Callable

from invoke import Exit, Task, task

from nsutil.errors import NsrError

COMMON_HELP = {
    "backend": "auto | shell | native: run steps with util-linux/iproute2 commands or with "
               "syscalls/netlink (default: $NSR_BACKEND, else auto = shell where installed)",
    "explain": "print the steps with the document section and the equivalent shell "
               "commands, and change nothing",
}


INTERRUPTED = "nsrecipes: interrupted; what this run made has been undone"

LESSON_HELP = {
    "shell": "open an interactive shell inside the demo's namespaces, where the document's "
             "program does (prompt [root@NewNamespace]#); exit or Ctrl-D goes on: the host's "
             "side, then everything undone. With stdin a pipe, the shell reads it (bash -s)",
    "step": "pause before each step, showing its title and command: Enter runs it, s opens "
            "a shell in the namespaces made so far, q undoes everything and quits",
}
#: which lesson options each kind of task gets (nsr_task(lesson=...))
LESSONS = {"shell": ("shell", "step"), "step": ("step",), None: ()}
#: --shell/--step of the task running now: set by nsr_task, read by _lesson()
_LESSON: dict[str, bool] = {}


def nsr_task(help: dict[str, str] | None = None, lesson: str | None = None,
             **kwargs: Any) -> Callable:
    """@task, plus: the common option help, and NsrError -> one line and a non-zero exit.

    ``lesson="shell"`` adds the options --shell and --step, ``lesson="step"`` only --step;
    they reach the Runner :func:`_runner` makes, and a hang-up or SIGTERM then undoes as
    Ctrl-C does (a closed terminal must leave nothing behind).
    """
    def decorate(fn: Callable) -> Any:
        params = inspect.signature(fn).parameters
        added = LESSONS[lesson]
        merged = {k: v for k, v in COMMON_HELP.items() if k in params}
        merged.update({k: LESSON_HELP[k] for k in added})
        merged.update(help or {})

        @functools.wraps(fn)
        def body(c, *args: Any, **kw: Any) -> Any:
            interrupted: list[int] = []
            main_pid = os.getpid()
            _LESSON.clear()
            _LESSON.update({k: bool(kw.pop(k, False)) for k in added})

            def on_sigint(signum: int, frame: Any) -> None:
                if os.getpid() != main_pid:
                    # a fork that has not exec'd yet (sh's or ours): die, never unwind into
                    # the parent's code; the parent sees the signal itself
                    os._exit(128 + signum)
                interrupted.append(signum)
                raise KeyboardInterrupt

            def on_hangup(signum: int, frame: Any) -> None:
                if os.getpid() != main_pid:
                    os._exit(128 + signum)
                interrupted.append(signum)
                os.kill(main_pid, signal.SIGINT)  # undone as Ctrl-C is (held back in forks)

            signal.signal(signal.SIGINT, on_sigint)
            if any(_LESSON.values()):
                for sig in (signal.SIGHUP, signal.SIGTERM):
                    signal.signal(sig, on_hangup)
            try:
                return fn(c, *args, **kw)
            except NsrError as exc:
                if interrupted:  # Ctrl-C also killed a child we were waiting for
                    raise Exit(INTERRUPTED, code=130) from None
                raise Exit(f"nsrecipes: {exc}", code=exc.exit_code) from None
            except BrokenPipeError:  # `invoke tour | head`: stop quietly, like coreutils
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise Exit(code=141) from None
            except KeyboardInterrupt:
                raise Exit(INTERRUPTED, code=130) from None

        if added:  # invoke reads the options from the signature
            sig = inspect.signature(fn)
            body.__signature__ = sig.replace(parameters=list(sig.parameters.values()) + [
                inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=False)
                for k in added])
        kwargs.setdefault("auto_shortflags", False)  # no -h clash with --help
        return task(body, help=merged, **kwargs)
    return decorate


def _lesson():
    """The Lesson for --shell/--step of the running task, or None."""
    if not any(_LESSON.values()):
        return None
    from nsutil.lesson import Lesson
    return Lesson(**_LESSON)


def _runner(backend: str | None, explain: bool, keep: bool = False):
    from nsutil.backend import Runner
    return Runner(backend=backend, explain=explain, keep=keep, lesson=_lesson())


def _root_demo(task_name: str, module: str, backend: str | None, explain: bool,
               **kwargs: Any) -> None:
    """Run ``recipes.MODULE.demo(run, **kwargs)`` for a demo that needs root (unless it only
    explains): import the recipe, check root (naming ``task_name``), run it in a Runner."""
    import importlib
    from nsutil.errors import require_root
    recipe = importlib.import_module(f"recipes.{module}")
    if not explain:
        require_root(task_name)
    with _runner(backend, explain) as run:
        recipe.demo(run, **kwargs)


# ==== core demos (issue 2) ==================================================================

@nsr_task(help={"draw": "also draw the tree of PID namespaces the demo made into FILE.svg: "
                        "each process with its PID as every level sees it (NSpid); the "
                        "folder must exist; --explain draws nothing"}, lesson="shell")
def pid_demo(c, draw=None, backend=None, explain=False):
    """PID namespace: the child is PID 1 and sees only its own processes; namespaces nest.

    With /proc mounted in a new mount namespace, `echo $$` prints 1 and `ps` lists only the
    child's processes, while the host sees its real PID; a nested PID namespace shows the
    tree: the parent sees the grandchild's processes, the grandchild none of its parent's.
    """
    from recipes import pid
    with _runner(backend, explain) as run:
        pid.demo(run, draw=draw)


@nsr_task(help={"draw": "also draw the mounts the demo made into FILE.svg: their peer "
                        "groups read from mountinfo (shared:N, master:N) and the arrows a "
                        "mount event propagates along; the folder must exist; --explain "
                        "draws nothing"}, lesson="shell")
def mount_demo(c, draw=None, backend=None, explain=False):
    """mount namespace: the five propagation states, and make-rprivate keeping mounts inside.

    Shared, slave, shared-and-slave, private and unbindable mounts in a scratch tree
    (/tmp/nsr-mount-*) and where mount events propagate; after `mount --make-rprivate /`
    inside, a mount made inside no longer reaches the host. Everything is undone.
    """
    from recipes import mount
    with _runner(backend, explain) as run:
        mount.demo(run, draw=draw)


@nsr_task(help={"hostname": "hostname set in the namespace that is joined and kept alive "
                            "(default NewNamespace)"}, lesson="step")
def api_demo(c, hostname="NewNamespace", backend=None, explain=False):
    """The four ways to use the namespace API: clone, /proc/PID/ns, setns, unshare.

    clone() a child into new namespaces; compare /proc/PID/ns links (same inode = same
    namespace) and keep a namespace alive with a bind mount after its last process exits;
    setns() into it by pid and by file; unshare() the calling process (a forked child).
    """
    from recipes import api
    with _runner(backend, explain) as run:
        api.demo(run, hostname=hostname)


@nsr_task(help={"hostname": "the hostname to set inside the new UTS namespace (default NewNamespace)",
                "command": "command to run inside, as one string split on spaces (default: hostname)"},
          lesson="shell")
def uts_demo(c, hostname="NewNamespace", command="hostname", backend=None, explain=False):
    """UTS namespace: a child in a new UTS namespace sets its hostname; the host's is unchanged."""
    _root_demo("uts-demo", "uts", backend, explain, hostname=hostname, command=command.split())


@nsr_task(lesson="shell")
def ipc_demo(c, backend=None, explain=False):
    """IPC namespace: a host message queue (ipcmk -Q) is invisible in a new IPC namespace."""
    _root_demo("ipc-demo", "ipc", backend, explain)


@nsr_task(help={"uid": "outside uid that uid 0 inside maps to (default 1000 as root, "
                       "your own uid otherwise)",
                "gid": "outside gid that gid 0 inside maps to (default: same as the uid)"},
          lesson="shell")
def user_demo(c, uid=None, gid=None, backend=None, explain=False):
    """User namespace: uid 0 inside maps to an outside uid; root inside, powerless outside.

    Works as root and as an unprivileged user.
    """
    from recipes import user
    with _runner(backend, explain) as run:
        user.demo(run, uid=uid, gid=gid)


# ==== the two namespaces the document predates (issue 11) ===================================

@nsr_task(lesson="shell")
def cgroupns_demo(c, backend=None, explain=False):
    """cgroup namespace (beyond the document, Linux 4.6+): inside, /proc/self/cgroup shows /.

    A holder moves into a scratch cgroup nsr-cgns-* on the v2 hierarchy, then unshares its
    cgroup namespace: the host reads 0::/nsrecipes/nsr-cgns-*, a process that joins cgroup
    and namespace 0::/, one that only joins the namespace (nsenter --cgroup) a path with
    ../ -- relative to the namespace's root. The cgroup is removed at the end.
    """
    _root_demo("cgroupns-demo", "cgroupns", backend, explain)


@nsr_task(help={"boottime": "CLOCK_BOOTTIME offset in whole SECONDS, 0 to 315360000 (ten "
                            "years): what uptime and /proc/uptime show inside (default 86400, "
                            "one day)",
                "monotonic": "CLOCK_MONOTONIC offset in whole SECONDS, 0 to 315360000 "
                             "(default 3600)"},
          lesson="shell")
def time_demo(c, boottime="86400", monotonic="3600", backend=None, explain=False):
    """time namespace (beyond the document, Linux 5.6+): uptime inside runs ahead.

    unshare --time --monotonic N --boottime N: /proc/PID/timens_offsets shows the offsets,
    /proc/uptime and uptime inside are --boottime seconds ahead of the host's, CLOCK_MONOTONIC
    --monotonic seconds, CLOCK_REALTIME (the wall clock) the same. Refused on older kernels.
    """
    from recipes import timens
    _root_demo("time-demo", "timens", backend, explain,
               boottime=timens.check_offset(boottime, "--boottime"),
               monotonic=timens.check_offset(monotonic, "--monotonic"))


# ==== network (issue 3) =====================================================================

@nsr_task(lesson="shell")
def net_demo(c, backend=None, explain=False):
    """Network namespace: a new network namespace has only lo; shown down, then up."""
    _root_demo("net-demo", "net", backend, explain)


@nsr_task(help={"name": "name of the first namespace and of its veth end (default nsr-a; "
                        "at most 15 bytes)",
                "peer": "name of the second namespace and of its veth end (default nsr-b)",
                "addr": "address of the first end, with prefix (default 10.200.0.1/24)",
                "peer_addr": "address of the second end, with prefix (default 10.200.0.2/24)",
                "delete": "remove the two namespaces (and the pair) made by an earlier run",
                "draw": "also draw the two namespaces and the veth pair joining them (names, "
                        "addresses, namespace inodes, as the kernel reports them) into "
                        "FILE.svg; the folder must exist; --explain draws nothing"},
          lesson="shell")
def net_veth(c, name="nsr-a", peer="nsr-b", addr="10.200.0.1/24", peer_addr="10.200.0.2/24",
             delete=False, draw=None, backend=None, explain=False):
    """Two network namespaces joined by a veth pair with addresses, proven by real packets.

    They stay (ip netns list shows them) until --delete. Idempotent: the same run again
    changes nothing; a name that exists otherwise fails with one line and touches nothing.
    """
    from recipes import draw as pictures, veth
    from nsutil.errors import InvalidInput, require_root
    if draw:
        if delete:
            raise InvalidInput("--draw with --delete: there is nothing left to draw",
                               hint="draw when making the pair: net-veth --draw FILE.svg")
        pictures.check_path(draw)
    if not explain:
        require_root("net-veth")
    with _runner(backend, explain, keep=True) as run:
        if delete:
            veth.veth_delete(run, name, peer)
        else:
            made = veth.veth_create(run, name, peer, addr, peer_addr)
            if draw and explain:
                print(f"(--explain: nothing is drawn; a real run draws {draw})")
            elif draw:
                seen = veth.veth_observed(run, name, peer, made["reachable"])
                run.say(f"drew the pair into {pictures.veth(seen, draw)}")


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
                        "draw the topology of --scope",
                "etc_hosts": "write /etc/netns/NS/hosts so hosts reach each other by name "
                             "(default on; skipped above 256 hosts)",
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
    """
    from recipes import topo
    from nsutil.errors import require_root
    if draw:
        from recipes import draw as pictures
        pictures.check_path(draw)
    if status or show:
        _show_topologies(topo, scope, status, json, draw)
        return
    if down:
        if not explain:
            require_root("net-topo --down")
        with _runner(backend, explain, keep=True) as run:
            from recipes import machines
            if not machines.down(run, scope) or not scope:
                topo.down(run, scope)
        return
    plan = topo.plan_file(file, scope, ipv6) if file else topo.plan_shape(
        shape, hosts, scope, ipv6=ipv6, depth=depth, fanout=fanout)
    if not explain:
        require_root("net-topo")
    if plan.machines:
        _net_topo_machines(plan, check, backend, explain)
        return
    with _runner(backend, explain, keep=True) as run:
        seconds, _ = topo.timed(topo.build, run, plan, etc_hosts=etc_hosts)
        run.say(f"built {len(plan.all_netns())} namespaces and {len(plan.links)} veth pairs "
                f"in {seconds:.2f} s (scope {plan.scope}); first hosts: "
                + ", ".join(f"{h}={plan.hosts[h]}" for h in list(plan.hosts)[:3]))
        run.say(f"try: invoke net-exec {next(iter(plan.hosts))} -- ip addr; "
                f"tear down: invoke net-topo --down --scope {plan.scope}")
        if draw and not explain:
            run.say(f"drew {pictures.topology(topo.show_data(plan), draw)}")
        if check:
            result = topo.check(run, plan)
            if result["failed"]:
                raise Exit(f"nsrecipes: check: {len(result['failed'])} of {result['pairs']} pairs "
                           "got no packets through or took a longer path (hint: see the list "
                           "above)", code=1)


def _net_topo_machines(plan: Any, check: bool, backend: str | None, explain: bool) -> None:
    """net-topo --file LAB.toml with a [machines] table: every machine's part through Fabric."""
    from recipes import machines, topo
    with _runner(backend, explain, keep=True) as run:
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
    from recipes import machines
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
                  f"{' '.join(plan.all_netns()[:4])}{' ...' if len(plan.all_netns()) > 4 else ''}")
        return
    if scope and not plans:
        from nsutil.errors import NotFound
        raise NotFound(f"no topology with scope {scope}", hint="see invoke net-topo --status")
    data = [topo.show_data(p) for p in plans]
    if draw:
        if len(data) != 1:
            from nsutil.errors import InvalidInput
            raise InvalidInput(f"--draw needs one topology, {len(data)} are up", hint="give --scope")
        from recipes import draw as pictures
        print(f"drew {pictures.topology(data[0], draw)}")
    elif as_json:
        print(js.dumps({"topologies": data}, indent=2))
    else:
        for d in data:
            print("\n".join(topo.show_lines(d)))
        if not data:
            print("no topologies are up")


@nsr_task(help={"host": "a host of a topology (h1, or its namespace nsr-SCOPE-h1) or an "
                        "nsrecipes namespace (nsr-a)",
                "scope": "which topology, when several have that host"})
def net_exec(c, host, scope=None, backend=None, explain=False):
    """Run a command in a host's network namespace (invoke net-exec HOST -- CMD ARGS).

    Like `ip netns exec`: /etc/netns/NAME/hosts is seen as /etc/hosts, so hosts reach each
    other by name. Exits with the command's status.
    """
    import shlex
    import sys
    from recipes import topo
    from nsutil.errors import InvalidInput, require_root
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else shlex.split(c.remainder)
    if not argv:
        raise InvalidInput("no command given", hint="invoke net-exec HOST -- CMD ARGS...")
    if not explain:
        require_root("net-exec")
    ns = topo.resolve_host(host, scope) if not explain else host
    with _runner(backend, explain, keep=True) as run:
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
    from recipes import impair, topo
    from nsutil.errors import InvalidInput, NotFound, require_root
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
        require_root("net-link")
    with _runner(backend, explain, keep=True) as run:
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

# ==== environments (issue 4) ================================================================

_ENV_NAME = "environment name; starts with nsr (e.g. nsr-web)"


def _env_name(name: str, task_name: str) -> str:
    """invoke hands an option given where NAME belongs (``env-rm --help``) over as NAME."""
    if name.startswith("-"):
        from nsutil.errors import InvalidInput
        raise InvalidInput(f"{task_name} needs an environment name before {name}",
                           hint=f"usage: invoke {task_name} NAME [options]; help: "
                                f"invoke --help {task_name}")
    return name


@nsr_task(help={"name": _ENV_NAME,
                "ns": "namespace types, comma-separated, of uts,ipc,pid,mnt,net,user,cgroup "
                      "(default uts,ipc,pid,mnt,net)",
                "hostname": "hostname inside (needs uts)",
                "domainname": "NIS domain name inside (needs uts)",
                "uid_map": "with user: uid_map ranges inside:outside:count, comma-separated "
                           "(default 0:<your uid>:1; 'none' leaves it for env-idmap); checked "
                           "first: no overlap inside or outside, at most 340 ranges",
                "gid_map": "with user: gid_map ranges like --uid-map (default: those of "
                           "--uid-map, else 0:<your gid>:1)",
                "machine": "create it on this machine of --file's [machines] table (through "
                           "Fabric; its records and cleanup are that machine's)",
                "file": "the lab file whose [machines] table names --machine"})
def env_create(c, name, ns="uts,ipc,pid,mnt,net", hostname=None, domainname=None,
               uid_map=None, gid_map=None, backend=None, explain=False, machine=None, file=None):
    """Create a named environment whose namespaces stay until env-rm.

    A holder keeps them alive (PID 1 of its PID namespace, reaping orphans); each is bound on
    /run/nsrecipes/NAME/TYPE as `unshare --TYPE=FILE` does, and the net namespace is
    visible to `ip netns` as NAME, with lo up.
    """
    from recipes import env
    name = _env_name(name, "env-create")
    if machine:
        from recipes import machines
        m = machines.machine_from_file(file, machine)
        machines.env_remote(m, ["env-create", name, "--ns", ns, "--backend", backend or "native"]
                            + (["--hostname", hostname] if hostname else []))
        print(f"environment {name} is ready on machine {machine} ({m['ssh']})")
        return
    with _runner(backend, explain, keep=True) as run:
        env.create(run, name, ns, hostname=hostname, domainname=domainname,
                   uid_map=uid_map, gid_map=gid_map)


@nsr_task(help={"name": _ENV_NAME, "hostname": "the new hostname inside",
                "domainname": "the new NIS domain name inside"})
def env_hostname(c, name, hostname=None, domainname=None, backend=None, explain=False):
    """Set the hostname and/or domain name inside an environment (its UTS namespace)."""
    from recipes import env
    name = _env_name(name, "env-hostname")
    with _runner(backend, explain, keep=True) as run:
        env.set_hostname(run, name, hostname, domainname)


@nsr_task(help={"name": _ENV_NAME,
                "peer": "the other end: 'host' (default) or another environment's name",
                "ifname": "name of the end inside NAME (default: the first free ethN)",
                "peer_ifname": "name of the other end (on the host: starts with nsr; default "
                               "nsr-v-XXXX; in an environment: the first free ethN)",
                "addr": "address with prefix for NAME's end, e.g. 10.200.0.1/24",
                "peer_addr": "address with prefix for the other end"})
def env_veth(c, name, peer="host", ifname=None, peer_ifname=None, addr=None, peer_addr=None,
             backend=None, explain=False):
    """Add a veth pair from an environment to the host or to another environment."""
    from recipes import env
    name = _env_name(name, "env-veth")
    with _runner(backend, explain, keep=True) as run:
        made = env.add_veth(run, name, peer, ifname=ifname, peer_ifname=peer_ifname,
                            addr=addr, peer_addr=peer_addr)
        run.say(f"{name}:{made['ifname']} <-> {made['peer']}:{made['peer_ifname']}")


@nsr_task(help={"name": _ENV_NAME, "target": "mount point inside (an existing directory)",
                "source": "bind this path (as seen inside) instead of mounting a tmpfs",
                "size": "tmpfs size: 16m, 1g, bytes or 50% (of RAM); 0 (no limit) is refused",
                "readonly": "read-only: the tmpfs, or the bind (with --recursive: every "
                            "mount below it too; needs Linux 5.12+ for mount_setattr)",
                "recursive": "with --source: bind the mounts below it too (mount --rbind)"})
def env_mount(c, name, target, source=None, size=None, readonly=False, recursive=False,
              backend=None, explain=False):
    """Mount a tmpfs (or, with --source, a bind mount) inside an environment only."""
    from recipes import env
    name = _env_name(name, "env-mount")
    with _runner(backend, explain, keep=True) as run:
        env.add_mount(run, name, target, source=source, size=size, readonly=readonly,
                      recursive=recursive)


@nsr_task(help={"name": _ENV_NAME})
def env_mq(c, name, backend=None, explain=False):
    """Make a System V message queue inside an environment (ipcmk -Q in its IPC namespace)."""
    from recipes import env
    name = _env_name(name, "env-mq")
    with _runner(backend, explain, keep=True) as run:
        qid = env.make_queue(run, name)
        run.say(f"Message queue id: {qid}")


@nsr_task(help={"name": _ENV_NAME,
                "uid_map": "uid_map ranges inside:outside:count, comma-separated",
                "gid_map": "gid_map ranges (default: the same as --uid-map)"})
def env_idmap(c, name, uid_map, gid_map=None, backend=None, explain=False):
    """Write the uid/gid maps of an environment's user namespace (once, as the kernel allows)."""
    from recipes import env
    name = _env_name(name, "env-idmap")
    with _runner(backend, explain, keep=True) as run:
        env.set_idmap(run, name, uid_map, gid_map)


@nsr_task(help={"name": _ENV_NAME,
                "cwd": "working directory inside (default: the environment's)",
                "machine": "run it in the environment on this machine of --file's [machines]",
                "file": "the lab file whose [machines] table names --machine"})
def env_exec(c, name, cwd=None, backend=None, explain=False, machine=None, file=None):
    """Run a command in all of an environment's namespaces: env-exec NAME -- CMD ARGS...

    User namespace first, then the rest; the environment's root and working directory.
    Without a command, an interactive shell on this terminal. The exit code is passed
    through.
    """
    import sys
    from recipes import env
    name = _env_name(name, "env-exec")
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    if machine:
        from recipes import machines
        s = machines.env_remote(machines.machine_from_file(file, machine),
                                ["env-exec", name, "--", *argv], passthrough=sys.stdout)
        if s.result.exited:
            raise Exit(code=s.result.exited)
        return
    with _runner(backend, explain, keep=True) as run:
        done = env.exec_in(run, name, argv, capture=False, cwd=cwd)
    if done.returncode:
        raise Exit(code=done.returncode)


@nsr_task(help={"json": "print JSON ({\"environments\": [...]}) instead of a table"})
def env_ls(c, json=False):
    """List environments like lsns: holder pid, state, processes, namespaces with inodes.

    Columns: name, holder pid and whether it is alive, process count, when it was created,
    and each namespace with its inode number (as `lsns` and `readlink /proc/PID/ns/*` show).
    """
    from recipes import env
    rows = env.list_envs()
    print(env.format_json(rows) if json else env.format_table(rows))


@nsr_task(help={"name": _ENV_NAME})
def env_rm(c, name, backend=None, explain=False):
    """Remove an environment: its processes, namespace binds, links, netns name and record.

    Works on dead and half-made environments too.
    """
    from recipes import env
    name = _env_name(name, "env-rm")
    with _runner(backend, explain, keep=True) as run:
        env.remove(run, name)
        run.say(f"removed environment {name}")


# ==== cgroups, copy-on-write, container (issue 5) ===========================================

@nsr_task(help={"memory": "memory limit for the OOM part (default 32M)",
                "pids": "pids limit the fork bomb runs into (default 32)",
                "cpus": "CPU quota for the busy loop, in CPUs (default 0.5)",
                "seconds": "how long the busy loop spins (default 1.0)"}, lesson="step")
def cgroup_demo(c, memory="32M", pids="32", cpus="0.5", seconds="1.0", backend=None,
                explain=False):
    """cgroups limit resources: an OOM kill, a fork bomb stopped, a CPU quota measured.

    Three cgroups named nsr-cg-*: a child allocating past the memory limit is killed by the
    OOM killer (memory.oom_control / memory.events count it); a bounded fork bomb stops at
    pids.max; a busy loop gets about quota/period of a CPU. v1, v2 and hybrid hosts.
    """
    from nsutil.limits import parse_number
    seconds = parse_number(seconds, "--seconds", kind=float, minimum=0.1, maximum=60,
                           example="1.0")
    _root_demo("cgroup-demo", "cgroup", backend, explain,
               memory=memory, pids=pids, cpus=cpus, seconds=seconds)


@nsr_task(help={"size_mb": "size of the big file in the base layer, MiB (default 8)"},
          lesson="step")
def cow_demo(c, size_mb="8", backend=None, explain=False):
    """Copy-on-write with overlayfs: copy-up, whiteouts, and the disk two containers share.

    Two lower layers under /tmp/nsr-cow-*, two overlay mounts over them: a write lands in
    upper and the lower is unchanged, a delete leaves a whiteout (char device 0/0), and the
    disk used by two containers sharing the layers is compared with two full copies.
    """
    from nsutil.limits import parse_number
    _root_demo("cow-demo", "cow", backend, explain,
               size_mb=parse_number(size_mb, "--size-mb", minimum=1, maximum=1024, example="8"))


@nsr_task(help={"rootfs": "root filesystem directory (default: a cached busybox rootfs, "
                          "built on first use)",
                "memory": "memory limit, e.g. 64M (no limit by default)",
                "pids": "most processes the container may have, PID 1 and the command "
                        "included, e.g. 64 (at least 2; max: no limit)",
                "cpus": "CPU quota in CPUs, e.g. 0.5",
                "hostname": "hostname inside (default: the container's name)",
                "domainname": "NIS domain name inside (its own UTS namespace)",
                "net": "give the container its own network namespace (only lo, up)",
                "rm": "remove the container's directory and cgroup when it exits "
                      "(default; --no-rm keeps the directory with what it wrote)",
                "name": "container name, nsr-c-... (default: random)",
                "timeout": "kill the container after SECONDS (e.g. 10 or 0.5); exit status 137",
                "volume": "SRC:DST[:ro] bind the host's SRC, with its submounts, on DST; ro: "
                          "all of it read-only (Linux 5.12+); repeatable",
                "tmpfs": "DST[:size=64m,mode=1777,ro] an empty tmpfs on DST; repeatable",
                "read_only": "mount the rootfs read-only (writes fail with EROFS; volumes, "
                             "tmpfs, /dev keep their own)",
                "env": "KEY=VALUE in the command's environment; repeatable",
                "workdir": "the command's working directory (made if missing)",
                "user": "UID[:GID] the command runs as (gid: from the rootfs's /etc/passwd, "
                        "else the uid); no supplementary groups"},
          iterable=["volume", "tmpfs", "env"])
def container_run(c, rootfs=None, memory=None, pids=None, cpus=None, hostname=None, net=False,
                  rm=True, name=None, timeout=None, volume=None, tmpfs=None, read_only=False,
                  domainname=None, env=None, workdir=None, user=None, backend=None,
                  explain=False):
    """Run a command in a container: invoke container-run [OPTIONS] -- CMD ARGS...

    New mount, UTS, IPC, PID and cgroup namespaces (and network with --net), a cgroup with
    the limits, an overlay over the rootfs, pivot_root with the old root detached, /proc and
    a minimal /dev. PID 1 reaps zombies and forwards signals; the exit status is the
    command's (128+N for signal N; 127 if it is not in the rootfs; 137 past --timeout).
    """
    import shlex
    from recipes import container
    from nsutil.errors import require_root
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else shlex.split(c.remainder)
    if not explain:
        require_root("container-run")
    with _runner(backend, explain) as run:
        code = container.run_container(
            run, argv, rootfs=rootfs, memory=memory, pids=pids, cpus=cpus, hostname=hostname,
            net=net, rm=rm, name=name, timeout=timeout, volumes=volume or (), tmpfs=tmpfs or (),
            read_only=read_only, domainname=domainname, env=env or (), workdir=workdir,
            user=user)
    if code:
        raise Exit(code=code)


@nsr_task(help={"directory": "where to build it (a new or empty directory)"})
def rootfs_busybox(c, directory, backend=None, explain=False):
    """Build a busybox root filesystem in DIRECTORY (static busybox + applet links + /etc)."""
    from recipes import rootfs
    from nsutil.errors import require_root
    if not explain:
        require_root("rootfs-busybox")
    with _runner(backend, explain, keep=True) as run:
        path = rootfs.build(run, directory)
        run.say(f"built {path}: try `invoke container-run --rootfs {path} -- sh`")

# ==== tour, doctor, cleanup ================================================================

@nsr_task(lesson="step")
def tour(c, backend=None, explain=False):
    """All demos in the document's order, with headings: the main job. Needs root."""
    from recipes import tour as t
    from nsutil.errors import require_root
    if not explain:
        require_root("tour")
    t.tour(backend=backend, explain=explain, lesson=_lesson())


@nsr_task(help={"dry_run": "only list what would be removed and what is kept (and why); "
                           "remove nothing",
                "all": "remove everything nsrecipes made, in use or not: live environments, "
                       "net-veth pairs, topologies, running containers too (listed first)"})
def cleanup(c, dry_run=False, all_=False):
    """Remove what nsrecipes left broken or orphaned; keep what is in use (--all: everything).

    Removed: environments whose holder died or whose creator died half-way, half-built
    net-veth pairs and topologies, containers whose tool is gone, nsr cgroups with no process,
    nsr-cow-*/nsr-user-* scratch directories. Kept: live environments, complete pairs and
    topologies, running containers. A network namespace no nsrecipes record names is never
    touched, whatever its name.
    """
    from recipes import cleanup as cl
    from nsutil.errors import require_root
    require_root("cleanup")
    plan = cl.sweep(everything=all_)
    for line in cl.plan_lines(plan, dry_run):
        print(line, flush=True)
    removed, failed = cl.remove_all(dry_run=dry_run, items=plan.remove)
    for item, exc in failed:
        print(f"FAILED {item.kind} {item.name}: {exc}")
    print(cl.summary(removed, failed, plan.kept, dry_run))
    if failed:
        raise Exit(f"nsrecipes: cleanup: {len(failed)} could not be removed (hint: see above)",
                   code=1)

@nsr_task()
def doctor(c):
    """Check the kernel and host: namespaces, user-ns limits, cgroups, overlayfs, tools, root.

    Prints an ok/missing table with hints; exits non-zero if something the demos need is missing.
    """
    from recipes import doctor as doc
    checks = doc.run_checks()
    print(doc.format_table(checks))
    missing = [ch.name for ch in checks if ch.required and not ch.ok]
    if missing:
        raise Exit(f"nsrecipes: doctor: missing {', '.join(missing)} (hint: see the table above)",
                   code=1)


def _route_task_help(argv: list[str]) -> None:
    """``invoke TASK ARG --help`` -> ``invoke --help TASK``.

    Invoke would take ``--help`` as the value of a task's positional argument (``env-rm
    --help`` would try to remove an environment called "--help"); route it to the help.
    """
    if not argv or not os.path.basename(argv[0]).startswith("inv"):
        return
    args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    names = {t.name.replace("_", "-") for t in globals().values() if isinstance(t, Task)}
    given = [i for i, a in enumerate(args) if a.replace("_", "-") in names]
    if given and any(a in ("--help", "-h") for a in args[given[0] + 1:]):
        os.execv(argv[0], [argv[0], "--help", args[given[0]]])


_route_task_help(sys.argv)
