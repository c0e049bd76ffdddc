"""cgroup limits against the real kernel: OOM kill, fork bomb, CPU quota, removal.

This machine is hybrid (v1 controllers, a v2 hierarchy without controllers), so the limits
are exercised on v1 for real. The v2 code path (cgroup.subtree_control, memory.max,
cpu.max, memory.events, cgroup.kill) is tested against a FAKE tree of plain files in a
temporary directory, since this machine's v2 hierarchy has no controllers to test with.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from nsutil import cgroupfs
from nsutil.backend import Runner
from nsutil.cgroupfs import Layout, Limits
from nsutil.errors import InvalidInput
from recipes import cgroup


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("cgroups need root")


# --- input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["64X", "-1", "0", "", "abc", "1.5M", "512K0", "100", "2048k"])
def test_bad_memory_limits_are_refused(bad):
    with pytest.raises(InvalidInput) as err:
        cgroupfs.parse_memory(bad)
    assert "\n" not in str(err.value) and "hint" in str(err.value)


@pytest.mark.parametrize("bad", ["-1", "0", "x", "1.5", "99999999"])
def test_bad_pids_limits_are_refused(bad):
    with pytest.raises(InvalidInput):
        cgroupfs.parse_pids(bad)


@pytest.mark.parametrize("bad", ["0", "-1", "x", "0.001", "5000"])
def test_bad_cpu_limits_are_refused(bad):
    with pytest.raises(InvalidInput):
        cgroupfs.parse_cpus(bad)


def test_good_limits_parse():
    lim = Limits.parse("64M", "64", "0.5")
    assert (lim.memory, lim.pids, lim.cpus) == (64 << 20, 64, 0.5)
    assert lim.cpu_quota() == (50_000, 100_000)
    assert cgroupfs.parse_memory("1G") == 1 << 30 and cgroupfs.parse_memory("8192k") == 8 << 20


def test_demo_refuses_bad_input_before_creating_anything():
    before = set(cgroupfs.find_ours())
    with Runner(backend="native") as run, pytest.raises(InvalidInput):
        cgroup.demo(run, memory="64X")
    assert set(cgroupfs.find_ours()) == before


# --- layout ---------------------------------------------------------------------------------

HYBRID = """\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
"""
UNIFIED = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
LEGACY = "\n".join(HYBRID.splitlines()[2:]) + "\n"


def test_detect_layouts_from_mountinfo():
    hybrid = cgroupfs.detect(HYBRID)
    assert hybrid.mode == "hybrid" and hybrid.v2 == "/sys/fs/cgroup/unified"
    assert hybrid.v1["cpu"] == hybrid.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert hybrid.version_for("memory") == 1
    assert cgroupfs.detect(UNIFIED).mode == "unified"
    legacy = cgroupfs.detect(LEGACY)
    assert legacy.mode == "legacy" and legacy.v2 is None and "pids" in legacy.v1


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


def test_cgroups_are_made_below_our_own_cgroup():
    """Like runc with a relative cgroupsPath: nested under the caller's cgroup."""
    cg = cgroupfs.plan("nsr-test-plan", ("memory", "pids"))
    for ctrl, d in cg.dirs.items():
        own = cgroupfs.own_cgroup(ctrl) if cg.version == 1 else cgroupfs.own_cgroup(None)
        assert d.endswith(os.path.join(own, "nsr-test-plan").replace("//", "/"))
    with pytest.raises(InvalidInput):
        cgroupfs.plan("web")


def test_v2_path_against_a_fake_tree(tmp_path):
    """FAKE v2 tree (plain files): this machine's v2 hierarchy has no controllers."""
    root = tmp_path / "cgroup2"
    (root / "user.slice").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "user.slice" / "cgroup.subtree_control").write_text("")
    layout = Layout("unified", {}, str(root), ("cpuset", "cpu", "io", "memory", "pids"))
    cg = cgroupfs.plan("nsr-fake", ("memory", "pids", "cpu"), layout, proc_cgroup="0::/user.slice\n")
    d = root / "user.slice" / "nsr-fake"
    assert cg.version == 2 and set(cg.unique_dirs()) == {str(d)}
    cg.create()
    assert (root / "user.slice" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    cg.set_limits(Limits.parse("32M", "20", "0.25"))
    assert (d / "memory.max").read_text() == str(32 << 20)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "pids.max").read_text() == "20"
    assert (d / "cpu.max").read_text() == "25000 100000"
    cg.add(4242)
    assert (d / "cgroup.procs").read_text() == "4242"
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n")
    (d / "pids.events").write_text("max 5\n")
    (d / "cpu.stat").write_text("usage_usec 1500000\nnr_throttled 9\n")
    assert cg.oom_kills() == 2 and cg.pids_refused() == 5
    assert cg.cpu_usage_us() == 1_500_000 and cg.cpu_throttled() == 9
    # cgroup.kill is used when the kernel offers it (a pid above pid_max: nothing real)
    (d / "cgroup.procs").write_text("4194305\n")
    (d / "cgroup.kill").write_text("")
    assert cg.kill() == 1
    assert (d / "cgroup.kill").read_text() == "1"
    for f in d.iterdir():   # the kernel would not need this: cgroupfs rmdir ignores the files
        f.unlink()
    cg.remove()
    assert not d.exists()


# --- the limits, for real ---------------------------------------------------------------------

def test_memory_limit_ends_in_an_oom_kill(runner):
    got = cgroup.demo_memory(runner, "32M")
    assert got["returncode"] == 137, got          # SIGKILL from the OOM killer
    assert got["oom_kills"] >= 1, got
    assert 8 << 20 <= got["allocated"] <= 40 << 20, got
    assert got["peak"] <= 32 << 20


def test_fork_bomb_stops_at_the_pids_limit(runner):
    got = cgroup.demo_pids(runner, 16)
    assert got["returncode"] == 0, got
    assert got["peak"] == 16, got                 # the workload + 15 bomb processes
    assert got["forked"] == 15 and got["refused"] > 0, got
    assert got["events_max"] >= got["refused"], got


def test_cpu_quota_is_measured_near_the_quota(runner):
    got = cgroup.demo_cpu(runner, 0.5, 0.6)
    # never above the quota; near it on a quiet machine (~0.5), less when the 2 CPUs are busy
    assert 0.25 <= got["ratio"] <= 0.62, got
    assert got["throttled"] >= 1, got       # the CFS bandwidth timer did stop it
    assert (got["quota"], got["period"]) == (50_000, 100_000)


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


def test_explain_changes_nothing(capsys):
    before = set(cgroupfs.find_ours())
    with Runner(backend="native", explain=True) as run:
        cgroup.demo(run)
    out = capsys.readouterr().out
    assert "echo 33554432 > " in out and "memory.limit_in_bytes" in out
    assert "pids.max" in out and "cpu.cfs_quota_us" in out and "rmdir" in out
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


def test_cgroup_demo_cli(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    t = time.monotonic()
    done = subprocess.run([os.path.join(root, ".venv/bin/invoke"), "cgroup-demo", "--seconds",
                           "0.3", "--pids", "12", "--backend", "native"], cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "oom_kill = 1" in done.stdout and "pids.current at the peak 12 of pids.max 12" in done.stdout
    assert time.monotonic() - t < 30
    bad = subprocess.run([os.path.join(root, ".venv/bin/invoke"), "cgroup-demo", "--pids", "0"],
                         cwd=root, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "pids limit" in bad.stderr
