"""The two namespaces the document predates: cgroup (Linux 4.6) and time (Linux 5.6).

Real kernel, both backends: the cgroup paths a process really reads inside and outside a
new cgroup namespace, the clocks and uptime really seen in a new time namespace, the
offsets the kernel really took (and froze); nothing left afterwards.
"""
from __future__ import annotations

import io
import os
import platform
import re

import pytest

import leakcheck
from helpers import cli, one_line_error
from nsutil import cgroupfs
from nsutil import procfs
from nsutil.backend import Runner
from nsutil.errors import InvalidInput
from nsutil.nstypes import ns_inode
from recipes import cgroupns
from recipes.common import holder as common
from recipes.ops import doctor
from recipes import timens


@pytest.fixture(autouse=True)
def _root(request):
    if os.geteuid() != 0 and "userspace" not in request.keywords:
        pytest.skip("cgroup and time namespaces need root")


def _made_since(before: dict[str, set[str]]) -> dict[str, set[str]]:
    """What these demos could have made and left, other work on a shared host aside: this
    session's processes (holders) and nsr-cgns-* cgroups (they write no state, no /tmp)."""
    new = leakcheck.new_since(before, leakcheck.snapshot())
    new["cgroups"] = {d for d in new.get("cgroups", set()) if "cgns" in d}
    return {k: v for k, v in new.items() if v and k in ("processes", "cgroups")}


def _paths(text: str) -> list[str]:
    """The path field of every line of a /proc/PID/cgroup text."""
    return [line.split(":", 2)[2] for line in text.splitlines() if line.count(":") >= 2]


# --- cgroup namespace -------------------------------------------------------------------------

def test_cgroupns_inside_reads_root_and_host_the_real_path(runner):
    seen = cgroupns.demo(runner)
    directory = seen["directory"]
    v2 = cgroupfs.host_layout().v2
    real = "/" + os.path.relpath(directory, v2)            # /nsrecipes/nsr-cgns-XXXX
    assert os.path.basename(directory).startswith("nsr-cgns-")
    assert seen["host"] == real
    # joined cgroup and namespace: at the root, in every hierarchy (v1 ones on hybrid too)
    assert seen["inside"] == "/"
    assert set(_paths(seen["inside_text"])) == {"/"}, seen["inside_text"]
    # only the namespace (nsenter --cgroup): still in our own cgroup, shown relative to the root
    with open("/proc/self/cgroup") as f:
        own = cgroupfs.own_cgroup(None, f.read())
    assert seen["own"] == own
    assert seen["outside"] == "/" + os.path.relpath(own, real), seen["outside_text"]
    assert seen["outside"].startswith("/..")
    # nothing left: the holder is gone, and so is the cgroup
    assert seen["removed"] and not os.path.isdir(directory)
    assert not procfs.pid_alive(seen["holder"])


# --- time namespace ---------------------------------------------------------------------------

def test_time_offsets_show_in_uptime_and_clocks(runner):
    boottime, monotonic = 2 * 86400 + 7, 12345
    seen = timens.demo(runner, boottime=boottime, monotonic=monotonic)
    assert seen["offsets"] == {"monotonic": monotonic, "boottime": boottime}
    slack = 120  # between the host's read and the one inside (the VM is slow)
    assert seen["host_uptime"] + boottime - 0.02 <= seen["inside_uptime"] \
        <= seen["host_uptime"] + boottime + slack
    host_mono, host_boot, host_real = seen["host_clocks"]
    in_mono, in_boot, in_real = seen["inside_clocks"]
    assert monotonic <= in_mono - host_mono <= monotonic + slack
    assert boottime <= in_boot - host_boot <= boottime + slack
    assert 0 <= in_real - host_real <= slack        # CLOCK_REALTIME is not namespaced
    days = re.search(r"up (\d+) days?", seen["inside_tool"])
    assert days and int(days.group(1)) >= 2, seen["inside_tool"]
    assert seen["frozen"] is True                    # EACCES once a process is inside
    assert not procfs.pid_alive(seen["holder"])


def test_time_zero_offsets_are_the_host_clocks(runner):
    seen = timens.demo(runner, boottime=0, monotonic=0)
    assert seen["offsets"] == {"monotonic": 0, "boottime": 0}
    assert 0 <= seen["inside_uptime"] - seen["host_uptime"] <= 120
    assert "day" not in seen["inside_tool"] or "day" in seen["host_tool"]


def test_a_time_holder_is_in_its_new_namespace(runner):
    """start_holder(run, "time"): the holder itself is in the new namespace, not only its
    children (unshare(1) without --fork setns()es into time_for_children; so does the native
    holder) -- else `nsenter -t PID --time` would join the host's, and an environment's
    members would be every process on the host."""
    holder = common.start_holder(runner, "time")
    assert ns_inode(holder.pid, "time") != ns_inode("self", "time")
    assert ns_inode(holder.pid, "time") == os.stat(f"/proc/{holder.pid}/ns/time_for_children").st_ino


def test_this_kernel_has_time_namespaces():
    assert timens.unavailable() is None          # 6.18 here, 6.1 in the VM: both >= 5.6
    assert os.path.exists("/proc/self/ns/time")


# --- --explain, bad input ---------------------------------------------------------------------

@pytest.mark.parametrize("recipe", [cgroupns, timens])
def test_explain_prints_the_commands_and_changes_nothing(backend, recipe):
    before = leakcheck.snapshot()
    out = io.StringIO()
    with Runner(backend=backend, explain=True, out=out) as run:
        recipe.demo(run)
    text = out.getvalue()
    wanted = {cgroupns: ["exec unshare --cgroup -- sleep infinity",
                         "$ nsenter -t $PID --cgroup -- cat /proc/self/cgroup",
                         "$ cat /proc/$PID/cgroup", "$ mkdir /sys/fs/cgroup/"],
              timens: ["$ unshare --time --fork --monotonic 3600 --boottime 86400 -- sleep infinity",
                       "$ cat /proc/$PID/timens_offsets",
                       "$ nsenter -t $PID --time -- cat /proc/uptime",
                       "$ nsenter -t $PID --time -- uptime"]}[recipe]
    for command in wanted:
        assert command in text, command
    assert "beyond the document" in text
    assert _made_since(before) == {}


@pytest.mark.userspace
@pytest.mark.parametrize("option,value", [("boottime", "-1"), ("monotonic", "-86400"),
                                          ("boottime", "abc"), ("monotonic", "1.5"),
                                          ("boottime", str(timens.MAX_OFFSET + 1))])
def test_bad_offsets_refused_before_anything(option, value):
    before = leakcheck.snapshot()
    with Runner(backend="native") as run:
        with pytest.raises(InvalidInput) as info:
            timens.demo(run, **{option: value})
        assert run.count == 0                  # not one step ran
    assert f"--{option}" in str(info.value) and "hint:" in str(info.value)
    assert _made_since(before) == {}


@pytest.mark.userspace
def test_cli_bad_offset_one_line():
    before = leakcheck.snapshot()
    line = one_line_error(cli("time-demo", "--boottime", "-5"))
    assert line.startswith("nsrecipes: --boottime -5 is out of range"), line
    line = one_line_error(cli("time-demo", "--monotonic", "soon"))
    assert "--monotonic 'soon' is not a number" in line, line
    assert _made_since(before) == {}


@pytest.mark.userspace
def test_cli_explain_and_help():
    proc = cli("time-demo", "--explain", "--boottime", "60", "--monotonic", "7")
    assert proc.returncode == 0, proc.stderr
    assert "$ unshare --time --fork --monotonic 7 --boottime 60 -- sleep infinity" in proc.stdout
    proc = cli("cgroupns-demo", "--explain")
    assert proc.returncode == 0, proc.stderr
    assert "unshare --cgroup -- sleep infinity" in proc.stdout
    help_text = cli("--help", "time-demo").stdout
    for option in ("--boottime", "--monotonic", "--shell", "--step", "--explain", "--backend"):
        assert option in help_text, option


# --- doctor ---------------------------------------------------------------------------------------

def test_doctor_lists_all_eight_namespaces():
    checks = {c.name: c for c in doctor.check_namespaces()}
    assert [n.split()[1] for n in checks] == ["user", "cgroup", "ipc", "uts", "net", "pid",
                                              "mnt", "time"]
    for name, check in checks.items():
        assert check.ok == os.path.exists(f"/proc/self/ns/{name.split()[1]}")
    time, cgroup = checks["namespace time"], checks["namespace cgroup"]
    assert time.required is False and cgroup.required is True
    assert "Linux 5.6+, beyond the document" in time.detail
    assert platform.release() in time.detail and "CONFIG_TIME_NS" in time.hint
    assert "Linux 4.6+, beyond the document" in cgroup.detail
    assert "beyond" not in checks["namespace uts"].detail
