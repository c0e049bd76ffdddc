"""UTS, IPC and user namespace demos: observable results on both backends, and the CLI."""
from __future__ import annotations

import os
import socket

import pytest

from helpers import as_nobody, cli, one_line_error
from nsutil import sysvipc
from nsutil.backend import Runner
from recipes import ipc
from recipes import user
from recipes import uts


def test_uts_demo_sets_name_inside_only(runner):
    host = socket.gethostname()
    seen = uts.demo(runner, hostname="nsr-NewNamespace")
    assert seen["inside"] == "nsr-NewNamespace"
    assert seen["host_before"] == seen["host_after"] == host == socket.gethostname()


def test_uts_demo_runs_given_command(runner):
    seen = uts.demo(runner, hostname="nsr-x", command=["uname", "-n"])
    assert seen["inside"] == "nsr-x"
    # uname -n prints the same as the default `hostname`: prove the given command is the one
    # that ran, inside the new namespace (its own UTS inode, not the host's)
    other = uts.demo(runner, hostname="nsr-y",
                     command=["sh", "-c", "echo given; readlink /proc/self/ns/uts; uname -n"])
    given, link, name = other["inside"].splitlines()
    assert (given, name) == ("given", "nsr-y") and other["returncode"] == 0
    assert link.startswith("uts:[") and link != os.readlink("/proc/self/ns/uts")


def test_ipc_demo_queue_isolated(runner):
    before = sysvipc.queue_ids()
    seen = ipc.demo(runner)
    qid = seen["qid"]
    assert qid in [q["msqid"] for q in seen["host_before"]]
    assert seen["inside"] == []
    assert qid in [q["msqid"] for q in seen["host_after"]]
    runner.undo()
    assert sysvipc.queue_ids() == before  # the demo removed its queue


def test_ipc_inside_queue_dies_with_namespace(backend):
    with Runner(backend=backend) as run:
        from recipes.common.holder import start_holder
        holder = start_holder(run, "ipc")
        ipc_ino = os.stat(f"/proc/{holder.pid}/ns/ipc").st_ino
        assert ipc_ino != os.stat("/proc/self/ns/ipc").st_ino
        qid = ipc.make_queue_inside(run, holder)
        inside = ipc.list_queues(run, holder, "inside")
        assert [q["msqid"] for q in inside] == [qid]
        key = inside[0]["key"]
        assert key not in {q["key"] for q in sysvipc.list_queues()}  # not on the host
    # the holder is gone, and its IPC namespace with the queue: nothing to remove
    assert key not in {q["key"] for q in sysvipc.list_queues()}
    assert not holder.alive()
    assert not _processes_in_ipc_ns(ipc_ino), "something still holds the IPC namespace"


def _processes_in_ipc_ns(ino: int) -> list[int]:
    """Processes (scanned in /proc, not with our code) in the IPC namespace ``ino``."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}/ns/ipc").st_ino == ino:
                    found.append(int(pid))
            except OSError:
                pass
    return found


def test_user_demo_root_inside_powerless_outside(runner):
    seen = user.demo(runner, uid=1000)
    assert (seen["euid"], seen["egid"]) == (0, 0)
    assert "cap_sys_admin" in seen["caps"] and "cap_setuid" in seen["caps"]
    assert seen["uid_map"] == ["0 1000 1"]
    assert seen["wrote_root_file"] is False


def test_user_demo_maps_another_uid(runner):
    seen = user.demo(runner, uid=4242, gid=4343)
    assert seen["uid_map"] == ["0 4242 1"] and seen["euid"] == 0


def test_both_backends_agree_on_user_demo():
    results = []
    for backend in ("shell", "native"):
        with Runner(backend=backend) as run:
            results.append(user.demo(run, uid=1000))
    assert results[0] == results[1]


@pytest.mark.parametrize("backend", ["shell", "native"])
def test_user_demo_unprivileged(backend):
    proc = as_nobody("user-demo", "--backend", backend)
    assert proc.returncode == 0, proc.stderr
    assert "eUID = 0; eGID = 0" in proc.stdout
    assert "cap_sys_admin" in proc.stdout
    assert "denied" in proc.stdout


def test_user_demo_unprivileged_cannot_map_other_uid():
    line = one_line_error(as_nobody("user-demo", "--uid", "1000"))
    assert "only your own ids" in line


@pytest.mark.userspace
@pytest.mark.parametrize("args, words", [
    (["uts-demo", "--hostname", "x" * 65], "limit is 64"),
    (["uts-demo", "--hostname", "a b"], "whitespace"),
    (["user-demo", "--uid", "abc"], "not a number"),
    (["user-demo", "--uid", "-1"], "out of range"),
    (["user-demo", "--uid", "4294967295"], "out of range"),
    (["ipc-demo", "--backend", "bogus"], "unknown backend"),
])
def test_bad_input_one_line_nothing_created(args, words):
    import leakcheck
    before = leakcheck.snapshot()
    host = socket.gethostname()
    queues = sysvipc.queue_ids()
    proc = cli(*args)
    assert words in one_line_error(proc)
    assert proc.stdout.strip() == ""
    # nothing created: no queue, no namespace, process, mount, state or /tmp entry
    assert sysvipc.queue_ids() == queues and socket.gethostname() == host
    assert leakcheck.new_since(before, leakcheck.snapshot()) == {}


@pytest.mark.userspace
def test_backend_from_environment_is_validated():
    assert "unknown backend" in one_line_error(cli("uts-demo", env={"NSR_BACKEND": "nope"}))


@pytest.mark.userspace
def test_missing_tool_names_package(tmp_path):
    # a PATH without util-linux: the shell backend must say which package to install
    proc = cli("uts-demo", "--backend", "shell", env={"PATH": str(tmp_path)})
    line = one_line_error(proc)
    assert "`unshare` is not installed" in line and "apt-get install util-linux" in line
    assert proc.returncode == 127


@pytest.mark.userspace
def test_uts_cli_output_matches_document():
    proc = cli("uts-demo")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.index("程序开始") < out.index("在子进程中") < out.index("已退出")
    assert "[root@NewNamespace]# hostname\nNewNamespace" in out


@pytest.mark.userspace
def test_explain_changes_nothing():
    before = sysvipc.queue_ids()
    proc = cli("ipc-demo", "--explain")
    assert proc.returncode == 0, proc.stderr
    assert "$ ipcmk -Q" in proc.stdout and "$ nsenter -t $PID" in proc.stdout
    assert "$ ipcrm -q $QID" in proc.stdout
    assert sysvipc.queue_ids() == before


def test_doctor_table():
    proc = cli("doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for word in ("namespace uts", "namespace user", "user.max_user_namespaces",
                 "cgroup layout", "overlayfs", "tool unshare"):
        assert word in proc.stdout
    assert "hybrid" in proc.stdout or "v2" in proc.stdout or "v1" in proc.stdout


def test_doctor_without_root():
    """As a user, not being root is a warning (the tasks run in user namespaces of the
    user's own), naming what needs the host's root; the user namespace row is the one that
    counts (tests/test_rootless_demos.py sees it refused)."""
    proc = as_nobody("doctor")
    lines = proc.stdout.splitlines()
    rows = [i for i, ln in enumerate(lines) if ln.split("  ")[0] == "root"]  # not "root mount"
    assert len(rows) == 1, proc.stdout
    assert lines[rows[0]].split()[:4] == ["root", "warn", "euid", "65534"]
    assert lines[rows[0] + 1].split()[:5] == ["blocks:", "what", "needs", "the", "host's"]
    assert lines[rows[0] + 2].split()[:5] == ["fix:", "run", "as", "root", "(sudo)"]
    userns = [ln for ln in lines if ln.startswith("unprivileged user namespace ")]
    assert len(userns) == 1 and userns[0].split()[3] == "ok", userns
    assert "blocked by root" not in proc.stderr, proc.stderr


@pytest.mark.userspace
def test_every_task_has_help():
    listing = cli("--list")
    names = [ln.split()[0] for ln in listing.stdout.splitlines()[1:] if ln.startswith("  ") and ln.split()]
    assert {"uts-demo", "ipc-demo", "user-demo", "doctor", "tour", "cleanup"} <= set(names)
    import copy
    from cli.collection import ns
    for name, obj in ns.tasks.items():
        assert obj.__doc__, name
        # get_arguments() pops each help text off the task: ask a copy, or a later test
        # (test_lesson_options_where_meaningful) finds none
        params = [p for p in copy.deepcopy(obj).get_arguments() if p.name not in ("c",)]
        for arg in params:
            assert arg.help, f"{name} --{arg.name} has no help"


@pytest.mark.userspace
def test_task_help_works_for_every_task():
    """`invoke TASK --help` shows help -- also for tasks with positional arguments, where
    invoke alone would take --help as the argument's value."""
    listing = cli("--list").stdout
    names = [ln.split()[0] for ln in listing.splitlines()[1:] if ln.startswith("  ") and ln.split()
             and not ln.startswith("   ")]
    assert len(names) > 20
    for name in names:
        proc = cli(name, "--help")
        assert proc.returncode == 0, (name, proc.stderr)
        assert f"inv[oke] [--core-opts] {name} " in proc.stdout, name
    assert not os.path.exists(os.path.join(os.path.dirname(os.path.dirname(__file__)), "--help"))
