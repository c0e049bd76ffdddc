"""Environments: each step that makes or changes one -- the record, the ``ip netns`` name,
the hostname, the id maps, veths and message queues (mounts: :mod:`recipes.env.mounts`).

A step on an existing environment loads its record (:func:`recipes.env.state.load`: it must
exist, be alive and have the namespace the step needs), takes its lock, runs the step on the
holder, and notes what it made in the record, which ``env-ls`` shows and ``env-rm`` undoes.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import time
from typing import Sequence

from nsutil import idmap, process, state
from nsutil import procfs
from nsutil import shell as nshell
from nsutil import syscalls as sc
from nsutil.backend import Runner, Step
from nsutil.errors import Conflict, InvalidInput, NsrError, SyscallError
from nsutil.rootless import outside_gid, outside_uid
from nsutil.names import check_domainname, check_hostname, check_ifname, is_ours, prefixed, scope_id
from nsutil.nstypes import NsType
from nsutil.netlink import NETNS_RUN_DIR

from recipes.common.holder import enter_argv, join_types
from recipes.env import subids, userns
from recipes.env.remove import remove
from recipes.env.state import (HELD, KIND, STATE_FILE, base_dir, check_env_name, env_dir,
                       global_lock, holder_of, load, lock_unless_explain, ns_file, open_dir,
                       read_state, release_lock, update_state)


# --- making one -----------------------------------------------------------------------------

def record(run: Runner, name: str, types: Sequence[NsType]) -> None:
    """Step: the record directory with one empty file per namespace to bind on (without
    root, nothing is bound: the record only); undo: remove."""
    base = base_dir()
    files = [] if run.rootless else [ns_file(name, t) for t in types]

    def make(_argv: list[str] | None = None) -> None:
        state.state_dir()
        with global_lock():
            if os.path.lexists(env_dir(name)):
                raise Conflict(f"environment {name!r} exists already",
                               hint=f"remove it first (invoke env-rm {name}) or pick another name")
            tmp = os.path.join(base, f".env-{name}.{os.getpid()}.tmp")
            try:
                os.mkdir(tmp, 0o700)
                fd = open_dir(tmp)
                fcntl.flock(fd, fcntl.LOCK_EX)   # the lock moves with the directory
                HELD[name] = fd
                for f in files:
                    os.close(os.open(os.path.join(tmp, os.path.basename(f)),
                                     os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o400))
                me = procfs.identity()
                state.atomic_write_json(os.path.join(tmp, STATE_FILE), {
                    "kind": KIND, "version": 1, "name": name, "status": "creating",
                    "types": [t.name for t in types], "backend": run.backend,
                    "created": time.time(), "creator": me, "holder": None, "parent": None,
                    "ns": {}, "netns": None, "hostname": None, "domainname": None,
                    "uid_map": None, "gid_map": None, "veths": [], "links": [], "mounts": [],
                    "queues": [], "rootless": run.rootless})
                os.rename(tmp, env_dir(name))
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                release_lock(name)
                raise SyscallError.from_oserror(f"record {env_dir(name)!r}", exc) from None
            except KeyboardInterrupt:     # a Ctrl-C half-way: no half-made directory left
                if not os.path.lexists(env_dir(name)):
                    shutil.rmtree(tmp, ignore_errors=True)
                    release_lock(name)
                raise

    def undo(_argv: list[str] | None = None) -> None:
        remove(Runner(backend=run.backend, out=run.out), name, missing_ok=True)

    run.run(Step(f"record it in {env_dir(name)} (0700)" +
                 (", with a file per namespace to bind on" if files else ""),
                 argv=["mkdir", "-m", "0700", env_dir(name)], native=make, shell=make,
                 display=f"mkdir -m 0700 {env_dir(name)}" +
                         (f" && touch {' '.join(files)}" if files else ""),
                 undo=Step(f"remove environment {name}", display=f"invoke env-rm {name}",
                           native=undo, shell=undo)))


def attach_netns(run: Runner, name: str, pid: int | str) -> None:
    """Step: make the environment's netns visible to ``ip netns`` (``ip netns attach``)."""
    from nsutil import netlink as nl
    path = os.path.join(NETNS_RUN_DIR, name)

    def native() -> None:
        nl.ensure_run_dir()
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        except FileExistsError:
            raise Conflict(f"network namespace {name!r} exists already",
                           hint=f"it is not this environment's: remove it (ip netns del {name}) "
                                "or pick another name") from None
        try:
            sc.mount(f"/proc/{pid}/ns/net", path, None, sc.MS_BIND)
        except BaseException:
            os.unlink(path)
            raise

    def shell(argv: list[str]) -> None:
        # through a child that inherits our lock on the environment: if this tool is killed
        # while `ip` runs, a removal waits for `ip` instead of racing it and missing the name
        if nl.ip_would_reshare_run_dir():   # a /run/netns mount of someone else's: as it is
            native()
            return
        process.fork_call(lambda: nshell.run(argv), f"ip netns attach {name}", detached=True)

    run.run(Step(f"make its network namespace visible to `ip netns` as {name}",
                 argv=["ip", "netns", "attach", name, pid], native=native, shell=shell))


def loopback_up(run: Runner, name: str, holder: process.Holder | None = None) -> None:
    """Step: bring lo up in the environment's new network namespace, as container-run --net,
    bwrap and crun do: a new one has lo down, and nothing inside reaches 127.0.0.1.

    With ``holder`` (without root: no ``ip netns`` name) by joining its user namespace and
    its network namespace: ``nsenter -t PID --user --preserve-credentials --net ip link set
    dev lo up``; natively the same link change over rtnetlink from in there."""
    if holder is None:
        from recipes import net
        net.set_lo_up(run, name)
        return
    from nsutil import netlink as nl

    def up() -> None:
        with nl.Rtnl(nl.rtnl_socket(None)) as r:
            r.set_link(nl.link_body("lo", up=True), "ip link set dev lo up")
            r.flush()
    run.run(Step(f"bring lo up in {name}'s network namespace (joined through its user "
                 "namespace)",
                 argv=enter_argv(holder, "net", ["ip", "link", "set", "dev", "lo", "up"]),
                 native=lambda: process.call_in(holder.pid, join_types(holder, "net"), up)))


def check_maps(spec: str | None, what: str = "--uid-map") -> list[idmap.IdMap] | None:
    """An id map option (``what``) checked against the kernel's rules: ``None`` when not
    given, ``[]`` for ``none`` (left for env-idmap)."""
    if spec is None or spec == "":
        return None
    if spec.strip().lower() == "none":
        return []
    return idmap.parse_map(spec, what)


def write_maps(run: Runner, name: str, holder: process.Holder, umaps: list[idmap.IdMap],
               gmaps: list[idmap.IdMap], *, helper: bool = False) -> None:
    """Steps: write the holder's uid_map (and gid_map); record them. ``helper``: through
    newuidmap/newgidmap (ids of the user's /etc/subuid ranges, without root)."""
    from recipes import user
    if helper:
        for which, maps in (("uid", umaps), ("gid", gmaps)):
            argv = subids.helper_argv(which, holder.pid, maps)
            run.run(Step(f"write {which}_map with {argv[0]} (setuid root: it checks your "
                         f"{subids.FILES[which]} ranges; no system call does this for a user, "
                         "so both backends run it)", argv=argv,
                         native=lambda a=argv: subids.run_helper(a),
                         shell=lambda a: subids.run_helper(a)))
    else:
        user.write_uid_map(run, holder, umaps)
        if gmaps:
            user.write_gid_map(run, holder, gmaps)
    if not run.explain:
        update_state(name, lambda d: d.update(
            uid_map=",".join(m.spec() for m in umaps),
            gid_map=",".join(m.spec() for m in gmaps) or None))


def rootless_maps(umaps: list[idmap.IdMap], gmaps: list[idmap.IdMap] | None
                  ) -> tuple[list[idmap.IdMap], list[idmap.IdMap], bool]:
    """Without root the kernel lets a user write a map of one line with their own id only
    (user_namespaces(7)); more ids are written by newuidmap/newgidmap from the user's
    /etc/subuid and /etc/subgid ranges (:mod:`recipes.env.subids`), or refused in one line
    naming what is missing. ``gmaps`` defaults to ``umaps`` with the user's own uid replaced
    by their gid. Returns (uid maps, gid maps, whether the helpers write them)."""
    uid, gid = outside_uid(), outside_gid()
    if gmaps is None:
        gmaps = [idmap.IdMap(m.inside, gid, 1) if (m.outside, m.count) == (uid, 1) else m
                 for m in umaps]
    pairs = ((umaps, uid, "uid"), (gmaps, gid, "gid"))
    if all(len(maps) == 1 and (maps[0].outside, maps[0].count) == (own, 1)
           for maps, own, _ in pairs):
        return umaps, gmaps, False
    for maps, own, which in pairs:
        why = subids.refusal(which, maps, own, uid)
        if why is not None:
            raise why
    return umaps, gmaps, True


def check_uts_options(hostname: str | None, domainname: str | None) -> str:
    """Check --hostname/--domainname; returns the options given as an error names them
    (``--domainname``, ``--hostname/--domainname``), ``""`` for none."""
    if hostname is not None:
        check_hostname(hostname)
    if domainname is not None:
        check_domainname(domainname)
    return "/".join(opt for opt, value in (("--hostname", hostname), ("--domainname", domainname))
                    if value is not None)


def set_uts(run: Runner, name: str, holder: process.Holder, *, hostname: str | None = None,
            domainname: str | None = None) -> None:
    """Steps: set the hostname and/or domain name in the holder's UTS namespace; record them."""
    from recipes import uts
    if hostname is not None:
        uts.set_hostname(run, holder, hostname)
    if domainname is not None:
        uts.set_domainname(run, holder, domainname)
    if not run.explain:
        update_state(name, lambda d: d.update({k: v for k, v in (("hostname", hostname),
                                                               ("domainname", domainname)) if v}))


# --- hostname and id maps -------------------------------------------------------------------

def set_hostname(run: Runner, name: str, hostname: str | None = None,
                 domainname: str | None = None) -> None:
    """Step: set the hostname (and/or NIS domain name) inside the environment."""
    given = check_uts_options(hostname, domainname)
    if not given:
        raise InvalidInput("nothing to set", hint="give --hostname and/or --domainname")
    st = load(name, run, need="uts", option=given)
    with lock_unless_explain(run, name):
        set_uts(run, name, holder_of(st), hostname=hostname, domainname=domainname)


def set_idmap(run: Runner, name: str, uid_map: str, gid_map: str | None = None) -> None:
    """Steps: write the uid_map (and gid_map, default: the same ranges) of the environment's
    user namespace. Each map can be written once (user_namespaces(7))."""
    umaps = idmap.parse_map(uid_map, "--uid-map")
    helper = False
    if run.rootless:
        umaps, gmaps, helper = rootless_maps(umaps, idmap.parse_map(gid_map, "--gid-map")
                                             if gid_map else None)
    else:
        gmaps = idmap.parse_map(gid_map, "--gid-map") if gid_map else list(umaps)
    st = load(name, run, need="user")
    if not run.explain:
        pid = st["holder"]["pid"]
        for which in ("uid", "gid"):
            if idmap.read_map(pid, which):
                raise Conflict(f"the {which}_map of environment {name!r} is written already",
                               hint="each map can be written once: create the environment "
                                    "with --uid-map none to set the maps later")
    with lock_unless_explain(run, name):
        write_maps(run, name, holder_of(st), umaps, gmaps, helper=helper)


# --- veths and message queues ---------------------------------------------------------------

def _links_in(ns: str) -> set[str]:
    """Names of the links in netns ``ns`` (``ip -n NS link``)."""
    from nsutil import netlink as nl
    return {item["name"] for item in nl.links(ns)}


def _default_ifname(used: set[str]) -> str:
    n = 0
    while f"eth{n}" in used:
        n += 1
    return f"eth{n}"


def add_veth(run: Runner, name: str, peer: str | None = None, *, ifname: str | None = None,
             peer_ifname: str | None = None, addr: str | None = None,
             peer_addr: str | None = None) -> dict:
    """Steps: a veth pair from the environment to the host (``peer=None``) or to another
    environment, both ends created in place, addressed and up (``recipes.net.add_veth_pair``).

    The host end must carry the ``nsr`` prefix (default: ``nsr-v-XXXX``); an end inside an
    environment defaults to the first free ``ethN``. Returns what was made.
    """
    from recipes import net
    if peer in ("host", "root", ""):
        peer = None
    if peer is not None:
        check_env_name(peer)
        if peer == name:
            raise InvalidInput("a veth from an environment to itself", hint="give another --peer")
    for value in (ifname, peer_ifname):
        if value is not None:
            check_ifname(value)
    if peer is None and peer_ifname is not None and not is_ours(peer_ifname):
        raise InvalidInput(f"the host end {peer_ifname!r} does not start with 'nsr'",
                           hint="name it nsr-...: links nsrecipes makes on the host carry "
                                "the prefix, so cleanup can find them")
    for value, what in ((addr, "address"), (peer_addr, "peer address")):
        if value:
            net.check_addr(value, what)
    if run.rootless:
        if peer is None:
            raise rootless_veth_refusal(name)
        return _add_rootless_veth(run, name, peer, ifname, peer_ifname, addr, peer_addr)
    load(name, run, need="net")
    if peer:
        load(peer, run, need="net")
    here = set() if run.explain else _links_in(name)
    there = set() if run.explain or peer is None else _links_in(peer)
    ifname = ifname or _default_ifname(here)
    if peer is None:
        peer_ifname = peer_ifname or prefixed("v", scope_id())
        if not run.explain and os.path.exists(f"/sys/class/net/{peer_ifname}"):
            raise Conflict(f"link {peer_ifname!r} exists on the host already",
                           hint="give another --peer-ifname")
    else:
        peer_ifname = peer_ifname or _default_ifname(there)
        if peer_ifname in there:
            raise Conflict(f"environment {peer!r} has a link {peer_ifname!r} already",
                           hint="give another --peer-ifname")
    if ifname in here:
        raise Conflict(f"environment {name!r} has a link {ifname!r} already",
                       hint="give another --ifname")
    with lock_unless_explain(run, name, *( [peer] if peer else [])):
        if peer is None:
            # made from the host's side (``ip link add HOST type veth peer name IF netns
            # NAME``): the end in our own namespace needs no namespace file to be opened
            net.add_veth_pair(run, peer_ifname, ifname, ns=None, peer_ns=name, addr=peer_addr,
                              peer_addr=addr)
        else:
            net.add_veth_pair(run, ifname, peer_ifname, ns=name, peer_ns=peer, addr=addr,
                              peer_addr=peer_addr)
        made = {"ifname": ifname, "peer": peer or "host", "peer_ifname": peer_ifname,
                "addr": addr, "peer_addr": peer_addr}
        if not run.explain:
            _record_veth(name, peer, made)
    return made


def _record_veth(name: str, peer: str | None, made: dict) -> None:
    """Note the veth in the record of ``name`` (and of ``peer``, its other end; a host end
    also among ``links``, which env-rm deletes). Locks held."""
    def mine(d: dict) -> None:
        d.setdefault("veths", []).append(dict(made, here=True))
        if peer is None:
            d.setdefault("links", []).append(made["peer_ifname"])
    update_state(name, mine)
    if peer:
        update_state(peer, lambda d: d.setdefault("veths", []).append(
            {"ifname": made["ifname"], "peer": name, "peer_ifname": made["peer_ifname"],
             "addr": made["addr"], "peer_addr": made["peer_addr"], "here": False}))


def _add_rootless_veth(run: Runner, name: str, peer: str, ifname: str | None,
                       peer_ifname: str | None, addr: str | None,
                       peer_addr: str | None) -> dict:
    """Without root: a veth between two environments of the user namespace all of this
    user's environments share (:mod:`recipes.env.userns`), made as root there; one with a
    user namespace of its own is refused in one line."""
    st = load(name, run, need="net")
    if run.explain:
        peer_st = load(peer, run, need="net")
        here = there = set()
    else:
        userns.check_shared(name, st, peer, read_state(peer))
        peer_st = load(peer, run, need="net")
        userns.check_shared(name, st, peer, peer_st)
        here, there = userns.links_of(st), userns.links_of(peer_st)
    st, peer_st = dict(st, name=name), dict(peer_st, name=peer)
    ifname = ifname or _default_ifname(here)
    peer_ifname = peer_ifname or _default_ifname(there)
    for link, links, env in ((ifname, here, name), (peer_ifname, there, peer)):
        if link in links:
            raise Conflict(f"environment {env!r} has a link {link!r} already",
                           hint="give another --ifname" if env == name
                           else "give another --peer-ifname")
    with lock_unless_explain(run, name, peer):
        userns.veth_pair(run, st, peer_st, ifname, peer_ifname, addr, peer_addr)
        made = {"ifname": ifname, "peer": peer, "peer_ifname": peer_ifname, "addr": addr,
                "peer_addr": peer_addr}
        if not run.explain:
            _record_veth(name, peer, made)
    return made


def rootless_veth_refusal(name: str) -> NsrError:
    """Without root no veth can link an environment to the host: its end there needs
    CAP_NET_ADMIN in the host's network namespace (a veth between two environments:
    :func:`recipes.env.userns.check_shared`)."""
    return NsrError(f"env-veth {name}: a veth end in the host's network namespace needs "
                    "root (CAP_NET_ADMIN there)",
                    hint="run it as root, or link two environments instead: invoke env-veth "
                         f"{name} --peer OTHER")


def make_queue(run: Runner, name: str) -> int:
    """Step: make a System V message queue inside the environment's IPC namespace
    (``ipcmk -Q``); returns its id there."""
    from recipes import ipc
    st = load(name, run, need="ipc")
    with lock_unless_explain(run, name):
        qid = ipc.make_queue_inside(run, holder_of(st))
        if not run.explain:
            update_state(name, lambda d: d.setdefault("queues", []).append(qid))
    return qid
