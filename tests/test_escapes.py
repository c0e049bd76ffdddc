"""Paths that try to leave where they belong: ``..`` and symlinks in a container's rootfs,
its mount targets and working directory, a rootfs that is the host's own /, and an
environment's mounts reaching the host's mount namespace.

Real containers and environments on the real kernel, their effects looked at from the host;
nothing is mocked.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

import helpers
from containerkit import ours, rootfs_dir, run_ct  # noqa: F401 (rootfs_dir: fixture)
from helpers import ROOT
from nsutil.errors import InvalidInput
from recipes import container
from recipes.container import rootfs

PY = sys.executable


def _up_to_root(directory: str) -> str:
    """A relative path from ``directory`` up to / (more ``..`` than it is deep)."""
    return "/".join([".."] * (directory.count("/") + 3))


@pytest.fixture
def bare(tmp_path):
    """A rootfs with only a static /bin/true, and a host directory ``outside`` it."""
    root = tmp_path / "bare"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(rootfs.find_busybox(), root / "bin" / "true")
    (tmp_path / "outside").mkdir()
    return root


def test_a_relative_symlink_climbing_out_of_the_rootfs_stays_inside(backend, bare, tmp_path):
    """An image's ``srv -> ../../../..(more than deep)/HOST/outside``: ``..`` at the rootfs's
    top stays there, as in a chroot, so the working directory, a tmpfs and a volume made
    through it land in the container's overlay -- nothing is made in the host's directory."""
    outside = tmp_path / "outside"
    os.symlink(_up_to_root(str(bare)) + str(outside), bare / "srv")
    assert rootfs.join_in(str(bare), "/srv/w") == f"{bare}{outside}/w"
    assert rootfs.join_in(str(bare), "/../../../bin/true") == f"{bare}/bin/true"
    src = tmp_path / "src"
    src.mkdir()
    code, _, err = run_ct(backend, ["/bin/true"], rootfs=str(bare), workdir="/srv/w",
                          tmpfs=["/srv/t"], volumes=[f"{src}:/srv/v"])
    assert code == 0, err
    assert os.listdir(outside) == [], "made on the host through the rootfs's symlink"


def test_a_command_reached_through_dotdot_is_looked_up_in_the_rootfs(bare):
    """``bin/hostenv -> ../../..(more than deep)/usr/bin/env``: the host has /usr/bin/env,
    the rootfs has not; the command is not found (127, one line), not taken from the host.
    The same for the rootfs's /etc/passwd pointing at the host's: --user 0 gets no home from
    the host's file."""
    assert os.path.isfile("/usr/bin/env")
    os.symlink(_up_to_root(str(bare / "bin")) + "/usr/bin/env", bare / "bin" / "hostenv")
    with pytest.raises(container.CommandNotFound) as err:
        container.make_spec(["hostenv"], rootfs=str(bare))
    assert err.value.exit_code == 127 and "'hostenv' not found in the rootfs" in str(err.value)
    (bare / "etc").mkdir()
    os.symlink(_up_to_root(str(bare / "etc")) + "/etc/passwd", bare / "etc" / "passwd")
    spec = container.make_spec(["true"], rootfs=str(bare), user="0")
    assert (spec.user.gid, spec.user.home) == (0, "/")   # not root's /root of the host


@pytest.mark.userspace
@pytest.mark.parametrize("option, value, covers", [
    ("tmpfs", "/x/../proc", "/proc"),
    ("tmpfs", "/dev/shm/../", "/dev"),
    ("volumes", "{src}:/a/../../..", "/"),
    ("volumes", "{src}:/proc/./self/..", "/proc"),
])
def test_dotdot_in_a_mount_target_cannot_cover_what_the_container_needs(tmp_path, option,
                                                                          value, covers):
    """A target with ``..`` or ``.`` is the path it names: one that names /, /proc or /dev is
    refused in one line before anything is made (else a tmpfs would hide the container's
    /proc, or a volume its whole root)."""
    value = value.format(src=tmp_path)
    with pytest.raises(InvalidInput) as err:
        container.make_spec(["true"], **{option: [value]})
    assert f"would cover the container's own {covers}" in str(err.value), err.value


def test_the_hosts_root_is_refused_as_a_rootfs_however_it_is_named(tmp_path):
    """``--rootfs`` naming the host's / through ``..`` or a symlink: one line, nothing made."""
    link = tmp_path / "hostroot"
    os.symlink("/", link)
    before = ours()
    for given in (str(link), str(tmp_path) + "/" + _up_to_root(str(tmp_path)), f"{link}/tmp/.."):
        done = helpers.cli("container-run", "--rootfs", given, "--", "true", timeout=300)
        line = helpers.one_line_error(done)
        assert "the host's / cannot be a container rootfs" in line, (given, line)
    assert ours() == before


# --- an environment's mounts ---------------------------------------------------------------

@pytest.mark.parametrize("target", ["/tmp/..", "/tmp/../.", "/tmp/./../"])
def test_env_mount_on_a_path_that_is_root_is_refused(target):
    """env-mount's target is normalised before it is checked: one naming / is refused in one
    line (a tmpfs there would hide the environment's whole tree)."""
    done = helpers.cli("env-mount", "nsr-none", target, timeout=300)
    line = helpers.one_line_error(done)
    assert "'/' is not allowed" in line, line


#: inside a mount namespace of the test's whose / is rshared (as systemd makes the host's):
#: an environment's tmpfs must not show up here
_PROPAGATION = r"""
import json, sys
from recipes import env
name, backend, top = sys.argv[1:4]
e = env.Environment.create(name, "uts,mnt", backend=backend)
try:
    e.mount_tmpfs(top + "/t", "1m")
    e.bind_mount(top + "/src", top + "/b")
    inside = [ln.split()[4] for ln in e.exec(["cat", "/proc/self/mountinfo"]).stdout.splitlines()
              if ln.split()[4].startswith(top + "/")]
    here = [ln.split()[4] for ln in open("/proc/self/mountinfo")
            if ln.split()[4].startswith(top)]
finally:
    e.remove(missing_ok=True)
print(json.dumps({"inside": inside, "here": here}))
"""


def test_env_mounts_never_reach_the_host_even_on_a_shared_root(backend, tmp_path):
    """On a host whose / is shared (systemd's), a tmpfs and a bind made with env-mount exist
    inside the environment only: the environment's mount namespace is made private before
    anything is mounted in it, so nothing propagates back to the host's."""
    for d in ("t", "b", "src"):
        (tmp_path / "top" / d).mkdir(parents=True)
    name = f"nsr-m-{secrets.token_hex(3)}"
    done = subprocess.run(["unshare", "--mount", "--propagation", "shared", "--", PY, "-c",
                           _PROPAGATION, name, backend, str(tmp_path / "top")], cwd=ROOT,
                          timeout=300, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT,
                               "NSR_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    top = str(tmp_path / "top")
    assert sorted(out["inside"]) == [f"{top}/b", f"{top}/t"], out       # there, inside
    assert out["here"] == [], "the environment's mounts reached the host's mount namespace"
