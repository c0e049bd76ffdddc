#!/usr/bin/env python3
"""Benchmark: start-to-exit time of `true` in a container, on the same busybox rootfs:

* nsrecipes API      -- recipes.container.run_container() in this (warm) Python process,
                        native backend; with and without its own network namespace; as root,
                        and as a real unprivileged user (uid 65534, no capabilities, through
                        setpriv: a user namespace first, as container-run makes it there);
* nsrecipes CLI      -- `invoke container-run --backend native -- true` (a new process each
                        time: interpreter start + imports included);
* runc run           -- Debian's runc with `runc spec`'s default config (pid, net, ipc, uts,
                        mount namespaces, cgroups), the rootfs read-only;
* bwrap              -- bubblewrap: --unshare-pid/uts/ipc/net, --ro-bind the rootfs as /,
                        --proc /proc --dev /dev (as the user: --unshare-user too);
* floor (C)          -- bench/container_floor.c, compiled here with ``cc``: the system calls
                        of the API's start as root, in the same order, from a small C
                        program (its own exec included, as bwrap's is): what the kernel's
                        share of the API's time is, and so what the interpreter adds.

nsrecipes does more per start than bwrap here (a cgroup, an overlay with its own upper dir,
a tmpfs /dev with device nodes, pivot_root, a record of the container) and about what runc
does. The variants run interleaved, one of each per round; prints the median and quartiles
of each, the ratios to runc and to bwrap, the load average, and then where the API's time
goes: the median of each step over traced runs (:mod:`nsutil.timeline`: marks from the tool,
the process outside, PID 1 and the command, on one clock), with the floor's marks at the same
points beside them. Goal: the warm API <= 1.5x bwrap, with and without --net, as root and as
the user. Needs root (and ``cc`` for the floor; without it the floor is left out).

    .venv/bin/python bench/container_start.py --runs 20
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nsutil import cgroupfs, timeline  # noqa: E402
from nsutil.backend import Runner  # noqa: E402
from recipes import container  # noqa: E402
from nsutil import state  # noqa: E402
from recipes.container import rootfs  # noqa: E402

USER_UID = 65534
GOAL = 1.5
FLOOR_SOURCE = os.path.join(ROOT, "bench", "container_floor.c")
#: (what, first mark, last mark, which start: "root" where the tool forks PID 1 itself,
#: "user" where a process outside makes the user namespace first): the stretches between
#: the marks of recipes/container/run.py; every Runner step ("> TITLE" .. "< TITLE") is a
#: row of its own
SPANS = (
    ("prepare: options, host, rootfs, name", "run_container", "prepared", None),
    ("fork PID 1 (the tool's side)", "fork PID 1", "forked PID 1", "root"),
    ("fork PID 1: until it runs", "fork PID 1", "PID 1: forked", "root"),
    ("PID 1 unshares mount, UTS, IPC (, net)", "PID 1: forked", "PID 1: unshared", "root"),
    ("fork the process outside (the tool's side)", "fork the process outside",
     "forked the process outside", "user"),
    ("fork: until the process outside runs", "fork the process outside", "outside: forked",
     "user"),
    ("user namespace, maps, unshare the others", "outside: forked", "outside: unshared", "user"),
    ("fork PID 1: until it runs", "outside: fork PID 1", "PID 1: forked", "user"),
    ("the tool gets PID 1's pid", "forked the process outside", "got PID 1's pid", "user"),
    ("start the command (spawn+exec), it runs, PID 1 reaps it", "PID 1: fork the command",
     "PID 1: the command was reaped", None),
    ("PID 1 exits (its namespaces go), the tool reaps it", "PID 1: the command was reaped",
     "the tool reaped its child", "root"),
    ("PID 1 exits (its PID namespace goes), reaped", "PID 1: the command was reaped",
     "outside: PID 1 was reaped", "user"),
    ("the process outside exits (mount ns...), reaped", "outside: PID 1 was reaped",
     "the tool reaped its child", "user"),
    ("undo: everything made, removed", "undo", "undone", None),
    ("total (traced)", "start", "end", None),
)


def interleaved(variants: dict[str, Callable[[], None]], runs: int) -> dict[str, list[float]]:
    """Wall times (s) of each variant, one of each per round, after one untimed round."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(runs + 1):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - t)
    return times


def check(argv: list[str], **kw) -> None:
    """Run a tool; the bench stops with its stderr when it fails."""
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} exited {done.returncode}: {done.stderr[-300:]!r}")


def api(rf: str, null: int, net: bool = False) -> Callable[[], None]:
    """One start of `true` through the warm API."""
    def go() -> None:
        with Runner(backend="native") as run:
            code = container.run_container(run, ["true"], rootfs=rf, net=net, stdin=null,
                                           stdout=null, stderr=null)
        if code != 0:
            raise SystemExit(f"bench: container exited {code}")
    return go


def bwrap_argv(rf: str, user: bool) -> list[str]:
    """bubblewrap's command line for `true` on ``rf`` (as a user: its own user namespace)."""
    return (["bwrap"] + (["--unshare-user"] if user else []) +
            ["--unshare-pid", "--unshare-uts", "--unshare-ipc", "--unshare-net",
             "--ro-bind", rf, "/", "--proc", "/proc", "--dev", "/dev", "--die-with-parent",
             "--", "/bin/true"])


def label_of(mark: str) -> str:
    """A step's title without what differs from run to run (the container's name, pids)."""
    text = re.sub(r"pid \d+", "pid N", mark[2:])
    return re.sub(r"\bnsr-c-[0-9a-z-]+", "NAME", re.sub(r"/\S*/nsr-c-[0-9a-z-]+", ".../NAME", text))


def phases(marks: list[timeline.Mark]) -> dict[str, float]:
    """ms of each span of :data:`SPANS` and of each step, in one traced run."""
    first: dict[str, int] = {}
    for m in marks:
        first.setdefault(m.label, m.ns)
    out: dict[str, float] = {}
    opened: dict[tuple[int, str], int] = {}
    for m in marks:
        if m.label.startswith("> "):
            opened[(m.pid, m.label[2:])] = m.ns
        elif m.label.startswith("< ") and (m.pid, m.label[2:]) in opened:
            key = "step: " + label_of(m.label)
            out[key] = out.get(key, 0.0) + (m.ns - opened.pop((m.pid, m.label[2:]))) / 1e6
    kind = "user" if "outside: forked" in first else "root"
    for what, a, b, only in SPANS:
        if a in first and b in first and only in (None, kind):
            out[what] = (first[b] - first[a]) / 1e6
    return out


def traced(fn: Callable[[str], None], runs: int) -> dict[str, float]:
    """Median ms of each phase over ``runs`` traced calls of ``fn`` (given the timeline file,
    for a program it starts to append its marks to)."""
    rows: dict[str, list[float]] = {}
    fd, path = tempfile.mkstemp(prefix="nsr-bench-timeline-")
    os.close(fd)
    try:
        for _ in range(runs):
            os.truncate(path, 0)
            timeline.enable(path)
            timeline.mark("start")
            fn(path)
            timeline.mark("end")
            timeline.disable()
            for k, v in phases(timeline.read(path)).items():
                rows.setdefault(k, []).append(v)
    finally:
        timeline.disable()
        os.unlink(path)
    return {k: statistics.median(v) for k, v in rows.items()}


class Floor:
    """The C floor (:data:`FLOOR_SOURCE`), compiled into ``work``, with a state directory of
    its own on the filesystem of nsrecipes' (the same ext4 or tmpfs costs) and its cgroup
    where nsrecipes makes a container's (v1: beside it; v2: beside nsrecipes' parent)."""

    def __init__(self, rf: str, work: str, state_parent: str) -> None:
        self.binary = os.path.join(work, "container_floor")
        check(["cc", "-O2", "-Wall", "-Wno-format-truncation", "-o", self.binary, FLOOR_SOURCE])
        os.makedirs(state_parent, exist_ok=True)
        self.base = tempfile.mkdtemp(prefix="nsr-bench-floor-", dir=state_parent)
        v1 = cgroupfs.host_layout().mode != "unified"
        cg = cgroupfs.plan("nsr-bench-floor", ("pids",) if v1 else ())
        self.cgroup = (cg.unique_dirs()[0] if v1 else
                       os.path.join(os.path.dirname(cg.parent or ""), "nsr-bench-floor"))
        self.cgroup_file = os.path.join(self.cgroup, "tasks" if v1 else "cgroup.procs")
        self.rootfs = rf

    def argv(self, net: bool = False) -> list[str]:
        """The floor's command line for `true`."""
        return [self.binary, self.rootfs, self.base, self.cgroup, self.cgroup_file,
                *(["--net"] if net else []), "--", "true"]

    def run(self, net: bool = False, marks: str | None = None) -> None:
        """One start; with ``marks`` its timeline goes there."""
        env = dict(os.environ, NSR_TIMELINE=marks) if marks else None
        check(self.argv(net), env=env)

    def remove(self) -> None:
        """Its state directory (empty after every run; the cgroup goes with each run)."""
        os.rmdir(self.base)


def make_floor(rf: str, work: str) -> Floor | None:
    """The floor, or None (said why) where there is no C compiler."""
    if shutil.which("cc") is None:
        print("floor (C): left out, no C compiler (cc) here")
        return None
    return Floor(rf, work, os.path.dirname(state.state_dir(create=False)))


def load() -> str:
    """The load averages (1, 5, 15 min)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def worker(rf: str, runs: int) -> None:
    """As the unprivileged user: the API and bwrap interleaved, then traced runs; JSON out."""
    null = os.open(os.devnull, os.O_RDWR)
    times = interleaved({"API": api(rf, null), "API --net": api(rf, null, True),
                         "bwrap": lambda: check(bwrap_argv(rf, True))}, runs)
    steps = {"API": traced(lambda _marks: api(rf, null)(), runs),
             "API --net": traced(lambda _marks: api(rf, null, True)(), runs)}
    json.dump({"times": times, "steps": steps}, sys.stdout)


def as_user(rf: str, runs: int) -> dict:
    """Run :func:`worker` as uid 65534 (setpriv, no capabilities) with a home of its own."""
    home = tempfile.mkdtemp(prefix="nsr-bench-home-", dir="/tmp")
    try:
        os.mkdir(os.path.join(home, "run"), 0o700)
        for path in (home, os.path.join(home, "run")):
            os.chown(path, USER_UID, USER_UID)
            os.chmod(path, 0o700)
        env = {k: v for k, v in os.environ.items() if k not in ("NSR_STATE_DIR", "NSR_TIMELINE")}
        env.update(HOME=home, XDG_RUNTIME_DIR=os.path.join(home, "run"), USER="nobody")
        argv = ["setpriv", f"--reuid={USER_UID}", f"--regid={USER_UID}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--", sys.executable,
                os.path.abspath(__file__), "--worker", rf, "--runs", str(runs)]
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench: the run as uid {USER_UID} failed: {done.stderr[-600:]}")
        try:
            return json.loads(done.stdout.splitlines()[-1])
        except (IndexError, ValueError):
            raise SystemExit(f"bench: the run as uid {USER_UID} printed {done.stdout[-300:]!r}, "
                             f"{done.stderr[-300:]!r}") from None
    finally:
        shutil.rmtree(home, ignore_errors=True)


def print_times(title: str, results: dict[str, list[float]]) -> None:
    """Median and quartiles of each variant, and its ratios to runc and to bwrap."""
    runc = statistics.median(results["runc run"]) if "runc run" in results else None
    bwrap = statistics.median(results["bwrap"])
    print(title)
    print(f"{'':28} {'median':>9} {'p25':>9} {'p75':>9} {'vs runc':>8} {'vs bwrap':>9}")
    for name, times in results.items():
        q = statistics.quantiles(times, n=4)
        med = statistics.median(times)
        vs_runc = f"{med / runc:.2f}x" if runc else "-"
        print(f"{name:28} {med * 1000:7.1f}ms {q[0] * 1000:7.1f}ms {q[2] * 1000:7.1f}ms "
              f"{vs_runc:>8} {med / bwrap:8.2f}x")


def print_steps(columns: dict[str, dict[str, float]]) -> None:
    """One row per stretch and per step, one column per kind of start."""
    names = list(columns)
    print("where the API's time goes (median ms over the traced runs; the process outside, "
          "PID 1 and the tool overlap on 2 CPUs):")
    print(f"{'':58}" + "".join(f"{n:>14}" for n in names))
    keys: list[str] = []
    for col in columns.values():
        keys += [k for k in col if k not in keys]
    order = [s[0] for s in SPANS]
    for key in sorted(keys, key=lambda k: (k.startswith("step:"), order.index(k) if k in order else 0)):
        cells = "".join(f"{columns[n][key]:14.2f}" if key in columns[n] else f"{'-':>14}"
                        for n in names)
        print(f"{key[:58]:58}{cells}")


def print_floor(results: dict[str, list[float]], steps: dict[str, dict[str, float]]) -> None:
    """What the kernel's share of a start is (the floor), against bwrap and the API; and the
    stretches where the API spends more than the floor, largest first."""
    bw = statistics.median(results["bwrap"])
    for api_name, floor_name in (("nsrecipes API (warm)", "floor (C, same calls)"),
                                 ("nsrecipes API (warm) --net", "floor (C) --net")):
        a, f = statistics.median(results[api_name]), statistics.median(results[floor_name])
        print(f"floor: {floor_name} {f * 1000:.1f} ms = {f / bw:.2f}x bwrap; {api_name} "
              f"{a * 1000:.1f} ms = {a / f:.2f}x the floor: {(a - f) * 1000:.1f} ms above it")
    api_steps, floor_steps = steps["root"], steps["floor (C)"]
    # (the tool's side of the fork overlaps "until it runs", which starts at the same mark)
    more = sorted(((api_steps[k] - floor_steps[k], k) for k in floor_steps
                   if k in api_steps and not k.startswith("total") and "tool's side" not in k),
                  reverse=True)
    print("floor: where the API spends more than the floor (traced, ms): " +
          "; ".join(f"{k} +{d:.2f}" for d, k in more if d > 0.05))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="timed runs of each (>= 5; default 20)")
    ap.add_argument("--worker", metavar="ROOTFS", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.runs)
        return
    if args.runs < 5:
        raise SystemExit("bench: --runs must be at least 5")
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root")
    for tool in ("runc", "bwrap"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is not installed (./bootstrap pytest installs it)")

    with Runner(backend="native") as run:
        rf = rootfs.ensure_default(run)
    null = os.open(os.devnull, os.O_RDWR)
    work = tempfile.mkdtemp(prefix="nsr-bench-")
    print(f"container start-to-exit of `true`, busybox rootfs {rf}, {args.runs} runs each "
          f"interleaved, {os.cpu_count()} CPUs; load average {load()} at the start")
    try:
        bundle = os.path.join(work, "bundle")
        os.mkdir(bundle)
        check(["runc", "spec", "--bundle", bundle])
        with open(os.path.join(bundle, "config.json")) as f:
            cfg = json.load(f)
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["true"]
        cfg["root"] = {"path": rf, "readonly": True}
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(cfg, f)
        runc_state = os.path.join(work, "runc-state")
        counter = iter(range(10**6))
        invoke = os.path.join(os.path.dirname(sys.executable), "invoke")   # this environment's
        floor = make_floor(rf, work)
        floors = {"floor (C, same calls)": floor.run,
                  "floor (C) --net": lambda: floor.run(net=True)} if floor else {}
        results = interleaved({
            "nsrecipes API (warm)": api(rf, null),
            "nsrecipes API (warm) --net": api(rf, null, True),
            "nsrecipes CLI": lambda: check([invoke, "container-run", "--rootfs", rf, "--backend",
                                            "native", "--", "true"], cwd=ROOT),
            "runc run": lambda: check(["runc", "--root", runc_state, "run", "--bundle", bundle,
                                       f"nsr-bench-{next(counter)}"]),
            "bwrap": lambda: check(bwrap_argv(rf, False)), **floors}, args.runs)
        root_load = load()
        steps = {"root": traced(lambda _marks: api(rf, null)(), args.runs),
                 "root --net": traced(lambda _marks: api(rf, null, True)(), args.runs)}
        if floor:
            steps["floor (C)"] = traced(lambda marks: floor.run(marks=marks), args.runs)
        user = as_user(rf, args.runs)
        user_load = load()
    finally:
        if floor:
            floor.remove()
        shutil.rmtree(work, ignore_errors=True)
        os.close(null)

    print_times(f"as root (load {root_load}):", results)
    print_times(f"as uid {USER_UID}, a user namespace first (load {user_load}):",
                {f"nsrecipes {k} (warm)": v for k, v in user["times"].items() if k != "bwrap"}
                | {"bwrap": user["times"]["bwrap"]})
    steps.update({f"uid {USER_UID}": user["steps"]["API"],
                  f"{USER_UID} --net": user["steps"]["API --net"]})
    print_steps(steps)
    bw_root = statistics.median(results["bwrap"])
    bw_user = statistics.median(user["times"]["bwrap"])
    for what, times, bw in (
            ("root", results["nsrecipes API (warm)"], bw_root),
            ("root --net", results["nsrecipes API (warm) --net"], bw_root),
            (f"uid {USER_UID}", user["times"]["API"], bw_user),
            (f"uid {USER_UID} --net", user["times"]["API --net"], bw_user)):
        ratio = statistics.median(times) / bw
        print(f"goal: warm API {what} <= {GOAL}x bwrap: {ratio:.2f}x: "
              f"{'met' if ratio <= GOAL else 'NOT met'}")
    if floor:
        print_floor(results, steps)
    print(f"load average {load()} at the end")


if __name__ == "__main__":
    main()
