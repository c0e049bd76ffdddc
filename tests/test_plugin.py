"""The pytest plugin, used as a user would: a test file of its own, run by a separate pytest
process that loads ``recipes.ops.pytest_plugin`` (through the ``pytest11`` entry point when
nsrecipes is installed, else with ``-p``), on both backends. The inner tests record the names
they got; the outer test checks those are gone afterwards, also after a failing inner test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata

import pytest

from helpers import ROOT
from nsutil import netlink as nl

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

USER_TESTS = textwrap.dedent('''
    import json, os, subprocess
    import pytest

    SEEN = os.environ["NSR_SEEN"]

    def note(*names):
        with open(SEEN, "a") as f:
            f.write(json.dumps(list(names)) + "\\n")

    def test_fresh_netns(nsr_netns):
        note(nsr_netns)
        out = subprocess.run(["ip", "-n", nsr_netns, "-o", "link"], capture_output=True,
                             text=True, check=True).stdout
        assert [l.split(":")[1].strip() for l in out.splitlines()] == ["lo"]
        assert "UP" in out

    def test_veth_pair(nsr_veth):
        note(nsr_veth.ns_a, nsr_veth.ns_b)
        assert nsr_veth.check()

    @pytest.mark.nsr_topology(shape="line", hosts=3, links={("h1", "h2"): {"rate": "100mbit"}})
    def test_topology(nsr_topology):
        note(*nsr_topology.plan.all_netns())
        assert nsr_topology.hosts == ["h1", "h2", "h3"]
        assert nsr_topology.check()["ok"] == 3          # routed: h1 reaches h3 through h2
        assert nsr_topology.plan.links[0].impair == {"rate": "100mbit"}
        done = nsr_topology.run("h1", ["getent", "hosts", "h2"])
        assert nsr_topology.addr("h2") in done.stdout

    def test_failing_test_still_cleans_up(nsr_topology):
        note(*nsr_topology.plan.all_netns())
        assert False, "on purpose"
''')


def _plugin_args() -> list[str]:
    installed = any(ep.value == "recipes.ops.pytest_plugin"
                    for ep in metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", "recipes.ops.pytest_plugin"]


@pytest.mark.userspace
def test_entry_point_is_declared():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["entry-points"]["pytest11"]["nsrecipes"] == "recipes.ops.pytest_plugin"


@pytest.mark.parametrize("which", ["native", "shell"])
def test_fixtures_from_a_test_file_of_its_own(tmp_path, which):
    (tmp_path / "test_user_suite.py").write_text(USER_TESTS)
    seen = tmp_path / "seen.jsonl"
    env = dict(os.environ, NSR_SEEN=str(seen), PYTHONPATH=ROOT)
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *_plugin_args(), "--nsr-backend", which, "-o", "addopts=",
                           "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "1 failed, 3 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "on purpose" in proc.stdout
    names = [n for line in seen.read_text().splitlines() for n in json.loads(line)]
    assert len(names) == 1 + 2 + 3 + 4   # netns, veth pair, line of 3, star of 3 + hub
    assert all(n.startswith("nsr-") for n in names)
    present = set(nl.list_netns())
    assert not [n for n in names if n in present]
    assert not [n for n in names if os.path.exists(f"/etc/netns/{n}")]
