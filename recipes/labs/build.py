"""Topologies of network namespaces: the document's veth pair, taken to many hosts.

Document section "Network namespace": namespaces are joined by veth pairs, and a Linux bridge
joins many. A *plan* (:class:`Plan`) says which namespaces, links and addresses there are:

* ``star``: every host hangs off a Linux bridge in a hub namespace (one subnet, all pairs
  reach each other);
* ``line`` / ``ring``: host i is linked to host i+1 (and the last to the first), a /30 per
  link (neighbours reach each other);
* ``--file lab.toml``: hosts and links, optional addresses, read with :mod:`tomllib`::

      subnet = "10.210.0.0/16"        # optional: pool for automatic /30 link subnets
      hosts = ["r1", "web", "db"]      # optional: hosts are also taken from the links
      [[links]]
      a = "web"
      b = "r1"
      a_addr = "10.1.0.1/24"          # optional (both or neither)
      b_addr = "10.1.0.2/24"
      [[links]]
      a = "db"
      b = "r1"

Names: netns ``nsr-SCOPE-HOST``, hub ``nsr-SCOPE-hub``, bridge ``nsr-SCOPE-br``; the interface
in X that leads to Y is named after Y's namespace. ``SCOPE`` is 4 random hex digits per run,
so two topologies built at once never collide; every name fits 15 bytes.

Building: the shell backend runs one ``ip -batch`` for the namespaces and one ``ip -batch``
inside each namespace (``nsenter --net``) for its links (veth peers made in place), addresses
and routes, those independent of each other side by side (:mod:`recipes.labs.batches`); the
native backend does it all from this process over netlink (:mod:`nsutil.netlink`): each
namespace is made with an rtnetlink socket opened inside it, every veth is created in place
in both namespaces (already enslaved and up on the hub side), and each namespace's requests
go in one buffer.
Lab links carry IPv4 only unless asked (``ipv6=True``): see :data:`IPV6_NOTE`.
Teardown deletes the namespaces (their veths go with them). ``/etc/netns/NAME/hosts`` lets
``ip netns exec`` (and :func:`exec_in`) reach the other hosts by name.
"""
from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

from nsutil import process, netlink as nl
from nsutil import state
from nsutil.limits import raise_nofile
from nsutil.backend import Runner, Step
from nsutil.errors import Conflict, InvalidInput, NotFound, NsrError, SyscallError
from nsutil.names import check_name

from recipes import net
from recipes.labs import batches
from recipes.labs import routes as toporoute
from recipes.labs import userlab
# the plans (re-exported: topo.plan_shape, topo.Plan, topo.MAX_HOSTS ... as before)
from recipes.net import exec_argv  # noqa: F401
from recipes.labs.labfile import plan_file  # noqa: F401
from recipes.labs.show import check, check_limit, show_data, show_lines, uses_native  # noqa: F401
from recipes.labs.plan import (IPV6_NOTE, LINK_POOL, MAX_HOSTS, PORTS_PER_BRIDGE, SHAPES,  # noqa: F401
                               STAR_SUBNET, Link, Plan, check_hosts, check_scope)
from recipes.labs.shapes import plan_shape  # noqa: F401 (public API: topo.plan_shape)

SECTION = "Network namespace (topologies)"
ETC_HOSTS_MAX = 256       #: above this many hosts /etc/netns hosts files are skipped
VETH_CHUNK = 32           #: veths a request buffer (up to four messages each; Rtnl sends 128 a buffer)


# --- records --------------------------------------------------------------------------------

def record_path(scope: str) -> str:
    return os.path.join(state.state_dir("net", create=False), f"topo-{scope}.json")


def save_record(plan: Plan) -> None:
    """Write (or rewrite, e.g. after ``net-link`` changed an impairment) the record of ``plan``."""
    net.save_record(record_path(plan.scope), {**plan.to_json(), "creator": net.creator()})


def recorded(scope: str | None = None) -> list[Plan]:
    """Topologies recorded as built (all, or the one with ``scope``)."""
    return [Plan.from_json(rec) for rec in net.records("topo-")
            if scope is None or rec.get("scope") == scope]


# --- building -------------------------------------------------------------------------------

def build(run: Runner, plan: Plan, *, etc_hosts: bool = True) -> Plan:
    """Steps: make every namespace, link and address of ``plan``; undo: tear it all down.

    The record is written first, so even a run killed half-way is found by ``cleanup``
    (whose names carry the prefix anyway)."""
    run.heading(f"{SECTION}: build {plan.shape} {plan.scope} "
                f"({len(plan.hosts)} hosts, {len(plan.links)} links)")
    for ns in plan.all_netns():
        if not run.explain and not run.rootless and nl.netns_exists(ns):
            raise Conflict(f"network namespace {ns} exists already",
                           hint=f"tear it down first: invoke net-topo --down --scope {plan.scope}")
    if not run.explain:
        save_record(plan)
    run.defer(teardown_step(plan, rootless=run.rootless))
    if run.rootless:
        start_lab(run, plan, etc_hosts=etc_hosts)
    if uses_native(run) and not run.explain:
        run.run(Step(f"build {len(plan.all_netns())} namespaces and {len(plan.links)} veth pairs "
                     "over netlink (one process, in-place peers, one buffer per namespace)",
                     native=lambda: build_native(plan), argv=["ip", "-batch", "-"],
                     display=batches.native_display(plan)))
    else:
        _build_shell(run, plan)
    impaired = [ln for ln in plan.links if ln.impair]
    if impaired:
        from recipes.labs import impair
        for ln in impaired:
            impair.apply_link(run, ln, ln.impair)
    if etc_hosts and not run.explain and not run.rootless:
        write_hosts_files(run, plan)
    if plan.holder is not None:
        userlab.mark_ready(run, record_path(plan.scope), plan.holder)
    return plan


def start_lab(run: Runner, plan: Plan, *, etc_hosts: bool = True) -> None:
    """Steps without root (:func:`recipes.labs.userlab.start_lab`): the lab's hosts file
    (up to ETC_HOSTS_MAX hosts), its holder, this process joined to it, names pinned."""
    if etc_hosts and len(plan.hosts) > ETC_HOSTS_MAX:
        run.say(f"(no hosts file above {ETC_HOSTS_MAX} hosts)")
    entries = lab_hosts(plan) if etc_hosts and len(plan.hosts) <= ETC_HOSTS_MAX else None
    plan.holder = userlab.start_lab(run, record_path(plan.scope), entries, f"nsr-lab-{plan.scope}")


def lab_hosts(plan: Plan) -> list[tuple[str, str]]:
    """Every address of every host with its names (short and netns), for one hosts file for
    the whole lab (root writes one per host, naming the hosts on its segments)."""
    return [(str(ipaddress.ip_interface(c).ip), f"{h} {plan.hosts[h]}")
            for seg in plan.segments for h, c in seg]


def enter_lab(run: Runner, plan: Plan) -> None:
    """Without root: join the lab of ``plan`` (its holder's namespaces) before anything in
    it is run or looked at; as root, nothing to do."""
    if run.rootless:
        userlab.enter(run, plan.holder, f"topology {plan.scope}")


def _build_shell(run: Runner, plan: Plan) -> None:
    """Steps: the shell form of a build (:mod:`recipes.labs.batches`): the namespaces in one
    ``ip -batch``, then one ``ip -batch`` inside each namespace, round after round, those of a
    round side by side up to one per CPU; then the sysctls."""
    lines = batches.root_lines(plan)
    def shell(argv: list[str]) -> None:
        if not nl.ip_would_reshare_run_dir():
            from nsutil import shell as nshell
            nshell.run(argv, input="\n".join(lines) + "\n")
            return
        for ns in plan.all_netns():     # a /run/netns mount of someone else's: left as it is
            nl.create_netns(ns)

    run.run(Step(f"create {len(plan.all_netns())} namespaces (one ip -batch)",
                 argv=["ip", "-batch", "-"], input="\n".join(lines) + "\n", shell=shell,
                 display=batches.display(lines), native=lambda: build_native(plan)))
    for together in batches.rounds(plan):
        steps = [Step(title, argv=batches.enter_argv(ns), input="\n".join(cmds) + "\n",
                      display=batches.display(cmds, ns), native=lambda: None)
                 for ns, cmds, title in together]
        run.run_together(steps)
    sysctls = batches.sysctl_lines(plan)
    if sysctls:
        run.run(Step(f"forward IPv4 in {len(plan.routers)} routers, TTL 255 in the lab "
                     "(sysctls inside each namespace only)", argv=["ip", "-batch", "-"],
                     input="\n".join(sysctls) + "\n", display=batches.display(sysctls),
                     native=lambda: None))


def build_native(plan: Plan) -> None:
    """Make ``plan`` over netlink from this process (the caller undoes on failure).

    1. each namespace with an rtnetlink socket opened inside it;
    2. the bridge in the hub; every veth created from its a-end namespace's socket, the a
       end in place (enslaved to the bridge and up, with its address), the b end placed in
       its namespace with ``IFLA_NET_NS_FD`` -- never the other way round: kernels before
       6.14 look the new device's ifindex up in the *sender's* namespace and answer EEXIST
       when some other link there has it (see :func:`recipes.labs.batches.create_lines`);
    3. per namespace, one buffer with the b-side "up" and addresses and ``lo up``.
    The kernel has done each buffer when send() returns; acks are read after all sends.
    (Making the namespaces in a second thread while wiring up the first ones was measured
    here too: no faster on two CPUs, as both sides mostly wait for the same kernel locks.)
    """
    all_ns = plan.all_netns()
    raise_nofile(len(all_ns) + 2 * VETH_CHUNK + 256)
    socks: dict[str, nl.Rtnl] = {}
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    by_ns = {ns: h for h, ns in plan.nodes().items()}
    try:
        for ns in all_ns:
            sysctls = toporoute.sysctls(plan, by_ns[ns]) if ns in by_ns else {}
            socks[ns] = nl.Rtnl(nl.create_netns(ns, open_socket=True, home=home,  # type: ignore[arg-type]
                                                sysctls=sysctls))
        for ns, bridges in plan.bridges.items():
            for i, br in enumerate(bridges, 2):
                socks[ns].new_link(nl.link_body(br, index=i, kind="bridge"),
                                   f"ip -n {ns} link add name {br} type bridge")
                _up(socks[ns], plan, ns, i, br)
                gateway = plan.bridge_addrs.get(ns, {}).get(br)
                if gateway:
                    socks[ns].new_addr(i, gateway, f"ip -n {ns} addr add {gateway} dev {br}")
            socks[ns].flush()
        by_a: dict[str, list[Link]] = {}
        for ln in plan.links:
            by_a.setdefault(ln.a_ns, []).append(ln)
        for ns, links in by_a.items():
            for start in range(0, len(links), VETH_CHUNK):
                _add_veths(socks[ns], plan, ns, links[start:start + VETH_CHUNK])
        for ln in plan.links:
            r = socks[ln.b_ns]
            _up(r, plan, ln.b_ns, ln.b_index, ln.b_if, ln.b_master_index)
            if ln.b_addr:
                r.new_addr(ln.b_index, ln.b_addr, f"ip -n {ln.b_ns} addr add {ln.b_addr} dev {ln.b_if}")
        for ns, r in socks.items():
            r.set_link(nl.link_body(index=1, up=True), f"ip -n {ns} link set dev lo up")
        _collect([(r, r.send()) for r in socks.values()])
        nodes = plan.nodes()
        for name, routes in plan.routes.items():
            ns = nodes[name]
            for dst, via in routes:
                socks[ns].new_route(dst, via, f"ip -n {ns} route add {dst} via {via}")
        _collect([(r, r.send()) for r in socks.values()])
    finally:
        os.close(home)
        for r in socks.values():
            r.close()


def _up(r: nl.Rtnl, plan: Plan, ns: str, index: int, dev: str, master: int = 0) -> None:
    """Queue: no IPv6 link-local on ``dev`` (unless the plan wants IPv6), then enslave it to
    ``master`` (an ifindex, 0 for none) and bring it up -- two messages, in that order.

    (Setting the namespace's ``net.ipv6.conf.default.addr_gen_mode`` instead costs one
    /proc/sys write per namespace, and that path lookup grows with the number of
    namespaces: every namespace's sysctl dentries share the same dcache hash chains.
    Measured here: 0.2 ms a write with 1000 namespaces, 3.5 ms with 10,000.)"""
    if not plan.ipv6:
        r.set_link(nl.link_body(index=index, addrgenmode_none=True),
                   f"ip -n {ns} link set dev {dev} addrgenmode none")
    r.set_link(nl.link_body(index=index, up=True, master=master or None),
               f"ip -n {ns} link set dev {dev}{' master ' + str(master) if master else ''} up")


def _add_veths(r: nl.Rtnl, plan: Plan, ns: str, links: list[Link]) -> None:
    """Create ``links`` from ``ns``'s socket: each veth's a end in place, its b end put in
    its namespace by an fd open only while the kernel handles the request (a 10,000-host lab
    would otherwise need 20,000 open files, and the hard limit here is 20,000); the acks are
    read before the next chunk, so they never overflow the socket's receive buffer."""
    fds = {}
    try:
        for ln in links:
            if ln.b_ns not in fds:
                fds[ln.b_ns] = nl.open_netns(ln.b_ns)
            peer = nl.link_body(ln.b_if, index=ln.b_index, netns_fd=fds[ln.b_ns])
            r.new_link(nl.link_body(ln.a_if, index=ln.a_index, kind="veth", peer=peer),
                       f"ip -n {ns} link add name {ln.a_if} type veth peer name {ln.b_if} "
                       f"netns {ln.b_ns}")
            _up(r, plan, ns, ln.a_index, ln.a_if, ln.a_master_index)
            if ln.a_addr:
                r.new_addr(ln.a_index, ln.a_addr, f"ip -n {ns} addr add {ln.a_addr} dev {ln.a_if}")
        waiting = r.send()
    finally:
        for fd in fds.values():
            os.close(fd)
    _collect([(r, waiting)])


def _collect(waits: list) -> None:
    errors = []
    for r, w in waits:
        errors += r.collect(w)
    if errors:
        raise errors[0]


def write_hosts_files(run: Runner, plan: Plan, segments: list | None = None,
                      names: dict[str, str] | None = None) -> None:
    """Step: /etc/netns/NS/hosts for every host, naming the hosts it reaches (short name and
    netns name). Skipped above ETC_HOSTS_MAX hosts (a million lines of /etc). ``segments``
    and ``names`` (host -> netns): where they are more than ``plan``'s (a machine's part of
    a lab across machines: the segments its hosts share with other machines' hosts)."""
    if len(plan.hosts) > ETC_HOSTS_MAX:
        run.say(f"(no /etc/netns hosts files above {ETC_HOSTS_MAX} hosts)")
        return
    segments = plan.segments if segments is None else segments
    names = plan.hosts if names is None else names

    def write() -> None:
        kept = []
        for host, ns in plan.hosts.items():
            entries: list[tuple[str, str]] = []
            for seg in segments:
                if any(h == host for h, _ in seg):
                    entries += [(str(ipaddress.ip_interface(c).ip), f"{h} {names[h]}")
                                for h, c in seg]
            if net.write_etc_hosts(ns, entries) is None:
                kept.append(ns)
        if kept:
            run.say(f"kept /etc/netns/{kept[0]}/hosts as it is (not nsrecipes')"
                    + (f" and {len(kept) - 1} more" if len(kept) > 1 else "")
                    + ": those hosts reach the others by address only")

    run.run(Step(f"write /etc/netns/NS/hosts for {len(plan.hosts)} hosts (ip netns exec "
                 "mounts them over /etc/hosts)", native=write, shell=lambda _a: write(),
                 display=f"mkdir -p /etc/netns/{next(iter(plan.hosts.values()))}; "
                         "printf 'ADDR HOST\\n...' > /etc/netns/NS/hosts  # for each host"))


def teardown_step(plan: Plan, rootless: bool = False) -> Step:
    """The step that deletes every namespace of ``plan`` (their veths go with them), their
    /etc/netns entries and the record; what is already gone is skipped. Without root
    (``rootless``, or a plan with a holder): kill the holder, which takes every namespace
    of the lab with it, and drop the record."""
    if plan.holder is not None or rootless:
        return userlab.teardown_step(record_path(plan.scope), plan.scope,
                                     len(plan.all_netns()), lambda: plan.holder)
    def native() -> None:
        for ns in plan.all_netns():
            nl.delete_netns(ns)
            net.remove_etc_netns(ns)
        net.drop_record(record_path(plan.scope))

    def shell(argv: list[str]) -> None:
        present = [ns for ns in plan.all_netns() if nl.netns_exists(ns)]
        if present:
            from nsutil import shell as nshell
            nshell.run(argv, input="".join(f"netns del {ns}\n" for ns in present))
        for ns in plan.all_netns():
            net.remove_etc_netns(ns)
        net.drop_record(record_path(plan.scope))

    lines = [f"netns del {ns}" for ns in plan.all_netns()]
    return Step(f"tear down {plan.scope}: delete {len(lines)} namespaces (their veths go with "
                "them) and /etc/netns entries", argv=["ip", "-batch", "-"], native=native,
                shell=shell, display=batches.display(lines))


def down(run: Runner, scope: str | None = None) -> list[str]:
    """Tear down the recorded topology ``scope`` (all recorded ones if None); returns scopes."""
    plans = recorded(check_scope(scope) if scope else None)
    for plan in plans:
        run.heading(f"{SECTION}: tear down {plan.scope} ({len(plan.hosts)} hosts)")
        run.run(teardown_step(plan))
    if not plans:     # idempotent, as `runc delete --force`: gone already is done
        run.say(f"nothing to tear down{f': no topology with scope {scope}' if scope else ''}")
    return [p.scope for p in plans]


# --- checking and running -------------------------------------------------------------------

def resolve_host(host: str, scope: str | None = None, rootless: bool = False) -> str:
    """The netns for ``host``: a netns name made by nsrecipes, or a host short name of a
    recorded topology (``--scope`` picks one when several have it). ``rootless``: the
    user's labs are not on the host, their records say which names they have."""
    check_name(host, what="host", max_bytes=64)
    plans = recorded(check_scope(scope) if scope else None)
    matches = sorted({p.hosts[host] for p in plans if host in p.hosts})
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidInput(f"host {host!r} is in several topologies: {', '.join(matches)}",
                           hint="give --scope, or the namespace name")
    if rootless and host in net.recorded_netns():
        return host     # a net-veth end, pinned in its own lab (enter_lab_of joins it)
    if nl.netns_exists(host) and (host.startswith("nsr") or host in net.recorded_netns()):
        return host
    raise NotFound(f"no host or nsrecipes namespace called {host!r}",
                   hint="see `ip netns list` or `invoke net-topo --status`")


def _enter_like_ip_netns_exec(ns: str) -> None:
    """In a forked child: what ``ip netns exec`` does -- a new mount namespace (slave of
    the host's), /etc/netns/NS/* bind-mounted over /etc, a /sys for the netns, then setns."""
    from nsutil import syscalls as sc
    fd = nl.open_netns(ns)
    try:
        sc.setns(fd, sc.CLONE_NEWNET)
    finally:
        os.close(fd)
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount("", "/", "none", sc.MS_SLAVE | sc.MS_REC)
    try:
        try:
            sc.umount("/sys", sc.MNT_DETACH)
            flags = 0
        except SyscallError:   # as ip: one we may not unmount (a lab without root's) is covered
            flags = sc.MS_RDONLY if os.statvfs("/sys").f_flag & os.ST_RDONLY else 0
        sc.mount(ns, "/sys", "sysfs", flags)
    except SyscallError:
        pass  # as ip: keep the old /sys if sysfs cannot be mounted
    etc = os.path.join(net.ETC_NETNS, ns)
    if os.path.isdir(etc):
        for entry in os.listdir(etc):
            target = os.path.join("/etc", entry)
            if os.path.exists(target):
                sc.mount(os.path.join(etc, entry), target, "none", sc.MS_BIND)


def exec_in(run: Runner, ns: str, argv: Sequence[str], *, capture: bool = True) -> "object":
    """Step: run ``argv`` in netns ``ns`` as ``ip netns exec`` does (its /etc/netns files
    over /etc); returns a :class:`nsutil.process.Completed` (output captured unless not)."""
    from nsutil.process import Completed
    if not argv:
        raise InvalidInput("no command given", hint="net-exec HOST -- CMD ARGS...")

    def go(full: list[str], preexec=None) -> Completed:
        try:
            proc = process.run_foreground(full, capture=capture, preexec_fn=preexec)
        except FileNotFoundError:
            from nsutil.errors import ToolMissing
            from nsutil.programs import package_for
            raise ToolMissing(full[0], package_for(full[0])) from None
        except subprocess.SubprocessError as exc:
            raise NsrError(f"cannot enter netns {ns} to run {argv[0]}: {exc}",
                           hint="does it exist? (ip netns list)") from None
        return Completed(list(full), proc.returncode, (proc.stdout or b"").decode(errors="replace"),
                         (proc.stderr or b"").decode(errors="replace"))

    return run.run(Step(f"run {' '.join(argv)!r} in {ns}", argv=exec_argv(ns, argv),
                        shell=lambda a: go(a),
                        native=lambda: go(list(argv), lambda: _enter_like_ip_netns_exec(ns)),
                        placeholder=Completed(exec_argv(ns, argv), 0, "")))


# --- the Python API -------------------------------------------------------------------------

class Topology:
    """A built topology: ``net.run("h1", ["ping", "-c1", "h2"])``, ``net.addr("h2")``,
    ``net.check()``, ``net.netns("h1")``."""

    def __init__(self, run: Runner, plan: Plan):
        self.runner, self.plan = run, plan

    @property
    def hosts(self) -> list[str]:
        """Short host names."""
        return list(self.plan.hosts)

    def netns(self, host: str) -> str:
        """The netns name of ``host``."""
        return self.plan.netns(host)

    def addr(self, host: str) -> str:
        """The first address of ``host`` (without prefix)."""
        return str(ipaddress.ip_interface(self.plan.addrs()[host][0]).ip)

    def run(self, host: str, argv: Sequence[str], check: bool = False):
        """Run a command in ``host``'s namespace; returns Completed (``check`` raises on failure)."""
        done = exec_in(self.runner, self.netns(host), argv)
        return done.check() if check else done

    def check(self, limit: int | None = None) -> dict:
        """Connectivity with real packets (see :func:`check`)."""
        return check(self.runner, self.plan, limit)


def impair_links(plan: Plan, links: dict | None = None, impair: dict | None = None) -> Plan:
    """Put impairments on a plan's links before it is built: ``impair`` on every link,
    ``links={("h1", "h2"): {"delay": "50ms", "loss": "2%"}}`` (or ``"h1:h2"`` keys) on
    those; checked with :func:`recipes.labs.impair.parse` (an unknown link is refused)."""
    from recipes.labs import impair as imp
    if impair:
        every = imp.parse(impair, "impair (every link)")
        for ln in plan.links:
            ln.impair = every
    for key, spec in (links or {}).items():
        a, b = key.split(":", 1) if isinstance(key, str) else key
        imp.find_link(plan, a, b).impair = imp.parse(spec, f"link {a}-{b}")
    return plan


@contextmanager
def topology(shape: str = "star", hosts: int = 3, *, file: str | None = None, ipv6: bool = False,
             backend: str = "native", scope: str | None = None, etc_hosts: bool = True,
             depth: int = 2, fanout: int = 2, links: dict | None = None, impair: dict | None = None,
             runner: Runner | None = None, machines: dict | None = None) -> Iterator[Topology]:
    """Build a topology and tear it down when the block ends (also on an exception)::

        with topology("line", 3, links={("h1", "h2"): {"delay": "50ms", "loss": "2%"}}) as net:
            print(net.run("h1", ["ping", "-c1", "h3"]).stdout)

    ``shape`` star, line, ring or tree (``depth``, ``fanout``), or ``file=`` a TOML lab;
    ``impair`` impairs every link, ``links`` the links named (see :func:`impair_links`).
    A file with a ``[machines]`` table (or ``machines=``, which replaces it) is built on
    those machines through Fabric and yields a :class:`recipes.labs.machines.controller.Lab`.
    Without root the calling process joins the lab's namespaces (:mod:`recipes.labs.userlab`)
    and cannot leave them: one lab per process (the holder goes when the block ends).
    """
    plan = plan_file(file, scope, ipv6, machines) if file else plan_shape(shape, hosts, scope, ipv6=ipv6,
                                                                          depth=depth, fanout=fanout)
    impair_links(plan, links, impair)
    if plan.machines:
        from recipes.labs.machines import controller as across
        yield from across.lab(plan, runner or Runner(backend=backend, keep=True, out=open(os.devnull, "w")))
        return
    run = runner or Runner(backend=backend, keep=False, out=open(os.devnull, "w"))
    mark = len(run.undo_stack)
    try:
        build(run, plan, etc_hosts=etc_hosts)
        yield Topology(run, plan)
    finally:
        mine = Runner(backend=run.backend, out=run.out)
        mine.undo_stack, run.undo_stack[mark:] = run.undo_stack[mark:], []
        errors = mine.undo()
        if runner is None:
            run.out.close()
        if errors and sys.exc_info()[0] is None:
            raise errors[0]


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of ``fn(*args, **kwargs)``."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result
