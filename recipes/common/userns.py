"""The user namespace of a rootless run: which ids exist inside, and how a process gets there.

Without root, every other namespace is owned by a user namespace made first. How many ids
it holds decides what a container can do:

* **only this user, as root** (``unshare --user --map-root-user``): uid 0 inside is the user
  outside, and no other id exists -- ``setuid(1000)`` fails with EINVAL;
* **a subordinate range** (podman's default): with an entry for the user in ``/etc/subuid``
  and ``/etc/subgid`` (``NAME:START:COUNT``) and the setuid helpers ``newuidmap`` and
  ``newgidmap`` of the uidmap package, uid 0 inside is the user and uids 1..65535 map to
  ``START..START+65534`` -- so ``--user 1000`` is a real, distinct uid. Only root (or those
  helpers, which check the files) may write such a map: the process in the new namespace
  tells its parent it is ready, the parent runs the helpers on its PID, then lets it go on.

Also here: the step that runs a whole demo in a forked process that made a user and a mount
namespace first (the demo's mounts then live and die with that process).
"""
from __future__ import annotations

import os
import pwd
import sys
from dataclasses import dataclass
from typing import Any, Callable

from nsutil import idmap
from nsutil import process
from nsutil import programs
from nsutil import rootless
from nsutil import shell as nshell
from nsutil import syscalls as sc
from nsutil.backend import Runner, Step
from nsutil.errors import NsrError

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
#: ids a container has inside with a subordinate range: 0 (the user) and 1..65535
INSIDE_IDS = 65536
HELPERS = ("newuidmap", "newgidmap")


@dataclass(frozen=True)
class IdPlan:
    """The uid and gid maps of a rootless container's user namespace."""

    uid_maps: tuple[idmap.IdMap, ...]
    gid_maps: tuple[idmap.IdMap, ...]

    @property
    def helpers(self) -> bool:
        """True when the maps need newuidmap/newgidmap (more than the user's own id)."""
        return len(self.uid_maps) > 1 or len(self.gid_maps) > 1

    def describe(self) -> str:
        """``0 -> 65534, 1-65535 -> 100000-165534`` (uids)."""
        parts = []
        for m in self.uid_maps:
            inside = f"{m.inside}" if m.count == 1 else f"{m.inside}-{m.inside + m.count - 1}"
            outside = f"{m.outside}" if m.count == 1 else f"{m.outside}-{m.outside + m.count - 1}"
            parts.append(f"{inside} -> {outside}")
        return ", ".join(parts)


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def subordinate_range(path: str, uid: int) -> tuple[int, int] | None:
    """(start, count) of the first ``NAME:START:COUNT`` (or ``UID:START:COUNT``) line of
    ``path`` for ``uid``; None when there is none (or the file is missing)."""
    keys = {str(uid)} | ({_user_name(uid)} - {None})
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in keys and fields[1].isdigit() and fields[2].isdigit():
            return int(fields[1]), int(fields[2])
    return None


def root_only() -> IdPlan:
    """The maps of ``unshare --user --map-root-user``: 0 inside is this user, nothing else."""
    return IdPlan((idmap.IdMap(0, rootless.outside_uid(), 1),),
                  (idmap.IdMap(0, rootless.outside_gid(), 1),))


def missing_for_range() -> list[str]:
    """What a subordinate id range lacks here (empty: nothing, it can be used)."""
    uid, gid = rootless.outside_uid(), rootless.outside_gid()
    who = _user_name(uid) or str(uid)
    missing = [f"no {path} entry for {who}" for path, owner in ((SUBUID, uid), (SUBGID, gid))
               if _short(subordinate_range(path, owner if path == SUBUID else uid))]
    missing += [f"{tool} (package uidmap) is not installed" for tool in HELPERS
                if programs.which(tool) is None]
    return missing


def _short(found: tuple[int, int] | None) -> bool:
    return found is None or found[1] < INSIDE_IDS - 1


def with_range() -> IdPlan:
    """The maps with this user's subordinate ranges: 0 -> the user, 1..65535 -> the range
    (call :func:`missing_for_range` first)."""
    uid, gid = rootless.outside_uid(), rootless.outside_gid()
    ustart, _ = subordinate_range(SUBUID, uid) or (0, 0)
    gstart, _ = subordinate_range(SUBGID, uid) or (0, 0)
    count = INSIDE_IDS - 1
    return IdPlan((idmap.IdMap(0, uid, 1), idmap.IdMap(1, ustart, count)),
                  (idmap.IdMap(0, gid, 1), idmap.IdMap(1, gstart, count)))


def widest() -> IdPlan:
    """The widest maps this user can have: the subordinate range where it is usable, else
    only the user (for removing what any container of this user left)."""
    return root_only() if missing_for_range() else with_range()


def plan_for(what: str, ids: list[int]) -> IdPlan:
    """The maps a rootless container needs to hold ``ids`` (uids and gids it will take):
    only the user as root when that is all, else the subordinate range -- or one line naming
    what is missing for it."""
    if all(i == 0 for i in ids):
        return root_only()
    missing = missing_for_range()
    if missing:
        wanted = max(ids)
        who = _user_name(rootless.outside_uid()) or str(rootless.outside_uid())
        raise NsrError(
            f"{what}: without root, id {wanted} exists in the container only through a "
            f"subordinate id range of uid {rootless.outside_uid()}: {'; '.join(missing)}",
            hint=f"sudo apt-get install uidmap; sudo usermod --add-subuids 100000-165535 "
                 f"--add-subgids 100000-165535 {who}; or leave --user out (root inside is "
                 f"uid {rootless.outside_uid()} outside)")
    return with_range()


def helper_argv(tool: str, pid: int | str, maps: tuple[idmap.IdMap, ...]) -> list[str]:
    """``newuidmap PID 0 65534 1 1 100000 65535``."""
    return [tool, str(pid)] + [str(x) for m in maps for x in (m.inside, m.outside, m.count)]


def display(plan: IdPlan, pid: str = "$PID") -> str:
    """How the maps are written, as a command line."""
    if not plan.helpers:
        return "unshare --user --map-root-user"
    return (f"unshare --user; {' '.join(helper_argv('newuidmap', pid, plan.uid_maps))}; "
            f"{' '.join(helper_argv('newgidmap', pid, plan.gid_maps))}")


# --- the two sides of making a mapped user namespace ------------------------------------------

@dataclass
class Handshake:
    """Pipes between a process that makes a user namespace and its parent that maps it."""

    ready_r: int
    ready_w: int
    go_r: int
    go_w: int

    @classmethod
    def open(cls) -> "Handshake":
        """Two pipes: ready (child -> parent), go (parent -> child)."""
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        return cls(ready_r, ready_w, go_r, go_w)

    def close(self, *names: str) -> None:
        """Close the named ends (those of the other side after the fork)."""
        for name in names:
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


def enter(plan: IdPlan, shake: Handshake | None) -> None:
    """In the (single-threaded, freshly forked) process that will own the container's
    namespaces: make its user namespace and have it mapped -- by itself when only the user is
    mapped (:func:`nsutil.rootless.become_root_in_userns`), else by the parent through
    ``shake`` (newuidmap needs a PID outside the namespace to call it). Root inside then."""
    if not plan.helpers or shake is None:
        rootless.become_root_in_userns()
        return
    shake.close("ready_r", "go_w")
    sc.unshare(sc.CLONE_NEWUSER)
    os.write(shake.ready_w, b"R")
    shake.close("ready_w")
    answer = process.read_all(shake.go_r)
    shake.close("go_r")
    if answer != b"G":
        os._exit(125)   # the parent could not map us: it reports why
    process.become_root_inside()


def map_child(run: Runner | None, plan: IdPlan, pid: int, shake: Handshake) -> None:
    """Steps (the parent): once the child made its user namespace, write its maps with
    newuidmap and newgidmap (setuid root; they check /etc/subuid and /etc/subgid), then let it
    go on. A command on both backends: only root can write such a map itself. With ``run``
    None the helpers just run (inside another step)."""
    shake.close("ready_w", "go_r")
    try:
        if process.read_all(shake.ready_r) != b"R":
            raise NsrError("the container's first process died before its user namespace "
                           "was mapped", hint="see the error below it, or the kernel log")
        for tool, maps in (("newuidmap", plan.uid_maps), ("newgidmap", plan.gid_maps)):
            argv = helper_argv(tool, pid, maps)
            if run is None:
                nshell.run(argv)
                continue
            run.run(Step(f"map the user namespace of pid {pid}: {tool} (setuid root, checks "
                         f"{SUBUID if tool == 'newuidmap' else SUBGID})", argv=argv,
                         native=lambda argv=argv: nshell.run(argv)))
        os.write(shake.go_w, b"G")
    finally:
        shake.close("ready_r", "go_w")


def call_mapped(plan: IdPlan, fn: Callable[[], Any], what: str) -> Any:
    """Run ``fn`` in a forked process inside a new user namespace with ``plan``'s maps, as
    root there (``podman unshare``): e.g. to remove what a container's ids own."""
    shake = Handshake.open() if plan.helpers else None
    result: dict[str, Any] = {}

    def body(w: int) -> int:
        try:
            enter(plan, shake)
            outcome: tuple = ("ok", fn())
        except NsrError as exc:
            outcome = ("err", exc)
        except Exception as exc:   # noqa: BLE001 -- reported to the parent as one line
            outcome = ("err", NsrError(f"{what}: {type(exc).__name__}: {exc}"))
        process.write_all(w, process.to_bytes(outcome))
        return 0

    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = process.fork()
    if pid == 0:
        os.close(r)
        process.in_child(lambda: body(w))
    os.close(w)
    try:
        if shake is not None:
            map_child(None, plan, pid, shake)
        result["data"] = process.read_all(r)
    finally:
        os.close(r)
        if shake is not None:
            shake.close("ready_r", "ready_w", "go_r", "go_w")
        process.wait_child(pid)
    if not result.get("data"):
        raise NsrError(f"{what}: the process in the user namespace died before reporting",
                       hint="see the error above it")
    kind, value = process.from_bytes(result["data"])
    if kind == "err":
        raise value
    return value


# --- a whole demo inside a user and a mount namespace of its own ------------------------------

def in_user_and_mount_ns(run: Runner, fn: Callable[[], Any], what: str) -> Any:
    """Step: run ``fn`` in a forked process that made a user namespace (this user as root)
    and a mount namespace owned by it, ``/`` rslave: its mounts live and die with it.
    Returns what ``fn`` returned (it must be picklable). As root, just ``fn()``."""
    if not run.rootless:
        return fn()
    run.run(Step(f"{what}: a user namespace first (uid {rootless.outside_uid()} is root in "
                 "it), then a mount namespace it owns, / made rslave; the steps below run there",
                 display="unshare --user --map-root-user --mount --propagation slave",
                 native=lambda: None))
    if run.explain:
        return fn()

    def body() -> Any:
        try:
            rootless.become_root_in_userns()
            sc.unshare(sc.CLONE_NEWNS)
            sc.make_propagation("/", "slave", recursive=True)
            return fn()
        except BaseException:
            run.undo()     # the undo stack of what fn made lives in this process only
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()

    sys.stdout.flush()
    sys.stderr.flush()
    return process.fork_call(body, what)
