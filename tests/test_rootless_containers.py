"""container-run, cow-demo and cgroup-demo as a real unprivileged user (uid 65534), on both
backends, against the real kernel.

An /etc/subuid range for uid 65534 exists only in a private mount namespace the test makes
(files bound over /etc/subuid and /etc/subgid), never in the host's /etc. The limits' working
path needs cgroup v2 (the 6.1 VM): a cgroup is delegated to uid 65534 there as systemd does
it (mkdir, chown of the directory and its cgroup.procs, cgroup.subtree_control and
cgroup.threads) and the user's process is moved into it before it starts.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from asuser import USER_UID, as_user, home, user_env  # noqa: F401 (home: a fixture)
from helpers import INVOKE, ROOT

from nsutil import cgroupfs
from nsutil import syscalls as sc

DELEGATE_HINT = "systemd-run --user --scope -p Delegate=yes"


def _runtime_left(home: str) -> list[str]:
    state = os.path.join(home, "run", "nsrecipes")
    return [n for n in os.listdir(state) if not n.startswith(".")] if os.path.isdir(state) else []


def _cow_dirs() -> set[str]:
    return {n for n in os.listdir("/tmp") if n.startswith("nsr-cow-")}


def test_container_and_cow_as_user(backend: str, home: str) -> None:
    """The user is root inside (uid_map ``0 65534 1``), /dev is the host's nodes bound on a
    tmpfs, --net has only lo, the overlay takes writes; cow-demo shows copy-up and a
    whiteout; nothing is left in the user's runtime directory or /tmp."""
    env = {"NSR_BACKEND": backend}
    before = _cow_dirs()
    script = ("cat /proc/self/uid_map; echo x > /dev/null && echo devnull-ok; "
              "echo w > /etc/written && cat /etc/written; ls /sys/class/net 2>/dev/null; "
              "ip -o link | cut -d: -f2; grep -c ' overlay .*userxattr' /proc/self/mountinfo")
    done = as_user(home, "container-run", "--net", "--", "sh", "-c", script, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[:3] == ["0", str(USER_UID), "1"], done.stdout
    assert "devnull-ok" in lines and "w" in lines
    assert lines[5:] == ["lo", "1"], done.stdout   # isolated: only lo; overlay with userxattr
    cow = as_user(home, "cow-demo", "--size-mb", "1", env=env)
    assert cow.returncode == 0, cow.stderr
    assert f"root inside it is uid {USER_UID}" in cow.stdout
    assert "(whiteout: True)" in cow.stdout and "lower: 'base\\n'" in cow.stdout
    assert _runtime_left(home) == []
    assert _cow_dirs() <= before


def test_refusals_as_user(home: str) -> None:
    """Without an /etc/subuid range, ``--user 1000`` is one line naming what is missing; with
    no delegated cgroup, a limit and cgroup-demo are one line with the systemd-run hint.
    Non-zero exit, nothing left. (Refused before any step runs: the backend plays no part.)"""
    env: dict = {}
    user = as_user(home, "container-run", "--user", "1000", "--", "id", env=env)
    assert user.returncode == 125      # nsrecipes could not start it, as docker run says
    assert user.stderr.count("\n") == 1, user.stderr
    assert "--user 1000" in user.stderr and "/etc/subuid" in user.stderr
    for args in (("container-run", "--memory", "64M", "--pids", "8", "--", "true"),
                 ("cgroup-demo",)):
        done = as_user(home, *args, env=env)
        expected = 125 if args[0] == "container-run" else 1
        assert done.returncode == expected, (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
        assert DELEGATE_HINT in done.stderr
        assert "limits need a cgroup delegated to uid 65534, and there is none" in done.stderr
    assert _runtime_left(home) == []


def _bind_subids(path: str) -> None:
    """In the child, before exec: a private mount namespace with ``path`` over /etc/subuid
    and /etc/subgid."""
    sc.unshare(sc.CLONE_NEWNS)
    sc.make_propagation("/", "private", recursive=True)
    for target in ("/etc/subuid", "/etc/subgid"):
        sc.mount(path, target, None, sc.MS_BIND)


def _as_user_full_bounding(home: str, args: list[str], env: dict,
                           preexec) -> subprocess.CompletedProcess:
    """uid 65534 with the full capability bounding set a login has: newuidmap, setuid root,
    gets CAP_SETUID only from it (tests/conftest's setpriv clears it)."""
    argv = ["setpriv", f"--reuid={USER_UID}", f"--regid={USER_UID}", "--clear-groups",
            "--inh-caps=-all", "--", INVOKE, *args]
    return subprocess.run(argv, cwd=ROOT, env=user_env(home, **env), capture_output=True,
                          text=True, timeout=300, preexec_fn=preexec, stdin=subprocess.DEVNULL)


@pytest.mark.skipif(shutil.which("newuidmap") is None, reason="uidmap (newuidmap) not installed")
def test_user_1000_with_subuid_range(backend: str, home: str) -> None:
    """With an /etc/subuid and /etc/subgid range (in a private mount namespace) and
    newuidmap: uids 0-65535 inside, ``--user 1000`` runs as 1000 (200000+999 outside), and
    what it wrote is removed with the container."""
    fd, path = tempfile.mkstemp(prefix="nsr-subid-", dir="/tmp")
    try:
        os.write(fd, b"nobody:200000:65536\n")
        os.close(fd)
        os.chmod(path, 0o644)
        script = ("id -u; id -g; cat /proc/self/uid_map; "
                  "mkdir /tmp/d && touch /tmp/d/x && chmod 700 /tmp/d")
        done = _as_user_full_bounding(home, ["container-run", "--user", "1000", "--", "sh", "-c",
                                             script], {"NSR_BACKEND": backend},
                                      lambda: _bind_subids(path))
    finally:
        os.unlink(path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1000", "1000", "0", str(USER_UID), "1", "1", "200000",
                                   "65535"], done.stdout
    assert _runtime_left(home) == []


@pytest.fixture
def delegated() -> str:
    """A cgroup delegated to uid 65534 as systemd does it (cgroup v2 only); removed after."""
    layout = cgroupfs.host_layout()
    if layout.mode != "unified":
        pytest.skip("cgroup delegation needs cgroup v2 (checked in the VM: tests/vm/run)")
    top = layout.v2 or cgroupfs.ROOT
    for ctrl in ("memory", "pids", "cpu"):
        if ctrl not in cgroupfs.read_file(os.path.join(top, "cgroup.subtree_control")).split():
            cgroupfs.write_file(os.path.join(top, "cgroup.subtree_control"), f"+{ctrl}")
    path = tempfile.mkdtemp(prefix="nsr-deleg-", dir=top)
    try:
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(os.path.join(path, name) if name else path, USER_UID, USER_UID)
        yield path
    finally:
        cgroupfs.remove_dir(path)


def test_limits_in_delegated_cgroup(backend: str, home: str, delegated: str) -> None:
    """In a delegated cgroup: ``--pids 2`` stops the command's fork (the container is in a
    cgroup namespace of its own), cgroup-demo sees the OOM kill, the fork bomb stopped and the
    CPU quota; the delegated cgroup is left as it was (no child, no controller enabled)."""
    env = {"NSR_BACKEND": backend}

    def into() -> None:
        with open(os.path.join(delegated, "cgroup.procs"), "w") as f:
            f.write("0")

    run = lambda *args: _as_user_full_bounding(home, list(args), env, into)  # noqa: E731
    limited = run("container-run", "--pids", "2", "--", "sh", "-c",   # read: no fork
                  "read c < /proc/self/cgroup; echo $c; true & wait")
    assert limited.returncode != 0 and "fork" in (limited.stdout + limited.stderr).lower(), limited
    assert limited.stdout.startswith("0::/\n"), limited.stdout   # its own cgroup namespace
    demo = run("cgroup-demo", "--seconds", "0.3")
    assert demo.returncode == 0, demo.stderr
    print(demo.stdout)   # for the docs: -rA shows it
    assert "oom_kill = 1" in demo.stdout and "refused with EAGAIN: 0" not in demo.stdout
    assert [e.name for e in os.scandir(delegated) if e.is_dir()] == []
    assert cgroupfs.read_file(os.path.join(delegated, "cgroup.subtree_control")).split() == []
    assert _runtime_left(home) == []
