"""How a container starts, for real: the tool's own PID namespace is its own again after a
start, PID 1 is the tool's child as root, the command starts with default signals and an
empty mask whichever way it is started (posix_spawn, or a fork for ``--user``), and the
timeline (:mod:`nsutil.timeline`) holds the marks of every process of the start.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from containerkit import ours, rootfs_dir, run_ct  # noqa: F401 (rootfs_dir: fixture)
from nsutil import timeline
from nsutil.backend import Runner
from recipes import container
from recipes.container import run as ctrun


def _child_pid_ns() -> int:
    """The PID namespace a child of this process lands in (its /proc/self/ns/pid inode)."""
    out = subprocess.run(["readlink", "/proc/self/ns/pid"], capture_output=True, text=True,
                         check=True).stdout
    return int(out.strip().split("[")[1].rstrip("]"))


def test_children_of_the_tool_stay_in_its_pid_namespace_after_a_start(backend):
    """The start unshares a PID namespace for the tool's next child only: a process the tool
    starts afterwards (and one after a failed start) is in the tool's own."""
    own = os.stat("/proc/self/ns/pid").st_ino
    assert run_ct(backend, ["true"])[0] == 0
    assert _child_pid_ns() == own
    with pytest.raises(container.ContainerTimeout):
        run_ct(backend, ["sleep", "5"], timeout=0.3)
    assert _child_pid_ns() == own


def test_a_tool_that_is_pid_1_itself_starts_one_container_after_another():
    """The tool may be PID 1 of a container of its own (`docker run IMAGE nsr ...` without
    --init): after each start its next child is in its own PID namespace again, so a second
    start and a plain fork work (a check on getpid() != 1 once took the tool for PID 1 of
    the new namespace and left unshare(CLONE_NEWPID) in force: EINVAL on the next start)."""
    script = ("import os\n"
              "from nsutil.backend import Runner\n"
              "from recipes.container import run_container\n"
              "assert os.getpid() == 1\n"
              "for _ in range(3):\n"
              "    with Runner(backend='native', out=open(os.devnull, 'w')) as run:\n"
              "        assert run_container(run, ['true']) == 0\n"
              "pid = os.fork()\n"
              "if pid == 0:\n"
              "    os._exit(0)\n"
              "os.waitpid(pid, 0)\n"
              "print('ok', pid)\n")
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
                           script], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0 and done.stdout.startswith("ok "), done.stderr[-800:]


def test_pid1_is_the_tools_child_and_the_pid_namespace_is_new(backend):
    """As root PID 1 is forked by the tool itself: the record's two PIDs are one process,
    whose PID namespace is not the tool's, and whose parent is the tool."""
    before = ours()
    with Runner(backend=backend) as run, open(os.devnull, "w") as null:
        spec, fs = container.prepare(run, ["sleep", "5"])
        ct = container.launch(run, spec, fs, (None, null.fileno(), None))
        try:
            assert ctrun.ready(ct)      # the command runs: PID 1 unshared the rest before
            assert ct.pid == ct.pid1
            with open(f"/proc/{ct.pid}/stat") as f:
                assert int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
            assert os.stat(f"/proc/{ct.pid}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
            assert os.stat(f"/proc/{ct.pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
        finally:
            run.undo()
    assert ours() == before


@pytest.mark.parametrize("user", [None, "1000"])
def test_the_command_starts_with_default_signals_and_an_empty_mask(user):
    """posix_spawn (no --user) and the fork (--user 1000) both give the command what a shell
    would: no standard signal ignored (Python ignores SIGPIPE and SIGXFSZ), nothing blocked
    (PID 1 blocks what it waits for). Signals 32 and 33, glibc's own, are left ignored by
    glibc's posix_spawn in whatever it starts (a glibc program installs its handlers for
    them as it starts; Python cannot name them to reset), so only 1-31 are checked."""
    kw = {"user": user} if user else {}
    code, out, _err = run_ct("native", ["cat", "/proc/self/status"], **kw)
    assert code == 0
    fields = dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)
    assert int(fields["SigIgn"], 16) & 0x7FFFFFFF == 0     # bit N-1: signal N
    assert int(fields["SigBlk"], 16) == 0
    assert fields["Uid"].split()[0] == (user or "0")


def _traced(tmp_path, **kw) -> list[timeline.Mark]:
    path = str(tmp_path / "timeline")
    timeline.enable(path)
    try:
        assert run_ct("native", ["true"], **kw)[0] == 0
    finally:
        timeline.disable()
    return timeline.read(path)


def test_the_timeline_holds_the_marks_of_the_tool_pid1_and_the_command(tmp_path):
    """One file, every process: the tool's steps, PID 1's steps (its own pid is 1 there),
    in the order they happened; without --user the command is spawned (no forked child
    of PID 1 runs Python), with --user it is forked."""
    marks = _traced(tmp_path)
    labels = [m.label for m in marks]
    pids = {m.label: m.pid for m in marks}
    assert pids["run_container"] == os.getpid()
    assert pids["PID 1: forked"] == 1
    assert pids["> make / rslave: host mounts still reach us, ours never reach the host"] == 1
    assert labels.index("fork PID 1") < labels.index("PID 1: forked") < \
        labels.index("PID 1: the command was reaped") < labels.index("the tool reaped its child")
    assert "the command's process: forked" not in labels
    assert [m.ns for m in marks] == sorted(m.ns for m in marks)
    forked = [m.label for m in _traced(tmp_path, user="1000")]
    assert "the command's process: forked" in forked


def test_timeline_off_writes_nothing(tmp_path):
    """Off (the default) a mark is a no-op; disable() stops the marks."""
    path = str(tmp_path / "t")
    timeline.mark("nothing")
    timeline.enable(path)
    timeline.mark("one")
    timeline.disable()
    timeline.mark("two")
    assert [m.label for m in timeline.read(path)] == ["one"]
    assert not timeline.on()


def test_spawn_falls_back_to_the_fork_where_the_exec_fails():
    """A command found in the rootfs that cannot be executed still gives 126 and its one
    line (posix_spawn's failure hands over to the fork path, which says why)."""
    with pytest.raises(container.CommandNotExecutable):
        run_ct("native", ["/etc/passwd"])
    assert ctrun.RESET    # the signals both paths reset
