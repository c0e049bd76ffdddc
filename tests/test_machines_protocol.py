"""The commit protocol between machines, seen from each side.

The agent (``python -m recipes.ops.agent``, what Fabric runs on every machine) is run here as a
real process, fed on stdin what the controller would send and read line by line as the
controller reads it: it refuses another version before reading anything, builds its part
and waits, commits only on ``commit``, undoes on anything else or on the end of its
input; and ``cleanup`` judges a part nobody committed orphaned, complete or not. Only the
SSH transport is left out (its lines are the agent's stdin and stdout); the controller's
side is tested through real SSH sessions to simulated machines (:mod:`tests.machines`).
Real namespaces on the real kernel, with a state directory of the test's own.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from nsutil import netlink as nl
from nsutil.names import scope_id
from nsutil import state
from recipes.ops import cleanup
from recipes.labs.machines import controller as machines
from recipes import net
from recipes.ops import agent as remote
from recipes.labs import labfile as topofile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

LAB = """[machines.m1]
ssh = "root@10.250.0.11"
underlay = "10.250.0.11"
[hosts.h1]
[hosts.h2]
router = true
[hosts.h3]
[[links]]
a = "h1"
b = "h2"
[[links]]
a = "h2"
b = "h3"
"""


@pytest.fixture
def part(tmp_path, monkeypatch):
    """Machine m1's part of a three-host lab (JSON, what the controller sends it), and its
    plan; the test's own state directory; whatever of it is left is removed at the end."""
    monkeypatch.setenv("NSR_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "lab.toml"
    path.write_text(LAB)
    plan = topofile.plan_file(str(path), scope_id())
    yield json.dumps(machines.parts(plan)["m1"]), plan
    for item in cleanup.candidates():
        if f"-{plan.scope}-" in item.name or f"topo-{plan.scope}" in item.name:
            item.remove()


class Agent:
    """``python -m recipes.ops.agent ARGS`` with pipes, read one JSON line at a time."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([PY, "-m", "recipes.ops.agent", *args], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT})
        self._buf = b""

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def close(self) -> None:
        """End its stdin (what a closed SSH session does)."""
        self.proc.stdin.close()

    def line(self, timeout: float = 300) -> dict | None:
        """Its next JSON line (None once its stdout ends)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no line from the agent in {timeout} s"
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buf += chunk
        text, self._buf = self._buf.split(b"\n", 1)
        return json.loads(text)

    def wait(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


def _present(plan) -> list[str]:
    return sorted(ns for ns in nl.list_netns() if ns.startswith(f"nsr-{plan.scope}-"))


def _record(plan) -> dict | None:
    """The machine's record of its part (``net/topo-SCOPE.json``), None when there is none."""
    return state.read_json(net.record_path(plan.scope, "topo"))


def _verdict(plan) -> tuple[str | None, bool]:
    """What ``cleanup`` (not --all) says of the part: (why it keeps it or None, whether it
    would remove its namespaces)."""
    sweep = cleanup.sweep()
    why = next((k.why for k in sweep.kept if k.kind == "topology" and k.name == plan.scope), None)
    gone = any(i.kind == "netns" and i.name.startswith(f"nsr-{plan.scope}-") for i in sweep.remove)
    return why, gone


def test_the_agent_refuses_another_version_before_reading_anything(part):
    """``--expect`` another version: the agent says its own and exits 3 without reading its
    input -- the part and a ``commit`` sent anyway build nothing, record nothing."""
    text, plan = part
    for command in (["build", "--backend", "native"], ["env-create", f"nsr-{plan.scope}-e"]):
        agent = Agent(command[0], "--expect", "0.0.0+other", *command[1:])
        agent.send(text + "\ncommit\n")
        agent.close()
        assert agent.line() == {"version": remote.version()}
        assert agent.line() is None
        assert agent.wait() == 3
        assert _present(plan) == [] and _record(plan) is None
        assert not os.path.exists(os.path.join(os.environ["NSR_STATE_DIR"],
                                               f"nsr-{plan.scope}-e"))


@pytest.mark.parametrize("answer", ["", "abort\n", "commit please\n", "Commit\n"])
def test_a_part_is_undone_unless_the_answer_is_commit(part, backend, answer):
    """Built and waiting, the part is all there, recorded as not committed, and ``cleanup``
    keeps it while its builder runs; then any answer but ``commit`` -- or none, the session
    ending -- undoes it: ``{"undone": true}``, exit 2, no namespace, no record."""
    text, plan = part
    agent = Agent("build", "--expect", remote.version(), "--backend", backend)
    try:
        assert agent.line() == {"version": remote.version()}
        agent.send(text + "\n")
        assert "built" in agent.line(), agent.proc.stderr
        assert _present(plan) == sorted(plan.all_netns())
        assert cleanup.topology_complete(plan)
        rec = _record(plan)
        assert rec is not None and not rec.get("committed")
        assert _verdict(plan) == (f"being built by pid {agent.proc.pid} runs", False)
        agent.send(answer)
        agent.close()
        assert agent.line() == {"undone": True}
        assert agent.wait() == 2
    finally:
        agent.kill()
    assert _present(plan) == [] and _record(plan) is None


def test_commit_makes_the_part_stay_and_down_takes_it(part, backend):
    """``commit``: ``{"committed": true}``, exit 0, the record says committed, and
    ``cleanup`` keeps the part once its builder is gone (complete and committed);
    ``down --scope`` then takes all of it."""
    text, plan = part
    agent = Agent("build", "--expect", remote.version(), "--backend", backend)
    try:
        agent.line()
        agent.send(text + "\n")
        assert "built" in agent.line()
        agent.send("commit\n")
        assert agent.line() == {"committed": True}
        agent.close()
        assert agent.wait() == 0
    finally:
        agent.kill()
    assert _record(plan)["committed"] is True
    assert _present(plan) == sorted(plan.all_netns())
    assert _verdict(plan) == (f"complete ({len(plan.all_netns())} namespaces)", False)
    down = Agent("down", "--scope", plan.scope, "--backend", backend, "--expect", remote.version())
    down.close()
    assert down.line() == {"version": remote.version()}
    assert down.line()["left"] == []
    assert down.wait() == 0
    assert _present(plan) == [] and _record(plan) is None


def test_a_builder_killed_before_commit_leaves_a_part_cleanup_removes(part):
    """The builder is SIGKILLed after ``built`` (its controller never said ``commit``): its
    part is complete, but nobody committed it -- ``cleanup`` judges it orphaned and removes
    every namespace and the record (a complete part is kept only once committed)."""
    text, plan = part
    agent = Agent("build", "--expect", remote.version(), "--backend", "native")
    try:
        agent.line()
        agent.send(text + "\n")
        assert "built" in agent.line()
        os.kill(agent.proc.pid, signal.SIGKILL)
    finally:
        agent.kill()
    assert cleanup.topology_complete(plan) and not _record(plan).get("committed")
    assert _verdict(plan) == (None, True)
    items = [i for i in cleanup.find() if f"-{plan.scope}-" in i.name
             or f"topo-{plan.scope}" in i.name]
    removed, failed = cleanup.remove_all(items=items)
    assert not failed, failed
    assert _present(plan) == [] and _record(plan) is None


# --- the controller's side, over real SSH ---------------------------------------------------

def test_a_machine_failing_its_build_means_no_machine_commits(tmp_path):
    """m2's build fails half-way (one of its names is taken there): m1 has built its part,
    is never told ``commit`` and undoes it itself. The error is m2's own, in one line -- not
    "committed parts were taken down", which would mean m1 had committed a part that a
    failed build then had to take down from afar."""
    from machines import cluster
    with cluster(2, tmp_path) as c:
        path = tmp_path / "lab.toml"
        path.write_text(c.toml() + '[hosts.h1]\n[hosts.h2]\nmachine = "m2"\n'
                        '[[links]]\na = "h1"\nb = "h2"\n')
        scope = "q" + scope_id()[:3]
        c.exec("m2", ["ip", "netns", "add", f"nsr-{scope}-h2"])
        try:
            done = c.invoke("net-topo", "--file", str(path), "--scope", scope)
        finally:
            c.exec("m2", ["ip", "netns", "del", f"nsr-{scope}-h2"])
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1, done.stdout + done.stderr
        assert lines[0].startswith("nsrecipes: machine m2 (root@10.250.0.12): "), lines[0]
        assert "committed" not in lines[0], lines[0]
        for name in c.names:
            assert c.netns(name) == [] and c.state(name) == [], name
        with c.controller():
            assert machines.recorded(scope) == []


def _venv_of_another_version(directory) -> str:
    """A venv whose installed nsrecipes says it is 0.0.1 (a ``dist-info`` with that version)
    while its code is this checkout's (a .pth): what a machine not yet upgraded runs."""
    venv = directory / "nsr-old-venv"
    subprocess.run([PY, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True, timeout=600)
    site = next((venv / "lib").glob("python3*/site-packages"))
    dist = site / "nsrecipes-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nsrecipes\nVersion: 0.0.1\n")
    main_site = next(p for p in sys.path if p.endswith("site-packages") and sys.prefix in p)
    (site / "nsr-main.pth").write_text(ROOT + "\n" + main_site + "\n")
    return str(venv)


def test_a_machine_of_another_version_makes_nothing_for_an_env_command(tmp_path):
    """``env-create --machine m1`` where m1 runs another nsrecipes version: the controller
    passes ``--expect`` its own version and the agent there refuses before doing anything --
    one line naming the machine and both versions, and no environment on m1 (the controller
    reads the version only once the command has ended: the agent's refusal is what keeps
    an old agent from acting)."""
    from machines import cluster
    with cluster(1, tmp_path) as c:
        path = tmp_path / "lab.toml"
        path.write_text(c.toml({"m1": _venv_of_another_version(tmp_path)}) + "[hosts.h1]\n")
        done = c.invoke("env-create", "nsr-mvenv", "--machine", "m1", "--file", str(path))
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1, done.stdout + done.stderr
        assert lines[0].startswith("nsrecipes: machine m1 (root@10.250.0.11): nsrecipes 0.0.1 "
                                   "is installed there"), lines[0]
        assert c.state("m1") == [], "the agent of another version made the environment"
