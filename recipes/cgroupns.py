"""cgroup namespace -- beyond the document (Linux 4.6+; flag CLONE_NEWCGROUP).

The document lists six namespaces; it was written before Linux 4.6 brought the cgroup
namespace (cgroup_namespaces(7)). A process's cgroups show in ``/proc/PID/cgroup`` as paths
from the hierarchy's root: ``0::/nsrecipes/nsr-cgns-1a2b`` tells a container where the host
put it. ``unshare(CLONE_NEWCGROUP)`` makes the caller's *current* cgroups the roots of a new
cgroup namespace, so inside it reads ``0::/`` and the real path is hidden; a cgroup outside
that root shows relative to it, with ``..`` for each level up (``0::/../..``).

Here: a scratch cgroup ``nsr-cgns-*`` on the v2 hierarchy (``/sys/fs/cgroup`` on a pure v2
host, ``/sys/fs/cgroup/unified`` on a hybrid one), a holder that moves itself into it and
*then* unshares (shell: ``sh -c 'echo $$ > DIR/cgroup.procs && exec unshare --cgroup --
sleep infinity'``), and three reads of a ``cgroup`` file: the host's view of the holder,
a process that joined the namespace *and* the cgroup (as ``docker exec`` does) -- ``0::/`` --
and one that only joined the namespace (``nsenter --cgroup``: setns() does not move a process
between cgroups) -- a path with ``..``. Everything, the cgroup too, is removed at the end.
"""
from __future__ import annotations

import os
import socket
from typing import Callable, Sequence

from nsutil import cgroupfs
from nsutil import process, rootless
from nsutil import syscalls as sc
from nsutil.backend import Placeholder, Runner, Step, derived
from nsutil.cgroupfs import Cgroup
from nsutil.errors import NsrError, SyscallError
from nsutil.lesson import Inside
from nsutil.names import PREFIX, scope_id
from nsutil.nstypes import NsType, enter, flags_of, parse_types

from recipes import cgroup as cgroup_recipe
from recipes.common.holder import join_types, run_inside, shell_holder, start_holder, stop_step

SECTION = "cgroup namespace"
BEYOND = "Linux 4.6+; beyond the document"
#: run by the process that joins cgroup and namespace (a constant: no user input in it)
JOIN_AND_READ = 'echo $$ > "$1" && exec nsenter -t "$2" --cgroup -- cat /proc/self/cgroup'


# --- steps both beyond-the-document sections use ------------------------------------------------

def start_prepared_holder(run: Runner, types: str, argv: Sequence, prepare: Callable[[], None],
                          title: str) -> process.Holder:
    """Step: start a holder that prepares its namespaces *itself* before it holds them;
    undo: stop it.

    ``argv`` is the shell form, a command that ends by exec'ing ``sleep infinity`` in new
    namespaces of ``types`` (``unshare --time --boottime N -- sleep infinity``); ``prepare``
    the native form, run inside the native holder (nsrecipes' ``sleep infinity``) before it
    holds: unshare(), and whatever must come before or right after it. The holder is what
    :func:`recipes.common.holder.start_holder` returns, so ``nsenter -t PID`` reaches it the same way.
    Without root a user namespace with this user as its root comes first and owns them
    (``unshare --user --map-root-user ...``; natively before ``prepare``).
    """
    ts: list[NsType] = parse_types(types)
    first = bool(run.rootless)
    flags = flags_of(ts) | (sc.CLONE_NEWUSER if first else 0)
    argv = list(argv)
    if first and argv[:1] == ["unshare"]:
        argv[1:1] = list(rootless.UNSHARE_OPTIONS)

    def native() -> process.Holder:
        held = process.spawn_holder(0, setup=prepare, userns_first=first)
        held.flags = flags
        return held

    holder = run.run(Step(title, argv=argv, native=native,
                          shell=lambda a: shell_holder(a, ts, False, None, first),
                          placeholder=process.Holder(Placeholder("$PID"), Placeholder("$PID"),
                                                     flags)))
    holder.stop_step = stop_step(holder)  # type: ignore[attr-defined]
    run.defer(holder.stop_step)  # type: ignore[attr-defined]
    run.inside(Inside(holder.pid, tuple(t.name for t in join_types(holder, ts))))  # lessons
    return holder


def read_text(path: str) -> str:
    """The text of ``path`` (a /proc file), errors as :class:`SyscallError`."""
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        raise SyscallError.from_oserror(f"read({path!r})", exc) from None


def cat(run: Runner, path: str, title: str) -> str:
    """Step: ``cat PATH`` where nsrecipes runs (the host's view)."""
    return run.run(Step(title, argv=["cat", path], native=lambda: read_text(path),
                        placeholder=Placeholder("$OUTPUT")))


# --- the cgroup namespace ------------------------------------------------------------------------

def plan_cgroup(name: str | None = None) -> Cgroup:
    """The scratch cgroup ``nsr-cgns-*`` on the v2 hierarchy, in nsrecipes' own parent
    (``.../nsrecipes/nsr-cgns-*``; no controller: a namespace root needs none)."""
    layout = cgroupfs.host_layout()
    if layout.v2 is None:
        raise NsrError("cgroup-namespace demo: this host has no cgroup v2 hierarchy",
                       hint=f"mount one: mkdir {cgroupfs.ROOT}/unified && mount -t cgroup2 "
                            f"none {cgroupfs.ROOT}/unified")
    parent = os.path.join(layout.v2, cgroupfs.PARENT_NAME)
    name = name or f"{PREFIX}-cgns-{scope_id()}"
    return Cgroup(name, 2, {"cgroup": os.path.join(parent, name)}, parent)


def create_cgroup(run: Runner, cg: Cgroup) -> str:
    """Steps: ``mkdir -p PARENT`` and ``mkdir DIR``; undo: remove them (the parent only if no
    other run uses it). Returns the directory."""
    directory = cg.dirs["cgroup"]
    run.run(cgroup_recipe.parent_step(cg.parent))  # type: ignore[arg-type]
    run.run(Step(f"create cgroup {cg.name} (the namespace's root-to-be)", argv=["mkdir", directory],
                 shell=cgroup_recipe.shell_mkdir(directory, cg.parent),
                 native=lambda: cgroupfs.make_dir(directory, cg.parent),
                 undo=cgroup_recipe.rmdir_step(directory)))
    return directory


def start_in_cgroup(run: Runner, directory: str) -> process.Holder:
    """Step: a holder that moves itself into ``directory`` and then unshares its cgroup
    namespace, so that cgroup becomes the new namespace's root; undo: stop it."""
    procs = os.path.join(directory, "cgroup.procs")

    def prepare() -> None:
        cgroupfs.write_file(procs, os.getpid())   # echo $$ > DIR/cgroup.procs
        sc.unshare(sc.CLONE_NEWCGROUP)             # its current cgroup: the new root

    argv = ["sh", "-c", "echo $$ > \"$1\" && exec unshare --cgroup -- sleep infinity", "sh",
            procs]
    return start_prepared_holder(
        run, "cgroup", argv, prepare,
        f"start a holder in {directory}, then unshare(CLONE_NEWCGROUP): that cgroup becomes "
        "the root of its new cgroup namespace")


def read_joined(run: Runner, holder: process.Holder, directory: str) -> str:
    """Step: a process joins the holder's cgroup *and* its cgroup namespace (as ``docker exec``
    does) and reads /proc/self/cgroup: it is at the root, ``0::/``."""
    procs = os.path.join(directory, "cgroup.procs")

    def inside() -> str:
        cgroupfs.write_file(procs, os.getpid())   # first the cgroup: from inside the
        enter(holder.pid, "cgroup")                 # namespace, a cgroup outside it is unreachable
        return read_text("/proc/self/cgroup")

    return run.run(Step("join the cgroup and the cgroup namespace, then cat /proc/self/cgroup",
                        argv=["sh", "-c", JOIN_AND_READ, "sh", procs, holder.pid],
                        native=lambda: process.fork_call(inside, "join cgroup and namespace"),
                        placeholder=Placeholder("$OUTPUT")))


def v2_path(text: str) -> str:
    """The ``0::PATH`` line of a /proc/PID/cgroup text ("" if there is none)."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


def demo(run: Runner) -> dict:
    """A new cgroup namespace rooted at a scratch cgroup: the host sees the holder's real
    cgroup path, a process inside sees ``/``, one outside that root a path with ``..``.
    Returns the three views (``host``, ``inside``, ``outside``: the 0:: paths; ``*_text``: the
    whole files), the cgroup's ``directory`` (``removed``), the caller's own v2 cgroup
    (``own``) and the ``holder``'s pid. Without root, see :func:`rootless_demo`."""
    if run.rootless:
        return rootless_demo(run)
    cg = plan_cgroup()
    run.heading(f"{SECTION} (CLONE_NEWCGROUP, {BEYOND}): /proc/self/cgroup shows /")
    me, prompt = os.getpid(), f"[root@{socket.gethostname()}]#"
    own = read_text("/proc/self/cgroup") if not run.explain else ""
    run.say(f"{prompt} cat /proc/self/cgroup      (nsrecipes, pid {me}, on the host)\n"
            f"{own.rstrip()}")
    directory = create_cgroup(run, cg)
    holder = start_in_cgroup(run, directory)
    seen_host = cat(run, derived(f"/proc/{holder.pid}/cgroup", holder.pid),
                    "the host's view of the holder's cgroups")
    run.say(f"{prompt} cat /proc/{holder.pid}/cgroup      (the holder, seen from the host)\n"
            f"{seen_host.rstrip()}    <- its real place")
    run.say("在新的cgroup namespace中 (inside the new cgroup namespace):")
    inside = read_joined(run, holder, directory)
    run.say(f"{prompt} cat /proc/self/cgroup      (joined the holder's cgroup and namespace)\n"
            f"{inside.rstrip()}    <- the root: where the holder was when it unshared")
    outside = run_inside(run, holder, "cgroup", ["cat", "/proc/self/cgroup"],
                         "join only the cgroup namespace (nsenter --cgroup), then cat "
                         "/proc/self/cgroup: the process is still in nsrecipes' cgroup").stdout
    run.say(f"{prompt} cat /proc/self/cgroup      (nsenter --cgroup only: setns() moves no "
            f"process between cgroups)\n{outside.rstrip()}    <- outside the namespace's root: "
            "relative to it, .. for each level up")
    run.learner_shell(hint=f"cat /proc/self/cgroup (a path with ..: nsenter joins the namespace, "
                           f"not the cgroup); cat /proc/{holder.pid}/cgroup (0::/); exit")
    run.undo()
    gone = not os.path.isdir(directory) if not run.explain else True
    run.say(f"removed {directory}: {gone}")
    return {"host": v2_path(seen_host), "inside": v2_path(inside), "outside": v2_path(outside),
            "host_text": seen_host, "inside_text": inside, "outside_text": outside,
            "own": v2_path(own), "directory": directory, "removed": gone, "holder": holder.pid}


#: what the demo leaves out without root (said in one line)
CGROUP_LEFT_OUT = ("the scratch cgroup nsr-cgns-* as the namespace's root, and the view from "
                   "outside that root (making a cgroup needs root or a cgroup delegated to you: "
                   "systemd-run --user --scope -p Delegate=yes ...)")


def rootless_demo(run: Runner) -> dict:
    """Without root: a holder unshares its cgroup namespace where it is (the user's own
    cgroup, which a user cannot leave): the host sees its real path, a process that joins
    the namespace sees ``/``. Making a scratch cgroup is left out, in one line. Returns
    ``host``, ``inside`` (the 0:: paths), their ``*_text``, ``own``, ``left_out`` and the
    ``holder``'s pid."""
    run.heading(f"{SECTION} (CLONE_NEWCGROUP, {BEYOND}): /proc/self/cgroup shows /")
    me, prompt = os.getpid(), f"[root@{socket.gethostname()}]#"
    own = read_text("/proc/self/cgroup") if not run.explain else ""
    run.say(f"{prompt} cat /proc/self/cgroup      (nsrecipes, pid {me}, on the host)\n"
            f"{own.rstrip()}")
    run.say(f"left out without root: {CGROUP_LEFT_OUT}")
    holder = start_holder(run, "cgroup", title="start a holder in a new cgroup namespace, "
                          "rooted at the cgroup it is in (nsrecipes' own)")
    seen_host = cat(run, derived(f"/proc/{holder.pid}/cgroup", holder.pid),
                    "the host's view of the holder's cgroups")
    run.say(f"{prompt} cat /proc/{holder.pid}/cgroup      (the holder, seen from the host)\n"
            f"{seen_host.rstrip()}    <- its real place")
    run.say("在新的cgroup namespace中 (inside the new cgroup namespace):")
    inside = run_inside(run, holder, "cgroup", ["cat", "/proc/self/cgroup"],
                        "join the cgroup namespace, then cat /proc/self/cgroup").stdout
    run.say(f"{prompt} cat /proc/self/cgroup      (joined the holder's namespace)\n"
            f"{inside.rstrip()}    <- the root: where the holder was when it unshared")
    run.learner_shell(hint="cat /proc/self/cgroup (0::/); exit")
    run.undo()
    return {"host": v2_path(seen_host), "inside": v2_path(inside), "host_text": seen_host,
            "inside_text": inside, "own": v2_path(own), "left_out": CGROUP_LEFT_OUT,
            "holder": holder.pid}
