"""cgroup input read without touching a cgroup: limits as the user types them, and layouts
from mountinfo texts (hybrid, unified, legacy) as runc tells them apart."""
from __future__ import annotations

import pytest

from nsutil import cgroupfs
from nsutil.backend import Runner
from nsutil.cgroupfs import Limits
from nsutil.errors import InvalidInput
from recipes import cgroup


# --- input ----------------------------------------------------------------------------------

@pytest.mark.userspace
@pytest.mark.parametrize("bad", ["64X", "-1", "0", "", "abc", "1.5M", "512K0", "100", "2048k"])
def test_bad_memory_limits_are_refused(bad):
    with pytest.raises(InvalidInput) as err:
        cgroupfs.parse_memory(bad)
    assert "\n" not in str(err.value) and "hint" in str(err.value)


@pytest.mark.userspace
@pytest.mark.parametrize("bad", ["-1", "0", "x", "1.5", "99999999"])
def test_bad_pids_limits_are_refused(bad):
    with pytest.raises(InvalidInput):
        cgroupfs.parse_pids(bad)


@pytest.mark.userspace
@pytest.mark.parametrize("bad", ["0", "-1", "x", "0.001", "5000"])
def test_bad_cpu_limits_are_refused(bad):
    with pytest.raises(InvalidInput):
        cgroupfs.parse_cpus(bad)


@pytest.mark.userspace
def test_good_limits_parse():
    lim = Limits.parse("64M", "64", "0.5")
    assert (lim.memory, lim.pids, lim.cpus) == (64 << 20, 64, 0.5)
    assert lim.cpu_quota() == (50_000, 100_000)
    assert cgroupfs.parse_memory("1G") == 1 << 30 and cgroupfs.parse_memory("8192k") == 8 << 20


@pytest.mark.userspace
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
