"""The whole container, for real: namespaces, cgroup limits, overlay, pivot_root, PID 1.

Every check runs real containers on the cached busybox rootfs: exit codes, signals, the
host's root hidden, /proc showing only the container, zombies reaped, limits in force,
every bad input refused before anything exists, and a SIGKILLed tool cleaned up by the
``cleanup`` providers. Both backends where a step has a shell form.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import helpers
from containerkit import ours as _ours, rootfs_dir, run_ct  # noqa: F401 (rootfs_dir: fixture)
from containerkit import state_entries as _state_entries
from nsutil import cgroupfs
from nsutil.backend import Runner
from nsutil.errors import InvalidInput, NotFound, NsrError
from nsutil.names import scope_id
from nsutil.state import state_dir
from overlaytmp import run_in_overlay_tmp
from recipes import container
from recipes import cow
from recipes.container import rootfs
from recipes.common import upperfs

from helpers import INVOKE, ROOT

V2 = cgroupfs.detect().mode == "unified"
#: limit files as runc writes them: v1 (hybrid, legacy) or v2, and what 48M/9/0.25 reads as
LIMITS = ({"memory.max": str(48 << 20), "pids.max": "9", "cpu.max": "25000 100000"} if V2 else
          {"memory.limit_in_bytes": str(48 << 20), "pids.max": "9", "cpu.cfs_quota_us": "25000"})


# --- what the container is ---------------------------------------------------------------------

def test_exit_codes_pass_through(backend):
    before = _ours()
    assert run_ct(backend, ["sh", "-c", "exit 7"])[0] == 7
    assert run_ct(backend, ["true"])[0] == 0
    assert run_ct(backend, ["sh", "-c", "kill -TERM $$"])[0] == 128 + signal.SIGTERM
    assert run_ct(backend, ["sh", "-c", "kill -KILL $$"])[0] == 128 + signal.SIGKILL
    assert _ours() == before     # --rm (the default): nothing left


def test_isolation_host_root_hidden_and_proc_private(backend):
    marker = f"/tmp/nsr-hostmarker-{scope_id()}"
    with open(marker, "w") as f:     # a file on the host's /tmp: the container must not see it
        f.write("host\n")
    try:
        code, out, err = run_ct(backend, [
            "sh", "-c", "hostname; test -e /work && echo HOST-WORK; test -e /sys/fs/cgroup/pids "
            f"&& echo HOST-CGROUP; test -e {marker} && echo HOST-MARKER; echo ---; "
            "cat /proc/self/mountinfo; echo ---; ls /proc; "
            "echo ---; cat /proc/self/cgroup; echo ---; ls /dev"], hostname="nsr-box")
    finally:
        os.unlink(marker)
    assert code == 0, err
    assert "HOST-MARKER" not in out
    host, mounts, procs, cg, dev = out.split("---\n")
    assert host.splitlines()[0] == "nsr-box"
    assert "HOST-WORK" not in host and "HOST-CGROUP" not in host
    points = [ln.split()[4] for ln in mounts.splitlines()]
    assert points == ["/", "/proc", "/dev"], mounts        # the old root is detached
    assert "overlay" in mounts.splitlines()[0]
    pids = sorted(int(p) for p in procs.split() if p.isdigit())
    assert pids[0] == 1 and len(pids) == 3, procs           # only PID 1, sh and ls
    assert all(line.endswith(":/") for line in cg.split()), cg          # cgroup namespace
    assert {"null", "zero", "urandom", "tty", "fd"} <= set(dev.split())
    assert not os.path.exists(marker)


def test_pid1_reaps_zombies(backend):
    """An orphan is reparented to PID 1; when it exits PID 1 must reap it (no Z left)."""
    code, out, err = run_ct(backend, [
        "sh", "-c", "(sleep 0.05 &); (sleep 0.05 &); sleep 0.4; cat /proc/[0-9]*/stat"])
    assert code == 0, err
    states = [ln.rsplit(")", 1)[1].split()[0] for ln in out.splitlines() if ")" in ln]
    assert states and "Z" not in states, out


def test_overlay_keeps_the_rootfs_unchanged(rootfs_dir):
    name = f"nsr-c-keep{scope_id()}"
    code, _, err = run_ct("native", ["sh", "-c", "echo hi > /etc/new; rm /etc/passwd"],
                          rm=False, name=name)
    try:
        assert code == 0, err
        assert not os.path.exists(os.path.join(rootfs_dir, "etc/new"))
        assert os.path.exists(os.path.join(rootfs_dir, "etc/passwd"))
        upper = os.path.join(state_dir(create=False), name, "upper")
        with open(os.path.join(upper, "etc/new")) as f:
            assert f.read() == "hi\n"
        assert cow.is_whiteout(os.path.join(upper, "etc/passwd"))
        assert [i.name for i in container.leftovers()].count(name) == 1
    finally:
        for item in container.leftovers():
            if item.name == name:
                item.remove()
    assert name not in _state_entries()


def test_tmp_state_and_cache_on_overlayfs(rootfs_dir, tmp_path):
    """A container-like host: the state dir (the container's upper) and the cache dir (the
    rootfs, a lower) on overlayfs. The container's directory gets a tmpfs of its own; the
    CLI run works, --no-rm keeps what the container wrote there, and nothing is left."""
    name = f"nsr-c-ovl{scope_id()}"

    def inside(tmp: str) -> dict:
        cli = helpers.cli("container-run", "--", "sh", "-c", "echo hi > /etc/x && cat /etc/x",
                          timeout=300)
        got = {"cli": (cli.returncode, cli.stdout, cli.stderr)}
        code, _, err = run_ct("native", ["sh", "-c", "echo kept > /etc/kept"], rm=False, name=name)
        cdir = os.path.join(state_dir(create=False), name)
        with open(os.path.join(cdir, "upper/etc/kept")) as f:
            got["kept"] = (code, err, upperfs.fs_of(cdir).fstype, f.read())
        for item in container.leftovers():
            if item.name == name:
                item.remove()
        got["after"] = sorted(os.listdir(tmp)), os.listdir(os.path.join(tmp, "cache"))
        return got

    got, left = run_in_overlay_tmp(str(tmp_path), inside)
    assert left["fstype"] == "overlay"
    code, out, err = got["cli"]
    assert code == 0 and out == "hi\n", err
    assert got["kept"] == (0, "", "tmpfs", "kept\n"), got["kept"]
    entries, cache = got["after"]
    rootfs_dir_name = [n for n in cache if not n.endswith(".source")]
    assert entries == ["cache"] and len(rootfs_dir_name) == 1, cache
    assert sorted(cache) == sorted([rootfs_dir_name[0], rootfs_dir_name[0] + ".source"]), cache
    assert rootfs_dir_name[0].startswith("rootfs-busybox-")
    assert left["mounts"] == []


def test_net_gives_only_loopback(backend):
    code, out, err = run_ct(backend, ["cat", "/proc/net/dev"], net=True)
    assert code == 0, err
    names = [ln.split(":")[0].strip() for ln in out.splitlines()[2:]]
    assert names == ["lo"], out
    code, out, err = run_ct(backend, ["ip", "-o", "link", "show", "lo"], net=True)
    assert code == 0 and "UP" in out.split(">")[0], (out, err)   # lo was brought up


def test_limits_are_in_force():
    """The files of the container's cgroup while it runs; then an OOM kill inside."""
    name = f"nsr-c-lim{scope_id()}"
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        code=run_ct("native", ["sleep", "1"], name=name, memory="48M", pids="9", cpus="0.25")))
    worker.start()
    try:
        seen = {}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(seen) < 3:
            for d in cgroupfs.find_ours():
                if os.path.basename(d) != name:
                    continue
                for fname in LIMITS:
                    path = os.path.join(d, fname)
                    if os.path.exists(path) and len(cgroupfs.procs_of(d)) >= 2:
                        seen[fname] = cgroupfs.read_file(path).strip()
            time.sleep(0.02)
    finally:
        worker.join(10)
    assert seen == LIMITS, seen
    assert result["code"][0] == 0
    # memory: a string doubling to 128 MiB at most (bounded) under a 32M limit is OOM-killed
    # (exit status 137, and one line saying it was the OOM killer)
    with pytest.raises(container.ContainerOOM, match="OOM killer") as oom:
        run_ct("native", ["awk", 'BEGIN { s = "xxxxxxxx"; for (i = 0; i < 24; i++) '
                                 's = s s; print length(s) }'], memory="32M")
    assert oom.value.exit_code == 128 + signal.SIGKILL


def test_pids_limit_stops_a_fork_bomb_inside():
    code, out, err = run_ct("native", [
        "sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 0.3 & done; wait; echo done"],
        pids="6")
    assert "fork" in err.lower(), (code, out, err)   # "can't fork: Resource temporarily unavailable"


# --- bad input: one clear line, nothing made ---------------------------------------------------

@pytest.mark.userspace
@pytest.mark.parametrize("kw, exc, words", [
    ({"rootfs": "/tmp/nsr-does-not-exist"}, NotFound, "does not exist"),
    ({"rootfs": os.path.abspath(__file__)}, InvalidInput, "is not a directory"),
    ({"memory": "64X"}, InvalidInput, "memory limit"),
    ({"pids": "-1"}, InvalidInput, "pids limit"),
    ({"pids": "0"}, InvalidInput, "pids limit"),
    ({"pids": "1"}, InvalidInput, "the container itself needs 2 processes"),
    ({"pids": "maximum"}, InvalidInput, "pids limit"),
    ({"cpus": "0"}, InvalidInput, "cpu limit"),
    ({"hostname": "a b"}, InvalidInput, "hostname"),
    ({"domainname": "a b"}, InvalidInput, "domainname"),
    ({"domainname": "d" * 65}, InvalidInput, "domainname"),
    ({"name": "web"}, InvalidInput, "nsr-c-"),
    ({"timeout": "abc"}, InvalidInput, "--timeout 'abc' is not a number"),
    ({"timeout": "0"}, InvalidInput, "--timeout 0 is out of range"),
    ({"timeout": "-1"}, InvalidInput, "--timeout -1 is out of range"),
    ({"volumes": ["/tmp"]}, InvalidInput, "is not SRC:DST[:ro]"),
    ({"volumes": ["/tmp/nsr-does-not-exist:/x"]}, NotFound, "--volume source"),
    ({"volumes": ["/tmp:data"]}, InvalidInput, "not an absolute path"),
    ({"volumes": ["/tmp:/proc/x"]}, InvalidInput, "would cover the container's own"),
    ({"volumes": ["/tmp:/"]}, InvalidInput, "would cover the container's own /"),
    ({"volumes": ["/tmp:/x:rx"]}, InvalidInput, "unknown option 'rx'"),
    ({"volumes": ["/tmp:/x"], "tmpfs": ["/x/"]}, InvalidInput, "two mounts on /x"),
    ({"tmpfs": ["/t:size=0"]}, InvalidInput, "--tmpfs /t size '0' is not a positive size"),
    ({"tmpfs": ["/t:size=101%"]}, InvalidInput, "--tmpfs /t size 101 is out of range"),
    ({"tmpfs": ["/t:size=1.5m"]}, InvalidInput, "--tmpfs /t size '1.5m' does not parse"),
    ({"tmpfs": ["/t:exec=1"]}, InvalidInput, "option 'exec=1' is not known"),
    ({"tmpfs": ["/dev"]}, InvalidInput, "would cover"),
    ({"env": ["FOO"]}, InvalidInput, "--env 'FOO' is not KEY=VALUE"),
    ({"env": ["1A=b"]}, InvalidInput, "is not KEY=VALUE"),
    ({"workdir": "srv"}, InvalidInput, "--workdir 'srv' is not an absolute path"),
    ({"user": "bob"}, InvalidInput, "--user uid 'bob' is not a number"),
    ({"user": "-1"}, InvalidInput, "--user uid -1 is out of range"),
    ({"user": "1:"}, InvalidInput, "empty gid"),
    ({"user": "1:x"}, InvalidInput, "--user gid 'x'"),
])
def test_bad_input_is_refused_before_anything_exists(kw, exc, words):
    before = _ours()
    with pytest.raises(exc) as err:
        run_ct("native", ["true"], **kw)
    assert words in str(err.value) and "\n" not in str(err.value) and "hint" in str(err.value)
    assert _ours() == before


def test_missing_command_is_127_with_a_clear_line(backend):
    before = _ours()
    with pytest.raises(container.CommandNotFound) as err:
        run_ct(backend, ["nosuchcmd", "x"])
    assert err.value.exit_code == 127 and "'nosuchcmd' not found in the rootfs" in str(err.value)
    assert _ours() == before
    done = subprocess.run([INVOKE, "container-run", "--", "nosuchcmd"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # an emulated VM
    assert done.returncode == 127
    assert done.stderr.startswith("nsrecipes: command 'nosuchcmd' not found")
    assert done.stderr.count("\n") == 1


def test_missing_command_found_only_at_exec_is_127(tmp_path, rootfs_dir):
    """A command that passes the check but cannot be found at exec time: a script whose
    interpreter is missing (execve says ENOENT). PID 1's child reports it: 127, one line."""
    build = tmp_path / "rf"
    with Runner(backend="native") as run:
        rootfs.build(run, str(build))
    os.symlink("/bin/nothing-here", build / "bin" / "ghost")
    with pytest.raises(container.CommandNotFound):   # pre-check refuses a dangling link
        run_ct("native", ["ghost"], rootfs=str(build))
    script = build / "bin" / "orphan-script"
    script.write_text("#!/bin/no-such-interpreter\n")
    script.chmod(0o755)
    before = _ours()
    with pytest.raises(container.CommandNotFound) as err:
        run_ct("native", ["orphan-script"], rootfs=str(build))
    assert err.value.exit_code == 127 and "not found in the container" in str(err.value)
    assert _ours() == before
    # a shell that cannot find a command exits 127 itself; the container passes it through
    code, _, err2 = run_ct("native", ["sh", "-c", "/bin/ghost"], rootfs=str(build))
    assert code == 127 and "not found" in err2


# --- CLI, signals, explain, crash + cleanup ------------------------------------------------------

def test_cli_passes_exit_codes_and_forwards_sigterm():
    done = subprocess.run([INVOKE, "container-run", "--hostname", "nsr-cli", "--", "sh", "-c",
                           "hostname; exit 3"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # the CLI starts in tens of seconds in an emulated VM
    assert done.returncode == 3 and done.stdout == "nsr-cli\n", done
    proc = subprocess.Popen([INVOKE, "container-run", "--", "sh", "-c",
                             "trap 'echo got-term; exit 42' TERM; echo ready; "
                             "while :; do sleep 0.05; done"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 42, (out, err)
        assert "got-term" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.userspace
def test_explain_prints_the_sequence_and_changes_nothing():
    before = _ours()
    done = subprocess.run([INVOKE, "container-run", "--explain", "--memory", "32M", "--pids", "8",
                           "--cpus", "0.5", "--net", "--", "sh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)   # a TCG guest under load: ~1 min
    assert done.returncode == 0, done.stderr
    v2 = "/sys/fs/cgroup/nsrecipes"   # nsrecipes' own parent: never the caller's cgroup
    cgroup_steps = ([f"mkdir -p {v2}\n", f"mkdir {v2}/nsr-c-",
                     f"echo +memory +pids +cpu > {v2}/cgroup.subtree_control", "memory.max",
                     "memory.swap.max", "pids.max", "cpu.max", "unshare --mount"] if V2 else
                    ["mkdir", "memory.limit_in_bytes", "pids.max", "cpu.cfs_quota_us",
                     "unshare --mount"])
    # PID 1 opens the cgroup's file before pivot_root and moves itself in after it, last
    order = cgroup_steps + [
        "mount --make-rslave /", "mount -t overlay", "run side by side", "mount -t proc",
        "hostname", "ip link set lo up", "mount -t tmpfs", "mknod", "exec 3> ",
        "/cgroup.procs" if V2 else "/tasks", "pivot_root . .", "umount -l .",
        "PID 1 moves itself", "echo 0 >&3", "unshare --cgroup", "rmdir"] + \
        ([f"rmdir {v2}\n"] if V2 else []) + ["rm -rf"]
    positions = [done.stdout.find(word) for word in order]
    assert all(p >= 0 for p in positions), list(zip(order, positions))
    assert positions == sorted(positions), list(zip(order, positions))
    assert _ours() == before


def _wait_running(name: str, timeout: float = 90) -> list[str]:
    """The container's cgroup dirs once PID 1 and the command are in it. The deadline is for
    an emulated VM under load, where the CLI alone starts in tens of seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dirs = [d for d in cgroupfs.find_ours() if os.path.basename(d) == name]
        if dirs and len(cgroupfs.procs_of(dirs[0])) >= 2:   # PID 1 and the command
            return dirs
        time.sleep(0.02)
    raise AssertionError(f"container {name} did not start")


def _cleanup_all() -> None:
    for mod in ("recipes.container", "recipes.cgroup", "recipes.cow"):
        import importlib
        for item in importlib.import_module(mod).leftovers():
            if "nsr-c-kill" in item.name:
                item.remove()


def test_sigkill_of_the_tool_then_cleanup_removes_everything():
    before = _ours()
    name = f"nsr-c-kill{scope_id()}"
    proc = subprocess.Popen([INVOKE, "container-run", "--name", name, "--memory", "32M", "--",
                             "sleep", "30"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        dirs = _wait_running(name)
        pids = set(cgroupfs.procs_of(dirs[0]))
        proc.kill()                     # SIGKILL the tool mid-run
        proc.wait()
        # the container dies with its tool (PR_SET_PDEATHSIG), but its records stay
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
            time.sleep(0.02)
        assert not any(os.path.exists(f"/proc/{p}/stat") and
                       open(f"/proc/{p}/stat").read().split(")")[-1].split()[0] != "Z"
                       for p in pids)
        left = [i for i in container.leftovers() if i.name == name]
        assert len(left) == 1
        left[0].remove()
        assert _ours() == before
        assert not any(os.path.basename(d) == name for d in cgroupfs.find_ours())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _cleanup_all()


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.12, 0.2])
def test_sigkill_at_any_moment_of_the_start_is_cleaned_up(delay):
    """Kill the tool at several moments of its start; `cleanup` leaves nothing."""
    before = _ours()
    name = f"nsr-c-kill{scope_id()}"
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "from nsutil.backend import Runner\nfrom recipes import container\n"
            "with Runner(backend='native') as run:\n"
            "    container.run_container(run, ['sleep', '30'], name=%r, memory='32M', pids='9')\n"
            % (ROOT, name))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.15 + delay)  # the interpreter start, then a moment of the container start
        proc.kill()
        proc.wait()
        time.sleep(0.05)
        _cleanup_all()
        assert _ours() == before
        with open("/proc/self/mountinfo") as f:
            assert name not in f.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _cleanup_all()


# --- the rootfs --------------------------------------------------------------------------------

def test_rootfs_busybox_builds_the_same_with_both_backends(tmp_path):
    trees = {}
    for backend in ("shell", "native"):
        dest = tmp_path / backend
        with Runner(backend=backend, keep=True) as run:
            rootfs.build(run, str(dest))
        links = {n: os.readlink(dest / "bin" / n) for n in os.listdir(dest / "bin")
                 if os.path.islink(dest / "bin" / n)}
        assert links["sh"] == "/bin/busybox" and len(links) > 100
        assert rootfs.is_static(str(dest / "bin" / "busybox"))
        assert (dest / "etc" / "passwd").read_text().startswith("root:x:0:0:")
        trees[backend] = links
    assert trees["shell"] == trees["native"]
    with Runner(backend="native") as run, pytest.raises(NsrError):
        rootfs.build(run, str(tmp_path / "native"))          # not empty: refused
    code, out, _ = run_ct("native", ["cat", "/etc/passwd"], rootfs=str(tmp_path / "shell"))
    assert code == 0 and out.startswith("root:x:0:0:")


def test_rootfs_busybox_cli(tmp_path):
    dest = tmp_path / "rf"
    done = subprocess.run([INVOKE, "rootfs-busybox", str(dest), "--backend", "native"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert os.path.islink(dest / "bin" / "sh")
    again = subprocess.run([INVOKE, "rootfs-busybox", str(dest)], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode != 0 and again.stderr.count("\n") == 1


def test_the_default_rootfs_path_remembers_the_busybox_digest(tmp_path, monkeypatch):
    """The cached rootfs is named by the busybox binary's sha256. The digest is remembered
    beside it (``rootfs-busybox-DIGEST.source``: the binary's path, device, inode, size and
    times) and read from there while the binary is unchanged; a changed binary is hashed
    again. (A memo that claims another digest proves the binary was not hashed.)"""
    import shutil

    from recipes.container import rootfs
    monkeypatch.setenv("NSR_CACHE_DIR", str(tmp_path / "cache"))
    busybox = str(tmp_path / "busybox")
    shutil.copy2(rootfs.find_busybox(), busybox)
    first = rootfs.default_path(busybox)               # no cache directory yet: nothing kept
    assert not os.path.exists(tmp_path / "cache")
    os.mkdir(tmp_path / "cache")
    assert rootfs.default_path(busybox) == first
    memo = f"{first}.source"
    with open(memo) as f:
        identity = json.load(f)
    assert identity["path"] == busybox and identity["size"] == os.path.getsize(busybox)
    os.rename(memo, str(tmp_path / "cache" / "rootfs-busybox-0123456789ab.source"))
    assert rootfs.default_path(busybox).endswith("rootfs-busybox-0123456789ab")
    with open(busybox, "ab") as f:
        f.write(b"\0")                                  # another binary: hashed again
    again = rootfs.default_path(busybox)
    assert again != first and again.startswith(str(tmp_path / "cache" / "rootfs-busybox-"))
    assert sorted(os.listdir(tmp_path / "cache")) == sorted(
        ["rootfs-busybox-0123456789ab.source", os.path.basename(again) + ".source"])
