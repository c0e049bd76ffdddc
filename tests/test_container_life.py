"""A container's life after container-run, for real: detached containers with their
supervisor, ls, exec, logs, stop, kill, rm, exit codes, the OOM killer, a SIGKILLed tool
or supervisor, and the names and ids a user types. Both backends where a verb has a shell
form (exec: nsenter; kill/stop: kill). Nothing is left: every test removes its containers
in ``finally``, and the session's leak guard sees supervisors (``nsr-supervisor``) and the
state entries with their logs."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import helpers
from containerkit import ours, rootfs_dir, run_ct  # noqa: F401 (rootfs_dir: fixture)
from nsutil import procfs
from nsutil.backend import Runner
from nsutil.errors import NsrError
from nsutil.names import scope_id
from recipes.container import ContainerOOM, ids, lifecycle
from recipes.container.execin import NotRunning
from recipes.container.lifecycle import Container
from recipes.ops import cleanup

#: a container that ignores SIGTERM (so stop has to SIGKILL it) and says it started
STUBBORN = ["sh", "-c", "trap '' TERM; echo started; while :; do sleep 0.1; "
            "[ -e /tmp/say ] && rm /tmp/say && echo late; done"]
#: a command that needs more memory than any limit a test sets (the OOM killer ends it)
HOG = ["sh", "-c", "x=aaaaaaaaaaaaaaaa; while :; do x=$x$x; done"]
TASKS = ("container-run", "container-ls", "container-exec", "container-logs",
         "container-stop", "container-kill", "container-rm")


def _name(tag: str) -> str:
    return f"nsr-c-{tag}{scope_id()}"


def _gone(*names: str) -> None:
    """Remove the containers ``names`` whatever they are (a test's ``finally``)."""
    for rec in [r for r in lifecycle.rows(all=True) if r["name"] in names]:
        with Runner(backend="native", keep=True) as run:
            lifecycle.remove(run, ids.resolve(rec["id"] or rec["name"]), force=True)


def _exec(c: Container, argv: list[str], **kw) -> tuple[int, str]:
    with tempfile.TemporaryFile() as out, open(os.devnull) as null:
        code = c.exec(argv, fds=(null.fileno(), out.fileno(), out.fileno()), **kw)
        out.seek(0)
        return code, out.read().decode()


def _follow(backend: str, name: str, out) -> None:
    with Runner(backend=backend, keep=True) as run:
        lifecycle.logs(run, ids.resolve(name), follow=True, out=out)


def _supervisor(name: str) -> int:
    return ids.resolve(name)["creator"]["pid"]


def _sweep() -> cleanup.Sweep:
    """cleanup's verdicts; retried when a concurrent run's object vanished mid-look."""
    for _ in range(5):
        try:
            return cleanup.sweep()
        except NsrError:
            time.sleep(0.2)
    return cleanup.sweep()


def _until_dead(name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while ids.status(ids.resolve(name)) != "dead":
        assert time.monotonic() < deadline, ids.status(ids.resolve(name))
        time.sleep(0.05)


def test_detached_container_lives_until_removed(backend):
    """run --detach -> ls (running, pid) -> exec (environment, --user, --env, --workdir,
    its namespaces and cgroup, exit codes, a tty) -> logs -> stop (SIGKILL after --time,
    137) -> exited in ls, exec refused -> rm: nothing left."""
    name = _name("life")
    try:
        c = Container.run(STUBBORN, backend=backend, name=name, env=["FOO=bar"], pids=16)
        assert re.fullmatch(r"[0-9a-f]{64}", c.id)
        row = next(r for r in lifecycle.rows() if r["id"] == c.id)
        assert (row["name"], row["state"]) == (name, "running") and row["pid"] > 1
        assert Container.get(c.id[:8]).name == name           # a prefix of the id
        code, out = _exec(c, ["sh", "-c", "echo $FOO $BAZ; id -u; pwd; hostname; exit 3"],
                          user="1000", env=["BAZ=qux"], workdir="/tmp")
        assert (code, out) == (3, f"bar qux\n1000\n/tmp\n{name}\n"), out
        code, out = _exec(c, ["sh", "-c", "cat /proc/1/comm /proc/self/cgroup"])
        assert code == 0 and out.splitlines()[0] == "nsr-supervisor", out   # its PID 1
        hierarchy = "pids" if "/pids/" in ids.resolve(name)["cgroup"][0] else ""
        line = next(ln for ln in out.splitlines()[1:] if ln.split(":")[1] == hierarchy)
        assert line.endswith(":/"), out       # in its cgroup: its cgroup namespace's root
        assert _exec(c, ["nosuchcmd"])[0] == 127
        assert c.logs() == "started\n"
        with tempfile.TemporaryFile() as out:  # --tty: a terminal of its own
            tty_out = subprocess.run(
                [sys.executable, "-c", "import sys; from recipes.container.lifecycle import "
                 "Container; sys.exit(Container.get(sys.argv[1], sys.argv[2]).exec("
                 "['sh', '-c', '[ -t 0 ] && [ -t 1 ] && echo TTY; exit 5'], tty=True))",
                 name, backend], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                cwd=helpers.ROOT, timeout=300)
        assert (tty_out.returncode, tty_out.stdout.strip()) == (5, "TTY"), tty_out.stderr
        with tempfile.TemporaryFile() as followed:   # logs --follow: until it exits
            follower = threading.Thread(target=_follow, args=(backend, name, followed))
            follower.start()
            assert _exec(c, ["touch", "/tmp/say"])[0] == 0
            started = time.monotonic()
            assert c.stop(1) == 137                  # TERM ignored: SIGKILL after 1 s
            assert time.monotonic() - started >= 1
            follower.join(60)
            followed.seek(0)
            assert not follower.is_alive() and followed.read() == b"started\nlate\n"
        row = next(r for r in lifecycle.rows(all=True) if r["id"] == c.id)
        assert (row["state"], row["exit_code"], row["pid"]) == ("exited", 137, None)
        with pytest.raises(NotRunning, match="not running"):
            c.exec(["true"])
        c.rm()
        assert all(r["id"] != c.id for r in lifecycle.rows(all=True))
    finally:
        _gone(name)
    left = ours()     # another run's containers may come and go meanwhile: ours only
    assert not [x for kind in left.values() for x in kind if name in x], left


@pytest.mark.userspace
def test_cli_verbs_names_and_refusals():
    """(userspace: the CLI's plumbing and messages over the verbs that the tests above run
    against the kernel on both backends; a dozen CLI starts cost minutes in the emulated VM.)
    The CLI: --detach prints the id, ls --json lists it, a name in use is refused (125)
    naming the container and the command that removes it, rm of a running one without
    --force and exec into a stopped one are one line with a hint, kill --signal, logs
    --follow returns once it exited, rm by a prefix of the name."""
    name = _name("cli")
    try:
        run = helpers.cli("container-run", "--detach", "--name", name, "--", *STUBBORN[:2],
                          "trap 'echo got TERM; exit 7' TERM; echo up; "
                          "while :; do sleep 0.1; done", timeout=300)
        assert run.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}\n", run.stdout), run.stderr
        cid = run.stdout.strip()
        listed = json.loads(helpers.cli("container-ls", "--json", timeout=300).stdout)
        assert [r["name"] for r in listed if r["id"] == cid] == [name]
        again = helpers.cli("container-run", "--name", name, "--", "true", timeout=300)
        assert again.returncode == 125
        line = helpers.one_line_error(again)
        assert f"in use by container {cid[:12]} (running)" in line
        assert f"container-rm {name} --force" in line
        line = helpers.one_line_error(helpers.cli("container-rm", name, timeout=300))
        assert "is running" in line and "container-stop" in line
        assert helpers.cli("container-kill", cid[:10], "--signal", "TERM").returncode == 0
        logs = helpers.cli("container-logs", "--follow", name, timeout=300)
        assert logs.stdout == "up\ngot TERM\n", logs.stderr
        assert lifecycle.wait(ids.resolve(name), 30) == 7
        line = helpers.one_line_error(helpers.cli("container-exec", name, "--", "true"))
        assert "is not running (exited)" in line
        rm = helpers.cli("container-rm", name.removeprefix("nsr-c-"), timeout=300)
        assert (rm.returncode, rm.stdout) == (0, f"{name}\n"), rm.stderr
        line = helpers.one_line_error(helpers.cli("container-rm", name))
        assert f"no such container: {name}" in line
    finally:
        _gone(name)


def test_oom_killer_and_timeout_are_said(backend):
    """137 with one line saying why: the OOM killer (v2 memory.events / v1
    memory.oom_control oom_kill), in the foreground and in a detached container's record and
    log; --timeout in a detached one."""
    name, timed = _name("oom"), _name("to")
    with pytest.raises(ContainerOOM, match="OOM killer") as err:
        run_ct(backend, HOG, memory="16M")
    assert err.value.exit_code == 137
    try:
        oom = Container.run(HOG, backend=backend, name=name, memory="16M")
        slow = Container.run(["sleep", "30"], backend=backend, name=timed, timeout=0.5)
        codes = oom.wait(60), slow.wait(60)
        assert codes == (137, 137), (codes, ids.resolve(timed), slow.logs())
        assert "OOM killer" in ids.resolve(name)["why"] and "OOM killer" in oom.logs()
        assert "--timeout 0.5" in ids.resolve(timed)["why"]
    finally:
        _gone(name, timed)


def test_killed_tool_or_supervisor_leaves_a_dead_container_that_goes():
    """container-run SIGKILLed: its container dies with it, ls says dead, and the name can
    be used again at once. A detached one's supervisor SIGKILLed: dead too, and cleanup
    removes it, keeping a running and an exited one. (Native only: what is judged here --
    records, PR_SET_PDEATHSIG, cleanup's verdicts -- has no shell form; the shell backend
    costs 50 s more in the emulated VM.)"""
    backend = "native"
    tool_name, dead, live, done = _name("kt"), _name("ks"), _name("kl"), _name("kd")
    code = ("import sys; from nsutil.backend import Runner; from recipes import container\n"
            "with Runner(backend=sys.argv[2]) as run:\n"
            "    container.run_container(run, ['sleep', '60'], name=sys.argv[1])\n")
    tool = subprocess.Popen([sys.executable, "-c", code, tool_name, backend], cwd=helpers.ROOT)
    try:
        deadline = time.monotonic() + 300
        while not any(r["name"] == tool_name and r["pid"] for r in lifecycle.rows()):
            assert time.monotonic() < deadline and tool.poll() is None
            time.sleep(0.05)
        tool.kill()
        tool.wait()
        _until_dead(tool_name)      # PID 1 dies with the tool (PR_SET_PDEATHSIG)
        assert run_ct(backend, ["true"], name=tool_name)[0] == 0     # the name is free
        Container.run(["sleep", "60"], backend=backend, name=dead)
        Container.run(["sleep", "60"], backend=backend, name=live)
        finished = Container.run(["true"], backend=backend, name=done)
        supervisor = ids.resolve(done)["creator"]
        assert finished.wait(60) == 0
        while procfs.same_process(supervisor):   # it exits right after the record
            time.sleep(0.02)
        os.kill(_supervisor(dead), signal.SIGKILL)
        _until_dead(dead)
        plan = _sweep()
        going = {i.name for i in plan.remove if i.kind == "container"}
        kept = {k.name for k in plan.kept if k.kind == "container"}
        assert dead in going and not going & {live, done}, going
        assert {live, done} <= kept
        cleanup.remove_all(items=[i for i in plan.remove if i.name == dead])
        assert dead not in {r["name"] for r in lifecycle.rows(all=True)}
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()
        _gone(tool_name, dead, live, done)


@pytest.mark.userspace
def test_every_verb_has_help_for_every_option():
    """Each task's --help: its first line, and a help text for every option."""
    for task in TASKS:
        out = helpers.cli("--help", task)
        assert out.returncode == 0, out.stderr
        options = [ln for ln in out.stdout.splitlines() if ln.strip().startswith("--")]
        assert options, out.stdout
        assert all(len(ln.split(None, 1)) == 2 for ln in options), out.stdout


def test_a_kept_foreground_container_is_exited_and_cleanup_keeps_it():
    """container-run --no-rm in the foreground: once it ends its exit code is recorded, so
    container-ls --all shows it exited (3), a plain cleanup keeps it (and no cgroup of it
    is left), and container-rm removes it. (Native only: the record is the same Python on
    both backends; a foreground run SIGKILLed stays dead and goes: the test above and
    test_records.)"""
    name = _name("nrm")
    try:
        assert run_ct("native", ["sh", "-c", "exit 3"], rm=False, name=name)[0] == 3
        row = next(r for r in lifecycle.rows(all=True) if r["name"] == name)
        assert (row["state"], row["exit_code"], row["pid"]) == ("exited", 3, None), row
        assert name not in {r["name"] for r in lifecycle.rows()}     # not running
        plan = _sweep()
        assert name not in {i.name for i in plan.remove if i.kind == "container"}
        assert any(k.name == name and "exited (3)" in k.why for k in plan.kept), plan.kept
        assert not [i.name for i in plan.remove + plan.kept if i.kind == "cgroup"
                    and name in i.name]
        with Runner(backend="native", keep=True) as run:
            lifecycle.remove(run, ids.resolve(name))
        assert name not in {r["name"] for r in lifecycle.rows(all=True)}
    finally:
        _gone(name)
