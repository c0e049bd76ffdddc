"""PID namespace demo: PID 1 inside, the host's real PID, the tree of nested namespaces."""
from __future__ import annotations

import io
import os
import socket

import pytest

from helpers import cli, one_line_error
from nsutil import process, procfs
from nsutil import syscalls as sc
from nsutil.backend import Runner
from recipes import pid


#: what ps shows inside, by backend: the holder, the `unshare --fork` parent of a nested
#: holder's PID 1, ps itself (the native forms name themselves like the commands they stand for)
COMMS = {"shell": ("sleep", "unshare", "ps"), "native": ("nsr-holder", "nsr-unshare", "nsr-ps")}
#: `sh -c 'hostname NewNamespace; hostname; echo $$; ps ...'`: sh is 1, the hostnames 2 and 3
OWN_PS = {"shell": [(1, "sh"), (4, "ps")], "native": [(1, "nsr-ps")]}


def test_demo_pid1_and_tree(runner, backend):
    holder_comm, unshare_comm, ps_comm = COMMS[backend]
    seen = pid.demo(runner)
    assert seen["host_pid"] == os.getpid()
    # without its own /proc the child is PID 1 but ps still reads the host's /proc: it lists
    # this test's process under its PID here (not just the few of a new namespace)
    assert seen["without_proc"]["self"] == 1
    assert os.getpid() in seen["without_proc"]["pids"]
    assert seen["without_proc"]["visible"] == len(seen["without_proc"]["pids"]) > 1
    # with /proc mounted in a new mount namespace: echo $$ -> 1, ps lists only its own
    own = seen["with_proc"]
    assert own["self"] == 1
    assert own["ps"] == OWN_PS[backend]                     # its own processes, nothing else
    assert own["hostname"] == seen["without_proc"]["hostname"] == "NewNamespace"
    assert socket.gethostname() != "NewNamespace"
    # the holder: PID 1 inside, its real PID on the host
    holder = seen["holder"]
    assert holder["nspid"] == [holder["host_pid"], 1] and holder["host_pid"] > 1
    # nested: three levels; the child namespace sees the grandchild, not the other way
    nested = seen["nested"]
    host_pid, mid_pid, inner_pid = nested["nspid"]
    assert host_pid == nested["host_pid"] and inner_pid == 1 and mid_pid > 1
    # the child namespace sees exactly its holder, the nested holder's parent, the nested
    # holder (the grandchild's PID 1) and its own ps; the grandchild only itself and its ps
    assert mid_pid == 3
    assert nested["outer_ps"] == [(1, holder_comm), (2, unshare_comm), (3, holder_comm),
                                  (4, ps_comm)]
    assert nested["inner_ps"] == [(1, holder_comm), (2, ps_comm)]
    # the holders are gone afterwards
    assert not procfs.pid_alive(holder["host_pid"]) and not procfs.pid_alive(host_pid)


def test_both_backends_see_the_same_shape():
    shapes = []
    for backend in ("shell", "native"):
        with Runner(backend=backend, out=io.StringIO()) as run:
            seen = pid.demo(run)
        shapes.append((seen["without_proc"]["self"], seen["with_proc"]["self"],
                       len(seen["holder"]["nspid"]), len(seen["nested"]["nspid"]),
                       seen["nested"]["nspid"][1], len(seen["nested"]["inner_ps"]),
                       len(seen["nested"]["outer_ps"])))
    assert shapes[0] == shapes[1] == (1, 1, 2, 3, 3, 2, 4)


def test_ps_without_its_own_proc_inside_a_container(backend):
    """Inside a container (a PID namespace with a /proc of its own, where few PIDs exist), the
    child without its own /proc runs ps too: it lists the container's processes, this
    container's PID 1 among them. procps looks itself up under its own PID in the /proc it
    reads: ps as the child's 4th process found no /proc/4 there ("fatal library error,
    lookup self")."""
    def in_container() -> dict:
        sc.make_propagation("/", "private", recursive=True)
        sc.mount("proc", "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        for _ in range(16):            # a container that has run a while: its low PIDs are free
            process.fork_call(lambda: None)
        with Runner(backend=backend, out=io.StringIO()) as run:
            return pid.first_process(run, mount_proc=False)

    seen = process.spawn(in_container, sc.CLONE_NEWPID | sc.CLONE_NEWNS)
    assert seen["self"] == 1 and seen["hostname"] == "NewNamespace"
    pids = [p for p, _ in seen["ps"]]
    assert 1 in pids and max(pids) < 80         # the container's own, not this host's


@pytest.mark.userspace
def test_explain_changes_nothing():
    out = io.StringIO()
    with Runner(explain=True, out=out) as run:
        pid.demo(run)
    text = out.getvalue()
    assert ("$ unshare --uts --pid --fork --mount --mount-proc -- "
            "sh -c 'hostname NewNamespace; hostname; echo $$; ps -e -o pid=,comm='") in text
    assert ("$ unshare --uts --pid --fork -- "
            "sh -c 'hostname NewNamespace; hostname; echo $$; exec ps -e -o pid=,comm='") in text
    assert "nsenter -t $PID --pid --mount -- unshare --pid --mount --fork --mount-proc" in text
    assert "grep NSpid /proc/$PID2/status" in text
    assert "[undo] stop the nested holder" in text
    assert not procfs.children_of(os.getpid())  # nothing was started


@pytest.mark.parametrize("opts", [(), ("--backend", "shell"), ("--backend", "native")],
                         ids=["literal", "shell", "native"])
def test_cli_runs_and_prints_the_document(opts):
    """`invoke pid-demo` as the README prints it (auto), and on each backend."""
    proc = cli("pid-demo", *opts, env={"NSR_BACKEND": ""})
    assert proc.returncode == 0, proc.stderr
    assert "# echo $$\n1    <- PID 1" in proc.stdout
    assert "NSpid:" in proc.stdout and "grandchild" in proc.stdout
    assert proc.stderr == ""


@pytest.mark.userspace
def test_cli_explain_and_bad_backend():
    proc = cli("pid-demo", "--explain")
    assert proc.returncode == 0, proc.stderr
    assert "$ unshare --pid" in proc.stdout and "[undo]" in proc.stdout
    line = one_line_error(cli("pid-demo", "--backend", "bogus"))
    assert "bogus" in line
