"""`invoke cleanup` through the real CLI: it lists (--dry-run) and removes every nsrecipes
leftover -- a kept veth pair, a topology, an environment, a half-built topology whose tool
was SIGKILLed -- and nothing that is not nsrecipes'."""
from __future__ import annotations

import os
import signal
import subprocess
import time

from helpers import INVOKE, ROOT, cli
from nsutil import netlink as nl
from nsutil import process
from nsutil.names import scope_id

OTHER = f"other-{scope_id()}"   # a network namespace nsrecipes did not make


def _netns() -> set[str]:
    return {ln.split()[0] for ln in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                   text=True).stdout.splitlines() if ln.strip()}


def _make_leftovers() -> dict[str, str]:
    scope = scope_id()
    made = {"veth": f"nsr-{scope}a", "env": f"nsr-e{scope}", "topo": scope}
    assert cli("net-veth", "--name", made["veth"], "--peer", f"nsr-{scope}b",
               "--addr", "10.203.0.1/24", "--peer-addr", "10.203.0.2/24").returncode == 0
    assert cli("net-topo", "--shape", "line", "--hosts", "3", "--scope", scope).returncode == 0
    assert cli("env-create", made["env"], "--ns", "uts,ipc,net,pid,mnt").returncode == 0
    # a build killed half-way: only some of its namespaces exist
    killed = scope_id()
    proc = subprocess.Popen([INVOKE, "net-topo", "--shape", "star", "--hosts", "400",
                             "--scope", killed, "--backend", "shell"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(n.startswith(f"nsr-{killed}-") for n in _netns()) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    made["killed"] = killed
    return made


def test_cleanup_lists_then_removes_only_ours():
    subprocess.run(["ip", "netns", "add", OTHER], check=True)
    try:
        made = _make_leftovers()
        before = _netns()
        from recipes import env
        holder = env.read_state(made["env"])["holder"]["pid"]
        assert os.path.exists(f"/proc/{holder}")
        assert os.path.exists(f"/etc/netns/{made['veth']}")
        assert any(n.startswith(f"nsr-{made['killed']}-") for n in before)

        dry = cli("cleanup", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        for word in (made["veth"], made["env"], f"nsr-{made['topo']}-", f"nsr-{made['killed']}-"):
            assert word in dry.stdout, word
        assert _netns() == before                       # --dry-run removed nothing

        done = cli("cleanup")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "removed" in done.stdout
        left = _netns()
        assert not [n for n in left if n.startswith("nsr")], left
        assert OTHER in left                            # not ours: untouched
        assert not os.path.exists(f"/run/nsrecipes/{made['env']}")
        assert not [ln for ln in nl.links(None) if ln["name"].startswith("nsr")]
        # the host afterwards, looked at directly: the holder is dead, no mounts, no /etc/netns
        assert not process.pid_alive(holder)
        with open("/proc/self/mountinfo") as f:
            mounts = [ln.split()[4] for ln in f]
        assert not [m for m in mounts if made["env"] in m or "/run/netns/nsr" in m], mounts
        assert f"/run/netns/{OTHER}" in mounts                         # not ours: still mounted
        assert not [d for d in os.listdir("/etc/netns") if d.startswith("nsr")] \
            if os.path.isdir("/etc/netns") else True
        again = cli("cleanup")
        assert again.returncode == 0 and "nothing to clean up" in again.stdout
    finally:
        subprocess.run(["ip", "netns", "del", OTHER], check=False)
        cli("cleanup")
