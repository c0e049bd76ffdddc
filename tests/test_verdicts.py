"""What ``cleanup`` judges complete, and so keeps, of what net-veth and net-topo built: a
pair or a topology from which one thing was taken -- an address, ``lo`` up, the veth -- is
broken and goes; a whole one beside it stays.

Built through the real CLI (its tool exits, as a user's does) in a state directory of the
test's own, broken with ``ip``, judged by :func:`recipes.ops.cleanup.sweep`; nothing is mocked.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

import pytest

from helpers import ROOT
from recipes.ops import cleanup
from recipes import net

PY = sys.executable


@pytest.fixture
def state(tmp_path, monkeypatch):
    """A state directory of the test's own (in this process and the ones it starts)."""
    base = str(tmp_path / "state")
    monkeypatch.setenv("NSR_STATE_DIR", base)
    return base


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=60)


def _cli_ok(*args: str) -> None:
    done = subprocess.run([os.path.join(os.path.dirname(PY), "invoke"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def _net_verdicts(names: set[str]) -> tuple[dict[str, str], set[str]]:
    """What ``cleanup`` says of the pairs and topologies among ``names`` (the record's pair
    or scope): ({name: why kept}, {netns it would remove})."""
    plan = cleanup.sweep()
    kept = {k.name: k.why for k in plan.kept if k.name in names}
    gone = {i.name for i in plan.remove if i.kind == "netns"}
    return kept, gone


def _break(how: str, ns: str) -> None:
    """Take one thing from a namespace a build made: an address, lo, or its veth."""
    from nsutil import netlink as nl
    links = [ln for ln in nl.links(ns) if ln["name"] != "lo"]
    if how == "address":
        ln = next(ln for ln in links if ln["addrs"])
        _ip("-n", ns, "addr", "del", ln["addrs"][0], "dev", ln["name"])
    elif how == "lo down":
        _ip("-n", ns, "link", "set", "lo", "down")
    else:
        _ip("-n", ns, "link", "del", links[0]["name"])


@pytest.mark.parametrize("how", ["address", "lo down", "link"])
def test_cleanup_keeps_only_what_is_complete(state, how):
    """A net-veth pair and a topology built by the CLI (their tools have exited), then one
    thing taken from one namespace of each -- an address, the veth, or (of the topology)
    ``lo`` up: cleanup now judges them broken and removes every namespace of theirs; a
    whole pair and a whole topology beside them it keeps, saying they are complete."""
    s = secrets.token_hex(2)
    pairs = {tag: (f"nsr{s}{tag}a", f"nsr{s}{tag}b") for tag in "wx"}
    scopes = {tag: f"{tag}{s[:3]}" for tag in "yz"}
    made: list[str] = []
    try:
        for i, (tag, (a, b)) in enumerate(pairs.items()):
            made += [a, b]
            _cli_ok("net-veth", "--name", a, "--peer", b, "--addr", f"10.23{i}.0.1/24",
                    "--peer-addr", f"10.23{i}.0.2/24")
        for tag, scope in scopes.items():
            made += [f"nsr-{scope}-h{i}" for i in (1, 2, 3)]
            _cli_ok("net-topo", "--shape", "line", "--hosts", "3", "--scope", scope)
        records = os.path.join(state, "net")
        for path in (os.path.join(records, f) for f in os.listdir(records)):
            os.utime(path, (time.time() - 3600,) * 2)   # from long ago: no grace
        names = {f"{a}<->{b}" for a, b in pairs.values()} | set(scopes.values())
        kept, gone = _net_verdicts(names)
        assert kept == {f"{pairs['w'][0]}<->{pairs['w'][1]}": "complete",
                        f"{pairs['x'][0]}<->{pairs['x'][1]}": "complete",
                        scopes["y"]: "complete (3 namespaces)",
                        scopes["z"]: "complete (3 namespaces)"}, kept
        assert not gone & set(made)
        broken = {f"nsr-{scopes['z']}-h{i}" for i in (1, 2, 3)}
        _break(how, f"nsr-{scopes['z']}-h3")
        if how != "lo down":              # a pair is its namespaces, the veth, the addresses
            _break(how, pairs["x"][1])
            broken |= set(pairs["x"])
        kept, gone = _net_verdicts(names)
        assert set(kept) == {f"{a}<->{b}" for a, b in pairs.values() if a not in broken} | {
            scopes["y"]}, kept
        assert gone & set(made) == broken
        items = [i for i in cleanup.find() if i.name in broken
                 or any(i.name.endswith(f) for f in (f"veth-{pairs['x'][0]}.json",
                                                      f"topo-{scopes['z']}.json"))]
        removed, failed = cleanup.remove_all(items=items)
        assert not failed, failed
        assert not [n for n in broken if os.path.exists(f"/run/netns/{n}")]
        assert all(os.path.exists(f"/run/netns/{n}") for n in set(made) - broken)
    finally:
        for item in net.leftovers():
            if any(n in item.name for n in made) or any(
                    f"-{scope}" in item.name for scope in scopes.values()):
                item.remove()
