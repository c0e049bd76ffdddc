"""cgroup limits against the real kernel: OOM kill, fork bomb, CPU quota, removal.

Every test checks the files of the layout it finds: the v1 files on a hybrid or v1 host (this
machine), the v2 files on a pure v2 host (the VM runner's Debian 6.1 guest), where the
cgroups go below nsrecipes' own parent, never below the caller's scope. What neither machine
has is built for real: a systemd-like session scope that holds processes (in a v2 guest),
a cgroup namespace whose root does not delegate the controllers (everywhere), and one whose
root is given them but enables none for its children (a v2 guest without systemd: nsrecipes
enables them there, as runc does). Input parsing is in test_cgroup_parse.py.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

import pytest

from helpers import INVOKE, cli, one_line_error
from nsutil import cgroupfs
from nsutil.backend import Runner
from nsutil.errors import InvalidInput, NsrError
from nsutil.names import scope_id
from recipes import cgroup


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("cgroups need root")


# --- layout ---------------------------------------------------------------------------------

def test_this_machine_is_detected_like_runc():
    """runc: statfs(/sys/fs/cgroup) == CGROUP2_SUPER_MAGIC -> unified; statfs of
    /sys/fs/cgroup/unified == CGROUP2 -> hybrid. Compare with `stat -f`."""
    layout = cgroupfs.detect()
    top = subprocess.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], capture_output=True,
                         text=True).stdout.strip()
    if top == "cgroup2fs":
        assert layout.mode == "unified"
    elif os.path.isdir("/sys/fs/cgroup/unified") and subprocess.run(
            ["stat", "-f", "-c", "%T", "/sys/fs/cgroup/unified"], capture_output=True,
            text=True).stdout.strip() == "cgroup2fs":
        assert layout.mode == "hybrid"
    else:
        assert layout.mode == "legacy"


def test_cgroups_go_below_our_own_cgroup_on_v1_and_our_own_parent_on_v2():
    """v1: nested under the caller's cgroup, like runc with a relative cgroupsPath. v2: in
    nsrecipes' own parent at the top, never below the caller's (it may hold processes)."""
    layout = cgroupfs.detect()
    cg = cgroupfs.plan("nsr-test-plan", ("memory", "pids"), layout)
    for ctrl, d in cg.dirs.items():
        if cg.version == 1:
            own = cgroupfs.own_cgroup(ctrl)
            assert d == os.path.join(layout.v1[ctrl], own.lstrip("/"), "nsr-test-plan")
        else:
            assert d == os.path.join(layout.v2, "nsrecipes", "nsr-test-plan")
            assert cg.parent == os.path.dirname(d)
            assert cg.enable_writes() == [(os.path.join(cg.parent, "cgroup.subtree_control"),
                                           "+memory +pids")]
    assert cg.version == (2 if layout.mode == "unified" else 1)
    assert not cg.exists()
    with pytest.raises(InvalidInput):
        cgroupfs.plan("web")


@pytest.fixture
def v2_box():
    """A cgroup of the test's own in the v2 hierarchy (no controller enabled in it), removed
    at the end whatever happened; skips where there is no v2 hierarchy at all."""
    layout = cgroupfs.detect()
    if layout.v2 is None:
        pytest.skip(f"cgroup layout {layout.mode}: no v2 hierarchy")
    box = os.path.join(layout.v2, f"nsr-t-{scope_id()}")
    os.mkdir(box)
    try:
        yield box
    finally:
        cgroupfs.remove_dir(box)


def test_a_v2_root_that_offers_but_does_not_enable_is_planned_with_the_writes_above(v2_box):
    """The v2 hierarchy as the host has it, seen from a cgroup the test makes as if it were
    the root (here the hybrid host's /sys/fs/cgroup/unified offers no controller: plan()
    refuses in one line, naming the controller and the file; in a v2 guest it offers them but
    enables none: plan() makes nothing and the writes that enable them there are planned)."""
    box = v2_box
    fake = cgroupfs.Layout("unified", {}, box, ())
    offered = cgroupfs.read_file(os.path.join(box, "cgroup.controllers")).split()
    if "pids" not in offered:
        with pytest.raises(NsrError) as err:
            cgroupfs.plan("nsr-t-x", ("pids", "memory"), fake)
        text = str(err.value)
        assert text.startswith("cgroup v2: controller pids is not available in "), text
        assert f"in {box}/cgroup.controllers" in text and "(hint: " in text and "\n" not in text
    else:
        cg = cgroupfs.plan("nsr-t-x", ("pids", "memory"), fake)
        assert cg.ancestor_enable_writes() == [(f"{box}/cgroup.subtree_control",
                                                "+pids +memory")]
    assert not [e for e in os.scandir(box) if e.is_dir()]
    assert cgroupfs.read_file(os.path.join(box, "cgroup.subtree_control")).split() == []


def test_ancestor_writes_go_top_down_and_name_only_what_is_missing(v2_box):
    """runc's walk from the root as mounted down to the parent of its cgroup, read from real
    subtree_control files (on this host's controller-less v2 hierarchy too): each ancestor
    that lacks a wanted controller gets one write, in order; one that has them all, none."""
    box = v2_box
    os.makedirs(os.path.join(box, "a", "b"))
    parent = os.path.join(box, "a", "b", "nsrecipes")
    writes = cgroupfs.ancestor_writes(parent, box, ("memory", "pids", "cgroup"))
    assert writes == [(f"{d}/cgroup.subtree_control", "+memory +pids")
                      for d in (box, f"{box}/a", f"{box}/a/b")]
    assert cgroupfs.ancestor_writes(os.path.join(box, "nsrecipes"), box, ("pids",)) == [
        (f"{box}/cgroup.subtree_control", "+pids")]
    assert cgroupfs.ancestor_writes(os.path.join(box, "nsrecipes"), box, ()) == []
    layout = cgroupfs.detect()
    if layout.mode == "unified" and "memory" in cgroupfs.read_file(
            os.path.join(layout.v2, "cgroup.subtree_control")).split():
        top = cgroupfs.plan("nsr-t-x", ("memory",), layout)   # a systemd-like root: nothing
        assert top.ancestor_enable_writes() == []


# --- the limits, for real ---------------------------------------------------------------------

@pytest.fixture
def made_cgroups(monkeypatch) -> list[cgroupfs.Cgroup]:
    """Every cgroup the demo under test makes (what ``create_cgroup`` returned)."""
    made: list[cgroupfs.Cgroup] = []
    real = cgroup.create_cgroup

    def spy(*args, **kwargs) -> cgroupfs.Cgroup:
        made.append(real(*args, **kwargs))
        return made[-1]
    monkeypatch.setattr(cgroup, "create_cgroup", spy)
    return made


def _assert_removed(runner: Runner, made: list[cgroupfs.Cgroup], count: int) -> None:
    """The demo made ``count`` cgroups, and once its steps are undone none of their
    directories is left in any hierarchy."""
    assert len(made) == count and all(cg.unique_dirs() for cg in made)
    runner.undo()
    left = [d for cg in made for d in cg.unique_dirs() if os.path.exists(d)]
    assert left == [], left


def test_memory_limit_ends_in_an_oom_kill(runner, made_cgroups):
    got = cgroup.demo_memory(runner, "32M")
    assert got["returncode"] == 137, got          # SIGKILL from the OOM killer
    assert got["oom_kills"] >= 1, got
    assert 8 << 20 <= got["allocated"] <= 40 << 20, got
    assert got["peak"] <= 32 << 20
    _assert_removed(runner, made_cgroups, 1)


def test_fork_bomb_stops_at_the_pids_limit(runner, made_cgroups):
    got = cgroup.demo_pids(runner, 16)
    assert got["returncode"] == 0, got
    assert got["peak"] == 16, got                 # the workload + 15 bomb processes
    assert got["forked"] == 15 and got["refused"] > 0, got
    assert got["events_max"] >= got["refused"], got
    _assert_removed(runner, made_cgroups, 1)


def test_cpu_quota_is_measured_near_the_quota(runner, made_cgroups):
    got = cgroup.demo_cpu(runner, 0.5, 0.6)
    # never above the quota; near it on a quiet machine (~0.5), less when the 2 CPUs are busy
    assert 0.25 <= got["ratio"] <= 0.62, got
    assert got["throttled"] >= 1, got       # the CFS bandwidth timer did stop it
    assert (got["quota"], got["period"]) == (50_000, 100_000)
    _assert_removed(runner, made_cgroups, 1)


def test_the_whole_demo_removes_its_three_cgroups(made_cgroups):
    """``cgroup.demo`` undoes its own steps before it returns (``cgroup-demo`` runs it)."""
    with Runner(backend="native") as run:
        cgroup.demo(run, seconds=0.2)
        assert len(made_cgroups) == 3
        left = [d for cg in made_cgroups for d in cg.unique_dirs() if os.path.exists(d)]
        assert left == [], left


def test_removal_kills_what_is_left_and_retries(backend):
    with Runner(backend=backend) as run:
        cg = cgroup.create_cgroup(run, None, ("pids",))
        child = subprocess.Popen(["sleep", "30"])
        try:
            cgroup.move_process(run, cg, child.pid)
            assert cg.procs() == [child.pid]
            cgroup.remove_cgroup(run, cg)   # rmdir alone would be EBUSY
            assert child.wait(5) == -signal.SIGKILL
            assert not cg.exists()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


#: the files each limit is written to, by cgroup version (runc's mapping)
LIMIT_FILES = {1: ("memory.limit_in_bytes", "pids.max", "cpu.cfs_quota_us"),
               2: ("memory.max", "pids.max", "cpu.max")}


@pytest.mark.userspace
def test_explain_changes_nothing(capsys):
    before = set(cgroupfs.find_ours())
    version = 2 if cgroupfs.detect().mode == "unified" else 1
    with Runner(backend="native", explain=True) as run:
        cgroup.demo(run)
    out = capsys.readouterr().out
    mem, pids, cpu = LIMIT_FILES[version]
    assert "echo 33554432 > " in out and mem in out
    assert pids in out and cpu in out and "rmdir" in out
    if version == 2:   # nsrecipes' own parent, its controllers, never the caller's cgroup
        assert "mkdir -p /sys/fs/cgroup/nsrecipes\n" in out
        assert "echo +memory > /sys/fs/cgroup/nsrecipes/cgroup.subtree_control" in out
        assert "echo 50000 100000 > /sys/fs/cgroup/nsrecipes/nsr-cg-" in out
        assert "rmdir /sys/fs/cgroup/nsrecipes\n" in out
    else:
        assert "cgroup.subtree_control" not in out and "nsrecipes" not in out
    assert set(cgroupfs.find_ours()) == before


def test_leftovers_lists_and_removes_only_ours():
    with Runner(backend="native", keep=True) as run:
        cg = cgroup.create_cgroup(run, None, ("pids", "memory"))
    child = subprocess.Popen(["sleep", "30"])
    try:
        cg.add(child.pid)
        found = {item.name: item for item in cgroup.leftovers()}
        mine = [d for d in cg.unique_dirs()]
        assert all(d in found for d in mine)
        assert all(os.path.basename(n).startswith("nsr") for n in found)
        for d in mine:
            found[d].remove()
        assert child.wait(5) == -signal.SIGKILL
        assert not cg.exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        cg.remove()


@pytest.mark.userspace
def test_cgroup_demo_cli(tmp_path):
    t = time.monotonic()
    assert cli("--version").returncode == 0
    start = time.monotonic() - t     # the interpreter and invoke: ~0.5 s here, ~45 s in TCG
    t = time.monotonic()
    done = cli("cgroup-demo", "--seconds", "0.3", "--pids", "12", "--backend", "native", timeout=600)
    assert done.returncode == 0, done.stderr
    assert "oom_kill = 1" in done.stdout and "pids.current at the peak 12 of pids.max 12" in done.stdout
    assert time.monotonic() - t < 30 + 3 * start
    bad = cli("cgroup-demo", "--pids", "0", timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "pids limit" in bad.stderr


# --- hosts as users have them ------------------------------------------------------------------

def _v2_tree() -> str:
    """Every directory below the v2 hierarchy (what "nothing was made" is compared with)."""
    layout = cgroupfs.detect()
    return sorted(r for r, _d, _f in os.walk(layout.v2)) if layout.v2 else []


def _namespace_root(box: str, leave: bool) -> list[str]:
    """The argv prefix that runs a command with cgroup ``box`` as the root of a new cgroup
    namespace, cgroup2 mounted anew on /sys/fs/cgroup in a new private mount namespace (what
    `docker run --privileged --cgroupns=private` gives). With ``leave`` the command first
    moves into BOX/init, as docker:dind's entrypoint does, so the root holds no process."""
    # a tmpfs between: the same superblock right on top of its own mount's root is EBUSY
    inner = ('mount -t tmpfs nsr-t /sys/fs/cgroup && mount -t cgroup2 nsr-cg2 /sys/fs/cgroup'
             + (' && mkdir /sys/fs/cgroup/init && echo $$ > /sys/fs/cgroup/init/cgroup.procs'
                if leave else '') + ' && exec "$@"')
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && shift && exec "$@"', box, "x",
            "unshare", "--cgroup", "--mount", "--propagation", "private", "sh", "-c",
            inner, "sh"]


@pytest.mark.parametrize("argv, ctrl", [(["container-run", "--pids", "20", "--", "true"], "pids"),
                                        (["cgroup-demo"], "memory")],
                         ids=["container-run", "cgroup-demo"])
def test_a_container_root_that_delegates_nothing_gives_one_line_first(argv, ctrl, v2_box):
    """Like a container whose cgroup namespace root holds processes and has no controller for
    children: a cgroup of the test's own (no controller enabled in it) becomes the root of a
    new cgroup namespace, with cgroup2 mounted on /sys/fs/cgroup in a new mount namespace.
    Real on both machines: the hybrid host's v2 hierarchy offers no memory/pids at all (not
    available); a v2 guest's offers them, but v2 forbids a root holding processes to enable
    memory (no internal processes), and pids there would make nsrecipes' cgroups 'domain
    invalid' (a threaded root), so nsrecipes does not try and says how to fix it."""
    box = v2_box
    before = (sorted(os.listdir(box)), set(cgroupfs.find_ours()))
    line = one_line_error(cli(*argv, prefix=_namespace_root(box, leave=False), timeout=300))
    assert f"cgroup v2: controller {ctrl} is not " in line, line
    assert "/sys/fs/cgroup/cgroup." in line and "namespace" in line, line
    if ctrl in cgroupfs.read_file(os.path.join(box, "cgroup.controllers")).split():
        assert "/sys/fs/cgroup may not enable it: it holds processes" in line, line
        assert "no internal processes" in line and "mkdir /sys/fs/cgroup/init" in line, line
    assert (sorted(os.listdir(box)), set(cgroupfs.find_ours())) == before
    assert cgroupfs.read_file(os.path.join(box, "cgroup.subtree_control")).split() == []


def _offers(box: str, controllers: tuple[str, ...]) -> None:
    """Skip unless ``box`` is given ``controllers`` (a pure v2 host, not this hybrid one)."""
    offered = cgroupfs.read_file(os.path.join(box, "cgroup.controllers")).split()
    if not set(controllers) <= set(offered):
        pytest.skip(f"cgroup layout {cgroupfs.detect().mode}: the v2 hierarchy does not give "
                    f"{' '.join(controllers)} (a root enabling them is tested in the VM)")


def _enabled_line(controllers: str, root: str = "/sys/fs/cgroup") -> str:
    value = " ".join(f"+{c}" for c in controllers.split())
    return (f"nsrecipes: cgroup v2: enabled {controllers} for the children of {root} (echo "
            f"{value} > {root}/cgroup.subtree_control), as runc does; it stays enabled")


def _enabled(box: str) -> list[str]:
    return sorted(cgroupfs.read_file(os.path.join(box, "cgroup.subtree_control")).split())


#: inside the container: its own cgroup (the root of its cgroup namespace) and its limits
READ_LIMITS = "mount -t cgroup2 nsr /sys && cat /sys/memory.max /sys/pids.max /proc/self/cgroup"


def test_a_namespace_root_that_enables_nothing_gets_the_controllers_like_runc(v2_box):
    """A v2 host without systemd (a container, the VM as booted): the root of the cgroup
    namespace is given memory and pids, but its subtree_control starts empty. Built for
    real (in the VM): a cgroup of the test's own, nothing enabled in it, becomes the root of
    a new cgroup namespace and its processes move into /init. container-run's limits work:
    nsrecipes enables what they need at that root itself, says so in one line, leaves it
    enabled, and leaves nothing else."""
    box = v2_box
    _offers(box, ("memory", "pids"))
    ours = set(cgroupfs.find_ours())
    done = cli("container-run", "--backend", "native", "--memory", "48M", "--pids", "20", "--",
               "sh", "-c", READ_LIMITS, prefix=_namespace_root(box, leave=True), timeout=900)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [_enabled_line("memory pids")], done.stderr
    assert done.stdout.split() == [str(48 << 20), "20", "0::/"], done.stdout
    assert _enabled(box) == ["memory", "pids"]     # never undone
    assert sorted(e.name for e in os.scandir(box) if e.is_dir()) == ["init"]
    assert set(cgroupfs.find_ours()) == ours


@pytest.fixture
def box_as_root(v2_box, monkeypatch) -> str:
    """``v2_box`` seen by nsrecipes as the root of the v2 hierarchy (``host_layout`` points
    there, as a cgroup namespace rooted at it would): a real cgroup with nothing enabled,
    without the cost of a new interpreter per run that a namespace needs (a minute in TCG)."""
    _offers(v2_box, ("memory", "pids", "cpu"))
    fake = cgroupfs.Layout("unified", {}, v2_box, ())
    monkeypatch.setattr(cgroupfs, "host_layout", lambda: fake)
    return v2_box


def test_container_limits_enable_what_the_root_lacks_on_both_backends(backend, box_as_root,
                                                                      capsys):
    """container-run with --memory, --pids and --cpus below a root that enables nothing: the
    three are enabled there (one line), the limits are what the container sees, nothing of
    nsrecipes' is left, and the write stays."""
    from containerkit import run_ct
    box = box_as_root
    code, out, err = run_ct(backend, ["sh", "-c", READ_LIMITS + "; cat /sys/cpu.max"],
                            memory="48M", pids="20", cpus="0.5")
    assert code == 0, err
    assert out.split() == [str(48 << 20), "20", "0::/", "50000", "100000"], out
    assert capsys.readouterr().err.splitlines() == [_enabled_line("memory pids cpu", box)]
    assert _enabled(box) == ["cpu", "memory", "pids"]
    assert not [e for e in os.scandir(box) if e.is_dir()]


def test_cgroup_demo_enables_each_controller_once_on_both_backends(backend, box_as_root,
                                                                   capsys):
    """cgroup-demo's three cgroups below a root that enables nothing: each part enables its
    controller when it comes (three lines, one each), and the demo's results are as usual."""
    box = box_as_root
    with Runner(backend=backend) as run:
        got = cgroup.demo(run, pids=12, seconds=0.3)
    assert got["memory"]["oom_kills"] >= 1 and got["pids"]["peak"] == 12, got
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("nsrecipes:")]
    assert lines == [_enabled_line(c, box) for c in ("memory", "pids", "cpu")]
    assert _enabled(box) == ["cpu", "memory", "pids"]
    assert not [e for e in os.scandir(box) if e.is_dir()]


def test_explain_shows_the_write_above_and_makes_nothing(box_as_root, capsys):
    """``--explain`` shows the one write outside nsrecipes' cgroups as its shell form, before
    nsrecipes' own parent is made, and changes nothing."""
    from recipes import container
    box = box_as_root
    with Runner(backend="native", explain=True) as run:
        container.run_container(run, ["true"], memory="48M")
    out = capsys.readouterr().out
    write = f"$ echo +memory > {box}/cgroup.subtree_control\n"
    assert write in out, out
    assert out.index(write) < out.index(f"$ mkdir -p {box}/nsrecipes\n")
    assert "never undone" in out
    assert _enabled(box) == [] and not [e for e in os.scandir(box) if e.is_dir()]


def _scope_state(scope: str) -> dict[str, str]:
    return {f: cgroupfs.read_file(os.path.join(scope, f)).strip()
            for f in ("cgroup.subtree_control", "cgroup.type")} | {
        "children": " ".join(sorted(e.name for e in os.scandir(scope) if e.is_dir()))}


@contextlib.contextmanager
def _session_scope(layout: cgroupfs.Layout):
    """A systemd-like session scope holding processes, with memory pids cpu enabled down to
    it: the test's own cgroup when the runner put it in one (the VM's typical variant),
    else one built here, ``nsr-t-*.slice/nsr-t-session.scope``, holding a sleeper. Yields
    (scope directory, the prefix that runs a command in it)."""
    own = os.path.join(layout.v2, cgroupfs.own_cgroup(None).lstrip("/"))
    if own != layout.v2.rstrip("/") and cgroupfs.procs_here(own):
        yield own, []
        return
    given = cgroupfs.read_file(os.path.join(layout.v2, "cgroup.subtree_control")).split()
    missing = [c for c in cgroupfs.CONTROLLERS if c not in given]
    if missing:
        pytest.skip(f"the v2 root {layout.v2} does not enable {' '.join(missing)} for children")
    slice_ = os.path.join(layout.v2, f"nsr-t-{scope_id()}.slice")
    scope = os.path.join(slice_, "nsr-t-session.scope")
    sleeper = None
    try:
        os.mkdir(slice_)
        cgroupfs.write_file(os.path.join(slice_, "cgroup.subtree_control"), "+memory +pids +cpu")
        os.mkdir(scope)
        sleeper = subprocess.Popen(["sh", "-c", f'echo $$ > {scope}/cgroup.procs && exec sleep 300'])
        deadline = time.monotonic() + 5
        while not cgroupfs.procs_here(scope) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield scope, ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', scope]
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        cgroupfs.remove_dir(slice_)


def test_a_systemd_session_scope_is_left_as_it_was():
    """On a systemd host the caller's scope holds processes, so v2 forbids it children with
    controllers: container-run with all three limits and cgroup-demo work from inside it, and
    its subtree_control, cgroup.type and children are what they were (issue 8)."""
    layout = cgroupfs.detect()
    if layout.mode != "unified":
        pytest.skip(f"cgroup layout {layout.mode}: a session scope's rule (no internal "
                    "processes) exists on pure cgroup v2 only")
    with _session_scope(layout) as (scope, prefix):
        before, ours = _scope_state(scope), set(cgroupfs.find_ours())
        seen: dict[str, str] = {}
        name = f"nsr-c-scope{scope_id()}"
        ct = os.path.join(layout.v2, "nsrecipes", name)
        proc = subprocess.Popen(prefix + [INVOKE, "container-run", "--name", name, "--memory",
                                          "64M", "--pids", "64", "--cpus", "0.5", "--", "sh",
                                          "-c", "sleep 2; cat /proc/self/cgroup"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600     # a TCG guest under load takes minutes
        try:
            while proc.poll() is None and len(seen) < 3 and time.monotonic() < deadline:
                for f in LIMIT_FILES[2]:
                    if len(cgroupfs.procs_of(ct)) >= 2:
                        seen[f] = cgroupfs.read_file(os.path.join(ct, f)).strip()
                time.sleep(0.02)
            out, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert out.strip() == "0::/", out        # its own cgroup namespace
        assert seen == {"memory.max": str(64 << 20), "pids.max": "64",
                        "cpu.max": "50000 100000"}, seen
        demo = cli("cgroup-demo", "--seconds", "0.3", "--pids", "12", "--backend", "native",
                   prefix=prefix, timeout=600)
        assert demo.returncode == 0, demo.stderr
        assert "oom_kill = 1" in demo.stdout and "of pids.max 12" in demo.stdout
        assert _scope_state(scope) == before
        assert set(cgroupfs.find_ours()) == ours
        assert not os.path.exists(os.path.join(layout.v2, "nsrecipes")) or \
            os.path.join(layout.v2, "nsrecipes") in ours


@pytest.mark.parametrize("backend_name", ["native", "shell"])
def test_two_runs_at_once_share_and_remove_our_v2_parent(backend_name):
    """Runs making and removing cgroups in parallel: the one that empties nsrecipes' parent
    removes it while another may be making its own in it (its mkdir sees ENOENT and makes the
    parent again). No run fails, and nothing is left."""
    layout = cgroupfs.detect()
    if layout.mode != "unified":
        pytest.skip(f"cgroup layout {layout.mode}: nsrecipes' own parent exists on v2 only")
    parent = os.path.join(layout.v2, "nsrecipes")
    if os.path.exists(parent):
        pytest.skip(f"{parent} is in use by another run")
    errors: list[BaseException] = []
    made = []
    ROUNDS = 15   # 45 creates and removes at once; each costs seconds in an emulated VM

    def worker(n: int) -> None:
        try:
            for i in range(ROUNDS):
                with Runner(backend=backend_name) as run:
                    cg = cgroup.create_cgroup(run, f"nsr-t-race{n}-{i}", ("pids",))
                    made.append(cg.exists())
        except BaseException as exc:    # reported below, with the thread's failure
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors[0]
    assert len(made) == 3 * ROUNDS and all(made)
    assert not os.path.exists(parent)


def test_the_parent_steps_mkdir_p_survives_a_run_removing_the_parent(tmp_path):
    """coreutils' ``mkdir -p`` says "File exists" and exits 1 when the name is there at its
    mkdir (EEXIST) and gone at its stat (ENOENT): a run removing nsrecipes' parent between the
    two did that to the shell form once (CI, Debian 6.1). That window is two system calls wide
    and a test cannot hit it on demand (a churning process hit it 294 times in 1500 on one
    machine and never in 300 on another), so the test takes the other way to the same two
    answers: a dangling symlink, which mkdir finds and stat, following it, does not. The real
    ``mkdir`` fails on it; the parent step's shell form goes on (the cgroup's own mkdir makes
    the parent again when it is gone)."""
    parent = tmp_path / "nsr-parent"
    parent.symlink_to(tmp_path / "nsr-gone")
    plain = subprocess.run(["mkdir", "-p", str(parent)], capture_output=True, text=True,
                           check=False)
    assert plain.returncode == 1 and "File exists" in plain.stderr, plain
    with Runner(backend="shell") as run:
        run.run(cgroup.parent_step(str(parent)))
        parent.unlink()          # the undo's rmdir then finds nothing, as after another run's


def test_v2_refusals_get_hints_that_name_the_rule():
    """EBUSY (no internal processes), ENOENT (controller not enabled), EOPNOTSUPP (a 'domain
    invalid' cgroup): provoked for real in a v2 tree the test makes (the hybrid host's v2
    hierarchy or a v2 guest's), each a single line naming the cgroup and what to do."""
    layout = cgroupfs.detect()
    if layout.v2 is None:
        pytest.skip(f"cgroup layout {layout.mode}: no v2 hierarchy")
    top = os.path.join(layout.v2, f"nsr-t-hint{scope_id()}")
    # a domain controller the root hands down (a v2 guest: memory; the hybrid host: none);
    # not a threaded one (pids, cpu): those a cgroup holding processes may enable
    given = cgroupfs.read_file(os.path.join(layout.v2, "cgroup.subtree_control")).split()
    ctrl = next((c for c in ("memory", "io", "hugetlb", "misc", "rdma") if c in given), None)
    sleeper = None
    try:
        for d in ("", "busy", "thr", "thr/t", "thr/d"):
            os.mkdir(os.path.join(top, d))
        busy = os.path.join(top, "busy")
        if ctrl is not None:      # ours: no processes in it, so it may
            cgroupfs.write_file(os.path.join(top, "cgroup.subtree_control"), f"+{ctrl}")
        sleeper = subprocess.Popen(["sh", "-c", f"echo $$ > {busy}/cgroup.procs && exec sleep 60"])
        while not cgroupfs.procs_here(busy):
            time.sleep(0.01)
        cgroupfs.write_file(os.path.join(top, "thr", "t", "cgroup.type"), "threaded")

        def refusal(path: str, value: str) -> str:
            with pytest.raises(NsrError) as err:
                cgroupfs.write_file(path, value)
            assert "\n" not in str(err.value) and "(hint: " in str(err.value)
            return str(err.value)

        if ctrl is not None:
            text = refusal(os.path.join(busy, "cgroup.subtree_control"), f"+{ctrl}")
            assert ": EBUSY (hint: " in text and f"{busy} holds processes" in text
            assert "no internal processes" in text
        text = refusal(os.path.join(busy, "cpu.max"), "50000 100000")
        assert ": ENOENT (hint: the cpu controller is not enabled for " in text, text
        assert f"{top}/cgroup.subtree_control lacks it" in text
        text = refusal(os.path.join(top, "thr", "d", "cgroup.procs"), "0")
        assert ": ENOTSUP (hint: " in text and "'domain invalid'" in text, text
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        if os.path.isdir(top):
            cgroupfs.remove_dir(top)
