"""tests/containerlike, the container-like sandbox CI runs the suite in: what a command sees
inside it is what a privileged container's process sees, and nothing of it stays."""
from __future__ import annotations

import os
import subprocess

SANDBOX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "containerlike")

#: what the command inside reports, one line each
PROBE = r"""
echo "pid=$$ ppid=$PPID"
echo "pids=$(ls /proc | grep -c '^[0-9]')"
echo "pidns=$(stat -Lc %i /proc/self/ns/pid) netns=$(stat -Lc %i /proc/self/ns/net)"
echo "utsns=$(stat -Lc %i /proc/self/ns/uts) ipcns=$(stat -Lc %i /proc/self/ns/ipc)"
echo "mntns=$(stat -Lc %i /proc/self/ns/mnt)"
echo "hostname=$(hostname)"
echo "links=$(ls /sys/class/net | tr '\n' ' ')"
echo "lo=$(cat /sys/class/net/lo/operstate)"
echo "tmp=$(stat -fc %T /tmp) run=$(stat -fc %T /run) etc=$(stat -fc %T /etc)"
echo "tmp_entries=$(ls -A /tmp | wc -l) netns_dir=$(ls -A /run | tr '\n' ' ')"
mkdir -p /etc/netns/nsr-cl && touch /tmp/nsr-cl /run/nsr-cl
exit 7
"""


def _ns(kind: str) -> str:
    return str(os.stat(f"/proc/self/ns/{kind}").st_ino)


def _host_view() -> tuple:
    """The sandbox's mounts (by their source's name) and the host's mounts where it mounts
    (other runs' come and go elsewhere, under /run and /tmp), and the files it made."""
    with open("/proc/self/mountinfo") as f:
        lines = [ln.split() for ln in f]
    where = ("/etc", "/sys", "/dev/shm", "/tmp", "/run")
    mounts = sorted(f[4] for f in lines if f[4] in where or f[4].startswith(("/etc/", "/sys/")))
    theirs = [f[4] for f in lines if "nsr-containerlike" in f]
    return (mounts, theirs, os.path.exists("/etc/netns/nsr-cl"), os.path.exists("/tmp/nsr-cl"),
            os.path.exists("/run/nsr-cl"))


def test_a_command_runs_as_in_a_container_and_nothing_stays():
    before = _host_view()
    proc = subprocess.run([SANDBOX, "--", "sh", "-c", PROBE], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 7, proc.stderr                  # the command's exit status
    seen = dict(pair.split("=", 1) for line in proc.stdout.splitlines()
                for pair in line.split(" ") if "=" in pair)
    # its own PID namespace and /proc: PID 1 is the sandbox's shell, few processes listed
    assert seen["ppid"] == "1" and int(seen["pid"]) > 1 and int(seen["pids"]) < 10
    for kind in ("pid", "net", "uts", "ipc", "mnt"):
        assert seen[f"{kind}ns"] != _ns(kind), kind
    assert seen["hostname"] == "nsr-containerlike"
    assert seen["links"].split() == ["lo"] and seen["lo"] == "unknown"   # lo up (no carrier state)
    assert (seen["tmp"], seen["run"], seen["etc"]) == ("overlayfs", "tmpfs", "overlayfs")
    assert seen["tmp_entries"] == "0"
    assert _host_view() == before                             # mounts and files all gone


def test_refuses_a_cgroupns_directory_that_is_no_cgroup():
    proc = subprocess.run([SANDBOX, "--cgroupns=/nonexistent", "--", "true"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 125
    assert proc.stderr.strip() == ("containerlike: --cgroupns=/nonexistent: not a cgroup v2 "
                                   "directory")
