"""The four ways to use the namespace API: clone, /proc/PID/ns, setns, unshare."""
from __future__ import annotations

import glob
import io
import os
import socket

import pytest

from helpers import cli, one_line_error
from nsutil import procfs
from nsutil.backend import Runner
from nsutil.nstypes import ns_inode, ns_link
from recipes import api


def _our_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if "/tmp/nsr-api-" in ln]


def test_demo_four_ways(runner):
    host_uts = ns_link("self", "uts")
    before = set(glob.glob("/tmp/nsr-api-*"))
    seen = api.demo(runner, hostname="nsr-api-test")
    assert seen["host"]["uts"] == host_uts
    # 1. clone(): new UTS and IPC namespaces, the others shared with the host
    clone = seen["clone"]
    assert clone["new"] == ["ipc", "uts"]
    assert clone["same"] == ["user", "cgroup", "net", "pid", "mnt", "time"]  # all eight listed
    assert clone["links"]["uts"].startswith("uts:[") and clone["links"]["uts"] != host_uts
    # 2. /proc/PID/ns: the holder differs from us only in uts
    proc_ns = seen["proc_ns"]
    assert proc_ns["different"] == ["uts"]
    holder_uts = proc_ns["links"]["uts"]
    # 3. setns(): joined by pid and, after the holder exited, by the bind-mounted file
    setns = seen["setns"]
    assert setns["by_pid"] == {"hostname": "nsr-api-test", "link": holder_uts}
    assert setns["holder_alive"] is False and not procfs.pid_alive(proc_ns["holder_pid"])
    assert setns["kept_inode"] == api.inode_of(holder_uts)
    assert setns["by_file"] == {"hostname": "nsr-api-test", "link": holder_uts}
    # 4. unshare(): a new namespace for the calling (forked) process; we stay where we were
    assert seen["unshare"]["after"].startswith("uts:[")
    assert seen["unshare"]["after"] not in (host_uts, holder_uts)
    assert seen["unshare"]["tool_after"] == host_uts == ns_link("self", "uts")
    assert socket.gethostname() != "nsr-api-test"
    # nothing left: the bind mount (and with it the namespace) and the directory are gone
    assert _our_mounts() == [] and set(glob.glob("/tmp/nsr-api-*")) == before


def test_links_match_inodes_and_lsns():
    """What the demo parses from `readlink` is what stat() and lsns say."""
    from nsutil import shell
    with Runner(backend="shell", out=io.StringIO()) as run:
        links = api.read_links(run, os.getpid(), "us")
    for t, link in links.items():
        assert api.inode_of(link) == ns_inode("self", t)
    lsns = shell.run(["lsns", "-n", "-o", "NS", "-t", "uts", "-p", str(os.getpid())])
    assert int(lsns.strip()) == api.inode_of(links["uts"])


def test_kept_namespace_outlives_its_process(backend):
    with Runner(backend=backend, out=io.StringIO()) as run:
        holder = api.start_holder(run, "uts")
        inode = ns_inode(holder.pid, "uts")
        where = api.make_dir(run)
        target = os.path.join(where, "uts")
        api.keep_namespace(run, holder.pid, "uts", target)
        api.stop_holder(run, holder)
        assert not holder.alive()
        assert api.file_inode(run, target) == inode == os.stat(target).st_ino
        assert api.join_by_file(run, target)["link"] == f"uts:[{inode}]"
    assert not os.path.exists(where) and _our_mounts() == []


@pytest.mark.userspace
def test_explain_changes_nothing():
    before = set(glob.glob("/tmp/nsr-api-*"))
    out = io.StringIO()
    with Runner(explain=True, out=out) as run:
        api.demo(run)
    text = out.getvalue()
    for line in ("$ unshare --ipc --uts --fork -- readlink /proc/self/ns/user",
                 "$ mount --bind /proc/$PID/ns/uts $DIR/uts",
                 "$ nsenter --uts=$DIR/uts -- sh -c 'hostname; readlink /proc/self/ns/uts'",
                 "$ unshare --uts -- readlink /proc/self/ns/uts", "[undo] unmount $DIR/uts"):
        assert line in text, line
    assert set(glob.glob("/tmp/nsr-api-*")) == before and _our_mounts() == []
    assert not procfs.children_of(os.getpid())


@pytest.mark.userspace
def test_cli():
    proc = cli("api-demo", "--backend", "shell")
    assert proc.returncode == 0, proc.stderr
    assert "NewNamespace" in proc.stdout and "kept alive by the bind mount" in proc.stdout
    assert proc.stderr == ""
    explain = cli("api-demo", "--explain")
    assert explain.returncode == 0 and "setns(" in explain.stdout
    assert "bogus" in one_line_error(cli("api-demo", "--backend", "bogus"))
    assert "65 bytes" in one_line_error(cli("api-demo", "--hostname", "x" * 65))
