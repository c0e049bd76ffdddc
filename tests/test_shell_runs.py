"""The shell backend's process start (nsutil.shell: posix_spawn, output in memory files) and
its commands run side by side (``shell.run_many``, ``Runner.run_together``, a lab's batches
in rounds). Side by side is proved without a clock: a reader of a FIFO and its writer meet
only when both run at once; one at a time, the reader times out."""
from __future__ import annotations

import io
import os
import signal

import pytest

from nsutil import shell
from nsutil.backend import Runner, Step
from nsutil.errors import CommandError, ToolMissing


def _meeting(fifo: str) -> list[tuple[list[str], None]]:
    """A reader that gives up after 3 s, and a writer: both succeed only side by side."""
    os.mkfifo(fifo)
    return [(["timeout", "3", "cat", fifo], None),
            (["timeout", "3", "sh", "-c", f"echo met > {fifo}"], None)]


def test_run_output_status_input_and_signals():
    assert shell.run(["echo", "hi"]) == "hi\n"
    done = shell.run_full(["sh", "-c", "cat; echo oops >&2; exit 3"], input="fed\n")
    assert (done.returncode, done.stdout, done.stderr) == (3, "fed\n", "oops\n")
    assert shell.run_full(["sh", "-c", "kill -TERM $$"]).returncode == 128 + signal.SIGTERM
    assert shell.run(["cat"]) == ""                      # no input: /dev/null, not a hang
    with pytest.raises(CommandError, match="exited 3: oops"):
        shell.run(["sh", "-c", "echo oops >&2; exit 3"])
    with pytest.raises(ToolMissing):
        shell.run(["nsr-no-such-tool"])


def test_run_many_runs_side_by_side_up_to_width(tmp_path):
    pair = _meeting(str(tmp_path / "fifo"))
    assert shell.run_many(pair, width=2) == ["met\n", ""]
    with pytest.raises(CommandError, match="timeout 3 cat"):
        shell.run_many(pair, width=1)                      # one at a time: they never meet


def test_run_many_starts_nothing_after_a_failure(tmp_path):
    mark = tmp_path / "ran"
    with pytest.raises(CommandError, match="`false` exited 1"):
        shell.run_many([(["false"], None), (["touch", str(mark)], None)], width=1)
    assert not mark.exists()
    # in order, whatever order they end in
    assert shell.run_many([(["sh", "-c", "sleep 0.3; echo a"], None), (["echo", "b"], None),
                           (["cat"], "c")]) == ["a\n", "b\n", "c"]


def test_runner_run_together(tmp_path):
    pair = _meeting(str(tmp_path / "fifo"))
    steps = [Step(f"step {i}", argv=argv, native=lambda: "native", parse=str.strip)
             for i, (argv, _input) in enumerate(pair)]
    with Runner(backend="shell", keep=True, out=io.StringIO()) as run:
        assert run.run_together(steps, width=2) == ["met", ""]    # (the default: one per CPU)
        assert run.count == 2
    out = io.StringIO()
    with Runner(backend="shell", explain=True, out=out) as run:
        run.run_together(steps)
    assert ("[1] step 0 -- it and the next 1 run side by side, up to one per CPU (as xargs -P "
            "$(nproc))\n      $ timeout 3 cat") in out.getvalue() and "[2] step 1" in out.getvalue()
    with Runner(backend="native", keep=True, out=io.StringIO()) as run:
        assert run.run_together(steps, width=2) == ["native", "native"]


def test_lab_batches_in_rounds():
    """A star: the hub (which makes every veth), then all hosts side by side; a tree: one
    round per level; a ring (a circle): every namespace's links, then every namespace's set-up."""
    from recipes.labs import batches
    from recipes.labs.shapes import plan_shape
    star = [[ns for ns, _l, _t in r] for r in batches.rounds(plan_shape("star", 3, "t1"))]
    assert star == [["nsr-t1-hub"], ["nsr-t1-h1", "nsr-t1-h2", "nsr-t1-h3"]]
    tree = batches.rounds(plan_shape("tree", scope="t2", depth=2, fanout=2))
    assert [len(r) for r in tree] == [1, 2, 4]
    assert tree[0][0][1][0].startswith("link add name") and "addr add" in tree[2][0][1][-1]
    ring = batches.rounds(plan_shape("ring", 4, "t3"))
    assert [len(r) for r in ring] == [4, 4]
    assert all(line.startswith("link add") for _ns, lines, _t in ring[0] for line in lines)
    assert not any(line.startswith("link add") for _ns, lines, _t in ring[1] for line in lines)
