"""Environments: namespaces composed step by step and kept until removed (issue 4).

The document's sections each make one namespace and throw it away. An *environment* keeps a
set of them alive under a name, so that later steps can add to it, commands can be run in
it, and it can be listed and removed -- from the command line (``env-*`` tasks) or from a
provisioning script (:class:`Environment`).

This module is the public face: :func:`create`, :func:`list_envs`, :class:`Environment`,
and every step under its usual name. The rooms behind it, each read on its own:

* :mod:`recipes.env.state` -- names, the record ``/run/nsrecipes/NAME/env.json``, the locks,
  which processes belong to an environment;
* :mod:`recipes.env.holder` -- the holder process and the binds that keep the namespaces alive;
* :mod:`recipes.env.configure` -- the steps that make and change one (record, ``ip netns``
  name, lo, hostname, id maps, veths, queues); :mod:`recipes.env.mounts` -- its mounts;
* :mod:`recipes.env.enter` -- running a command inside (``env-exec``);
* :mod:`recipes.env.remove` -- removal (``env-rm``) and leftovers (``cleanup``);
* :mod:`recipes.env.subids` -- without root, ids of /etc/subuid ranges (newuidmap);
* :mod:`recipes.env.userns` -- without root, the user namespace a user's environments share
  (a per-user holder), and veths between them.

Without root (``Runner.rootless``) the same steps run with a user namespace first that owns
the others and a holder that alone keeps them; the record is in the user's own state
directory (``$XDG_RUNTIME_DIR/nsrecipes``), so a user sees, enters and removes only their
own environments, and root's never (nor root's ``cleanup`` a user's).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence

from nsutil import idmap, process, procfs
from nsutil.backend import Runner
from nsutil.errors import Conflict, InvalidInput, NotFound
from nsutil.rootless import decide, require_namespaces
from nsutil.errors import require_root
from nsutil.nstypes import NS_TYPES, NsType, flags_of, parse_types
from nsutil.netlink import NETNS_RUN_DIR

from recipes.env.enter import env_nsenter_argv, exec_in
from recipes.env.holder import (REAPER, bind_argvs, binds_by_unshare, bound_later,
                      start_env_holder, env_unshare_argv)
from recipes.env.mounts import add_mount, bind_mount, mount_tmpfs
from recipes.env.remove import leftovers, remove, stat_is_empty_file
from recipes.env.state import (KIND, SECTION, STATE_FILE, anchor_inodes, base_dir,
                       bound_inodes, check_env_name, devnull, env_dir, global_lock,
                       holder_alive, members, names, ns_file, proc_table, processes,
                       read_state, release_lock, rootless_members, update_state)
from recipes.env.configure import (add_veth, attach_netns, check_maps, rootless_maps,
                       check_uts_options, loopback_up, make_queue, record, set_hostname,
                       set_idmap, set_uts, write_maps)

DEFAULT_TYPES = "uts,ipc,pid,mnt,net"


# --- create ---------------------------------------------------------------------------------

def create(run: Runner, name: str, ns: str | Sequence[str] = DEFAULT_TYPES, *,
           hostname: str | None = None, domainname: str | None = None,
           uid_map: str | None = None, gid_map: str | None = None) -> dict:
    """Steps: create environment ``name`` with new namespaces of types ``ns`` and keep it.

    ``uid_map``/``gid_map`` (``"0:1000:1,..."``) apply when ``user`` is among the types;
    without them uid/gid 0 inside map to the caller's ids (``unshare --map-root-user``);
    ``gid_map`` defaults to the ranges of ``uid_map`` when that is given;
    ``"none"`` leaves the maps unwritten for a later :func:`set_idmap`. Everything is
    checked before anything is made; a failure half-way removes what was made.
    Returns the record (``env-ls`` shows it).

    Without root (``run.rootless``) a user and a mount namespace are always among the types:
    the user namespace owns the others -- the one all of this user's environments share
    (this user mapped to 0), or with ``uid_map`` one of its own -- and the holder keeps them
    all; the record lives in the user's state directory.
    """
    check_env_name(name)
    types = parse_types(ns)
    uts_options = check_uts_options(hostname, domainname)
    if uts_options and all(t.name != "uts" for t in types):
        raise InvalidInput(f"{uts_options} needs a UTS namespace", hint="add uts to --ns")
    added = []
    if run.rootless:
        added = [t for t in ("user", "mnt") if all(x.name != t for x in types)]
        types = parse_types([t.name for t in types] + added)
    umaps, gmaps, helper = _maps_for(types, uid_map, gid_map, rootless=run.rootless)
    if not run.explain:
        require_namespaces("env-create")
        _check_name_free(name, types, rootless=run.rootless)

    run.heading(f"environment {name}: new {'+'.join(t.name.upper() for t in types)} namespaces")
    if run.rootless:              # the heading said the owner line (once per process)
        if added:
            why = {"user": "a user namespace owns the others",
                   "mnt": "the holder keeps a mount namespace of its own"}
            run.say(f"({' and '.join(added)} added to --ns: without root "
                    f"{', and '.join(why[t] for t in added)})")
    record(run, name, types)
    try:
        rec = start_env_holder(run, name, types, map_root=run.rootless and uid_map is None)
        if not run.explain:
            update_state(name, lambda d: d.update(rec))
        holder = process.Holder(rec["holder"]["pid"], rec["parent"]["pid"], flags_of(types))
        if umaps:
            write_maps(run, name, holder, umaps, gmaps or [], helper=helper)
        if hostname or domainname:
            set_uts(run, name, holder, hostname=hostname or None, domainname=domainname or None)
        if any(t.name == "net" for t in types):
            _net_steps(run, name, holder)
        done = (update_state(name, lambda d: d.update(status="ready")) if not run.explain
                else {"name": name, "types": [t.name for t in types]})
        run.say(f"environment {name} is ready: holder pid {holder.pid}; enter it with "
                f"`invoke env-exec {name} -- CMD`")
        return done
    finally:
        release_lock(name)


def _maps_for(types: Sequence[NsType], uid_map: str | None, gid_map: str | None, *,
              rootless: bool = False) -> tuple[list[idmap.IdMap], list[idmap.IdMap], bool]:
    """The uid and gid maps to write ([] for none), checked against the kernel's rules, and
    whether newuidmap/newgidmap write them; ``rootless``: none by default (the holder's
    ``unshare --map-root-user`` maps this user), else :func:`rootless_maps`."""
    umaps, gmaps = check_maps(uid_map, "--uid-map"), check_maps(gid_map, "--gid-map")
    if all(t.name != "user" for t in types):
        if umaps or gmaps:
            raise InvalidInput("--uid-map/--gid-map need a user namespace",
                               hint="add user to --ns")
        return [], [], False
    if rootless:
        if umaps is None and gmaps is not None:
            raise InvalidInput("--gid-map without --uid-map: without root the holder maps "
                               "your own uid and gid to 0 itself", hint="give both, or neither")
        if not umaps:        # not given (mapped by the holder) or none (left for env-idmap)
            return [], [], False
        return rootless_maps(umaps, gmaps)
    if umaps is None:
        umaps = [idmap.IdMap(0, os.geteuid(), 1)]
    if gmaps is None:  # the same ranges as given for uids, else root's own gid
        gmaps = list(umaps) if uid_map else [idmap.IdMap(0, os.getegid(), 1)]
    return umaps, gmaps, False


def _check_name_free(name: str, types: Sequence[NsType], *, rootless: bool = False) -> None:
    """No environment of that name, and (as root) no foreign ``ip netns`` name it would take."""
    if read_state(name) is not None or os.path.lexists(env_dir(name)):
        raise Conflict(f"environment {name!r} exists already",
                       hint=f"remove it first (invoke env-rm {name}) or pick another name")
    if (not rootless and any(t.name == "net" for t in types)
            and os.path.lexists(os.path.join(NETNS_RUN_DIR, name))):
        raise Conflict(f"network namespace {name!r} exists already (ip netns list)",
                       hint="pick another name: the environment's netns takes its name")


def _net_steps(run: Runner, name: str, holder: process.Holder) -> None:
    """Steps: the netns gets the environment's name in ``ip netns``, and lo is brought up.
    Without root there is no ``ip netns`` name (/run/netns is root's): lo is brought up by
    joining the holder's namespaces."""
    if run.rootless:
        loopback_up(run, name, holder)
        return
    if not run.explain:
        update_state(name, lambda d: d.update(netns=name))
    attach_netns(run, name, holder.pid)
    loopback_up(run, name)


# --- listing --------------------------------------------------------------------------------

def describe(name: str, table: dict[int, dict[str, int]] | None = None) -> dict:
    """What ``env-ls`` shows for one environment."""
    st = read_state(name) or {"name": name, "types": [], "status": "broken"}
    bound = anchor_inodes(name, st)
    alive = holder_alive(st)
    pids = rootless_members(st, table) if st.get("rootless") else members(bound, table)
    if st.get("status") == "creating":
        creator = st.get("creator")
        status = "creating" if procfs.same_process(creator) or alive else "broken"
    else:
        status = "alive" if alive else "dead"
    created = st.get("created")
    return {
        "name": name, "pid": (st.get("holder") or {}).get("pid"), "state": status,
        "ns": {t: bound.get(t) for t in st.get("types", [])},
        "nprocs": len(pids), "pids": pids,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) if created else None,
        "netns": st.get("netns"), "hostname": st.get("hostname"),
        "veths": st.get("veths", []), "mounts": st.get("mounts", []),
        "queues": st.get("queues", []), "uid_map": st.get("uid_map"),
        "gid_map": st.get("gid_map"), "backend": st.get("backend"),
        "rootless": bool(st.get("rootless")),
    }


def list_envs() -> list[dict]:
    """Every environment, as :func:`describe` shows it (one pass over /proc for all): as
    root, root's; without root, the user's own (the state directory is theirs)."""
    if not decide():
        require_root("env-ls")
    found = names()
    table = proc_table() if found else {}
    return [describe(n, table) for n in found]


def format_table(rows: list[dict]) -> str:
    """A table like ``lsns``: NAME PID STATE NPROCS CREATED NAMESPACES."""
    head = f"{'NAME':<20} {'PID':>7} {'STATE':<8} {'NPROCS':>6} {'CREATED':<19} NAMESPACES"
    lines = [head]
    for r in rows:
        ns = " ".join(f"{t}:{ino if ino else '-'}" for t, ino in r["ns"].items())
        lines.append(f"{r['name']:<20} {str(r['pid'] or '-'):>7} {r['state']:<8} "
                     f"{r['nprocs']:>6} {r['created'] or '-':<19} {ns}")
    return "\n".join(lines)


def format_json(rows: list[dict]) -> str:
    """``{"environments": [...]}``, like ``lsns --json``."""
    return json.dumps({"environments": rows}, indent=2)


# --- the Python API -------------------------------------------------------------------------

class Environment:
    """A named environment kept by a holder; the steps are methods.

    ::

        with Environment.create("nsr-web", "uts,ipc,pid,mnt,net", hostname="web") as web:
            web.add_veth(addr="10.0.0.1/24", peer_addr="10.0.0.2/24")
            print(web.exec(["hostname"]).stdout)
        # removed here

    ``backend`` is ``auto``, ``shell`` or ``native`` (as ``--backend``).
    """

    def __init__(self, name: str, *, backend: str | None = None, run: Runner | None = None):
        self.name = check_env_name(name)
        self.run = run or Runner(backend=backend, keep=True, out=devnull())

    @classmethod
    def create(cls, name: str, ns: str | Sequence[str] = DEFAULT_TYPES, *,
               hostname: str | None = None, domainname: str | None = None,
               uid_map: str | None = None, gid_map: str | None = None,
               backend: str | None = None, run: Runner | None = None) -> "Environment":
        """Create the environment (see :func:`create`) and return it."""
        env = cls(name, backend=backend, run=run)
        with Runner(backend=env.run.backend, keep=True, out=env.run.out) as r:
            create(r, name, ns, hostname=hostname, domainname=domainname, uid_map=uid_map,
                   gid_map=gid_map)
        return env

    @classmethod
    def open(cls, name: str, *, backend: str | None = None) -> "Environment":
        """An existing environment (raises :class:`NotFound` when there is none)."""
        env = cls(name, backend=backend)
        if read_state(name) is None:
            raise NotFound(f"environment {name!r} does not exist", hint="see `invoke env-ls`")
        return env

    # -- what it is ---------------------------------------------------------------------
    @property
    def state(self) -> dict:
        """The record as stored now."""
        st = read_state(self.name)
        if st is None:
            raise NotFound(f"environment {self.name!r} does not exist", hint="see `invoke env-ls`")
        return st

    @property
    def pid(self) -> int:
        """Host pid of the holder (``nsenter -t PID``)."""
        return int(self.state["holder"]["pid"])

    @property
    def types(self) -> list[str]:
        """Its namespace types."""
        return list(self.state["types"])

    def alive(self) -> bool:
        """True while its holder runs."""
        st = read_state(self.name)
        return bool(st) and holder_alive(st)

    def info(self) -> dict:
        """What ``env-ls`` shows for it."""
        return describe(self.name)

    def processes(self) -> list[int]:
        """Host pids of its processes."""
        return processes(self.name)

    # -- steps --------------------------------------------------------------------------
    def _step(self, fn: Callable, *args: Any, **kw: Any) -> Any:
        with Runner(backend=self.run.backend, keep=True, out=self.run.out) as r:
            return fn(r, self.name, *args, **kw)

    def set_hostname(self, hostname: str | None = None, domainname: str | None = None) -> None:
        """Set its hostname and/or NIS domain name."""
        self._step(set_hostname, hostname, domainname)

    def set_idmap(self, uid_map: str, gid_map: str | None = None) -> None:
        """Write its uid/gid maps (once)."""
        self._step(set_idmap, uid_map, gid_map)

    def add_veth(self, peer: "Environment | str | None" = None, **kw: Any) -> dict:
        """A veth to the host (``peer=None``) or to another environment; see :func:`add_veth`."""
        other = peer.name if isinstance(peer, Environment) else peer
        return self._step(add_veth, other, **kw)

    def mount_tmpfs(self, target: str, size: str | None = None, *,
                    readonly: bool = False) -> None:
        """A tmpfs on ``target`` inside (``size`` like ``16m`` or ``50%``)."""
        self._step(mount_tmpfs, target, size, readonly=readonly)

    def bind_mount(self, source: str, target: str, readonly: bool = False, *,
                   recursive: bool = False) -> None:
        """Bind ``source`` on ``target`` inside; ``recursive`` with the mounts below it
        (read-only in each of them with ``readonly``)."""
        self._step(bind_mount, source, target, readonly, recursive=recursive)

    def make_queue(self) -> int:
        """A System V message queue inside; returns its id."""
        return self._step(make_queue)

    def exec(self, argv: Sequence[str] | None = None, *, capture: bool = True,
             input: str | bytes | None = None, cwd: str | None = None,
             check: bool = False) -> process.Completed:
        """Run a command inside; ``check`` raises on a non-zero exit."""
        done = self._step(exec_in, argv, capture=capture, input=input, cwd=cwd)
        return done.check() if check else done

    def remove(self, missing_ok: bool = False) -> dict:
        """Remove it (processes, links, binds, record)."""
        return self._step(remove, missing_ok=missing_ok)

    def __enter__(self) -> "Environment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove(missing_ok=True)

    def __repr__(self) -> str:
        return f"Environment({self.name!r})"


__all__ = [
    # the API
    "DEFAULT_TYPES", "Environment", "create", "describe", "format_json", "format_table",
    "list_envs",
    # the steps (recipes.env.configure, envmount, envexec, envremove)
    "add_mount", "add_veth", "bind_mount", "exec_in", "leftovers", "make_queue", "mount_tmpfs",
    "env_nsenter_argv", "remove", "set_hostname", "set_idmap",
    # state, holders and helpers (recipes.env.state, envhold), as before the split
    "KIND", "NS_TYPES", "REAPER", "SECTION", "STATE_FILE", "base_dir",
    "bind_argvs", "binds_by_unshare", "bound_inodes", "bound_later", "check_env_name",
    "env_dir", "global_lock", "holder_alive", "names", "ns_file", "processes", "read_state",
    "stat_is_empty_file", "env_unshare_argv",
]
