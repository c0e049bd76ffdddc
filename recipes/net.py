"""Network namespace (document section "Network namespace"; flag CLONE_NEWNET).

The document creates a network namespace with ``ip netns add``, shows that it has nothing
but a loopback device that is down, brings ``lo`` up, and joins two namespaces with a veth
pair -- a virtual cable whose two ends live in different namespaces. Here:

* :func:`demo` (``net-demo``): a new namespace has only ``lo``; it is shown down, then up;
  :func:`pair_demo`: two namespaces joined by a veth pair, made and removed (the tour).
* ``net-veth`` (two named namespaces joined by a veth pair that stays): :mod:`recipes.veth`.
* Building blocks other recipes use: :func:`create_netns`, :func:`delete_netns`,
  :func:`add_veth_pair` (both ends created in place, no move), :func:`udp_check`,
  :func:`check_pair`, the network records (:func:`record_first`) and :func:`leftovers`.

Shell forms are iproute2 commands (``ip netns add``, ``ip -n X link add name A type veth
peer name B netns Y``, ``ip -n X addr add``); native forms are netlink from this process
(:mod:`nsutil.netlink`). What is made is visible to ``ip netns list``, ``lsns`` and
``nsenter --net=/run/netns/NAME``.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from typing import Sequence
from nsutil import netlink as nl
from nsutil import procfs
from nsutil import state
from nsutil import syscalls as sc
from nsutil.backend import Runner, Step
from nsutil.errors import CommandError, InvalidInput, SyscallError
from nsutil.lesson import Inside
from nsutil.names import (check_cidr, check_ifname, check_name, ip_of, is_ours,  # noqa: F401
                          prefixed, scope_id)

from recipes.common import reach
from recipes.common.leftover import Leftover

SECTION = "Network namespace"
ETC_NETNS = "/etc/netns"


# --- validation ---------------------------------------------------------------------------

def check_netns_name(name: str) -> str:
    """A netns name: a file name under /run/netns (no '/', whitespace, '.', '..', empty)."""
    return check_name(name, what="network namespace name", max_bytes=64)


def check_addr(value: str, what: str = "address") -> str:
    """An interface address with prefix length; returned normalised (``10.0.0.1/24``)."""
    return str(check_cidr(value, what=what))


def check_no_overlap(cidrs: dict[str, str]) -> None:
    """Raise InvalidInput if two of the named subnets overlap (``{label: cidr}``)."""
    nets = [(label, ipaddress.ip_interface(c).network) for label, c in cidrs.items()]
    for i, (la, na) in enumerate(nets):
        for lb, nb in nets[i + 1:]:
            if na.version == nb.version and na.overlaps(nb):
                raise InvalidInput(f"subnets overlap: {la} {na} and {lb} {nb}",
                                   hint="give every link its own subnet")


# --- steps ----------------------------------------------------------------------------------

def create_netns(run: Runner, name: str) -> None:
    """Step: ``ip netns add NAME`` (bind mount under /run/netns); undo: delete it."""
    check_netns_name(name)
    run.run(Step(f"create network namespace {name} (unshare CLONE_NEWNET, bind-mount "
                 f"/run/netns/{name})",
                 argv=["ip", "netns", "add", name],
                 native=lambda: _close(nl.create_netns(name)),
                 shell=lambda argv: _create_netns_shell(name, argv),
                 undo=delete_netns_step(name)))
    run.inside(Inside(netns=name))  # lessons: a learner's shell can go in there


def _create_netns_shell(name: str, argv: list[str]) -> None:
    """``ip netns add NAME``, or natively where ip would make a /run/netns mount of someone
    else's shared (:func:`nsutil.netlink.ip_would_reshare_run_dir`)."""
    if nl.ip_would_reshare_run_dir():
        _close(nl.create_netns(name))
        return
    from nsutil import shell as nshell
    nshell.run(argv)


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        sock.close()


def delete_netns_step(name: str) -> Step:
    """The step ``ip netns del NAME`` (its links go with it; a missing one is no error)."""
    def shell(argv: list[str]) -> None:
        if nl.netns_exists(name):
            from nsutil import shell as nshell
            nshell.run(argv)
        remove_etc_netns(name)

    def native() -> None:
        nl.delete_netns(name)
        remove_etc_netns(name)

    return Step(f"delete network namespace {name} (its veth ends go with it)",
                argv=["ip", "netns", "del", name], native=native, shell=shell)


def delete_netns(run: Runner, name: str) -> None:
    """Step: delete the network namespace ``name`` and its /etc/netns entry."""
    check_netns_name(name)
    run.run(delete_netns_step(name))


def add_veth_pair(run: Runner, ifname: str, peer_ifname: str, *, ns: str | None = None,
                  peer_ns: str | None = None, addr: str | None = None,
                  peer_addr: str | None = None) -> None:
    """Steps: a veth pair with ``ifname`` in netns ``ns`` and ``peer_ifname`` in ``peer_ns``
    (None = the root namespace), both created in place (no move), addressed and up.
    Undo: delete ``ifname`` (the peer goes with it)."""
    check_ifname(ifname)
    check_ifname(peer_ifname)
    for n in (ns, peer_ns):
        if n is not None:
            check_netns_name(n)
    addr = check_addr(addr) if addr else None
    peer_addr = check_addr(peer_addr, "peer address") if peer_addr else None
    if (ns == peer_ns) and ifname == peer_ifname:
        raise InvalidInput(f"both ends are called {ifname!r} in the same namespace",
                           hint="give the peer another name")

    argv = veth_argv(ifname, peer_ifname, ns, peer_ns)
    run.run(Step(f"create veth pair {ifname} ({ns or 'root'}) <-> {peer_ifname} "
                 f"({peer_ns or 'root'}), both ends in place",
                 argv=argv,
                 native=lambda: _native_veth(ifname, peer_ifname, ns, peer_ns),
                 undo=_del_link_step(ns, ifname)))
    for where, name, cidr in ((ns, ifname, addr), (peer_ns, peer_ifname, peer_addr)):
        if cidr:
            run.run(Step(f"address {cidr} on {name} ({where or 'root'})",
                         argv=_ipn(where) + ["addr", "add", cidr, "dev", name],
                         native=lambda w=where, n=name, c=cidr: native_addr(w, n, c)))
        run.run(Step(f"bring {name} up ({where or 'root'})",
                     argv=_ipn(where) + ["link", "set", "dev", name, "up"],
                     native=lambda w=where, n=name: native_up(w, n)))


def veth_argv(ifname: str, peer_ifname: str, ns: str | None, peer_ns: str | None) -> list[str]:
    """``ip [-n NS] link add name IF type veth peer name PEER [netns PEER_NS]``, sent from
    inside the namespace the first end goes to.

    Kernels before 6.14 (Debian 12's 6.1, Ubuntu 24.04's 6.8) look a new device's name up
    in the namespace of the *sender*, even when it goes elsewhere: ``ip link add name a
    netns a ...`` from the root fails with EEXIST if the root has a link ``a``. The root
    namespace has no name to give as ``netns``, so a pair between a namespace and the root
    is sent from the root, its root end first.
    """
    if ns is not None and peer_ns is None:
        return ["ip", "link", "add", "name", peer_ifname, "type", "veth", "peer", "name",
                ifname, "netns", ns]
    return _ipn(ns) + ["link", "add", "name", ifname, "type", "veth", "peer", "name",
                       peer_ifname] + (["netns", peer_ns] if peer_ns else [])


def _ipn(ns: str | None) -> list[str]:
    return ["ip", "-n", ns] if ns else ["ip"]


def _native_veth(ifname: str, peer_ifname: str, ns: str | None, peer_ns: str | None) -> None:
    fd = nl.open_netns(peer_ns)
    try:
        with nl.Rtnl(nl.rtnl_socket(ns)) as r:
            r.new_link(nl.link_body(ifname, kind="veth",
                                    peer=nl.link_body(peer_ifname, netns_fd=fd)),
                       " ".join(veth_argv(ifname, peer_ifname, ns, peer_ns)))
            r.flush()
    finally:
        os.close(fd)


def _index(ns: str | None, ifname: str) -> int:
    with nl.in_netns(ns):
        try:
            return socket.if_nametoindex(ifname)
        except OSError as exc:
            raise SyscallError.from_oserror(f"if_nametoindex({ifname!r}) in {ns or 'root'}",
                                            exc, hint="does the link exist?") from None


def native_addr(ns: str | None, ifname: str, cidr: str) -> None:
    with nl.Rtnl(nl.rtnl_socket(ns)) as r:
        r.new_addr(_index(ns, ifname), cidr, f"ip addr add {cidr} dev {ifname}")
        r.flush()


def native_up(ns: str | None, ifname: str) -> None:
    with nl.Rtnl(nl.rtnl_socket(ns)) as r:
        r.set_link(nl.link_body(ifname, up=True), f"ip link set dev {ifname} up")
        r.flush()


def _del_link_step(ns: str | None, ifname: str) -> Step:
    """The step ``ip [-n NS] link del IFNAME``; a link or namespace already gone is fine."""
    def native() -> None:
        if ns is not None and not nl.netns_exists(ns):
            return
        try:
            with nl.Rtnl(nl.rtnl_socket(ns)) as r:
                r.del_link(nl.link_body(ifname), f"ip link del dev {ifname}")
                r.flush()
        except SyscallError as exc:
            if exc.errno_name not in ("ENODEV", "ENOENT"):
                raise

    def shell(argv: list[str]) -> None:
        if ns is not None and not nl.netns_exists(ns):
            return
        from nsutil import shell as nshell
        done = nshell.run_full(argv)
        if done.returncode and "Cannot find device" not in done.stderr:
            raise CommandError(argv, done.returncode, done.stderr)

    return Step(f"delete {ifname} ({ns or 'root'}); its peer goes with it",
                argv=_ipn(ns) + ["link", "del", "dev", ifname], native=native, shell=shell)


def set_lo_up(run: Runner, ns: str) -> None:
    """Step: ``ip -n NS link set lo up``."""
    run.run(Step(f"bring lo up in {ns}", argv=["ip", "-n", ns, "link", "set", "dev", "lo", "up"],
                 native=lambda: native_up(ns, "lo")))


def show_links(run: Runner, ns: str) -> list[dict]:
    """Step: ``ip -n NS -o link show``; returns [{name, up, state}] on both backends."""
    return run.run(Step(f"list the links of {ns}", argv=["ip", "-n", ns, "-o", "link", "show"],
                        parse=parse_links,
                        native=lambda: [{"name": ln["name"], "up": ln["up"]}
                                        for ln in nl.links(ns)],
                        placeholder=[]))


def parse_links(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) < 3:
            continue
        flags = parts[2].split("<", 1)[1].split(">", 1)[0].split(",") if "<" in parts[2] else []
        out.append({"name": parts[1].strip().split("@")[0], "up": "UP" in flags})
    return out


# --- connectivity ---------------------------------------------------------------------------

def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """``ip netns exec NS ARGV...``."""
    return ["ip", "netns", "exec", ns] + list(argv)


def check_pair(run: Runner, ns_a: str, addr_a: str, ns_b: str, addr_b: str) -> bool:
    """Step: prove ``ns_a`` reaches ``ns_b`` with real packets (shell: TCP through busybox
    nc; native: a UDP datagram and its reply). Returns True/False on both backends."""
    ip_b = ip_of(addr_b) if "/" in addr_b else addr_b
    return run.run(Step(
        f"send packets {ns_a} -> {ns_b} ({ip_b}) and back",
        argv=["ip", "netns", "exec", ns_a, "busybox", "nc", ip_b, str(reach.CHECK_PORT)],
        display=(f"ip netns exec {ns_b} busybox nc -l -p {reach.CHECK_PORT} &  "
                 f"echo TOKEN | ip netns exec {ns_a} busybox nc {ip_b} {reach.CHECK_PORT}"),
        shell=lambda _argv: reach.tcp_check_shell(ns_a, ns_b, addr_b),
        native=lambda: reach.udp_check(ns_a, addr_a, ns_b, addr_b),
        placeholder=True))


# --- /etc/netns/NAME/hosts ------------------------------------------------------------------
#
# A hosts file nsrecipes writes starts with HOSTS_MARK, which also says whether nsrecipes made
# the directory. One without the mark is the user's: it is never overwritten nor removed, and
# a directory nsrecipes did not make is never removed either.

#: the first line of every /etc/netns/NS/hosts nsrecipes writes
HOSTS_MARK = "# written by nsrecipes; removed with its namespace"
#: ... and where nsrecipes made /etc/netns/NS for it too
HOSTS_MARK_DIR = HOSTS_MARK + " (and so is this directory)"


def _hosts_mark(ns: str, name: str = "hosts") -> str | None:
    """The mark on /etc/netns/NS/hosts (None: no such file, or not nsrecipes')."""
    try:
        with open(os.path.join(ETC_NETNS, ns, name)) as f:
            first = f.readline().rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return None
    return first if first in (HOSTS_MARK, HOSTS_MARK_DIR) else None


def owns_etc_hosts(ns: str) -> bool:
    """True if /etc/netns/NS/hosts is there and nsrecipes wrote it."""
    return _hosts_mark(ns) is not None


def write_etc_hosts(ns: str, entries: list[tuple[str, str]]) -> str | None:
    """Write /etc/netns/NS/hosts (``ip netns exec`` bind-mounts it over /etc/hosts), marked
    as nsrecipes'; returns its path, or None when a hosts file of someone else's is there
    (it is kept as it is)."""
    check_netns_name(ns)
    directory = os.path.join(ETC_NETNS, ns)
    path = os.path.join(directory, "hosts")
    mark = _hosts_mark(ns)
    if mark is None and os.path.lexists(path):
        return None
    if mark is None:
        mark = HOSTS_MARK if os.path.isdir(directory) else HOSTS_MARK_DIR
    lines = [mark, "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{addr}\t{names}" for addr, names in entries]
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(path + ".tmp", path)
    except OSError as exc:
        raise SyscallError.from_oserror(f"write({directory}/hosts)", exc) from None
    return path


def remove_etc_netns(ns: str) -> bool:
    """Remove the hosts file nsrecipes wrote in /etc/netns/NS, and the directory if nsrecipes
    made it and nothing else is in it; anything else there stays. True if something went.
    (A ``hosts.tmp`` with the mark is a write of ours cut short: it goes too.)"""
    directory = os.path.join(ETC_NETNS, ns)
    torn = _hosts_mark(ns, "hosts.tmp")
    if torn is not None:
        sc.remove_if_present(os.path.join(directory, "hosts.tmp"))
    mark = _hosts_mark(ns) or torn
    if mark is None:
        return False
    sc.remove_if_present(os.path.join(directory, "hosts"))
    if mark == HOSTS_MARK_DIR:
        try:
            os.rmdir(directory)
        except OSError:
            pass  # something of someone else's was put in it: it stays
    return True


# --- net-demo -------------------------------------------------------------------------------

def demo(run: Runner, name: str | None = None) -> dict:
    """The document's network section: a new network namespace has only ``lo``, and it is
    down; ``ip link set lo up`` brings it up. Returns what was observed. (Without root:
    :mod:`recipes.net_rootless`.)"""
    name = name or prefixed(scope_id(), "demo")
    check_netns_name(name)
    run.heading(f"{SECTION} (CLONE_NEWNET): a new namespace has only lo")
    host_links = root_links()
    run.say(f"the host's namespace has {len(host_links)} links: {', '.join(host_links[:6])}"
            f"{' ...' if len(host_links) > 6 else ''}")
    record_scratch_netns(run, [name])
    create_netns(run, name)
    before = show_links(run, name)
    run.say(f"[root@host]# ip -n {name} link")
    for ln in before:
        run.say(f"  {ln['name']}: {'UP' if ln['up'] else 'DOWN'}")
    set_lo_up(run, name)
    after = show_links(run, name)
    run.say(f"[root@host]# ip -n {name} link set lo up; ip -n {name} link")
    for ln in after:
        run.say(f"  {ln['name']}: {'UP' if ln['up'] else 'DOWN'}")
    run.learner_shell(hint="ip link (only lo); ping -c1 127.0.0.1; exit")
    run.undo()
    return {"netns": name, "links": [ln["name"] for ln in before], "host_links": host_links,
            "lo_up_before": any(ln["up"] for ln in before if ln["name"] == "lo"),
            "lo_up_after": any(ln["up"] for ln in after if ln["name"] == "lo"),
            "gone": not nl.netns_exists(name)}


def pair_demo(run: Runner, addr: str = "10.199.0.1/24", peer_addr: str = "10.199.0.2/24") -> dict:
    """The document's veth pair ("类似管道": data in at one end comes out at the other),
    made for the tour and removed again: two new namespaces, a pair between them, real
    packets both ways. ``net-veth`` makes one that stays. Returns what was observed.
    (Without root: :mod:`recipes.net_rootless`.)"""
    scope = scope_id()
    a, b = prefixed(scope, "a"), prefixed(scope, "b")
    run.heading(f"{SECTION} (CLONE_NEWNET): two namespaces joined by a veth pair")
    record_scratch_netns(run, [a, b])
    create_netns(run, a)
    create_netns(run, b)
    add_veth_pair(run, a, b, ns=a, peer_ns=b, addr=addr, peer_addr=peer_addr)
    ok = check_pair(run, a, addr, b, peer_addr)
    run.say(f"{a} ({addr}) <-> {b} ({peer_addr}): "
            f"{'packets go both ways' if ok else 'NO packets got through'}")
    run.undo()
    run.say(f"removed {a} and {b} (deleting a namespace deletes its end of the pair)")
    return {"ok": ok, "netns": [a, b], "gone": not (nl.netns_exists(a) or nl.netns_exists(b))}


# --- network records ------------------------------------------------------------------------


def save_record(path: str, data: dict) -> None:
    """Write a network record (state dir ``net/``), tolerating a concurrent rmdir."""
    for attempt in range(3):
        try:
            state.state_dir("net")
            state.atomic_write_json(path, data)
            return
        except SyscallError:
            if attempt == 2:
                raise


def drop_record(path: str) -> None:
    """Remove a network record, and the state directories when they are empty."""
    sc.remove_if_present(path)
    state.prune()


def record_path(name: str, kind: str = "veth") -> str:
    """The path of the network record ``net/KIND-NAME.json`` (not made here)."""
    return os.path.join(state.state_dir("net", create=False), f"{kind}-{name}.json")


def creator() -> dict:
    """This process as a record's creator: cleanup keeps what a running creator is still
    making (the start time tells a re-used pid apart)."""
    return procfs.identity()


def record_first(run: Runner, path: str, record: dict, what: str) -> None:
    """Write a network record (with :func:`creator`) before what it names is made, so that
    ``cleanup`` finds a run killed half-way even for names without the prefix; this run's
    undo drops it last (LIFO)."""
    if run.explain:
        return
    save_record(path, {**record, "creator": creator()})
    run.defer(Step(f"forget the record of {what}", native=lambda: drop_record(path),
                   shell=lambda _a: drop_record(path), display=f"rm {path}"))


def record_scratch_netns(run: Runner, names: list[str]) -> None:
    """Record the namespaces a demo makes and removes again (``net/demo-NAME.json``): if the
    run is killed, ``cleanup`` removes them once the creator is gone."""
    record_first(run, record_path(names[0], "demo"), {"netns": names},
                 f"the demo namespaces {', '.join(names)}")


# --- cleanup --------------------------------------------------------------------------------

def root_links() -> list[str]:
    try:
        return sorted(os.listdir("/sys/class/net"))
    except OSError:
        return []


def records(prefix: str = "") -> list[dict]:
    """The network records ``net/PREFIX*.json`` under the state directory, by file name
    (unreadable ones left out)."""
    base = state.state_dir("net", create=False)
    if not os.path.isdir(base):
        return []
    found = []
    for entry in sorted(os.listdir(base)):
        if entry.startswith(prefix) and entry.endswith(".json"):
            rec = state.read_json(os.path.join(base, entry))
            if isinstance(rec, dict):
                found.append(rec)
    return found


def recorded_netns() -> set[str]:
    """Namespace names in nsrecipes' network records (net-veth pairs, topologies)."""
    names: set[str] = set()
    for rec in records():
        names.update(n for n in (rec.get("name"), rec.get("peer")) if n)
        names.update(rec.get("netns", []))
    return names


def leftovers() -> list[Leftover]:
    """Every nsrecipes network object on the host: netns under /run/netns that carry the
    prefix or are recorded, nsr links in the root namespace, /etc/netns/nsr* entries and
    the network records; each ``remove()`` removes exactly that one."""
    found: list[Leftover] = []
    recorded = recorded_netns()
    from nsutil import rootless
    if rootless.decide():   # a user's namespaces are pinned in the user's labs, not here
        return found + _state_leftovers()
    for name in nl.list_netns():
        if is_ours(name) or name in recorded:
            found.append(Leftover("netns", name, lambda n=name: _remove_netns(n)))
    for name in root_links():
        if is_ours(name):
            found.append(Leftover("link", name, lambda n=name: remove_root_link(n)))
    if os.path.isdir(ETC_NETNS):
        for name in sorted(os.listdir(ETC_NETNS)):
            if (is_ours(name) or name in recorded) and owns_etc_hosts(name):
                found.append(Leftover("etc-netns", os.path.join(ETC_NETNS, name),
                                      lambda n=name: _remove_etc(n)))
    return found + _state_leftovers()


def _state_leftovers() -> list[Leftover]:
    """Every file under the state directory's ``net/`` (records, a lab's hosts file)."""
    found = []
    base = state.state_dir("net", create=False)
    if os.path.isdir(base):
        entries = sorted(os.listdir(base))
        for entry in entries:
            path = os.path.join(base, entry)
            found.append(Leftover("state", path, lambda p=path: drop_record(p)))
        if not entries:
            found.append(Leftover("state", base, lambda: sc.remove_if_present(base, os.rmdir)))
    return found


def _remove_netns(name: str) -> None:
    nl.delete_netns(name)


def remove_root_link(name: str) -> None:
    """``ip link del NAME`` in the root namespace (its veth peer goes with it); gone is fine."""
    try:
        with nl.Rtnl(nl.rtnl_socket(None)) as r:
            r.del_link(nl.link_body(name), f"ip link del dev {name}")
            r.flush()
    except SyscallError as exc:
        if exc.errno_name != "ENODEV":  # already gone with its peer
            raise


def _remove_etc(name: str) -> None:
    remove_etc_netns(name)


__all__ = ["SECTION", "add_veth_pair", "veth_argv", "check_pair", "create_netns", "delete_netns", "demo",
           "leftovers", "write_etc_hosts", "remove_etc_netns"]
