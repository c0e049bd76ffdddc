"""Mount namespace (document section "mount namespace"; flag CLONE_NEWNS).

The first Linux namespace, hence its odd flag CLONE_NEWNS. The document describes how mount
objects relate -- shared (a mount event in one propagates to the other, and back) and slave
(events propagate one way only; the slave receives) -- and the five states a mount can be
in: shared, slave, shared and slave, private, unbindable.

Here, with real mounts in a scratch tree (``/tmp/nsr-mount-XXXXXX``):

1. in a new mount namespace (``unshare --mount``: everything private, so nothing reaches
   the host), a tmpfs ``origin`` is made shared and bound five times; each bind is given one
   of the states; then a tmpfs is mounted under each and a table shows where each of those
   mount events propagated; binding the unbindable one fails;
2. on the host the scratch directory is bound onto itself and made shared (only it: the
   host's own propagation is never touched); a second mount namespace keeps the host's
   peer groups (``unshare --mount --propagation unchanged``), so a mount made inside under the
   scratch directory appears on the host -- until ``mount --make-rprivate /`` inside, after
   which a mount made inside stays inside.

Mounts are observed as ``findmnt --task PID`` shows them (natively: /proc/PID/mountinfo).
Everything is undone: the namespaces die with their holders, the host bind is unmounted and
the scratch directory removed.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

from nsutil import mountinfo, process
from nsutil import syscalls as sc
from nsutil.rootless import require_namespaces
from nsutil.backend import Placeholder, Runner, Step, derived
from nsutil.errors import SyscallError
from nsutil import shell as nshell

from recipes.common.holder import enter_argv, join_types, start_holder, stop_holder

SECTION = "mount namespace"

#: the five states of the document, in its order, with its words
STATES = {"shared": "共享挂载", "slave": "从属挂载", "shared and slave": "共享/从属挂载",
          "private": "私有挂载", "unbindable": "不可绑定挂载"}

#: the binds of ``origin`` and the propagation each is given (``ss-peer`` is a bind of
#: ``shared-slave``, so that shared-slave has a peer to send its events to)
BINDS = [("shared", []), ("slave", ["slave"]), ("shared-slave", ["slave", "shared"]),
         ("private", ["private"]), ("unbindable", ["unbindable"])]
COLUMNS = ["origin", "shared", "slave", "shared-slave", "ss-peer", "private", "unbindable"]
#: (where a tmpfs is mounted, the mount point's name)
EVENTS = [("origin", "m1"), ("shared", "m2"), ("slave", "m3"), ("shared-slave", "m4"),
          ("private", "m5")]


#: what part 2 needs that a user does not have (said in one line without root)
RPRIVATE_LEFT_OUT = ("part 2 binds the scratch directory on the host and makes it shared; a user "
                     "cannot mount in the host's mount namespace (and the host's shared mounts "
                     "reach a user's mount namespace only as slaves, so nothing propagates out)")


def sub(base: str, *parts: str) -> str:
    """``base/parts``, still a :class:`Placeholder` when ``base`` is one (``--explain``)."""
    return derived("/".join([str(base), *parts]), base)


# --- observing ---------------------------------------------------------------------------------

def state_of(tags: set[str]) -> str:
    """The document's name for a mount's propagation from its tags (shared/slave/unbindable)."""
    if "shared" in tags and "slave" in tags:
        return "shared and slave"
    for name in ("shared", "slave", "unbindable"):
        if name in tags:
            return name
    return "private"


def _state(m: mountinfo.Mount) -> str:
    tags = {{"master": "slave"}.get(f.split(":", 1)[0], f.split(":", 1)[0]) for f in m.optional}
    return state_of(tags)


def parse_mountinfo(text: str) -> dict[str, str]:
    """/proc/PID/mountinfo -> {mount point: state}; optional fields ``shared:N`` (peer
    group), ``master:N`` (slave of one), ``unbindable``; none of them means private
    (lines read by :mod:`nsutil.mountinfo`)."""
    return {m.mount_point: _state(m) for m in mountinfo.parse(text)}


def parse_findmnt(text: str) -> dict[str, str]:
    """``findmnt -r -n -o TARGET,PROPAGATION`` -> {mount point: state}
    (findmnt writes ``private,slave`` for a slave and ``shared,slave`` for both)."""
    mounts = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        target, _, prop = line.rpartition(" ")
        tags = set(prop.split(",")) - {"private"}
        mounts[target.replace("\\x20", " ")] = state_of(tags)
    return mounts


def read_mountinfo(pid: int | str = "self") -> dict[str, str]:
    """The native ``findmnt --task PID``: mount points and states of PID's namespace."""
    return {m.mount_point: _state(m) for m in mountinfo.read(pid)}


def peer_fields(optional: list[str]) -> dict:
    """The optional fields of a mountinfo line (``shared:N``: in peer group N; ``master:N``:
    a slave of peer group N; ``propagate_from:N``: the nearest group it receives from that
    this namespace sees; ``unbindable``) -> {"shared", "master", "propagate_from": N or None,
    "unbindable": bool}."""
    out: dict = {"shared": None, "master": None, "propagate_from": None, "unbindable": False}
    for opt in optional:
        key, _, value = opt.partition(":")
        if key == "unbindable":
            out["unbindable"] = True
        elif key in out and value.isdigit():
            out[key] = int(value)
    return out


def parse_peer_groups(text: str) -> dict[str, dict]:
    """/proc/PID/mountinfo -> {mount point: {"id": mount ID, **peer_fields}}."""
    return {m.mount_point: {"id": m.mount_id, **peer_fields(list(m.optional))}
            for m in mountinfo.parse(text)}


def parse_findmnt_groups(text: str) -> dict[str, dict]:
    """``findmnt -r -n -o TARGET,ID,OPT-FIELDS`` -> as :func:`parse_peer_groups` (raw
    output writes a space as ``\\x20``, also between the optional fields)."""
    out = {}
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) >= 2 and parts[1].isdigit():
            optional = parts[2].replace("\\x20", " ").split() if len(parts) > 2 else []
            out[parts[0].replace("\\x20", " ")] = {"id": int(parts[1]), **peer_fields(optional)}
    return out


def peer_groups(run: Runner, holder: process.Holder | None, under: str,
                where: str = "inside") -> dict[str, dict]:
    """Step: the peer groups of the mounts below ``under`` in ``holder``'s mount namespace
    or on the host (``findmnt [--task PID] -o TARGET,ID,OPT-FIELDS``; natively
    /proc/PID/mountinfo)."""
    pid = holder.pid if holder is not None else "self"

    def native() -> dict[str, dict]:
        return _under({m.mount_point: {"id": m.mount_id, **peer_fields(list(m.optional))}
                       for m in mountinfo.read(pid)}, under)
    argv: list[Any] = ["findmnt", "-r", "-n", "-o", "TARGET,ID,OPT-FIELDS"]
    if holder is not None:
        argv[1:1] = ["--task", holder.pid]
    return run.run(Step(f"read the peer groups of the mounts under {under} {where} (for the picture)",
                        argv=argv, native=native,
                        parse=lambda text: _under(parse_findmnt_groups(text), under),
                        placeholder={}))


def picture_data(scratch: str, holder_pid: int, groups: dict[str, dict], states: dict[str, str],
                 seen: dict[str, list[str]], refused: str | None) -> dict:
    """What :func:`recipes.common.pictures.mounts` draws: each bind of part 1 with its mount ID, peer
    group fields and state, and the mount events (m1..m5) seen at it."""
    rows = []
    for c in COLUMNS:
        fields = groups.get(f"{scratch}/{c}", {})
        rows.append({"point": c, **fields, "state": states.get(c, "?"),
                     "received": [e.split("/")[1] for e, cols in seen.items() if c in cols]})
    return {"scratch": scratch, "pid": holder_pid, "mounts": rows, "refused": refused}


def _under(mounts: dict[str, str], base: str) -> dict[str, str]:
    return {p: s for p, s in mounts.items() if p == base or p.startswith(base.rstrip("/") + "/")}


def list_mounts(run: Runner, holder: process.Holder | None, under: str,
                where: str = "on the host") -> dict[str, str]:
    """Step: the mounts below ``under`` and their propagation, in ``holder``'s mount
    namespace (``findmnt --task PID``) or on the host (``findmnt``)."""
    argv: list[Any] = ["findmnt", "-r", "-n", "-o", "TARGET,PROPAGATION"]
    if holder is not None:
        argv[1:1] = ["--task", holder.pid]
    return run.run(Step(f"list the mounts under {under} {where}", argv=argv,
                        native=lambda: _under(read_mountinfo(holder.pid if holder else "self"),
                                              under),
                        parse=lambda text: _under(parse_findmnt(text), under), placeholder={}))


# --- acting ------------------------------------------------------------------------------------

def _act(run: Runner, holder: process.Holder | None, title: str, argv: list,
         fn: Callable[[], Any], undo: Step | None = None) -> Any:
    """A step done inside ``holder``'s mount namespace (nsenter --mount / setns) or on the host."""
    if holder is None:
        return run.run(Step(title, argv=argv, native=fn, undo=undo))
    return run.run(Step(title, argv=enter_argv(holder, "mnt", argv),
                        native=lambda: process.call_in(holder.pid, join_types(holder, "mnt"), fn), undo=undo))


def mount_tmpfs(run: Runner, holder: process.Holder | None, target: str,
                source: str = "nsr-tmpfs", where: str = "inside") -> None:
    """Step: ``mount -t tmpfs SOURCE TARGET`` (a fresh empty filesystem)."""
    _act(run, holder, f"mount a tmpfs on {target} {where}",
         ["mount", "-t", "tmpfs", source, target],
         lambda: sc.mount(source, target, "tmpfs"))


def bind(run: Runner, holder: process.Holder | None, source: str, target: str,
         where: str = "inside", undo: bool = False) -> None:
    """Step: ``mount --bind SOURCE TARGET`` (the same tree seen at a second place)."""
    undo_step = None
    if undo:
        undo_step = Step(f"unmount {target} {where} (and anything below it)",
                         argv=(["umount", "--lazy", target] if holder is None
                               else enter_argv(holder, "mnt", ["umount", "--lazy", target])),
                         native=lambda: (sc.umount(target, sc.MNT_DETACH) if holder is None else
                                         process.call_in(holder.pid, join_types(holder, "mnt"),
                                                         lambda: sc.umount(target, sc.MNT_DETACH))))
    _act(run, holder, f"bind {source} onto {target} {where}",
         ["mount", "--bind", source, target],
         lambda: sc.mount(source, target, None, sc.MS_BIND), undo=undo_step)


def make(run: Runner, holder: process.Holder | None, target: str, kind: str,
         recursive: bool = False, where: str = "inside") -> None:
    """Step: ``mount --make-[r]KIND TARGET`` (shared, slave, private or unbindable)."""
    option = f"--make-{'r' if recursive else ''}{kind}"
    _act(run, holder, f"make {target} {'recursively ' if recursive else ''}{kind} {where}",
         ["mount", option, target], lambda: sc.make_propagation(target, kind, recursive))


def umount(run: Runner, holder: process.Holder | None, target: str, where: str = "inside") -> None:
    """Step: ``umount TARGET``."""
    _act(run, holder, f"unmount {target} {where}", ["umount", target],
         lambda: sc.umount(target))


def mkdirs(run: Runner, holder: process.Holder | None, paths: list[str],
           where: str = "inside") -> None:
    """Step: ``mkdir -p PATHS`` (mount points)."""
    def native() -> None:
        for p in paths:
            os.makedirs(p, exist_ok=True)
    _act(run, holder, f"make mount points {where}", ["mkdir", "-p", *paths], native)


def try_bind(run: Runner, holder: process.Holder, source: str, target: str) -> str | None:
    """Step: try ``mount --bind SOURCE TARGET`` inside; the error if it fails, else None."""
    argv = enter_argv(holder, "mnt", ["mount", "--bind", source, target])

    def native() -> str | None:
        def attempt() -> str | None:
            try:
                sc.mount(source, target, None, sc.MS_BIND)
            except SyscallError as exc:
                return str(exc)
            return None
        return process.call_in(holder.pid, join_types(holder, "mnt"), attempt)

    def shell(a: list[str]) -> str | None:
        done = nshell.run_full(a)
        return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[0]

    return run.run(Step(f"try to bind the unbindable {source} onto {target} (must fail)",
                        argv=argv, native=native, shell=shell, placeholder="EINVAL"))


def make_scratch(run: Runner) -> str:
    """Step: make the scratch directory ``/tmp/nsr-mount-XXXXXX``; undo: remove it."""
    path = run.run(Step("make a scratch directory (all mounts of this demo are below it)",
                        argv=["mktemp", "-d", "/tmp/nsr-mount-XXXXXX"],
                        native=lambda: tempfile.mkdtemp(prefix="nsr-mount-", dir="/tmp"),
                        parse=str.strip, placeholder=Placeholder("$DIR")))
    run.defer(Step(f"remove the scratch directory {path}", argv=["rmdir", path],
                   native=lambda: os.rmdir(path)))
    return path


def host_mkdir(run: Runner, path: str) -> None:
    """Step: ``mkdir PATH`` on the host; undo: ``rmdir PATH``."""
    run.run(Step(f"make {path} on the host", argv=["mkdir", path], native=lambda: os.mkdir(path),
                 undo=Step(f"remove {path}", argv=["rmdir", path], native=lambda: os.rmdir(path))))


# --- the demo ----------------------------------------------------------------------------------

def propagation_states(run: Runner, scratch: str, picture: bool = False) -> dict:
    """Part 1: the five states and where mount events propagate (a private namespace);
    with ``picture``, also the peer groups (``picture``: what :func:`recipes.common.pictures.mounts`
    draws)."""
    run.say("\n-- 1. the five propagation states, in a new mount namespace --")
    holder = start_holder(run, "mnt")  # unshare --mount: / is made rprivate inside
    mount_tmpfs(run, holder, scratch, "nsr-scratch",
                "inside (the scratch tree lives in memory, in this namespace only)")
    origin = sub(scratch, "origin")
    mkdirs(run, holder, [sub(scratch, c) for c in COLUMNS + ["try"]])
    mount_tmpfs(run, holder, origin, "nsr-origin")
    make(run, holder, origin, "shared")
    mkdirs(run, holder, [sub(origin, m) for _, m in EVENTS],
           "in origin (every bind shows the same files)")
    for name, kinds in BINDS:
        bind(run, holder, origin, sub(scratch, name))
        for kind in kinds:
            make(run, holder, sub(scratch, name), kind)
    bind(run, holder, sub(scratch, "shared-slave"), sub(scratch, "ss-peer"))
    states = list_mounts(run, holder, scratch, "inside")
    groups = peer_groups(run, holder, scratch) if picture else {}
    refused = try_bind(run, holder, sub(scratch, "unbindable"), sub(scratch, "try"))
    for where, point in EVENTS:
        mount_tmpfs(run, holder, sub(scratch, where, point), f"nsr-{point}")
    after = list_mounts(run, holder, scratch, "inside, after the mount events")
    run.learner_shell(hint=f"findmnt -R -o TARGET,PROPAGATION {scratch}; "
                           f"mount -t tmpfs nsr-mine {scratch}/try (the host never sees it); exit")
    stop_holder(run, holder)  # its namespace, and every mount above, goes with it

    rel = {p[len(scratch) + 1:]: s for p, s in states.items() if p != scratch}
    seen = {f"{w}/{m}": [c for c in COLUMNS if sub(scratch, c, m) in after] for w, m in EVENTS}
    if not run.explain:
        run.say(f"\n$ findmnt --task {holder.pid} -o TARGET,PROPAGATION   (under {scratch})")
        notes = {"origin": "a tmpfs, made shared", "shared": "bind of origin: its peer",
                 "slave": "bind of origin, --make-slave", "ss-peer": "bind of shared-slave: its peer",
                 "shared-slave": "bind of origin, --make-slave, then --make-shared",
                 "private": "bind of origin, --make-private",
                 "unbindable": "bind of origin, --make-unbindable"}
        for c in COLUMNS:
            state = rel.get(c, "?")
            run.say(f"  {c:<13} {state:<17} {STATES.get(state, ''):<8} {notes[c]}")
        run.say(f"\n$ mount --bind {scratch}/unbindable {scratch}/try\n  refused: {refused}\n"
                "  (mount(2) says EINVAL: an unbindable mount cannot be the source of a bind)")
        run.say("\nwhere each mount event propagated (a tmpfs mounted at ROW; seen at COLUMN):")
        run.say("  " + "mounted at".ljust(18) + " ".join(f"{c:>12}" for c in COLUMNS))
        for event, cols in seen.items():
            run.say("  " + event.ljust(18) + " ".join(f"{'yes' if c in cols else '-':>12}"
                                                     for c in COLUMNS))
        run.say("共享关系: events go both ways (origin <-> shared); 从属关系: one way, the slave "
                "receives (origin -> slave);\nshared and slave: receives from origin and shares "
                "with its own peer; private and unbindable: nothing in, nothing out.")
    drawn = picture_data(scratch, holder.pid, groups, rel, seen, refused) if picture else None
    return {"states": rel, "propagated": seen, "unbindable_refused": refused, "picture": drawn}


def scratch_groups(run: Runner, holder: process.Holder, scratch: str) -> dict:
    """For the picture of part 2: the scratch mount's ID and peer group on the host and
    inside (``{"host": {...}, "inside": {...}}``, fields as :func:`peer_fields`)."""
    return {"host": peer_groups(run, None, scratch, "on the host").get(scratch, {}),
            "inside": peer_groups(run, holder, scratch).get(scratch, {})}


def rprivate_contrast(run: Runner, scratch: str, picture: bool = False) -> dict:
    """Part 2: a mount made inside reaches the host through a shared scratch mount --
    until ``mount --make-rprivate /`` inside. With ``picture``, also the scratch mount's
    peer group on both sides, before and after (``picture``: what :func:`recipes.common.pictures.mounts`
    draws as its part 2)."""
    run.say("\n-- 2. mount --make-rprivate / : mounts made inside stay inside --")
    if run.rootless:
        run.say(f"  left out without root: {RPRIVATE_LEFT_OUT}")
        return {"left_out": RPRIVATE_LEFT_OUT}
    probe = sub(scratch, "probe")
    host_mkdir(run, probe)
    bind(run, None, scratch, scratch, "on the host (our scratch directory only)", undo=True)
    make(run, None, scratch, "shared", where="on the host (our scratch directory only)")
    holder = start_holder(run, "mnt", propagation="unchanged",
                          title="start a process in a new mount namespace that keeps the "
                                "host's peer groups (CLONE_NEWNS, propagation unchanged)")
    mount_tmpfs(run, holder, probe, "nsr-before", "inside, before make-rprivate")
    before_inside = list_mounts(run, holder, probe, "inside")
    before_host = list_mounts(run, None, probe)
    groups_before = scratch_groups(run, holder, scratch) if picture else {}
    umount(run, holder, probe)
    make(run, holder, "/", "private", recursive=True)
    mount_tmpfs(run, holder, probe, "nsr-after", "inside, after make-rprivate")
    after_inside = list_mounts(run, holder, probe, "inside")
    after_host = list_mounts(run, None, probe)
    groups_after = scratch_groups(run, holder, scratch) if picture else {}
    result: dict = {"before": {"inside": probe in before_inside, "host": probe in before_host},
                    "after": {"inside": probe in after_inside, "host": probe in after_host}}
    if picture:
        result["picture"] = {"pid": holder.pid, "probe": probe,
                             "before": {**groups_before, "seen_on_host": result["before"]["host"]},
                             "after": {**groups_after, "seen_on_host": result["after"]["host"]}}
    if not run.explain:
        yn = {True: "yes", False: "no"}
        run.say(f"  host: mount --bind {scratch} {scratch}; mount --make-shared {scratch}")
        run.say(f"  inside (propagation unchanged): mount -t tmpfs nsr-before {probe}")
        run.say(f"      mounted inside: {yn[result['before']['inside']]:<4} "
                f"seen on the host: {yn[result['before']['host']]}    <- it propagated out")
        run.say("  inside: umount; mount --make-rprivate /; mount -t tmpfs nsr-after " + probe)
        run.say(f"      mounted inside: {yn[result['after']['inside']]:<4} "
                f"seen on the host: {yn[result['after']['host']]}     <- isolated")
    return result


def demo(run: Runner, draw: str | None = None) -> dict:
    """The document's mount namespace section with real mounts. Returns what was observed:
    ``states`` (name -> state), ``propagated`` (event -> where it was seen),
    ``unbindable_refused`` (the error), ``rprivate`` (before/after: inside/host), and
    ``host_clean`` (nothing of the demo left on the host afterwards). With ``draw`` (a path
    ending in .svg, checked before anything is made) the peer groups read from the kernel
    are drawn there (``picture``: the data drawn, part 2's under ``picture["rprivate"]``);
    under --explain nothing is drawn."""
    from recipes.common import pictures
    if draw:
        pictures.check_path(draw)
    if not run.explain:
        require_namespaces("mount-demo")
    run.heading(f"{SECTION} (CLONE_NEWNS): mount points and their propagation")
    scratch = make_scratch(run)
    picture = bool(draw) and not run.explain
    part1 = propagation_states(run, scratch, picture=picture)
    part2 = rprivate_contrast(run, scratch, picture=picture)
    if picture and "picture" in part2:
        part1["picture"]["rprivate"] = part2.pop("picture")
    run.undo()
    clean = None
    if not run.explain:
        clean = not os.path.exists(scratch) and not _under(read_mountinfo(), scratch)
        bind_note = "" if run.rootless else ", host bind unmounted"
        run.say(f"\nundone: holders stopped{bind_note}, {scratch} removed "
                f"({'nothing left' if clean else 'LEFT BEHIND'})")
    if part1.get("picture"):
        run.say(f"drew the peer groups into {pictures.mounts(part1['picture'], draw)}")
    elif draw:
        print(f"(--explain: nothing is drawn; a real run draws {draw})", file=run.out)
    return {**part1, "rprivate": part2, "scratch": scratch, "host_clean": clean}
