"""The tour: every section in the document's order, each observed result right, nothing left."""
from __future__ import annotations

import io
import socket

import pytest

from helpers import cli
from recipes import tour


def test_tour_runs_every_section_in_order(backend):
    out = io.StringIO()
    results = tour.tour(backend=backend, out=out)
    text = out.getvalue()
    titles = [title for _m, _f, title in tour.SECTIONS]
    positions = [text.index(title) for title in titles]
    assert positions == sorted(positions)
    assert results["uts"]["inside"] == "NewNamespace"
    assert results["uts"]["host_after"] == socket.gethostname()
    assert results["ipc"]["inside"] == []
    assert results["net"]["links"] == ["lo"] and results["net"]["lo_up_after"]
    assert results["net.pair_demo"]["ok"] and results["net.pair_demo"]["gone"]
    assert results["user"]["euid"] == 0 and results["user"]["wrote_root_file"] is False
    # the two the document predates, after its six and marked as beyond it
    beyond = [t for _m, _f, t in tour.SECTIONS if "beyond the document" in t]
    assert [t.split()[0] for t in beyond] == ["cgroup", "time"]
    assert titles.index(beyond[0]) == titles.index("user namespace") + 1
    assert results["cgroupns"]["inside"] == "/" and results["cgroupns"]["removed"]
    assert results["timens"]["offsets"] == {"monotonic": 3600, "boottime": 86400}


@pytest.mark.userspace
def test_tour_explain_prints_commands_only():
    import leakcheck
    from nsutil import sysvipc
    before, queues = leakcheck.snapshot(), sysvipc.queue_ids()
    proc = cli("tour", "--explain")
    assert proc.returncode == 0, proc.stderr
    # "only": nothing was made -- no queue, netns, mount, process, state or /tmp entry
    assert sysvipc.queue_ids() == queues
    assert leakcheck.new_since(before, leakcheck.snapshot()) == {}
    for command in ("$ unshare --uts -- sleep infinity", "$ ipcmk -Q", "$ ip netns add",
                    "$ mount -t overlay", "exec unshare --cgroup -- sleep infinity",
                    "$ unshare --time --fork --monotonic 3600 --boottime 86400 -- sleep infinity"):
        assert command in proc.stdout, command
