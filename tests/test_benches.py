"""The bench scripts still run and print the table docs/speed.md shows. Their figures are
judged by people reading bench output, never here (no timed tests): this only checks that
the table is whole, for the bench that is quick enough to run in the suite."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import ROOT

STATES = ("bare", "threading", "nsrecipes")                  # the rows docs/speed.md shows
WAYS = ("os.fork", "ctypes fork", "ctypes clone VM|VFORK")


@pytest.mark.userspace   # forks and reaps its own children: no kernel object stays
def test_fork_cost_prints_every_state_and_way():
    """bench/fork_cost.py with 3 children per way: one row per interpreter state and way, each
    with two times and a page-fault count; the clone(CLONE_VM) child copies nothing, so it
    faults less than the os.fork child of the same interpreter (the point of the table)."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "fork_cost.py"),
                           "--runs", "3", "--rounds", "1"], capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["interpreter", "way", "child", "runs", "reaped", "faults"]
    assert lines[-1].startswith("load average")
    rows = {}
    for line in lines[1:-1]:
        state, rest = line.split(None, 1)
        way, runs, ms1, reaped, ms2, faults = rest.rsplit(None, 5)
        assert ms1 == ms2 == "ms" and float(runs) > 0 and float(reaped) > 0, line
        rows[state, way] = int(faults)
    assert sorted(rows) == sorted((s, w) for s in STATES for w in WAYS)
    for state in STATES:
        assert rows[state, "ctypes clone VM|VFORK"] < rows[state, "os.fork"], rows
