"""Copy-on-write with real overlay mounts (in scratch directories under /tmp/nsr-cow-*).

Checks the semantics the document's "写时复制" promises: reads see the top layer, a write
copies up into upper and leaves the lower unchanged, a delete leaves a whiteout (char
device 0/0), two containers share the lower layers, and sharing saves the disk two copies
would use. Both backends (``mount``/``umount``/``rm``/``du`` commands vs syscalls).
"""
from __future__ import annotations

import os

import pytest

from nsutil.backend import Runner
from nsutil.errors import InvalidInput
from recipes import cow


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("overlay mounts need root")


def _ours() -> tuple[set[str], set[str]]:
    with open("/proc/self/mountinfo") as f:
        mounts = {ln.split()[4] for ln in f if "/nsr-cow-" in ln}
    dirs = {n for n in os.listdir("/tmp") if n.startswith("nsr-cow-")}
    return mounts, dirs


def test_overlay_semantics_and_disk(runner):
    before = _ours()
    got = cow.demo(runner, size_mb=2)
    assert got["top_lower"] == "NAME=app-layer\n"          # first lower wins
    w = got["write"]
    assert w["merged"] == w["upper"] == "container-1\n"      # copied up, changed there
    assert w["lower"] == "base\n"                             # lower unchanged
    assert w["new_in_upper"] == "made in container 1\n" and not w["new_in_lower"]
    d = got["delete"]
    assert d["whiteout"] and d["rdev"] == "0/0" and d["mode"].startswith("c")
    assert not d["merged_has"] and d["lower_has"]
    assert got["other_container"] == "welcome from the base layer\n"  # c2 unaffected
    disk = got["disk"]
    assert disk["uppers"] < 256 << 10                       # the containers' own writes
    assert disk["shared"] < (2 << 20) + (1 << 20)
    assert disk["copies"] > 1.8 * disk["shared"], disk       # two copies: about twice
    assert _ours() == before                                  # unmounted, removed


def test_both_backends_measure_the_same_disk(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    (d / "a").write_bytes(b"x" * 10000)
    os.link(d / "a", d / "hard")
    (d / "s").symlink_to("a")
    with Runner(backend="shell") as sh, Runner(backend="native") as nat:
        assert cow.du_step(sh, str(d)) == cow.du_step(nat, str(d)) > 0
        size = cow.du_step(nat, str(d))
    # and what they agree on is right: the 10000-byte file once (the hard link is not a
    # second copy), the symlink nearly nothing -- as stat's block counts say
    blocks = (os.stat(d).st_blocks + os.stat(d / "a").st_blocks
              + os.lstat(d / "s").st_blocks) * 512
    assert size == blocks and 10000 <= size < 2 * os.stat(d / "a").st_blocks * 512


def test_bad_overlay_paths_are_refused_before_mounting(runner):
    before = _ours()
    with pytest.raises(InvalidInput):
        cow.mount_overlay(runner, ["/tmp/nsr-cow-x,upperdir=/etc"], "/tmp/u", "/tmp/w", "/tmp/m")
    with pytest.raises(InvalidInput):
        cow.mount_overlay(runner, [], "/tmp/u", "/tmp/w", "/tmp/m")
    with pytest.raises(InvalidInput):
        cow.demo(runner, size_mb=0)
    assert _ours() == before


def test_explain_changes_nothing(capsys):
    before = _ours()
    with Runner(backend="native", explain=True) as run:
        cow.demo(run)
    out = capsys.readouterr().out
    assert "mount -t overlay overlay -o lowerdir=" in out and "umount" in out
    assert "du -s -c -B1" in out
    assert _ours() == before


def test_leftovers_unmount_and_remove(backend):
    """A run that kept its overlay (as a killed run would) is found and removed."""
    base = f"/tmp/nsr-cow-t{os.getpid() % 10000}"
    with Runner(backend=backend, keep=True) as run:
        cow.make_dir(run, base)
        for sub in ("lower", "upper", "work", "merged"):
            cow.make_dir(run, f"{base}/{sub}", undo=False)
        cow.mount_overlay(run, [f"{base}/lower"], f"{base}/upper", f"{base}/work", f"{base}/merged")
    try:
        assert os.path.ismount(f"{base}/merged")
        found = [i for i in cow.leftovers() if i.name.startswith(base)]
        kinds = sorted(i.kind for i in found)
        assert kinds == ["dir", "mount"], kinds
        for item in found:
            item.remove()
        assert not os.path.exists(base)
    finally:
        cow.remove_tree(base)
