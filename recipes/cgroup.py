"""cgroups: resource limits (document: opening line, "通过cgroups实现资源限制").

The document opens with "Docker isolates with namespaces, *limits with cgroups*, and saves
with copy-on-write", then only writes out the namespaces. This module is the second
principle: make a cgroup, write limits into its files, move a process in, and watch the
kernel enforce them:

* memory -- a child allocating past ``memory.limit_in_bytes`` (v1) / ``memory.max`` (v2) is
  killed by the OOM killer; ``memory.oom_control`` / ``memory.events`` count ``oom_kill``;
* pids -- a (bounded) fork bomb stops at ``pids.max``: fork() fails with EAGAIN and
  ``pids.events`` counts the refusals;
* cpu -- a busy loop under ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` (v1) or ``cpu.max`` (v2)
  gets about quota/period of one CPU.

Each step is a file operation a learner can type: ``mkdir DIR``, ``echo 33554432 >
DIR/memory.limit_in_bytes``, ``echo PID > DIR/cgroup.procs``, ``rmdir DIR``. The layout
(v1, v2 or hybrid) is detected as runc does (:mod:`nsutil.cgroupfs`).
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from nsutil import cgroupdeleg
from nsutil import cgroupfs
from nsutil import process
from nsutil import shell as nshell
from nsutil.backend import Placeholder, Runner, Step
from nsutil.cgroupfs import Cgroup, Limits
from nsutil.errors import CommandError, InvalidInput, NsrError
from nsutil.names import PREFIX, scope_id

from recipes.common.leftover import Leftover

SECTION = "cgroups实现资源限制 (cgroups limit resources)"

#: hard caps of the demo workloads, whatever the limits say
FORK_BOMB_DEPTH = 7           #: a binary tree: at most 2**8 - 2 = 254 fork attempts
MEMORY_HOG_CAP = 512 << 20    #: never allocate more than this


# --- steps -----------------------------------------------------------------------------------

def write_step(path: str, value: str | int, title: str) -> Step:
    """Step: write ``value`` into a cgroup file (shown as ``echo VALUE > PATH``)."""
    return Step(title, display=f"echo {value} > {path}",
                native=lambda: cgroupfs.write_file(path, value))


def _shell_rmdir(directory: str) -> Callable[[list[str]], None]:
    def run(argv: list[str]) -> None:
        deadline = time.monotonic() + 5
        for entry in sorted(os.scandir(directory) if os.path.isdir(directory) else [],
                            key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                cgroupfs.remove_dir(entry.path)
        while os.path.isdir(directory):
            cgroupfs.kill_procs(directory)
            done = nshell.run_full(argv)
            if done.returncode == 0:
                return
            if "busy" not in done.stderr.lower() or time.monotonic() > deadline:
                raise CommandError(argv, done.returncode, done.stderr)
            time.sleep(0.01)
    return run


def rmdir_step(directory: str) -> Step:
    """Step: kill what is left in a cgroup directory and rmdir it (retrying on EBUSY)."""
    return Step(f"remove cgroup {directory} (kill what is left, retry while EBUSY)",
                argv=["rmdir", directory], shell=_shell_rmdir(directory),
                native=lambda: cgroupfs.remove_dir(directory))


def shell_mkdir(directory: str, parent: str | None) -> Callable[[list[str]], None]:
    """``mkdir DIR``; on v2 again after ``mkdir -p PARENT`` if a concurrent run removed
    nsrecipes' parent in between (ENOENT)."""
    def run(argv: list[str]) -> None:
        for _ in range(50):
            done = nshell.run_full(argv)
            if done.returncode == 0:
                return
            if parent is None or "no such file" not in done.stderr.lower():
                break
            nshell.run_full(["mkdir", "-p", parent])
        raise CommandError(argv, done.returncode, done.stderr,
                           hint="a cgroup of that name exists; run `invoke cleanup`"
                           if "exists" in done.stderr.lower() else None)
    return run


def _shell_prune(parent: str) -> Callable[[list[str]], None]:
    def run(argv: list[str]) -> None:
        done = nshell.run_full(argv)
        low = done.stderr.lower()
        if done.returncode and not any(w in low for w in ("busy", "not empty", "no such file")):
            raise CommandError(argv, done.returncode, done.stderr)
    return run


def _shell_make_parent(parent: str) -> Callable[[list[str]], None]:
    """``mkdir -p PARENT``, where "File exists" means it lost a race with a run removing the
    parent: coreutils' mkdir got EEXIST, then found nothing at its stat. Not an error: the
    cgroup's own mkdir (:func:`shell_mkdir`) makes the parent again when it finds it gone."""
    def run(argv: list[str]) -> None:
        done = nshell.run_full(argv)
        if done.returncode and "exists" not in done.stderr.lower():
            raise CommandError(argv, done.returncode, done.stderr)
    return run


def parent_step(parent: str) -> Step:
    """Step (v2): make nsrecipes' own parent cgroup, outside the caller's; undo: remove it if
    no other run uses it."""
    prune = Step(f"remove {parent} if no other run uses it (EBUSY/ENOTEMPTY: one does)",
                 argv=["rmdir", parent], shell=_shell_prune(parent),
                 native=lambda: cgroupfs.prune_parent(parent))
    return Step("make nsrecipes' own parent cgroup (v2: never below the caller's cgroup, "
                "which may hold processes)", argv=["mkdir", "-p", parent],
                shell=_shell_make_parent(parent),
                native=lambda: cgroupfs.make_parent(parent), undo=prune)


def enable_step(path: str, value: str) -> Step:
    """Step (v2): enable controllers for the children of an ancestor of nsrecipes' cgroups
    (``echo +memory > DIR/cgroup.subtree_control``), as runc does; said on stderr in one line
    when it is done. No undo: other cgroups may rely on it from then on."""
    directory = os.path.dirname(path)
    names = value.replace("+", "")

    def enable() -> None:
        cgroupfs.write_file(path, value)
        print(f"nsrecipes: cgroup v2: enabled {names} for the children of {directory} (echo "
              f"{value} > {path}), as runc does; it stays enabled", file=sys.stderr, flush=True)

    return Step(f"enable {names} for the children of {directory}, an ancestor of nsrecipes' "
                "cgroups that lacks it (the one write outside nsrecipes' own cgroups; never "
                "undone, as with runc: other cgroups may rely on it)",
                display=f"echo {value} > {path}", native=enable)


def create_cgroup(run: Runner, name: str | None = None,
                  controllers: tuple[str, ...] = cgroupfs.CONTROLLERS) -> Cgroup:
    """Step(s): make cgroup ``name`` (``nsr-...``) in each hierarchy carrying ``controllers``
    (on v2 in nsrecipes' own parent, whose controllers are enabled once it has the child,
    after the ancestors that lacked them got them: :func:`enable_step`); undo: kill what is
    in it and remove it. A controller that cannot be used fails here, before anything is
    made. Without root, in the cgroup delegated to the user (:func:`create_delegated`)."""
    if run.rootless:
        return create_delegated(run, name or f"{PREFIX}-cg-{scope_id()}", controllers)
    cg = cgroupfs.plan(name or f"{PREFIX}-cg-{scope_id()}", controllers)
    for path, value in cg.ancestor_enable_writes():
        run.run(enable_step(path, value))
    if cg.parent:
        run.run(parent_step(cg.parent))
    for ctrl, d in dirs_with_names(cg):
        run.run(Step(f"create cgroup {cg.name} in the {ctrl} hierarchy", argv=["mkdir", d],
                     shell=shell_mkdir(d, cg.parent),
                     native=lambda d=d: cgroupfs.make_dir(d, cg.parent), undo=rmdir_step(d)))
    for path, value in cg.enable_writes():
        run.run(write_step(path, value, "enable the controllers for nsrecipes' cgroups (v2)"))
    return cg


# --- without root: below the cgroup delegated to the user ---------------------------------------

def _others_below(delegated: str) -> list[str]:
    """nsrecipes cgroups below the delegated one other than the tools' own leaves."""
    return [e.name for e in os.scandir(delegated) if e.is_dir() and e.name.startswith(PREFIX)
            and not e.name.startswith(cgroupdeleg.SELF_LEAF)]


def leave_delegated(run: Runner, delegated: str) -> None:
    """Steps (once per run): move this process out of the delegated cgroup into a leaf of its
    own, so the delegated one holds no process and may enable controllers for its children
    (v2's rule); undo: disable those controllers again (a cgroup with processes had none
    enabled, so every one is ours), move back, remove the leaf -- unless another run's
    cgroups are still there."""
    leaf, pid = cgroupdeleg.self_leaf(delegated), os.getpid()
    if cgroupfs.own_cgroup(None).rstrip("/").endswith("/" + os.path.basename(leaf)):
        return
    control = os.path.join(delegated, "cgroup.subtree_control")

    def back() -> None:
        if _others_below(delegated):
            return     # another run's cgroups still need the controllers: it moves back last
        enabled = cgroupfs.read_file(control).split()
        if enabled:
            cgroupfs.write_file(control, " ".join(f"-{c}" for c in enabled))
        cgroupfs.write_file(os.path.join(delegated, "cgroup.procs"), pid)
        cgroupfs.remove_dir(leaf)

    run.run(Step(f"make {leaf}: a leaf for this process (pid {pid})", argv=["mkdir", leaf],
                 native=lambda: cgroupfs.make_dir(leaf)))
    run.run(Step(f"move this process into it: {delegated} may enable controllers for its "
                 "children only while it holds no process", display=f"echo {pid} > "
                 f"{leaf}/cgroup.procs", native=lambda: cgroupfs.write_file(
                     os.path.join(leaf, "cgroup.procs"), pid),
                 undo=Step(f"disable the controllers of {delegated} again, move this process "
                           f"back into it, remove {leaf}",
                           display=f"echo -memory -pids -cpu > {control}; echo {pid} > "
                                   f"{delegated}/cgroup.procs; rmdir {leaf}", native=back)))


def enable_delegated(run: Runner, delegated: str, controllers: tuple[str, ...]) -> None:
    """Step: enable ``controllers`` for the children of the delegated cgroup (disabled again
    when this process moves back: :func:`leave_delegated`)."""
    control = os.path.join(delegated, "cgroup.subtree_control")
    missing = list(controllers) if run.explain else [
        c for c in controllers if c not in cgroupfs.read_file(control).split()]
    if not missing:
        return
    value = " ".join(f"+{c}" for c in missing)
    run.run(Step(f"enable {' '.join(missing)} for the children of the delegated {delegated}",
                 display=f"echo {value} > {control}",
                 native=lambda: cgroupfs.write_file(control, value)))


def create_delegated(run: Runner, name: str, controllers: tuple[str, ...]) -> Cgroup:
    """Steps (without root): cgroup ``name`` right below the cgroup delegated to this user
    (one line with the systemd-run hint where there is none); with controllers, this process
    leaves the delegated cgroup first (:func:`leave_delegated`); undo: kill what is in it and
    remove it."""
    wanted = tuple(c for c in controllers if c in cgroupfs.CONTROLLERS)
    delegated = cgroupdeleg.require(f"a cgroup with {' '.join(wanted) or 'no controller'}",
                                    wanted)
    path = os.path.join(delegated, name)
    cg = Cgroup(name, 2, {c: path for c in wanted} or {"cgroup": path})
    if wanted:
        leave_delegated(run, delegated)
        enable_delegated(run, delegated, wanted)
    run.run(Step(f"create cgroup {name} below the delegated {delegated}", argv=["mkdir", path],
                 native=lambda: cgroupfs.make_dir(path), undo=rmdir_step(path)))
    return cg


def dirs_with_names(cg: Cgroup) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for d in cg.unique_dirs():
        ctrls = [c for c, p in cg.dirs.items() if p == d]
        out.append(("+".join(ctrls) if cg.version == 1 else "v2", d))
    return out


def set_limits(run: Runner, cg: Cgroup, limits: Limits) -> None:
    """Step(s): write each limit into its control file."""
    for ctrl, path, value in cg.limit_writes(limits):
        run.run(write_step(path, value, f"limit {ctrl}: {os.path.basename(path)} = {value}"))


def move_process(run: Runner, cg: Cgroup, pid: int | str) -> None:
    """Step(s): move process ``pid`` into the cgroup (``echo PID > DIR/cgroup.procs``)."""
    for ctrl, d in dirs_with_names(cg):
        path = os.path.join(d, "cgroup.procs")
        run.run(write_step(path, pid, f"move process {pid} into {cg.name} ({ctrl})"))


def remove_cgroup(run: Runner, cg: Cgroup) -> None:
    """Step(s): remove the cgroup now (kill what is left first)."""
    for _ctrl, d in reversed(dirs_with_names(cg)):
        run.run(rmdir_step(d))


# --- running a workload inside a cgroup --------------------------------------------------------

@dataclass
class Outcome:
    """How a workload run in a cgroup ended."""

    returncode: int          #: exit status, 128+N if killed by signal N
    result: Any = None       #: what the workload function returned (None if it was killed)
    progress: int = 0        #: the last progress value it reported (e.g. bytes allocated)
    seconds: float = 0.0     #: wall time from release to exit


def run_in_cgroup(run: Runner, cg: Cgroup, work: Callable[[Callable[[int], None]], Any],
                  title: str) -> Outcome:
    """Fork a child, move it into ``cg`` before it starts, run ``work(report)`` there.

    ``report(n)`` lets the workload publish progress that survives a SIGKILL (the OOM
    killer). Under --explain only the move step is printed.
    """
    if run.explain:
        move_process(run, cg, Placeholder("$PID"))
        return Outcome(0)
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    prog_r, prog_w = os.pipe()
    pid = process.fork()
    if pid == 0:  # pragma: no cover - child
        status = 1
        try:
            os.close(go_w), os.close(res_r), os.close(prog_r)
            if os.read(go_r, 1) != b"g":
                os._exit(1)
            result = work(lambda n: os.write(prog_w, n.to_bytes(8, "little")))
            os.write(res_w, process.to_bytes(result))
            status = 0
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    for fd in (go_r, res_w, prog_w):
        os.close(fd)
    try:
        move_process(run, cg, pid)
        run.say(f"   {title} (pid {pid})")
        start = time.monotonic()
        os.write(go_w, b"g")
        os.close(go_w)
        go_w = -1
        data = process.read_all(res_r)
        progress_raw = process.read_all(prog_r)
        _, status = os.waitpid(pid, 0)
        seconds = time.monotonic() - start
    except BaseException:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        raise
    finally:
        for fd in (go_w, res_r, prog_r):
            if fd >= 0:
                os.close(fd)
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code
    progress = int.from_bytes(progress_raw[-8:], "little") if len(progress_raw) >= 8 else 0
    return Outcome(code, process.from_bytes(data) if data else None, progress, seconds)


# --- workloads (run inside the cgroup) ---------------------------------------------------------

def memory_hog(limit: int) -> Callable[[Callable[[int], None]], Any]:
    """Allocate (and touch) memory in 2 MiB steps up to 4x ``limit`` (capped), reporting
    how much it holds; the OOM killer should stop it near ``limit``."""
    target = min(4 * limit, MEMORY_HOG_CAP)

    def work(report: Callable[[int], None]) -> int:
        held, total, chunk = [], 0, 2 << 20
        while total < target:
            held.append(b"\x01" * chunk)   # memset: every page is touched, so charged
            total += chunk
            report(total)
        return total
    return work


def fork_bomb(pids_file: str, depth: int = FORK_BOMB_DEPTH) -> Callable[[Callable[[int], None]], Any]:
    """A bounded fork bomb: every process forks two more, ``depth`` levels deep (at most
    ``2**(depth+1) - 2`` attempts however many succeed). Everything then waits on a pipe and
    exits when the root closes it. Returns (forks that worked, forks refused, pids.current
    while all were alive)."""
    depth = max(1, min(depth, FORK_BOMB_DEPTH))

    def work(report: Callable[[int], None]) -> tuple[int, int, int]:
        tally_r, tally_w = os.pipe()
        hold_r, hold_w = os.pipe()

        def member(level: int) -> None:
            kids = []
            if level < depth:
                for _ in range(2):
                    os.write(tally_w, b"a")        # announced before fork(): see below
                    try:
                        child = process.fork()
                    except OSError as exc:         # EAGAIN: the pids limit said no
                        os.write(tally_w, b"x" if exc.errno == errno.EAGAIN else b"?")
                        continue
                    if child == 0:
                        _exit_after(lambda: member(level + 1))
                    kids.append(child)
            os.write(tally_w, b"d")
            os.read(hold_r, 1)                      # wait until the root lets go
            for k in kids:
                os.waitpid(k, 0)

        pid = process.fork()
        if pid == 0:
            os.close(hold_w)
            _exit_after(lambda: member(1))
        # processes = 1 + attempts - failures; each says "d" once after all its attempts,
        # and an attempt is announced before the fork, so done == processes means all done.
        attempts, failed, done = 0, 0, 0
        while done < 1 + attempts - failed:
            for c in os.read(tally_r, 4096):
                if c == ord("a"):
                    attempts += 1
                elif c == ord("d"):
                    done += 1
                else:
                    failed += 1
        with open(pids_file) as f:
            current = int(f.read())
        os.close(hold_w)              # everyone's read() returns: the bomb winds down
        os.waitpid(pid, 0)
        return 1 + attempts - failed, failed, current
    return work


def _exit_after(fn: Callable[[], None]) -> None:
    """In a forked child: run ``fn`` and _exit (never return into the parent's stack)."""
    code = 0
    try:
        fn()
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def busy_loop(seconds: float) -> Callable[[Callable[[int], None]], Any]:
    """Spin for ``seconds`` of wall time; return the CPU seconds this process got."""
    def work(report: Callable[[int], None]) -> float:
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
        t = os.times()
        return t.user + t.system
    return work


# --- the demo ---------------------------------------------------------------------------------

def demo_memory(run: Runner, limit: str | int = "32M") -> dict:
    """A child allocates past the memory limit and the kernel's OOM killer stops it."""
    nbytes = cgroupfs.parse_memory(limit)
    run.heading(f"{SECTION}: memory ({nbytes >> 20} MiB)")
    cg = create_cgroup(run, f"{PREFIX}-cg-{scope_id()}-mem", ("memory",))
    set_limits(run, cg, Limits(memory=nbytes))
    out = run_in_cgroup(run, cg, memory_hog(nbytes),
                        f"a child allocates up to {min(4 * nbytes, MEMORY_HOG_CAP) >> 20} MiB")
    if run.explain:
        return {}
    kills = cg.oom_kills()
    peak = cg.memory_max_usage()
    run.say(f"   it held {out.progress >> 20} MiB when it ended with status {out.returncode}"
            f" ({'SIGKILL' if out.returncode == 137 else 'no signal'}); "
            f"oom_kill = {kills}; peak usage {peak >> 20} MiB of {nbytes >> 20} MiB")
    events = cg.memory_events()
    return {"limit": nbytes, "returncode": out.returncode, "allocated": out.progress,
            "oom_kills": kills, "peak": peak, "events": events, "version": cg.version}


def bomb_limit(limit: int | str) -> int:
    """A pids limit the fork bomb shows something with: at least 2 (the child in the cgroup
    and the bomb's first process), below 2 + its most forks (else nothing is refused)."""
    maximum = cgroupfs.parse_pids(limit)
    most = 2 + 2 ** (FORK_BOMB_DEPTH + 1) - 2
    if not 2 <= maximum < most:
        raise InvalidInput(f"pids limit {maximum}: the fork bomb demo needs 2 to {most - 1}",
                           hint=f"below 2 nothing can fork, from {most} up the bomb never "
                                f"reaches the limit; e.g. --pids 32")
    return maximum


def demo_pids(run: Runner, limit: int | str = 32) -> dict:
    """A bounded fork bomb stops at the pids limit."""
    maximum = bomb_limit(limit)
    run.heading(f"{SECTION}: pids (at most {maximum} processes)")
    cg = create_cgroup(run, f"{PREFIX}-cg-{scope_id()}-pids", ("pids",))
    set_limits(run, cg, Limits(pids=maximum))
    attempts = 2 ** (FORK_BOMB_DEPTH + 1) - 2
    out = run_in_cgroup(run, cg, fork_bomb(cg.file("pids", "pids.current")),
                        f"a fork bomb (every process forks two, {FORK_BOMB_DEPTH} levels: "
                        f"up to {attempts} forks)")
    if run.explain:
        return {}
    ok, refused, current = out.result or (0, 0, 0)
    events = cg.pids_refused()
    run.say(f"   forks that worked: {ok}, refused with EAGAIN: {refused}; pids.current at the "
            f"peak {current} of pids.max {maximum}; pids.events max = {events}")
    return {"limit": maximum, "returncode": out.returncode, "forked": ok, "refused": refused,
            "peak": current, "events_max": events, "version": cg.version}


def demo_cpu(run: Runner, cpus: str | float = 0.5, seconds: float = 1.0) -> dict:
    """A busy loop under a CPU quota gets about quota/period of a CPU."""
    share = cgroupfs.parse_cpus(cpus)
    run.heading(f"{SECTION}: cpu ({share} CPU)")
    cg = create_cgroup(run, f"{PREFIX}-cg-{scope_id()}-cpu", ("cpu",))
    limits = Limits(cpus=share)
    set_limits(run, cg, limits)
    out = run_in_cgroup(run, cg, busy_loop(seconds), f"a busy loop for {seconds:g} s")
    if run.explain:
        return {}
    used = cg.cpu_usage_us() / 1e6
    ratio = used / out.seconds if out.seconds else 0.0
    quota, period = limits.cpu_quota()
    throttled = cg.cpu_throttled()
    run.say(f"   {out.seconds:.2f} s of wall time, {used:.3f} s of CPU: {ratio:.2f} CPU "
            f"(quota {quota} us per {period} us = {quota / period:.2f}); throttled in "
            f"{throttled} periods")
    return {"cpus": share, "quota": quota, "period": period, "wall": out.seconds,
            "cpu": used, "ratio": ratio, "child_cpu": out.result, "throttled": throttled,
            "version": cg.version}


def demo(run: Runner, memory: str = "32M", pids: int | str = 32, cpus: str | float = 0.5,
         seconds: float = 1.0) -> dict:
    """All three limits, each in its own cgroup; returns what was observed."""
    Limits.parse(memory, pids, cpus)   # bad input fails before anything is made
    bomb_limit(pids)
    layout = cgroupfs.detect()
    if run.rootless:   # only in a cgroup delegated to this user
        cgroupdeleg.require("cgroup-demo", cgroupfs.CONTROLLERS, layout)
    else:
        cgroupfs.require(cgroupfs.CONTROLLERS, layout)   # and so does a controller we cannot use
    run.heading(f"{SECTION}: layout {layout.mode} "
                f"(v1: {', '.join(sorted(layout.v1)) or '-'}; v2: {layout.v2 or '-'} "
                f"with {', '.join(layout.v2_controllers) or 'no'} controllers)")
    result = {"layout": layout.mode,
              "memory": demo_memory(run, memory),
              "pids": demo_pids(run, pids),
              "cpu": demo_cpu(run, cpus, seconds)}
    run.undo()
    return result


# --- leftovers ---------------------------------------------------------------------------------

def leftovers() -> list[Leftover]:
    """Every ``nsr*`` cgroup directory in every hierarchy (removal kills what is left inside).
    :mod:`recipes.ops.cleanup` leaves out the containers' own: a container's removal takes
    them."""
    try:
        found = cgroupfs.find_ours()
    except NsrError:
        return []
    return [Leftover("cgroup", d, lambda d=d: _remove_leftover(d)) for d in found]


def _remove_leftover(directory: str) -> None:
    """A leftover ``nsr*`` cgroup: killed and removed; nsrecipes' v2 parent only if it is
    empty by now (what is in it is listed, and removed, before it)."""
    if os.path.basename(directory) == cgroupfs.PARENT_NAME:
        cgroupfs.prune_parent(directory)
    else:
        cgroupfs.remove_dir(directory)
