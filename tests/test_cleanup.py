"""`invoke cleanup` through the real CLI, in a sandbox where only this test's objects exist.

cleanup acts on whatever nsrecipes object it can see, so everything here -- what it must
keep, what it must remove, and a netns nsrecipes did not make -- is made, cleaned and looked
at inside a private mount + network namespace of the test's own: /tmp, /run/netns and
/etc/netns are fresh tmpfs there, the state directory is ``NSR_STATE_DIR=/tmp/nsr-state``
and /sys/fs/cgroup shows only a v2 cgroup the test made. A user's environments, namespaces,
cgroups and scratch directories are out of its sight, so neither ``cleanup`` nor
``cleanup --all`` run here can touch them.
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from nsutil import cgroupfs, process
from nsutil import procfs
from nsutil import syscalls as sc
from nsutil.names import scope_id
from sandboxkit import GRACE, LONG_AGO, STATE, Sandbox, sandbox  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


# --- what the test makes inside -----------------------------------------------------------------

def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _backdate(path: str) -> None:
    then = time.time() - LONG_AGO
    os.utime(path, (then, then))


def _dead_pid() -> tuple[int, int]:
    """(pid, start time) of a process that has exited."""
    child = subprocess.Popen(["sleep", "1000"])
    start = procfs.start_time(child.pid)
    child.kill()
    child.wait()
    return child.pid, start


def _record_container(box: Sandbox, name: str, pid: int, start: int) -> None:
    """A container record as container-run writes it (its tool's process: ``pid``)."""
    cdir = box.path(f"{STATE}/{name}")
    os.makedirs(cdir, mode=0o700)
    with open(os.path.join(cdir, "state.json"), "w") as f:
        json.dump({"name": name, "pid": pid, "starttime": start, "pid1": None,
                   "pid1_starttime": None, "cgroup": [], "rm": False}, f)


def _record_demo(box: Sandbox, netns: str, pid: int, start: int) -> None:
    """A namespace a demo made, with the record net.record_scratch_netns writes for it."""
    box.run("ip", "netns", "add", netns)
    with open(box.path(f"{STATE}/net/demo-{netns}.json"), "w") as f:
        json.dump({"netns": [netns], "creator": {"pid": pid, "start": start}}, f)


def _env_holder(box: Sandbox, name: str) -> int:
    with open(box.path(f"{STATE}/{name}/env.json")) as f:
        return json.load(f)["holder"]["pid"]


def _kill(pid: int) -> None:
    os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while procfs.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not procfs.pid_alive(pid)


def _in_cgroup(directory: str) -> subprocess.Popen:
    os.mkdir(directory)
    child = subprocess.Popen(["sleep", "300"])
    cgroupfs.write_file(os.path.join(directory, "cgroup.procs"), child.pid)
    return child


def _scratch(box: Sandbox, name: str, old: bool, owner: int = 0) -> str:
    path = box.path(f"/tmp/{name}")
    os.mkdir(path)
    with open(os.path.join(path, "owned-by-host-root"), "w") as f:
        f.write("host root's file\n")
    os.chown(path, owner, owner)
    if old:
        _backdate(path)
    return path


def _topology_netns(box: Sandbox, scope: str) -> list[str]:
    with open(box.path(f"{STATE}/net/topo-{scope}.json")) as f:
        return json.load(f)["netns"]


def _make_healthy(box: Sandbox, s: str, children: list) -> dict[str, object]:
    """What a user keeps: a live environment, a net-veth pair, a complete topology, a
    running container, a cgroup with a process, a fresh scratch directory."""
    _ok(box.cli("env-create", f"nsr-k{s}", "--ns", "uts,ipc,net,pid,mnt"))
    _ok(box.cli("net-veth", "--name", f"nsr{s}a", "--peer", f"nsr{s}b",
                "--addr", "10.203.0.1/24", "--peer-addr", "10.203.0.2/24"))
    _ok(box.cli("net-topo", "--shape", "line", "--hosts", "3", "--scope", f"k{s[:3]}"))
    runs = subprocess.Popen(["sleep", "300"])
    children.append(runs)
    _record_container(box, f"nsr-c-k{s}", runs.pid, procfs.start_time(runs.pid))
    _record_demo(box, f"nsr{s}g", runs.pid, procfs.start_time(runs.pid))   # a demo that runs
    os.mkdir(os.path.join(box.cgroup, "nsrecipes"))
    children.append(_in_cgroup(os.path.join(box.cgroup, "nsrecipes", f"nsr-cg-{s}-live")))
    os.mkdir(os.path.join(box.cgroup, f"nsr-cg-{s}-new"))
    return {"env": f"nsr-k{s}", "pair": {f"nsr{s}a", f"nsr{s}b", f"nsr{s}g"},
            "topo": set(_topology_netns(box, f"k{s[:3]}")),
            "container": f"nsr-c-k{s}",
            "cgroups": {os.path.join(box.cgroup, "nsrecipes", f"nsr-cg-{s}-live"),
                        os.path.join(box.cgroup, f"nsr-cg-{s}-new"),
                        os.path.join(box.cgroup, "nsrecipes")},
            "scratch": _scratch(box, f"nsr-user-{s}new", old=False)}


def _make_broken(box: Sandbox, s: str) -> dict[str, object]:
    """What a crash leaves: an environment whose holder died, a pair and a topology that
    lost a namespace (records from long ago), a container whose tool is gone, an empty old
    cgroup, and the old scratch directories of a killed user-demo and cow-demo."""
    _ok(box.cli("env-create", f"nsr-d{s}", "--ns", "uts,net"))
    _kill(_env_holder(box, f"nsr-d{s}"))
    _ok(box.cli("net-veth", "--name", f"nsr{s}c", "--peer", f"nsr{s}d",
                "--addr", "10.204.0.1/24", "--peer-addr", "10.204.0.2/24"))
    box.run("ip", "netns", "del", f"nsr{s}d")
    _backdate(box.path(f"{STATE}/net/veth-nsr{s}c.json"))
    _ok(box.cli("net-topo", "--shape", "line", "--hosts", "3", "--scope", f"d{s[:3]}"))
    topo = _topology_netns(box, f"d{s[:3]}")
    box.run("ip", "netns", "del", topo[-1])
    _backdate(box.path(f"{STATE}/net/topo-d{s[:3]}.json"))
    _record_container(box, f"nsr-c-d{s}", *_dead_pid())
    _record_demo(box, f"nsr{s}e", *_dead_pid())       # a net-demo killed before its undo
    dead_cg = os.path.join(box.cgroup, "nsrecipes", f"nsr-cg-{s}-dead")
    os.mkdir(dead_cg)
    _backdate(dead_cg)
    return {"env": f"nsr-d{s}", "pair": {f"nsr{s}c", f"nsr{s}e"}, "topo": set(topo[:-1]),
            "container": f"nsr-c-d{s}", "cgroup": dead_cg,
            "scratch": {_scratch(box, f"nsr-user-{s}old", old=True),
                        _scratch(box, f"nsr-cow-{s}old", old=True)}}


def _assert_present(box: Sandbox, kept: dict) -> None:
    assert os.path.exists(box.path(f"{STATE}/{kept['env']}/env.json"))
    assert procfs.pid_alive(_env_holder(box, kept["env"]))
    assert kept["pair"] | kept["topo"] <= box.netns()
    assert os.path.exists(box.path(f"{STATE}/{kept['container']}/state.json"))
    assert all(os.path.isdir(d) for d in kept["cgroups"])
    assert os.path.isdir(kept["scratch"])


def _assert_gone(box: Sandbox, gone: dict) -> None:
    assert not os.path.exists(box.path(f"{STATE}/{gone['env']}"))
    assert not (gone["pair"] | gone["topo"]) & box.netns(), box.netns()
    assert not os.path.exists(box.path(f"{STATE}/{gone['container']}"))
    assert not os.path.exists(gone["cgroup"])
    assert not [p for p in gone["scratch"] if os.path.exists(p)]


def test_cleanup_keeps_what_is_in_use_and_all_removes_only_what_nsrecipes_made(sandbox):
    box, s, children = sandbox, scope_id(), []
    try:
        kept = _make_healthy(box, s, children)
        broken = _make_broken(box, s)
        foreign = f"nsr{s}f"                         # the user's own: no nsrecipes record
        box.run("ip", "netns", "add", foreign)
        theirs = _scratch(box, f"nsr-user-{s}x", old=True, owner=65534)  # not root's: not ours
        before = box.netns()

        dry = box.cli("cleanup", "--dry-run")
        _ok(dry)
        lines = dry.stdout.splitlines()
        for word in (f"env {broken['env']}", f"netns {next(iter(broken['topo']))}",
                     f"netns nsr{s}c", f"netns nsr{s}e", f"container {broken['container']}",
                     f"cgroup {broken['cgroup'].replace(box.cgroup, '/sys/fs/cgroup')}",
                     f"dir /tmp/nsr-user-{s}old", f"dir /tmp/nsr-cow-{s}old"):
            assert f"would remove {word}" in lines, (word, dry.stdout)
        assert f"keeping env {kept['env']}: holder" in dry.stdout
        assert f"keeping net-veth nsr{s}a<->nsr{s}b: complete" in lines
        assert f"keeping topology k{s[:3]}: complete (3 namespaces)" in lines
        assert not [ln for ln in lines if ln.startswith("would remove") and (
            kept["env"] in ln or f"nsr{s}a" in ln or f"-k{s[:3]}-" in ln or foreign in ln
            or kept["container"] in ln or "-live" in ln or "-new" in ln or f"{s}x" in ln)]
        assert box.netns() == before                     # --dry-run removed nothing
        _assert_present(box, kept)

        done = box.cli("cleanup")
        _ok(done)
        assert "0 failed" in done.stdout.splitlines()[-1]
        _assert_gone(box, broken)
        _assert_present(box, kept)
        assert foreign in box.netns() and os.path.isdir(theirs)
        again = box.cli("cleanup")
        assert again.stdout.splitlines()[-1].startswith("nothing to clean up; ")

        listed = box.cli("cleanup", "--all", "--dry-run")
        _ok(listed)
        for word in (f"env {kept['env']}", f"netns nsr{s}a", f"netns nsr{s}b", f"netns nsr{s}g",
                     f"container {kept['container']}", "cgroup /sys/fs/cgroup/nsrecipes",
                     f"dir /tmp/nsr-user-{s}new"):
            assert f"would remove {word}" in listed.stdout.splitlines(), (word, listed.stdout)
        assert foreign not in listed.stdout and f"{s}x" not in listed.stdout
        _assert_present(box, kept)

        everything = box.cli("cleanup", "--all")
        _ok(everything)
        out = everything.stdout.splitlines()
        assert out.index(f"removing env {kept['env']}") < out.index(out[-1])   # listed first
        assert box.netns() == {foreign}                  # only the one nsrecipes did not make
        assert os.path.isdir(theirs)
        assert not os.path.exists(box.path(STATE))
        assert [e.name for e in os.scandir(box.cgroup) if e.is_dir()] == []
        assert box.cli("cleanup", "--all").stdout.strip() == "nothing to clean up"
    finally:
        for child in children:
            child.kill()
            child.wait()


# --- the leak guard ---------------------------------------------------------------------------

def _start_detached(tag: str, env: dict[str, str]) -> int:
    """``sh`` in a new UTS namespace with ``tag`` in its command line, reparented away from
    this process (``setsid --fork``); its pid."""
    subprocess.run(["setsid", "--fork", "unshare", "--uts", "sh", "-c", "sleep 300; true", tag],
                   env=env, check=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                if argv[0] == b"sh" and tag.encode() in argv:   # unshare has exec'd it
                    return int(pid)
            except OSError:
                continue
        time.sleep(0.01)
    raise AssertionError(f"{tag} did not start")


def _record_holder(state_dir: str, name: str, pid: int) -> str:
    os.makedirs(os.path.join(state_dir, name))
    with open(os.path.join(state_dir, name, "env.json"), "w") as f:
        json.dump({"kind": "env", "holder": {"pid": pid}}, f)
    return os.path.join(state_dir, name)


def test_leak_guard_reports_this_sessions_nsrecipes_objects_only(tmp_path, monkeypatch):
    """A process in a new namespace with ``nsr`` in its command line is reported when this
    session started it, and not when someone else did; a holder's ``nsr-holder`` is. So is
    the record of an environment whose holder is this session's, not one of someone else's."""
    import leakcheck
    s = scope_id()
    theirs_env = {k: v for k, v in os.environ.items() if k != leakcheck.SESSION_VAR}
    pids = []
    holder = process.spawn_holder(sc.CLONE_NEWUTS, quiet=True)
    try:
        pids.append(_start_detached(f"nsr-theirs-{s}", theirs_env))
        pids.append(_start_detached(f"nsr-mine-{s}", dict(os.environ)))
        found = {line.split()[1] for line in leakcheck.processes()}
        assert str(pids[0]) not in found
        assert {str(pids[1]), str(holder.pid)} <= found, found
        monkeypatch.setenv("NSR_STATE_DIR", str(tmp_path))
        theirs = _record_holder(str(tmp_path), f"nsr-t{s}", pids[0])
        mine = _record_holder(str(tmp_path), f"nsr-m{s}", pids[1])
        state = leakcheck.snapshot()["state"]
        assert mine in state and theirs not in state, state
    finally:
        for pid in pids:
            os.killpg(pid, 9)
        holder.stop()
