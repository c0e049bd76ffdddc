"""Environments without root: every ``env-*`` task and ``rootfs-busybox`` as uid 65534 (no
capabilities), against the real kernel, on both backends.

The user's commands of one test run in one Python process of that user (:func:`session`):
each is the real command line (``invoke TASK ARGS`` through nsrecipes' Program, output
captured at the file descriptors), without a Python start per command -- under TCG in the VM
a start costs about 12 s, and a test here runs a dozen commands.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from asuser import USER_UID, as_user, home, user_env  # noqa: F401 (a fixture)
from conftest import unprivileged_argv
from helpers import ROOT
from nsutil import procfs
from sandboxkit import Sandbox, sandbox  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to become uid 65534)")

#: runs each command line of argv[1] (JSON) through the CLI in this one process
SESSION = r"""
import json, os, sys, tempfile
from cli.collection import ns
from cli.program import NsrProgram

results = []
for argv in json.loads(sys.argv[1]):
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush(); sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        code = 0
        sys.argv = ["invoke", *argv]      # env-exec takes its command from there
        try:
            NsrProgram(namespace=ns, name="nsrecipes", binary="invoke",
                       binary_names=["invoke"]).run(sys.argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
            os.close(saved[0]); os.close(saved[1])
        out.seek(0); err.seek(0)
        results.append({"argv": argv, "rc": code, "out": out.read().decode(),
                        "err": err.read().decode()})
print(json.dumps(results))
"""


def _python() -> str:
    return os.path.join(ROOT, ".venv", "bin", "python")


def _results(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {" ".join(r["argv"]): r for r in json.loads(proc.stdout.splitlines()[-1])}


def session(home: str, *commands: list[str], backend: str | None = None) -> dict[str, dict]:
    """Run ``commands`` (each an ``invoke`` argv) as uid 65534 in one process; returns
    {"TASK ARGS": {rc, out, err}}."""
    env = {"NSR_BACKEND": backend} if backend else {}
    return _results(as_user(home, "-c", SESSION, json.dumps(commands), env=env,
                            program=_python()))


def ok(result: dict) -> str:
    """The output of a command that must have succeeded."""
    assert result["rc"] == 0, result
    return result["out"]


def refused(result: dict, *words: str) -> str:
    """The one line of a refusal: non-zero, one line on stderr naming ``words``, a hint."""
    assert result["rc"] != 0, result
    lines = result["err"].strip().splitlines()
    assert len(lines) == 1 and "(hint: " in lines[0], result
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def assert_nothing_left(home: str, holders: list[int]) -> None:
    """No holder of the test's runs, and nothing in the user's runtime directory (the state
    directory nsrecipes made there is pruned once empty)."""
    deadline = time.monotonic() + 5
    while any(procfs.pid_alive(p) for p in holders) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [p for p in holders if procfs.pid_alive(p)]
    assert os.listdir(os.path.join(home, "run")) == []


def processes_of(home: str) -> list[int]:
    """The processes of uid 65534 started with ``home``'s runtime directory
    (``XDG_RUNTIME_DIR``, which only this test's commands have)."""
    mark = f"XDG_RUNTIME_DIR={home}/run".encode()
    found = []
    for entry in os.listdir("/proc"):
        try:
            if not entry.isdigit() or os.stat(f"/proc/{entry}").st_uid != USER_UID:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue      # gone meanwhile
    return found


def kill_left(home: str) -> None:
    """What a failed test left: SIGKILL every process of :func:`processes_of`."""
    for pid in processes_of(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue      # gone meanwhile


@pytest.fixture
def user(home):
    """uid 65534's home (:func:`asuser.home`); the environments a failed test left are ended."""
    try:
        yield home
    finally:
        kill_left(home)


def test_env_tasks_as_a_user(backend, user):
    """create (hostname), hostname, mount, mq, exec, ls, rm as uid 65534: a user namespace
    comes first and owns the rest, the user is root inside, the record is the user's, and
    nothing is left; the shell forms show ``unshare --user --map-root-user`` and ``nsenter
    --user --preserve-credentials``."""
    home = user
    name = f"nsr-rl-{backend[0]}"
    inside = ("id -u; cat /proc/self/uid_map; hostname; grep ' /mnt tmpfs' /proc/mounts; "
              "ipcs -q | grep -c '^0x'; ip -o link show lo; ps -o pid= -p 1; "
              f'cat "$XDG_RUNTIME_DIR/nsrecipes/{name}/env.json"')
    done = session(home, ["env-create", name, "--hostname", "web"],
                   ["env-hostname", name, "--hostname", "db"],
                   ["env-mount", name, "/mnt", "--size", "1m"],
                   ["env-mq", name],
                   ["env-exec", name, "--", "sh", "-c", inside],
                   ["env-create", "--explain", "nsr-rl-x"],
                   ["env-exec", "--explain", name, "--", "true"],
                   ["env-ls", "--json"],
                   ["env-rm", name],
                   ["env-ls"], backend=backend)
    created = ok(done[f"env-create {name} --hostname web"])
    assert "root inside it is uid 65534" in created and f"environment {name} is ready" in created
    assert "Message queue id: 0" in ok(done[f"env-mq {name}"])
    lines = ok(done[f"env-exec {name} -- sh -c {inside}"]).splitlines()
    assert lines[0] == "0" and lines[1].split() == ["0", str(USER_UID), "1"], lines
    assert lines[2] == "db" and lines[3].startswith("tmpfs /mnt tmpfs") and lines[4] == "1"
    assert "UP" in lines[5] and lines[6].strip() == "1", lines
    record = json.loads("\n".join(lines[7:]))      # in the user's XDG_RUNTIME_DIR
    assert record["rootless"] and record["backend"] == backend and record["netns"] is None
    explained = ok(done["env-create --explain nsr-rl-x"])
    assert "unshare --user --map-root-user -- sleep infinity &" in explained
    assert "nsenter -t $USERNS --user --preserve-credentials -- unshare --ipc" in explained
    assert "--user --preserve-credentials" in ok(done[f"env-exec --explain {name} -- true"])
    [row] = json.loads(ok(done["env-ls --json"]))["environments"]
    assert row["name"] == name and row["state"] == "alive" and row["rootless"]
    assert set(row["ns"]) == {"user", "uts", "ipc", "pid", "mnt", "net"} and all(row["ns"].values())
    assert row["pid"] == record["holder"]["pid"]
    assert f"removed environment {name}" in ok(done[f"env-rm {name}"])
    assert name not in ok(done["env-ls"])
    assert not os.path.exists(f"/run/nsrecipes/{name}") and not os.path.exists(f"/run/netns/{name}")
    assert_nothing_left(home, [row["pid"], record["parent"]["pid"]])


def test_env_veth_between_two_environments_of_a_user(backend, user):
    """A user's environments share one user namespace, kept by a per-user holder recorded
    in userns.json, so env-veth links two of them as root there: they ping each other both
    ways. One made with --uid-map has a user namespace of its own: a veth to it is one line,
    as one to the host. After env-rm of all, no process of the user is left and the
    per-user holder and its record are gone."""
    home = user
    a, b, own = (f"nsr-rl-{backend[0]}{x}" for x in "abo")
    record = os.path.join(home, "run", "nsrecipes", "userns.json")
    veth = ["env-veth", a, "--peer", b, "--addr", "10.231.0.1/24", "--peer-addr", "10.231.0.2/24"]
    done = session(home, ["env-create", a, "--ns", "net"], ["env-create", b, "--ns", "net,pid"],
                   ["env-create", own, "--ns", "net", "--uid-map", "0:65534:1"],
                   ["env-exec", a, "--", "cat", record], veth,
                   ["env-exec", a, "--", "ping", "-c1", "-W5", "10.231.0.2"],
                   ["env-exec", b, "--", "ping", "-c1", "-W5", "10.231.0.1"],
                   ["env-veth", own, "--peer", a], ["env-veth", a, "--peer", own],
                   ["env-veth", a], ["env-ls", "--json"],
                   ["env-rm", a], ["env-rm", own], ["env-rm", b], backend=backend)
    assert ok(done[" ".join(veth)]).strip().endswith(f"{a}:eth0 <-> {b}:eth0")
    assert "1 received" in ok(done[f"env-exec {a} -- ping -c1 -W5 10.231.0.2"])
    assert "1 received" in ok(done[f"env-exec {b} -- ping -c1 -W5 10.231.0.1"])
    assert "share one user namespace, kept by pid" in ok(done[f"env-create {a} --ns net"])
    assert "share the user namespace kept by pid" in ok(done[f"env-create {b} --ns net,pid"])
    holder = json.loads(ok(done[f"env-exec {a} -- cat {record}"]))
    assert holder["kind"] == "userns" and holder["start"], holder
    refused(done[f"env-veth {own} --peer {a}"], f"{own} has a user namespace of its own")
    refused(done[f"env-veth {a} --peer {own}"], f"{own} has a user namespace of its own")
    refused(done[f"env-veth {a}"], "host's network namespace needs root")
    rows = {r["name"]: r for r in json.loads(ok(done["env-ls --json"]))["environments"]}
    assert rows[a]["ns"]["user"] == rows[b]["ns"]["user"] == holder["userns"]
    assert rows[own]["ns"]["user"] != holder["userns"]
    assert rows[a]["pids"] == [rows[a]["pid"]], rows      # not b's, nor the per-user holder
    assert holder["pid"] not in rows[b]["pids"] + rows[own]["pids"], rows
    for n in (a, own, b):
        ok(done[f"env-rm {n}"])
    assert_nothing_left(home, [holder["pid"]] + [r["pid"] for r in rows.values()])
    assert processes_of(home) == []


def test_env_idmap_veth_and_rootfs_as_a_user(user):
    """Maps left for env-idmap are written with the user's own ids; ids beyond them, and
    veths (to the host, to another environment), are refused in one line each; rootfs-busybox
    builds as the user; nothing is left."""
    home = user
    name, rootfs = "nsr-rl-map", os.path.join(home, "rootfs")
    done = session(home, ["env-create", name, "--ns", "uts", "--uid-map", "none"],
                   ["env-exec", name, "--", "true"],
                   ["env-idmap", name, "--uid-map", "0:100000:65536"],
                   ["env-idmap", name, "--uid-map", "0:65534:1"],
                   ["env-exec", name, "--", "cat", "/proc/self/uid_map", "/proc/self/gid_map"],
                   ["env-veth", name],
                   ["env-veth", name, "--peer", "nsr-rl-other"],
                   ["env-ls", "--json"],
                   ["env-rm", name],
                   ["rootfs-busybox", rootfs])
    assert "(user and mnt added to --ns" in ok(done[f"env-create {name} --ns uts --uid-map none"])
    refused(done[f"env-exec {name} -- true"], "not written")
    refused(done[f"env-idmap {name} --uid-map 0:100000:65536"], "your own uid 65534", "/etc/subuid")
    ok(done[f"env-idmap {name} --uid-map 0:65534:1"])
    maps = ok(done[f"env-exec {name} -- cat /proc/self/uid_map /proc/self/gid_map"]).split()
    assert maps == ["0", "65534", "1", "0", "65534", "1"], maps
    refused(done[f"env-veth {name}"], "host's network namespace needs root")
    refused(done[f"env-veth {name} --peer nsr-rl-other"], "has no net namespace")
    [row] = json.loads(ok(done["env-ls --json"]))["environments"]
    assert set(row["ns"]) == {"user", "uts", "mnt"}
    ok(done[f"env-rm {name}"])
    ok(done[f"rootfs-busybox {rootfs}"])
    st = os.lstat(os.path.join(rootfs, "bin", "sh"))
    assert st.st_uid == USER_UID
    assert os.readlink(os.path.join(rootfs, "bin", "sh")) == "/bin/busybox"
    subprocess.run(["rm", "-rf", rootfs], check=True)
    assert_nothing_left(home, [row["pid"]])


def test_env_wide_idmap_from_subuid_ranges(user, tmp_path):
    """With an /etc/subuid and /etc/subgid range for the user (bound over them in a private
    mount namespace of the test's own, never the host's) and newuidmap installed, env-create
    maps 0 to the user and 1-65536 to the range, written by newuidmap/newgidmap; a range
    outside is refused in one line. The user keeps a normal bounding set here (setuid
    helpers need it)."""
    if not os.path.exists("/usr/bin/newuidmap"):
        pytest.skip("newuidmap is not installed (apt-get install uidmap)")
    name, home = "nsr-rl-sub", user
    ranges = tmp_path / "subid"
    ranges.write_text(f"{USER_UID}:100000:65536\n")
    ranges.chmod(0o644)
    binds = " && ".join(f"mount --bind {ranges} /etc/sub{w}" for w in ("uid", "gid"))
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            binds + ' && exec "$@"', "sh", "setpriv", f"--reuid={USER_UID}",
            f"--regid={USER_UID}", "--clear-groups", "--inh-caps=-all", "--", _python(),
            "-c", SESSION]
    wide = "0:65534:1,1:100000:65536"
    commands = [["env-create", name, "--ns", "uts,pid", "--uid-map", wide],
                ["env-exec", name, "--", "sh", "-c",
                 "cat /proc/self/uid_map /proc/self/gid_map; touch /tmp/x$$; chown 1000 /tmp/x$$"
                 " && stat -c %u /tmp/x$$; rm -f /tmp/x$$"],
                ["env-rm", name],
                ["env-create", name, "--uid-map", "0:200000:10"]]
    unprivileged_argv([])      # skips when the user cannot reach the checkout
    done = _results(subprocess.run(argv + [json.dumps(commands)], cwd=ROOT, env=user_env(home),
                                   capture_output=True, text=True, timeout=300))
    ok(done[f"env-create {name} --ns uts,pid --uid-map {wide}"])
    out = ok(done[" ".join(commands[1])]).split()
    assert out == ["0", "65534", "1", "1", "100000", "65536"] * 2 + ["1000"], out
    ok(done[f"env-rm {name}"])
    refused(done[f"env-create {name} --uid-map 0:200000:10"], "outside your own uid 65534",
            "(100000-165535)")
    assert_nothing_left(home, [])


def _in_box(box: Sandbox, home: str, *commands: list[str]) -> dict[str, dict]:
    """``session`` run inside the cleanup sandbox (its /tmp holds the user's home)."""
    argv = box.enter() + unprivileged_argv([_python(), "-c", SESSION, json.dumps(commands)])
    return _results(subprocess.run(argv, cwd=ROOT, env=user_env(home), capture_output=True,
                                   text=True, timeout=300))


def test_roots_cleanup_leaves_a_users_dead_environment_the_users_removes_it(sandbox):
    """A user's environment whose holder was SIGKILLed, as the holder of the user namespace
    the user's environments share: root's ``cleanup --all`` (which removes all of root's,
    dead or alive: so plain ``cleanup`` too) leaves both, they are the user's, in the user's
    state directory; the user's env-ls shows it dead and the user's ``cleanup`` removes it
    and the stale per-user holder's record."""
    box, name = sandbox, "nsr-rl-dead"
    home = "/tmp/nsr-rl-home"                 # inside the sandbox: its /tmp is its own
    for part in ("", "/run"):
        os.mkdir(box.path(home + part), 0o700)
        os.chown(box.path(home + part), USER_UID, USER_UID)
    try:
        _dead_env_cleaned(box, home, name)
    finally:
        kill_left(home)


def _dead_env_cleaned(box: Sandbox, home: str, name: str) -> None:
    made = _in_box(box, home, ["env-create", name, "--ns", "uts,net"])
    ok(made[f"env-create {name} --ns uts,net"])
    record = box.path(f"{home}/run/nsrecipes/{name}/env.json")
    userns = box.path(f"{home}/run/nsrecipes/userns.json")
    with open(record) as f, open(userns) as g:
        holder, user_holder = json.load(f)["holder"]["pid"], json.load(g)["pid"]
    for pid in (holder, user_holder):       # the per-user holder's record is stale now
        os.kill(pid, signal.SIGKILL)
    done = box.cli("cleanup", "--all")      # removes all root's, in use or not: not the user's
    assert done.returncode == 0 and name not in done.stdout + done.stderr, done
    assert "userns" not in done.stdout + done.stderr, done
    assert os.path.exists(record) and os.path.exists(userns)
    after = _in_box(box, home, ["env-ls"], ["cleanup"], ["env-ls", "--json"])
    assert f"{name} " in ok(after["env-ls"]) and " dead " in after["env-ls"]["out"]
    assert f"removing env {name}" in ok(after["cleanup"])
    assert "removing userns holder of your user namespace" in after["cleanup"]["out"]
    assert json.loads(ok(after["env-ls --json"])) == {"environments": []}
    assert os.listdir(box.path(f"{home}/run")) == []
