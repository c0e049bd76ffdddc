"""Cleanup: remove what nsrecipes left broken or orphaned, and keep what is in use.

What nsrecipes made is decided by its records, not by the ``nsr`` prefix alone: each recipe
module's ``leftovers()`` names candidates, and of the network objects only those that a
net-veth or topology record names count (a netns ``nsr-x`` that no record names is someone
else's: it is never touched; an environment's own netns and host links go with it). The
rest are records themselves (environments and containers under the state directory) or
carry the prefix where only nsrecipes puts it (``nsr*`` cgroups, ``nsr-cow-*`` and
root-owned ``nsr-user-*`` scratch directories).

:func:`sweep` keeps what is in use (``everything`` keeps nothing, as ``cleanup --all``):

* an environment whose holder runs, or which its creator is still making;
* a net-veth pair that is complete (both namespaces, the pair, its addresses) and a topology
  whose namespaces all exist with their addresses and ``lo`` up -- or either still being
  built: its creator (``creator`` in the record) runs, or the record is younger than
  :data:`GRACE` seconds;
* a container whose tool's process (or supervisor) runs (no record yet: younger than
  :data:`GRACE`), and one that exited (its supervisor, or ``container-run --no-rm``,
  recorded the exit code: ``container-rm`` removes it); one whose tool or supervisor died
  goes;
* a cgroup with processes in it, or younger than :data:`GRACE`, and nsrecipes' v2 parent
  while any cgroup stays in it;
* a scratch directory younger than :data:`GRACE` (nothing records which process made it);
* the namespaces a demo or a pytest fixture made (``net/demo-*.json``) while its creator runs;
* the record of a lab across machines (``net/machines-*.json``) while any of its machines
  has a part of it or cannot be asked (each machine's own ``cleanup`` removes its parts).
"""
from __future__ import annotations

import importlib
import os
import stat
import tempfile
import time
from dataclasses import dataclass, field

from nsutil import cgroupfs, state
from nsutil import procfs
from nsutil import netlink as nl
from nsutil.errors import Conflict, NsrError
from nsutil.names import PREFIX

from recipes.container import state as containerstate
from recipes import cow
from recipes import env
from recipes import net
from recipes.labs import build as topo
from recipes.labs import userlab
from recipes import veth
from recipes.common.leftover import Leftover

#: modules asked for leftovers, in removal order
PROVIDERS = ["recipes.env", "recipes.container", "recipes.cgroup", "recipes.cow",
             "recipes.labs.userlab", "recipes.net", "recipes.images"]
#: seconds during which something no record ties to a live process may still be in the making
#: ($NSR_CLEANUP_GRACE; the tests set it long, since an emulated machine is slow)
GRACE = float(os.environ.get("NSR_CLEANUP_GRACE", "60"))
#: the directories user-demo makes in the temporary directory (tempfile.mkdtemp)
USER_SCRATCH = f"{PREFIX}-user-"

Key = tuple[str, str]   # (Leftover.kind, Leftover.name)


@dataclass
class Kept:
    """Something in use that ``cleanup`` leaves (``cleanup --all`` removes it)."""

    kind: str                                       # env, net-veth, topology, container, ...
    name: str
    why: str                                        # what shows it is in use
    claims: set[Key] = field(default_factory=set)   # the leftovers that belong to it


@dataclass
class Sweep:
    """What one cleanup does: ``remove`` (in removal order), and what it keeps."""

    remove: list[Leftover]
    kept: list[Kept]


# --- what nsrecipes made ----------------------------------------------------------------------

def candidates() -> list[Leftover]:
    """Everything nsrecipes made, as its records name it, in removal order."""
    recorded = net.recorded_netns()
    containers = containerstate.recorded_cgroups()
    found: list[Leftover] = []
    for name in PROVIDERS:
        found.extend(importlib.import_module(name).leftovers())
    found.extend(user_scratch())
    return [item for item in found if _made_by_us(item, recorded) and _users_own(item)
            and not (item.kind == "cgroup" and item.name in containers)]


def _users_own(item: Leftover) -> bool:
    """Without root, a cgroup or directory is the user's to remove only if the user owns it
    (root's are root's, whatever their name); as root, everything nsrecipes made."""
    from nsutil import rootless
    if item.kind not in ("cgroup", "dir") or not rootless.decide():
        return True
    try:
        return os.stat(item.name).st_uid == os.geteuid()
    except OSError:
        return False


def _made_by_us(item: Leftover, recorded_netns: set[str]) -> bool:
    if item.kind == "netns":
        return item.name in recorded_netns
    if item.kind == "etc-netns":
        return os.path.basename(item.name) in recorded_netns
    # a host link: an environment's (its record names it, env-rm deletes it) or not ours
    return item.kind != "link"


def user_scratch() -> list[Leftover]:
    """The root-owned ``nsr-user-*`` directories user-demo makes in /tmp (or $TMPDIR) and a
    killed run leaves behind."""
    found = []
    for tmp in sorted({"/tmp", tempfile.gettempdir()}):
        entries = sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []
        for path in (os.path.join(tmp, e) for e in entries if e.startswith(USER_SCRATCH)):
            if _root_owned_dir(path):
                found.append(Leftover("dir", path, lambda p=path: cow.remove_tree(p)))
    return found


def _root_owned_dir(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == 0


# --- what is in use ---------------------------------------------------------------------------


def _runs_why(rec: object, what: str) -> str | None:
    if procfs.same_process(rec):
        return f"{what} {rec['pid']} runs"
    return None


def _age(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return float("inf")


def _young_why(path: str, what: str) -> str | None:
    age = _age(path)
    return f"{what} {age:.0f} s ago (in use? kept for {GRACE:.0f} s)" if age < GRACE else None


def _envs_in_use(items: list[Leftover]) -> list[Kept]:
    names = set(env.names())
    kept = []
    for item in items:
        st = env.read_state(item.name) if item.kind == "env" and item.name in names else None
        if st is None:
            continue   # not an environment's record (half-made ones are listed as dead only)
        if st.get("status") == "creating":
            why = _runs_why(st.get("creator"), "being made by pid")
        else:
            why = _runs_why(st.get("holder"), "holder")
        if why:
            kept.append(Kept("env", item.name, why, {("env", item.name)}))
    return kept


def _net_records(prefix: str) -> list[tuple[str, dict]]:
    """(path, record) of the network records whose file name starts with ``prefix``."""
    base = state.state_dir("net", create=False)
    out = []
    for entry in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, entry)
        if entry.startswith(prefix) and entry.endswith(".json"):
            try:
                rec = state.read_json(path)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append((path, rec))
    return out


def _being_built(path: str, rec: dict) -> str | None:
    if rec.get("creator"):
        return _runs_why(rec["creator"], "being built by pid")
    return _young_why(path, "recorded")


def _net_claims(path: str, names: list[str]) -> set[Key]:
    claims = {("state", path)}
    for name in names:
        claims |= {("netns", name), ("etc-netns", os.path.join(net.ETC_NETNS, name))}
    return claims


def _pair_complete(rec: dict) -> str | None:
    try:
        veth.veth_status(rec["name"], rec["peer"], rec["addr"], rec["peer_addr"])
    except Conflict:
        return None
    return "complete"


def _lab_of_user(rec: dict) -> bool:
    """A lab without root (held by a process of the user's; nothing of it on the host)."""
    from nsutil import rootless
    return bool(rec.get("holder")) or rootless.decide()


def _pairs_in_use() -> list[Kept]:
    kept = []
    for path, rec in _net_records("veth-"):
        if not {"name", "peer", "addr", "peer_addr"} <= set(rec):
            continue
        if _lab_of_user(rec):
            why = userlab.why_kept(rec)
            if why:
                kept.append(Kept("net-veth", f"{rec['name']}<->{rec['peer']}", why,
                                 userlab.claims(path, rec)))
            continue
        why = _pair_complete(rec) or _being_built(path, rec)
        if why:
            kept.append(Kept("net-veth", f"{rec['name']}<->{rec['peer']}", why,
                             _net_claims(path, [rec["name"], rec["peer"]])))
    return kept


def topology_complete(plan: topo.Plan) -> bool:
    """Every namespace of ``plan`` exists with ``lo`` up and its hosts' addresses (what a
    build does last, on both backends)."""
    addrs = plan.addrs()
    short = {ns: host for host, ns in plan.hosts.items()}
    for ns in plan.all_netns():
        if not nl.netns_exists(ns):
            return False
        links = nl.links(ns)
        have = {a for ln in links for a in ln["addrs"]}
        if not any(ln["name"] == "lo" and ln["up"] for ln in links):
            return False
        if not set(addrs.get(short.get(ns, ""), [])) <= have:
            return False
    return True


def _topologies_in_use() -> list[Kept]:
    kept = []
    for path, rec in _net_records("topo-"):
        try:
            plan = topo.Plan.from_json(rec)
        except (KeyError, TypeError, ValueError):
            continue
        if _lab_of_user(rec):
            why = userlab.why_kept(rec)
            if why:
                kept.append(Kept("topology", plan.scope, why, userlab.claims(path, rec)))
            continue
        # a machine's part of a lab across machines (its record names the machine) counts
        # once the controller has committed it
        done = topology_complete(plan) and (not rec.get("machines") or rec.get("committed"))
        why = (f"complete ({len(plan.all_netns())} namespaces)" if done
               else _being_built(path, rec))
        if why:
            kept.append(Kept("topology", plan.scope, why, _net_claims(path, plan.all_netns())))
    return kept


def _machine_labs_in_use() -> list[Kept]:
    """The labs across machines recorded here (``net/machines-*.json``, their parts are on
    other machines): kept while being built, and while a machine still has a part or cannot
    be asked (see :func:`recipes.labs.machines.controller.why_keep`); removed once no machine has any."""
    from recipes.labs.machines import controller as machines
    kept = []
    for path, rec in _net_records("machines-"):
        try:
            plan = topo.Plan.from_json(rec)
        except (KeyError, TypeError, ValueError):
            continue
        why = _being_built(path, rec) or machines.why_keep(plan)
        if why:
            kept.append(Kept("machine-lab", plan.scope, why, {("state", path)}))
    return kept


def _demos_in_use() -> list[Kept]:
    """The namespaces a running demo (net-demo, the tour's pair) has made and will remove."""
    kept = []
    for path, rec in _net_records("demo-"):
        why = _being_built(path, rec)
        if why:
            names = [n for n in rec.get("netns", []) if isinstance(n, str)]
            kept.append(Kept("net-demo", " ".join(names), why, _net_claims(path, names)))
    return kept


def _containers() -> dict[str, dict]:
    """Container name -> its record (only ``name`` and ``dir`` before it is written)."""
    return {st["name"]: st for st in containerstate.states()}


def _container_why(st: dict) -> str | None:
    if "exit_code" in st:     # exited (detached, or --no-rm): kept until container-rm
        return f"exited ({st['exit_code']}); `invoke container-rm {st['name']}` removes it"
    if "creator" not in st and "pid" not in st:   # not recorded yet -- or its tool died first
        return _young_why(st["dir"], "made")
    for pid_key, start_key in (("pid", "starttime"), ("pid1", "pid1_starttime")):
        if procfs.same_process({"pid": st.get(pid_key), "start": st.get(start_key)}):
            return f"runs (pid {st[pid_key]})"
    return _runs_why(st.get("creator"), "its tool")


def _containers_in_use(items: list[Leftover]) -> list[Kept]:
    records = _containers()
    kept = []
    for item in (i for i in items if i.kind == "container" and i.name in records):
        why = _container_why(records[item.name])
        if why:
            kept.append(Kept("container", item.name, why, {("container", item.name)}))
    return kept


def _cgroup_why(directory: str) -> str | None:
    try:
        procs = cgroupfs.procs_of(directory)
    except NsrError:
        return None   # gone meanwhile
    if procs:
        return f"{len(procs)} process{'es' * (len(procs) > 1)} in it"
    return _young_why(directory, "made")


def _cgroups_in_use(items: list[Leftover]) -> list[Kept]:
    kept = []
    for item in items:
        if item.kind == "cgroup" and os.path.basename(item.name) != cgroupfs.PARENT_NAME:
            why = _cgroup_why(item.name)
            if why:
                kept.append(Kept("cgroup", item.name, why, {("cgroup", item.name)}))
    return kept


def _scratch_in_use(items: list[Leftover]) -> list[Kept]:
    kept = []
    for item in (i for i in items if i.kind == "dir"):
        why = _young_why(item.name, "made")
        if why:
            below = {("mount", i.name) for i in items if i.kind == "mount"
                     and i.name.startswith(item.name.rstrip("/") + "/")}
            kept.append(Kept("dir", item.name, why, {("dir", item.name)} | below))
    return kept


def _busy_parents(items: list[Leftover], remove: list[Leftover]) -> list[Kept]:
    """nsrecipes' v2 parent cgroup stays while a cgroup that is not removed is in it."""
    going = {i.name for i in remove if i.kind == "cgroup"}
    records = _containers()
    for item in (i for i in remove if i.kind == "container"):
        going.update(records.get(item.name, {}).get("cgroup", []))
    kept = []
    for item in items:
        if item.kind == "cgroup" and os.path.basename(item.name) == cgroupfs.PARENT_NAME:
            try:
                inside = [e.path for e in os.scandir(item.name) if e.is_dir()]
            except OSError:
                continue
            staying = [d for d in inside if d not in going]
            if staying:
                kept.append(Kept("cgroup", item.name, f"{len(staying)} of its cgroups stay",
                                 {("cgroup", item.name)}))
    return kept


def in_use(items: list[Leftover]) -> list[Kept]:
    """What of ``items`` is in use (healthy, running, or still being made)."""
    return (_envs_in_use(items) + _pairs_in_use() + _topologies_in_use() + _demos_in_use()
            + _machine_labs_in_use()
            + _containers_in_use(items) + _cgroups_in_use(items) + _scratch_in_use(items))


def _without(items: list[Leftover], kept: list[Kept]) -> list[Leftover]:
    claimed = {key for k in kept for key in k.claims}
    return [i for i in items if (i.kind, i.name) not in claimed]


def sweep(everything: bool = False) -> Sweep:
    """What ``cleanup`` removes and keeps: only the broken and orphaned, or with
    ``everything`` all that nsrecipes made (nothing is removed here)."""
    items = candidates()
    if everything:
        return Sweep(items, [])
    kept = in_use(items)
    remove = _without(items, kept)
    parents = _busy_parents(items, remove)
    return Sweep(_without(remove, parents), kept + parents)


def find(everything: bool = False) -> list[Leftover]:
    """What :func:`sweep` would remove (nothing is removed)."""
    return sweep(everything).remove


def remove_all(dry_run: bool = False, items: list[Leftover] | None = None
               ) -> tuple[list[Leftover], list[tuple[Leftover, NsrError]]]:
    """Remove ``items`` (default: :func:`find`), or only list them; returns (removed, failed)."""
    removed: list[Leftover] = []
    failed: list[tuple[Leftover, NsrError]] = []
    for item in find() if items is None else items:
        if dry_run:
            removed.append(item)
            continue
        try:
            item.remove()
            removed.append(item)
        except NsrError as exc:
            failed.append((item, exc))
    if not dry_run:
        state.prune()
    return removed, failed


# --- what the CLI prints ----------------------------------------------------------------------

def plan_lines(plan: Sweep, dry_run: bool) -> list[str]:
    """One line per object to remove, then one per thing kept and why (printed first)."""
    verb = "would remove" if dry_run else "removing"
    return ([f"{verb} {i.kind} {i.name}" for i in plan.remove]
            + [f"keeping {k.kind} {k.name}: {k.why}" for k in plan.kept])


def summary(removed: list[Leftover], failed: list[tuple[Leftover, NsrError]], kept: list[Kept],
            dry_run: bool) -> str:
    """The last line: how many were removed (or would be), failed, and kept in use."""
    if not removed and not failed:
        text = "nothing to clean up"
    elif dry_run:
        text = f"{len(removed)} to remove"
    else:
        text = f"{len(removed)} removed, {len(failed)} failed"
    if kept:
        text += f"; {len(kept)} kept in use (`invoke cleanup --all` removes them too)"
    return text
