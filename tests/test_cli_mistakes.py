"""A newcomer's mistakes, each through the real command line: one line on stderr with a hint
and a non-zero exit, nothing left behind (the parse mistakes and a missing ``-- CMD`` are in
test_cli_program.py)."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time

import pytest

from helpers import INVOKE, ROOT, cli, one_line_error, require_tool
from recipes import env


def _env_name() -> str:
    return f"nsr-mis-{secrets.token_hex(3)}"


@pytest.fixture
def live_env():
    """A live environment made through the CLI (uts,ipc,pid,mnt,net), removed afterwards."""
    name = _env_name()
    made = cli("env-create", name, "--backend", "native", timeout=300)   # an emulated VM
    assert made.returncode == 0, made.stderr
    try:
        yield name
    finally:
        cli("env-rm", name, "--backend", "native", timeout=300)


@pytest.mark.parametrize("backend", ["shell", "native"])
def test_command_missing_inside_is_not_already_removed(backend):
    proc = cli("uts-demo", "--command", "nsr-nosuch-cmd", "--backend", backend)
    line = one_line_error(proc)
    assert proc.returncode == 127
    assert line == ("nsrecipes: command 'nsr-nosuch-cmd' not found (hint: check its name: it "
                    "is looked up on PATH; or give its full path)")


@pytest.mark.parametrize("backend", ["shell", "native"])
def test_hostname_hostname1_refuses_is_refused_before_anything(backend):
    """`..` went through sethostname(2) (native) and failed late in hostname(1) (shell)."""
    proc = cli("uts-demo", "--hostname", "..", "--backend", backend)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "hostname '..' is not a valid hostname" in one_line_error(proc)
    assert cli("uts-demo", "--hostname", "web-1.lab", "--backend", backend).returncode == 0


def test_setns_refused_to_root_does_not_say_run_as_root(live_env):
    """uid 0 without CAP_SYS_ADMIN (setpriv drops it from the bounding set): refused before
    anything is tried, in one line that names what root lacks and the fix."""
    proc = subprocess.run(["setpriv", "--bounding-set=-sys_admin", "--", INVOKE, "env-exec",
                           live_env, "--backend", "native", "--", "true"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    line = one_line_error(proc)
    assert "refused by capabilities (no CAP_SYS_ADMIN" in line, line   # the layer that refused
    assert "--cap-add SYS_ADMIN" in line                               # and its fix
    assert "run as root" not in line


@pytest.mark.parametrize("backend", ["shell", "native"])
def test_env_mount_on_a_path_missing_inside(live_env, backend):
    proc = cli("env-mount", live_env, "/nsr-nonexistent", "--backend", backend)
    assert one_line_error(proc) == (
        f"nsrecipes: mount point /nsr-nonexistent does not exist inside {live_env} (hint: "
        f"paths are as seen inside the environment; make it first: env-exec {live_env} -- "
        "mkdir -p /nsr-nonexistent)")
    proc = cli("env-mount", live_env, "/mnt", "--source", "/nsr-nonexistent", "--backend", backend)
    assert "mount source /nsr-nonexistent does not exist inside" in one_line_error(proc)
    mounts = cli("env-exec", live_env, "--", "cat", "/proc/self/mountinfo").stdout
    assert " /mnt " not in mounts and "nsr-nonexistent" not in mounts


@pytest.mark.userspace
def test_lab_file_value_has_its_hint_once(tmp_path):
    lab = tmp_path / "lab.toml"
    lab.write_text('[hosts.web]\n[hosts.db]\n[[links]]\na = "web"\nb = "db"\nloss = "150%"\n')
    line = one_line_error(cli("net-topo", "--file", str(lab), "--explain"))
    assert line == (f"nsrecipes: {lab}:6: link 1 (web-db): loss '150%' is more than 100% "
                    "(hint: write it like loss '1%')")


@pytest.mark.userspace
def test_env_exec_without_command_on_dev_null_is_refused():
    """No command opens a shell; with stdin /dev/null it ended at once with status 0."""
    proc = subprocess.run([INVOKE, "env-exec", "nsr-mis-x"], cwd=ROOT, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert one_line_error(proc) == (
        "nsrecipes: env-exec nsr-mis-x: no command given, and stdin is /dev/null, not a "
        "terminal for a shell (hint: invoke env-exec nsr-mis-x -- CMD ARGS...)")


@pytest.mark.userspace
@pytest.mark.parametrize("pids", ["1", "256"])
def test_cgroup_demo_pids_the_bomb_cannot_show(pids):
    """--pids 1: the bomb's first fork was refused and the demo reported 0 forks, status 0."""
    proc = cli("cgroup-demo", "--pids", pids, "--explain")
    assert proc.returncode == 2
    assert one_line_error(proc).startswith(f"nsrecipes: pids limit {pids}: the fork bomb demo "
                                           "needs 2 to 255")


@pytest.mark.userspace
def test_more_cpus_than_there_are_is_refused():
    there = len(os.sched_getaffinity(0))
    proc = cli("container-run", "--explain", "--cpus", str(there + 1), "--", "true")
    assert proc.returncode == 2
    assert one_line_error(proc).startswith(
        f"nsrecipes: cpu limit {there + 1} is more than the {there} CPU")
    assert cli("container-run", "--explain", "--cpus", str(there), "--", "true").returncode == 0


@pytest.mark.userspace
def test_net_veth_name_alone_says_its_peer():
    done = cli("net-veth", "--name", "nsr-mis-a", "--explain")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == ("--name nsr-mis-a without --peer: paired with nsr-b, "
                                           "the default peer (--peer NAME chooses another)")
    assert "--peer" not in cli("net-veth", "--explain").stdout


@pytest.mark.userspace
def test_a_missing_suite_tool_names_its_package_and_bootstrap():
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_tool("/nonexistent/nsr-sshd", "openssh-server")
    assert str(skipped.value) == ("/nonexistent/nsr-sshd is missing: apt-get install "
                                  "openssh-server (./bootstrap pytest installs it with the "
                                  "suite's other tools)")


def test_net_topo_draw_with_the_scope_of_a_lab_that_is_up(tmp_path):
    scope = "m" + secrets.token_hex(1)
    built = cli("net-topo", "--shape", "line", "--hosts", "2", "--scope", scope)
    assert built.returncode == 0, built.stderr
    try:
        out = tmp_path / "lab.svg"
        drew = cli("net-topo", "--scope", scope, "--draw", str(out))
        assert drew.returncode == 0, drew.stderr
        assert drew.stdout.strip() == f"drew {out}" and "<svg" in out.read_text()
    finally:
        cli("net-topo", "--down", "--scope", scope)


def _interrupt_env_create(name: str, after: str, delay: float) -> tuple[int, str, bool]:
    """env-create NAME, Ctrl-C to its process group ``delay`` s after a line with ``after``
    appears; returns its exit status, stdout and whether the environment is there (or a
    half-made record of it)."""
    proc = subprocess.Popen([INVOKE, "env-create", name, "--backend", "native"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        seen = ""
        while after not in seen:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    base = env.base_dir()                     # pruned once nothing of nsrecipes' is left
    made = [f for f in (os.listdir(base) if os.path.isdir(base) else [])
            if f == name or f.startswith(f".env-{name}.")]
    return proc.returncode, seen + out, bool(made)


@pytest.mark.parametrize("after,delay", [("== environment", 0.0), ("== environment", 0.05),
                                         ("== environment", 0.1), ("is ready", 0.0)])
def test_ctrl_c_during_env_create_leaves_nothing_or_a_ready_env(after, delay):
    """A Ctrl-C before env-create ends undoes it (status 130); one that comes after it
    succeeded changes nothing (status 0, the environment it announced is there). Never an
    environment kept by an interrupted run (it was: "is ready", then 130 or death by
    SIGINT, the environment left)."""
    name = _env_name()
    try:
        code, out, there = _interrupt_env_create(name, after, delay)
        assert (code, there) in ((130, False), (0, True)), (code, out, there)
        if there:
            assert f"environment {name} is ready" in out
    finally:
        cli("env-rm", name, "--backend", "native", timeout=300)
