"""Copy-on-write with real overlay mounts (in scratch directories under /tmp/nsr-cow-*),
and with /tmp on overlayfs, as in Docker, on CI runners and in the VM guest.

Checks the semantics the document's "写时复制" promises: reads see the top layer, a write
copies up into upper and leaves the lower unchanged, a delete leaves a whiteout (char
device 0/0), two containers share the lower layers, and sharing saves the disk two copies
would use. Both backends (``mount``/``umount``/``rm``/``du`` commands vs syscalls).
"""
from __future__ import annotations

import os

import pytest

import helpers
from nsutil import syscalls as sc
from nsutil.backend import Runner
from nsutil.errors import InvalidInput, NsrError, SyscallError
from overlaytmp import mounts_below, run_in_overlay_tmp
from recipes import cow
from recipes.common import upperfs


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


@pytest.mark.userspace
def test_explain_changes_nothing(capsys):
    before = _ours()
    with Runner(backend="native", explain=True) as run:
        cow.demo(run)
    out = capsys.readouterr().out
    assert "mount -t overlay overlay -o lowerdir=" in out and "umount" in out
    assert "du -s -c -B1" in out
    assert _ours() == before


def test_leftovers_unmount_and_remove(backend):
    """A run that kept its overlay (as a killed run would) is found and removed -- with the
    tmpfs under its upper too where /tmp cannot hold one (the VM guest's overlayfs /tmp)."""
    base = f"{cow.scratch_dir()}/nsr-cow-t{os.getpid() % 10000}"
    fs = upperfs.plan_upper(cow.scratch_dir())
    with Runner(backend=backend, keep=True) as run:
        cow.make_dir(run, base)
        for sub in ("lower", "c"):
            cow.make_dir(run, f"{base}/{sub}", undo=False)
        on_tmpfs = upperfs.mount_upper_tmpfs(run, f"{base}/c", fs)
        for sub in ("upper", "work", "merged"):
            cow.make_dir(run, f"{base}/c/{sub}", undo=False)
        cow.mount_overlay(run, [f"{base}/lower"], f"{base}/c/upper", f"{base}/c/work",
                          f"{base}/c/merged")
    try:
        assert os.path.ismount(f"{base}/c/merged")
        found = [i for i in cow.leftovers() if i.name.startswith(base)]
        kinds = sorted(i.kind for i in found)
        assert kinds == ["dir", "mount"] + (["mount"] if on_tmpfs else []), kinds
        for item in found:
            item.remove()
        assert not os.path.exists(base)
    finally:
        cow.remove_tree(base)


def test_remove_tree_removes_links_as_links(tmp_path):
    """What a container leaves in its upper (files, directories, links to the host's files
    and directories) goes; what a link points at stays; a path that is a link loses the link
    only."""
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "dir" / "keep").write_text("host\n")
    (outside / "file").write_text("host\n")
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    (tree / "a" / "to-dir").symlink_to(outside / "dir")
    (tree / "to-file").symlink_to(outside / "file")
    (tree / "dangling").symlink_to(tmp_path / "nowhere")
    link = tmp_path / "link-to-dir"
    link.symlink_to(outside / "dir")
    cow.remove_tree(str(tree))
    cow.remove_tree(str(link))
    cow.remove_tree(str(tmp_path / "never-was"))
    assert not os.path.lexists(tree) and not os.path.lexists(link)
    assert (outside / "dir" / "keep").read_text() == "host\n"
    assert (outside / "file").read_text() == "host\n"


# --- /tmp on overlayfs (a container-like host, made in a mount namespace of the test's own) ---

def test_the_kernel_refuses_an_upper_on_overlayfs_as_upperfs_says(tmp_path):
    """The rule in recipes.common.upperfs is the kernel's: an upper on overlayfs is EINVAL, a lower
    on overlayfs with upper and work on a tmpfs mounts -- on 6.18 here and 6.1 in the VM."""
    def inside(tmp: str) -> dict:
        for d in ("lower", "upper", "work", "merged", "t"):
            os.mkdir(f"{tmp}/{d}")
        fs = upperfs.fs_of(f"{tmp}/upper")
        try:
            sc.mount("overlay", f"{tmp}/merged", "overlay", 0,
                     f"lowerdir={tmp}/lower,upperdir={tmp}/upper,workdir={tmp}/work")
            raw = "mounted"
        except SyscallError as exc:
            raw = exc.errno_name
        try:
            cow.mount_overlay(Runner(backend="native"), [f"{tmp}/lower"], f"{tmp}/upper",
                              f"{tmp}/work", f"{tmp}/merged")
            ours = "mounted"
        except NsrError as exc:
            ours = str(exc)
        with Runner(backend="native") as run:   # the fallback: the upper on a tmpfs
            upperfs.mount_upper_tmpfs(run, f"{tmp}/t", fs)
            for d in ("upper", "work"):
                os.mkdir(f"{tmp}/t/{d}")
            cow.mount_overlay(run, [f"{tmp}/lower"], f"{tmp}/t/upper", f"{tmp}/t/work",
                              f"{tmp}/merged")
            with open(f"{tmp}/merged/f", "w") as f:
                f.write("x")
            stacked = (upperfs.fs_of(f"{tmp}/merged").fstype, os.listdir(f"{tmp}/t/upper"))
        for d in ("lower", "upper", "work", "merged", "t"):
            os.rmdir(f"{tmp}/{d}")
        return {"fs": fs, "raw": raw, "ours": ours, "stacked": stacked}

    got, left = run_in_overlay_tmp(str(tmp_path), inside)
    assert left["fstype"] == "overlay" and got["fs"].fstype == "overlay"
    assert upperfs.needs_tmpfs(got["fs"])
    assert got["raw"] == "EINVAL"                        # the kernel refuses it ...
    assert "is on overlay at" in got["ours"] and "hint:" in got["ours"]   # ... we say why
    assert got["stacked"] == ("overlay", ["f"])          # a lower on overlayfs is fine
    assert left["mounts"] == [] and left["entries"] == []


def test_demo_with_tmp_on_overlayfs(tmp_path):
    """cow-demo where /tmp is overlayfs: each container's upper and work go on a tmpfs it
    mounts (a visible step) and removes; semantics and disk figures as on a plain /tmp."""
    def inside(tmp: str) -> dict:
        got: dict = {}
        for backend in ("shell", "native"):
            with Runner(backend=backend) as run:
                got[backend] = cow.demo(run, size_mb=2)
            got[f"{backend} left"] = (mounts_below(tmp), os.listdir(tmp))
        cli = helpers.cli("cow-demo", "--size-mb", "2")
        explain = helpers.cli("cow-demo", "--explain")
        got["cli"] = (cli.returncode, cli.stdout, cli.stderr)
        got["explain"] = (explain.returncode, explain.stdout, explain.stderr)
        return got

    got, left = run_in_overlay_tmp(str(tmp_path), inside)
    assert left["fstype"] == "overlay"
    for backend in ("shell", "native"):
        d = got[backend]
        assert d["base"].startswith(str(tmp_path)) and d["uppers_on_tmpfs"]
        assert d["write"]["upper"] == "container-1\n" and d["write"]["lower"] == "base\n"
        assert d["delete"]["whiteout"] and d["other_container"] == "welcome from the base layer\n"
        assert d["disk"]["copies"] > 1.8 * d["disk"]["shared"], d["disk"]
        assert 0 < d["disk"]["uppers"] < 256 << 10
        assert got[f"{backend} left"] == ([], []), got[f"{backend} left"]
    code, out, err = got["cli"]
    assert code == 0, err
    assert "uppers on their tmpfs (memory pages, not disk)" in out
    code, out, err = got["explain"]
    assert code == 0, err
    assert out.count("mount -t tmpfs -o mode=0755 nsr-upper") == 2, out   # one per container
    assert left["mounts"] == [] and left["entries"] == []


def test_read_only_scratch_is_refused_in_one_line_before_anything(tmp_path):
    def inside(tmp: str) -> dict:
        ro = f"{tmp}/ro"
        os.mkdir(ro)
        sc.mount("tmpfs", ro, "tmpfs", sc.MS_RDONLY, "mode=0755")
        os.environ["TMPDIR"] = ro
        try:
            with Runner(backend="native") as run:
                cow.demo(run, size_mb=1)
            err = "no error"
        except NsrError as exc:
            err = str(exc)
        cli = helpers.cli("cow-demo")
        listing = os.listdir(ro)
        sc.umount(ro)
        os.rmdir(ro)
        return {"err": err, "cli": cli, "listing": listing}

    got, left = run_in_overlay_tmp(str(tmp_path), inside)
    assert "read-only" in got["err"] and "TMPDIR" in got["err"], got["err"]
    line = helpers.one_line_error(got["cli"])
    assert "tmpfs at" in line and "read-only" in line
    assert got["listing"] == [] and left["mounts"] == [] and left["entries"] == []
