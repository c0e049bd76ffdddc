"""Network namespace: two namespaces joined by a veth pair, the document's network.png.

Document section "Network namespace": a veth pair is a virtual cable whose two ends live in
different namespaces ("类似管道": what goes in at one end comes out at the other). Here
(``net-veth``):

* :func:`veth_create`: two named namespaces joined by a veth pair with addresses, proven by
  a real exchange of packets; idempotent (:func:`veth_status` tells what is there already).
* :func:`veth_delete`: both namespaces go (the pair goes with them), and the pair's record.
* :func:`veth_observed`: what the kernel says of the pair, for :func:`recipes.common.pictures.veth`.

A pair is recorded in ``net/veth-NAME.json`` (state dir) before it is made, so ``cleanup``
finds a half-made one and a second run can tell its own pair from someone else's namespace.
The building blocks (namespaces, in-place veths, addresses, the packet check, records) are
:mod:`recipes.net`'s.
"""
from __future__ import annotations

import ipaddress
import os

from nsutil import netlink as nl
from nsutil.backend import Runner, Step
from nsutil.errors import Conflict, InvalidInput, NsrError
from nsutil.lesson import Inside
from nsutil.names import check_ifname

from recipes.labs import userlab
from recipes.net import (SECTION, add_veth_pair, check_addr, check_pair, create_netns, delete_netns,
                  drop_record, ip_of, record_first, record_path, records, set_lo_up,
                  write_etc_hosts)

DEFAULT_ADDR, DEFAULT_PEER_ADDR = "10.200.0.1/24", "10.200.0.2/24"


def _find_record(name: str) -> dict | None:
    """The net-veth record that mentions ``name`` as either end."""
    return next((rec for rec in records("veth-") if name in (rec.get("name"), rec.get("peer"))),
                None)


def _validate_veth(name: str, peer: str, addr: str, peer_addr: str) -> tuple[str, str]:
    check_ifname(name)
    check_ifname(peer)
    if name == peer:
        raise InvalidInput(f"--name and --peer are both {name!r}", hint="give two different names")
    addr, peer_addr = check_addr(addr, "--addr"), check_addr(peer_addr, "--peer-addr")
    if ip_of(addr) == ip_of(peer_addr):
        raise InvalidInput(f"--addr and --peer-addr are the same address {ip_of(addr)}",
                           hint="give the two ends different addresses")
    if ipaddress.ip_interface(addr).network != ipaddress.ip_interface(peer_addr).network:
        raise InvalidInput(f"--addr {addr} and --peer-addr {peer_addr} are in different subnets",
                           hint="put both ends in one subnet, e.g. 10.200.0.1/24 and 10.200.0.2/24")
    return addr, peer_addr


def veth_status(name: str, peer: str, addr: str, peer_addr: str) -> str:
    """``absent``, ``same`` (exists as asked, made by us) or raise Conflict naming why."""
    rec = _find_record(name) or _find_record(peer)
    exists = [n for n in (name, peer) if nl.netns_exists(n)]
    if rec is None:
        if exists:
            raise Conflict(f"network namespace {exists[0]!r} exists and was not made by nsrecipes",
                           hint="pick other names, or remove it yourself (ip netns del)")
        return "absent"
    wanted = {"name": name, "peer": peer, "addr": addr, "peer_addr": peer_addr}
    diff = [f"{k} {rec.get(k)} (asked {v})" for k, v in wanted.items() if rec.get(k) != v]
    if diff:
        raise Conflict(f"{rec['name']}<->{rec['peer']} exists with other settings: {', '.join(diff)}",
                       hint=f"delete it first: invoke net-veth --name {rec['name']} "
                            f"--peer {rec['peer']} --delete")
    if len(exists) < 2 or not nl.is_veth_pair(name, name, peer, peer):
        raise Conflict(f"{name}<->{peer} was made by nsrecipes but is incomplete now",
                       hint=f"invoke net-veth --name {name} --peer {peer} --delete, then again")
    have_a = (nl.link(name, name) or {}).get("addrs", [])
    have_b = (nl.link(peer, peer) or {}).get("addrs", [])
    if addr not in have_a or peer_addr not in have_b:
        raise Conflict(f"{name}<->{peer} has addresses {have_a} / {have_b}, not {addr} / {peer_addr}",
                       hint=f"invoke net-veth --name {name} --peer {peer} --delete, then again")
    return "same"


def veth_create(run: Runner, name: str = "nsr-a", peer: str = "nsr-b",
                addr: str = DEFAULT_ADDR, peer_addr: str = DEFAULT_PEER_ADDR,
                check: bool = True) -> dict:
    """``net-veth``: namespaces ``name`` and ``peer`` joined by a veth pair (end ``name`` in
    netns ``name``, end ``peer`` in netns ``peer``) with addresses, proven by packets.
    Idempotent: a second run with the same arguments changes nothing. They stay until
    :func:`veth_delete`. Returns what was done and observed."""
    addr, peer_addr = _validate_veth(name, peer, addr, peer_addr)
    run.heading(f"{SECTION}: two namespaces joined by a veth pair")
    status = "absent" if run.explain else _status(run, name, peer, addr, peer_addr)
    if status == "same":
        run.say(f"nothing to do: {name} ({addr}) <-> {peer} ({peer_addr}) exist as asked")
        reachable = check_pair(run, name, addr, peer, peer_addr) if check else None
        _veth_shell(run, name, peer, peer_addr)
        return {"changed": False, "name": name, "peer": peer, "reachable": reachable}
    record = {"name": name, "peer": peer, "addr": addr, "peer_addr": peer_addr}
    record_first(run, record_path(name), record, f"{name}<->{peer}")
    entry = None
    if run.rootless:     # a lab of its own: a holder's user namespace owns both namespaces
        names = [(ip_of(addr), name), (ip_of(peer_addr), peer)]
        entry = userlab.start_lab(run, record_path(name), names,
                                  f"nsr-lab-{name}"[:15])
    create_netns(run, name)
    create_netns(run, peer)
    add_veth_pair(run, name, peer, ns=name, peer_ns=peer, addr=addr, peer_addr=peer_addr)
    set_lo_up(run, name)
    set_lo_up(run, peer)
    if not run.explain and not run.rootless:
        for ns, other, entries in ((name, peer, [(ip_of(addr), name), (ip_of(peer_addr), peer)]),
                                   (peer, name, [(ip_of(peer_addr), peer), (ip_of(addr), name)])):
            if write_etc_hosts(ns, entries) is None:
                run.say(f"kept /etc/netns/{ns}/hosts as it is (not nsrecipes'): in {ns}, "
                        f"{other} is reached by its address only")
    reachable = check_pair(run, name, addr, peer, peer_addr) if check else None
    if check and not run.explain and not reachable:
        raise NsrError(f"no packets got from {name} to {peer} ({ip_of(peer_addr)})",
                       hint="see `ip -n NAME addr`; is a firewall in the namespace?")
    run.say(f"{name} ({addr}) <-> {peer} ({peer_addr}): "
            f"{'packets go both ways' if reachable else 'not checked'}")
    if entry is not None:
        userlab.mark_ready(run, record_path(name), entry)
        enter = " ".join(map(str, userlab.join_argv(entry["pid"])))
        run.say(f"they stay, in a lab of their own (holder pid {entry['pid']}): invoke net-exec "
                f"{name} -- ip addr; {enter} ip netns list; "
                f"remove with: invoke net-veth --name {name} --peer {peer} --delete")
    elif not run.wants_shell:
        run.say(f"they stay: ip netns list; ip -n {name} addr; "
                f"remove with: invoke net-veth --name {name} --peer {peer} --delete")
    _veth_shell(run, name, peer, peer_addr)
    return {"changed": True, "name": name, "peer": peer, "reachable": reachable}


def _status(run: Runner, name: str, peer: str, addr: str, peer_addr: str) -> str:
    """:func:`veth_status`; without root, in the pair's own lab (joined first when its
    record names a holder that runs; a pair never made is absent, whatever the host has)."""
    if not run.rootless:
        return veth_status(name, peer, addr, peer_addr)
    rec = _find_record(name) or _find_record(peer)
    if rec is None:
        return "absent"
    if not userlab.alive(rec.get("holder")):
        raise Conflict(f"{rec['name']}<->{rec['peer']} was made by nsrecipes but its lab is dead "
                       "(its holder is gone)", hint=f"invoke net-veth --name {rec['name']} "
                       f"--peer {rec['peer']} --delete, then again")
    userlab.join(run, rec["holder"])
    return veth_status(name, peer, addr, peer_addr)


def _veth_shell(run: Runner, name: str, peer: str, peer_addr: str) -> None:
    """--shell: the learner's shell in namespace ``name``, to ping the other end; when it
    ends, the host's side, and what this run made is undone, as every lesson's is (a pair
    that was there before the run stays; without --shell the pair stays until --delete)."""
    if not run.wants_shell:
        return
    run.learner_shell(Inside(netns=name), hint=f"ip addr; ping -c 3 {ip_of(peer_addr)}; exit")
    run.say(f"[root@host]# ip link show {name}")
    run.say(f"(the host has an interface {name} of its own)" if name in os.listdir("/sys/class/net")
            else f'Device "{name}" does not exist.    <- the end lives in netns {name}, not here')
    if run.undo_stack:
        run.say(f"a lesson leaves nothing: {name}, {peer} and the pair go now "
                f"(without --shell they stay until --delete)")
    errors = run.undo()
    if errors:
        raise errors[0]


def veth_delete(run: Runner, name: str = "nsr-a", peer: str = "nsr-b") -> dict:
    """``net-veth --delete``: remove both namespaces (the pair goes with them) and the record.
    Deleting what is not there says so and succeeds; what nsrecipes did not make is kept."""
    check_ifname(name)
    check_ifname(peer)
    rec = _find_record(name) or _find_record(peer)
    if rec is None:
        exists = [n for n in (name, peer) if nl.netns_exists(n)]
        if exists:
            raise Conflict(f"network namespace {exists[0]!r} was not made by nsrecipes; not deleting it",
                           hint="remove it yourself with ip netns del")
        run.say(f"nothing to delete: {name} and {peer} do not exist")
        return {"changed": False}
    if {rec["name"], rec["peer"]} != {name, peer}:
        raise Conflict(f"{name}<->{peer} is not a pair: nsrecipes made {rec['name']}<->{rec['peer']}",
                       hint=f"invoke net-veth --name {rec['name']} --peer {rec['peer']} --delete")
    if run.rootless:     # the holder takes both namespaces (and the pair) along
        run.run(userlab.teardown_step(record_path(rec["name"]), f"{rec['name']}<->{rec['peer']}",
                                      2, lambda: rec.get("holder")))
        run.say(f"deleted {rec['name']} and {rec['peer']}")
        return {"changed": True}
    delete_netns(run, rec["name"])
    delete_netns(run, rec["peer"])
    if not run.explain:
        drop_record(record_path(rec["name"]))
    run.say(f"deleted {rec['name']} and {rec['peer']}")
    return {"changed": True}


def _parse_addr_json(text: str) -> list[dict]:
    """``ip -d -j addr show`` -> [{name, kind, up, addrs}] as the native form gives them."""
    import json
    return [{"name": ln["ifname"], "kind": ln.get("linkinfo", {}).get("info_kind"),
             "up": "UP" in ln.get("flags", []),
             "addrs": [f"{a['local']}/{a['prefixlen']}" for a in ln.get("addr_info", [])]}
            for ln in json.loads(text or "[]")]


def veth_observed(run: Runner, name: str, peer: str, reachable: bool | None = None) -> dict:
    """Steps: what the kernel says of a net-veth pair, for :func:`recipes.common.pictures.veth`: each
    namespace's inode (as ``lsns`` lists it) and links with their addresses."""
    spaces = []
    for ns in (name, peer):
        links = run.run(Step(f"list the links and addresses of {ns} (for the picture)",
                             argv=["ip", "-n", ns, "-d", "-j", "addr", "show"],
                             parse=_parse_addr_json, placeholder=[],
                             native=lambda ns=ns: [
                                 {k: ln[k] for k in ("name", "kind", "up", "addrs")}
                                 for ln in nl.links(ns)]))
        spaces.append({"name": ns, "inode": nl.netns_inode(ns), "links": links})
    return {"namespaces": spaces, "pair": [[name, name], [peer, peer]], "reachable": reachable}


__all__ = ["DEFAULT_ADDR", "DEFAULT_PEER_ADDR", "veth_create", "veth_delete", "veth_observed",
           "veth_status"]
