"""container-run's options, for real: small and unlimited ``--pids``, a rootfs with only
the command, ``--volume`` (recursive, ``:ro`` down to every submount), ``--tmpfs``,
``--read-only``, ``--domainname``, ``--env``/``--workdir``/``--user``, ``--timeout``; their
``--help`` and ``--explain``; and the cgroup and container recipes not importing each other.
Both backends wherever a step has a shell form.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time

import pytest

import helpers
from containerkit import ours as _ours, rootfs_dir, run_ct  # noqa: F401 (rootfs_dir: fixture)
from helpers import ROOT
from nsutil import cgroupfs, mountattr
from nsutil import syscalls as sc
from nsutil.errors import InvalidInput, NsrError
from recipes import container
from recipes.container import rootfs


# --- --pids, and a rootfs that has only the command ----------------------------------------------

@pytest.mark.userspace
def test_pids_max_means_no_limit_and_cgroup_demo_still_refuses_it():
    assert container.make_spec(["true"], pids="max").limits.pids is None
    assert container.make_spec(["true"], pids="2").limits.pids == 2
    with pytest.raises(InvalidInput):
        cgroupfs.parse_pids("max")        # cgroup-demo's --pids: a number, as before


def test_pids_max_runs_many_processes(backend):
    code, out, err = run_ct(backend, [
        "sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 0.1 & done; wait; echo done"],
        pids="max")
    assert (code, out) == (0, "done\n"), err


def test_small_pids_limits_count_only_the_container(backend):
    """--pids 2 is PID 1 and the command: the setup's helpers (the shell backend's commands,
    the sh package's threads) are not charged, since PID 1 enters the cgroup last."""
    for pids in ("2", "3"):
        assert run_ct(backend, ["echo", "hi"], pids=pids) == (0, "hi\n", "")
    # exact: with 3, sh may start one child; with 2 it may not
    assert run_ct(backend, ["sh", "-c", "ls / >/dev/null && echo ok"], pids="3")[:2] == (0, "ok\n")
    code, out, err = run_ct(backend, ["sh", "-c", "ls / >/dev/null && echo ok"], pids="2")
    assert code != 0 and "fork" in err.lower() and out == "", (code, out, err)


@pytest.mark.userspace
def test_pids_1_is_one_line_saying_what_the_container_needs():
    done = helpers.cli("container-run", "--pids", "1", "--", "echo", "hi", timeout=300)
    line = helpers.one_line_error(done)
    assert done.returncode == 2
    assert "--pids 1 is too small: the container itself needs 2 processes" in line


def test_unexpected_setup_failure_is_one_line_not_a_silent_125(backend, monkeypatch):
    """What made `--pids 2` exit 125 with no word: a non-nsrecipes exception in PID 1's setup
    (the sh package's RuntimeError). Any such failure now comes back as one line."""
    from recipes.container import inside as containermounts

    def broken(run):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(containermounts, "make_rslave", broken)
    before = _ours()
    with pytest.raises(NsrError) as err:
        run_ct(backend, ["true"])
    assert "container setup failed: RuntimeError: can't start new thread" in str(err.value)
    assert "\n" not in str(err.value)
    assert _ours() == before


def test_rootfs_needs_only_the_command(backend, tmp_path):
    """A rootfs with nothing but a static /bin/true (no /bin/sh, /proc, /dev, /etc) runs it;
    a command it lacks is 127 with one line, and the rootfs itself is left as it was."""
    bare = tmp_path / "bare"
    (bare / "bin").mkdir(parents=True)
    shutil.copy2(rootfs.find_busybox(), bare / "bin" / "true")   # busybox runs argv[0]'s applet
    before = _ours()
    assert run_ct(backend, ["/bin/true"], rootfs=str(bare))[0] == 0
    assert run_ct(backend, ["true"], rootfs=str(bare))[0] == 0
    with pytest.raises(container.CommandNotFound) as err:
        run_ct(backend, ["sh", "-c", "true"], rootfs=str(bare))
    assert err.value.exit_code == 127 and "'sh' not found in the rootfs" in str(err.value)
    assert sorted(os.listdir(bare)) == ["bin"]        # /proc and /dev went into the overlay
    with pytest.raises(InvalidInput):
        run_ct("native", [])
    assert _ours() == before


def test_mountpoints_are_made_inside_the_rootfs_even_through_symlinks(backend, tmp_path):
    """An image's absolute symlink points into the image: the working directory (and any
    mountpoint) made through it lands in the container's overlay, never on the host."""
    bare = tmp_path / "bare"
    (bare / "bin").mkdir(parents=True)
    shutil.copy2(rootfs.find_busybox(), bare / "bin" / "true")
    outside = tmp_path / "outside"
    os.symlink(str(outside), bare / "srv")          # /srv -> /tmp/pytest-.../outside
    assert rootfs.join_in(str(bare), "/srv/w") == f"{bare}{outside}/w"
    code, _, err = run_ct(backend, ["/bin/true"], rootfs=str(bare), workdir="/srv/w",
                          tmpfs=["/srv/t"])
    assert code == 0, err
    assert not outside.exists()


@pytest.mark.userspace
def test_rootfs_file_says_not_a_directory(tmp_path):
    plain = tmp_path / "rootfs.tar"
    plain.write_text("not a directory\n")
    done = helpers.cli("container-run", "--rootfs", str(plain), "--", "true", timeout=300)
    line = helpers.one_line_error(done)
    assert f"rootfs {plain} is not a directory" in line and "does not exist" not in line


# --- mounts, user, environment, timeout ---------------------------------------------------------

@pytest.fixture
def volume_src(tmp_path):
    """A host directory with a file and a tmpfs submount (``sub``, with ``inner``) -- made in
    a directory of the test's own, and unmounted whatever happens."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "top").write_text("top\n")
    sc.mount("nsrtest", str(src / "sub"), "tmpfs", 0, "size=1m")
    try:
        (src / "sub" / "inner").write_text("inner\n")
        yield src
    finally:
        sc.umount(str(src / "sub"), sc.MNT_DETACH)


def _mount_opts(mountinfo: str, point: str) -> list[str]:
    """The per-mount options of ``point`` in a mountinfo text."""
    return [ln.split()[5].split(",") for ln in mountinfo.splitlines() if ln.split()[4] == point][0]


def test_volume_binds_recursively(backend, volume_src):
    code, out, err = run_ct(backend, [
        "sh", "-c", "cat /data/top /data/sub/inner && echo new > /data/sub/new"],
        volumes=[f"{volume_src}:/data"])
    assert (code, out) == (0, "top\ninner\n"), err       # the submount came along (MS_REC)
    assert (volume_src / "sub" / "new").read_text() == "new\n"


def test_volume_ro_makes_every_submount_read_only(backend, volume_src, tmp_path):
    single = tmp_path / "single-file"
    single.write_text("file volume\n")
    code, out, err = run_ct(backend, [
        "sh", "-c", "cat /data/sub/inner /etc/nsr-file; touch /data/x; touch /data/sub/y; "
                    "echo ---; cat /proc/self/mountinfo"],
        volumes=[f"{volume_src}:/data:ro", f"{single}:/etc/nsr-file:ro"])
    assert code == 0, err
    shown, mountinfo = out.split("---\n")
    assert shown == "inner\nfile volume\n"
    assert err.count("Read-only file system") == 2, err     # /data and the submount /data/sub
    assert "ro" in _mount_opts(mountinfo, "/data") and "ro" in _mount_opts(mountinfo, "/data/sub")
    assert not (volume_src / "x").exists() and not (volume_src / "sub" / "y").exists()
    assert not os.statvfs(volume_src / "sub").f_flag & os.ST_RDONLY   # the host's stays rw


@pytest.mark.userspace
def test_volume_ro_without_mount_setattr_says_the_kernel_needs_5_12(monkeypatch, tmp_path):
    import ctypes

    def no_such_call(*_args):
        ctypes.set_errno(errno.ENOSYS)
        return -1
    monkeypatch.setattr(mountattr, "_syscall", no_such_call)
    before = _ours()
    with pytest.raises(NsrError) as err:
        run_ct("native", ["true"], volumes=[f"{tmp_path}:/data:ro"])
    assert "ENOSYS" in str(err.value) and "Linux 5.12 or later" in str(err.value)
    assert "\n" not in str(err.value)
    assert _ours() == before
    with pytest.raises(NsrError, match="5.12"):
        mountattr.set_readonly(str(tmp_path))


def test_read_only_rootfs_refuses_writes_with_erofs(backend):
    code, out, err = run_ct(backend, [
        "sh", "-c", "echo x > /x; echo y >> /etc/passwd; mkdir /newdir; "
                    "echo ok > /tmp/ok && cat /tmp/ok; echo hi > /dev/null && echo dev-ok"],
        read_only=True, tmpfs=["/tmp"])
    assert code == 0, err
    assert err.count("Read-only file system") == 3, err
    assert out == "ok\ndev-ok\n"                 # the tmpfs and /dev keep their own flags


def test_tmpfs_size_mode_and_ro(backend):
    code, out, err = run_ct(backend, [
        "sh", "-c", "stat -c %a /scratch; dd if=/dev/zero of=/scratch/big bs=1024 count=2048; "
                    "touch /ro/x; echo ---; cat /proc/self/mountinfo"],
        tmpfs=["/scratch:size=1m,mode=700", "/ro:ro"])
    mode, mountinfo = out.split("---\n")
    assert mode == "700\n", (out, err)
    assert "No space left on device" in err and "Read-only file system" in err, err
    scratch = [ln for ln in mountinfo.splitlines() if ln.split()[4] == "/scratch"][0]
    assert " tmpfs " in scratch and "size=1024k" in scratch and "nosuid" in scratch
    assert "ro" in _mount_opts(mountinfo, "/ro")


def test_domainname(backend):
    code, out, err = run_ct(backend, ["cat", "/proc/sys/kernel/domainname"],
                            domainname="nsr.example")
    assert (code, out) == (0, "nsr.example\n"), err
    assert run_ct(backend, ["cat", "/proc/sys/kernel/domainname"])[1] == "(none)\n"


def test_env_workdir_and_user(backend):
    code, out, err = run_ct(backend, [
        "sh", "-c", 'echo "$FOO|$HOME"; pwd; id -u; id -g; id -G; grep CapEff /proc/self/status'],
        env=["FOO=bar baz", "HOME=/h"], workdir="/srv/w", user="1234:2345")
    assert code == 0, err
    assert out.splitlines() == ["bar baz|/h", "/srv/w", "1234", "2345", "2345",
                                "CapEff:\t0000000000000000"]
    # a uid listed in the rootfs's /etc/passwd gets its gid and home; others their own number
    assert run_ct(backend, ["sh", "-c", 'id -g; echo $HOME'], user="65534")[1] == "65534\n/\n"
    assert run_ct(backend, ["id", "-g"], user="4321")[1] == "4321\n"


def test_timeout_kills_the_container_with_137(backend):
    before = _ours()
    started = time.monotonic()
    with pytest.raises(container.ContainerTimeout) as err:
        run_ct(backend, ["sh", "-c", "sleep 30 & sleep 30"], timeout="0.5")
    assert err.value.exit_code == 137 and "--timeout 0.5" in str(err.value)
    assert 0.5 <= time.monotonic() - started < 15
    assert _ours() == before                      # cgroup gone: nothing of it still runs
    assert run_ct(backend, ["sh", "-c", "exit 3"], timeout="60")[0] == 3


@pytest.mark.userspace
def test_cli_timeout_volume_env_user(tmp_path):
    (tmp_path / "in").write_text("from the host\n")
    tmp_path.chmod(0o755)                        # uid 7 may enter it, not write into it
    done = helpers.cli("container-run", "--timeout", "0.3", "--", "sleep", "30", timeout=300)
    assert done.returncode == 137, done
    assert "ran past --timeout 0.3 s" in helpers.one_line_error(done)
    done = helpers.cli("container-run", "--volume", f"{tmp_path}:/a:ro", "--volume",
                       f"{tmp_path}:/b", "--env", "X=1", "--env", "Y=2", "--user", "7:8",
                       "--workdir", "/b", "--", "sh", "-c",
                       'cat /a/in; echo $X$Y; id -u; id -g; pwd; echo w > out || echo no-write',
                       timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "from the host\n12\n7\n8\n/b\nno-write\n", done.stdout
    assert "Permission denied" in done.stderr     # uid 7 may not write into root's directory
    assert not (tmp_path / "out").exists()
    done = helpers.cli("container-run", "--timeout", "soon", "--", "true")
    assert done.returncode == 2
    assert "--timeout 'soon' is not a number" in helpers.one_line_error(done)


@pytest.mark.userspace
def test_explain_shows_the_new_options_in_order(tmp_path):
    before = _ours()
    done = helpers.cli("container-run", "--explain", "--volume", f"{tmp_path}:/data:ro",
                       "--tmpfs", "/scratch:size=8m", "--read-only", "--domainname", "nsr.dom",
                       "--env", "A=1", "--workdir", "/srv", "--user", "1000:1001",
                       "--timeout", "5", "--", "sh", timeout=300)
    assert done.returncode == 0, done.stderr
    order = ["domainname nsr.dom", "mkdir -p /run", f"mount --rbind {tmp_path} ",
             "mount --make-rprivate ",
             "mount_setattr(AT_FDCWD, ", "AT_RECURSIVE, {attr_set=MOUNT_ATTR_RDONLY}",
             "mount -t tmpfs -o nosuid,nodev,mode=1777,size=8m tmpfs ", "/merged/srv\n",
             "mount -o remount,bind,ro ", "pivot_root . .",
             "cd /srv && env A=1 setpriv --reuid=1000 --regid=1001 --clear-groups -- sh",
             "sleep 5 && kill -KILL $PID"]
    positions = [done.stdout.find(word) for word in order]
    assert all(p >= 0 for p in positions), list(zip(order, positions))
    assert positions == sorted(positions), list(zip(order, positions))
    assert _ours() == before


@pytest.mark.userspace
def test_help_lists_every_option():
    done = helpers.cli("container-run", "--help")
    for option in ("--timeout", "--volume", "--tmpfs", "--read-only", "--domainname", "--env",
                   "--workdir", "--user", "max: no limit"):
        assert option in done.stdout, option


@pytest.mark.userspace
def test_cgroup_and_container_recipes_do_not_import_each_other():
    import ast
    imported = set()
    for node in ast.walk(ast.parse(open(os.path.join(ROOT, "recipes", "cgroup.py")).read())):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not any("container" in m for m in imported), imported
    code = ("import sys; import recipes.cgroup as c; c.leftovers(); "
            "print(sorted(m for m in sys.modules if m.startswith('recipes.container')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.strip() == "[]", done   # cleanup leaves the containers' cgroups out
