"""mount namespace demo: the five propagation states with real mounts, and make-rprivate."""
from __future__ import annotations

import glob
import io
import os

import pytest

from helpers import cli, one_line_error
from nsutil.backend import Runner
from recipes import mount

EXPECTED_STATES = {"origin": "shared", "shared": "shared", "slave": "slave",
                   "shared-slave": "shared and slave", "ss-peer": "shared and slave",
                   "private": "private", "unbindable": "unbindable"}
EXPECTED_PROPAGATION = {
    "origin/m1": ["origin", "shared", "slave", "shared-slave", "ss-peer"],   # to peers and slaves
    "shared/m2": ["origin", "shared", "slave", "shared-slave", "ss-peer"],   # ... and back (共享)
    "slave/m3": ["slave"],                                                   # nothing goes back (从属)
    "shared-slave/m4": ["shared-slave", "ss-peer"],                          # to its own peer only
    "private/m5": ["private"],                                               # nowhere
}


def _host_mounts_of_ours() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if "/tmp/nsr-mount-" in ln]


def test_demo_states_and_propagation(runner):
    before = set(glob.glob("/tmp/nsr-mount-*"))
    seen = mount.demo(runner)
    assert seen["states"] == EXPECTED_STATES
    assert seen["propagated"] == EXPECTED_PROPAGATION
    assert seen["unbindable_refused"]  # the bind of the unbindable mount failed ...
    assert not any("unbindable" in cols for cols in seen["propagated"].values())
    # ... and the mount made inside reached the host only before make-rprivate
    assert seen["rprivate"] == {"before": {"inside": True, "host": True},
                                "after": {"inside": True, "host": False}}
    assert seen["host_clean"] is True
    assert not os.path.exists(seen["scratch"])
    assert set(glob.glob("/tmp/nsr-mount-*")) == before
    assert _host_mounts_of_ours() == []


def test_unbindable_error_names_einval():
    with Runner(backend="native", out=io.StringIO()) as run:
        seen = mount.demo(run)
    assert "EINVAL" in seen["unbindable_refused"]
    assert "mount(" in seen["unbindable_refused"]


def _host_propagation() -> dict[str, tuple[str, ...]]:
    """mount id -> (mount point, optional fields): the host's propagation of every mount."""
    with open("/proc/self/mountinfo") as f:
        rows = [ln.split() for ln in f]
    return {r[0]: (r[4], *r[6:r.index("-")]) for r in rows}


def test_host_propagation_untouched(backend):
    before = _host_propagation()
    with Runner(backend=backend, out=io.StringIO()) as run:
        mount.demo(run)
    after = _host_propagation()
    # (other tests may add or remove their own mounts meanwhile: compare the ones in both)
    assert {k: after[k] for k in before if k in after} == {k: before[k] for k in before if k in after}
    assert not [mp for mp, *_ in after.values() if mp.startswith("/tmp/nsr-mount-")]


@pytest.mark.userspace
def test_parsers_agree():
    info = ("64 63 0:40 / /t/a rw,relatime shared:1 - tmpfs nsr-a rw\n"
            "66 63 0:40 / /t/slave rw,relatime master:1 - tmpfs nsr-a rw\n"
            "67 63 0:40 / /t/ss rw,relatime shared:2 master:1 - tmpfs nsr-a rw\n"
            "68 63 0:40 / /t/p rw,relatime - tmpfs nsr-a rw\n"
            "69 63 0:40 / /t/u\\040x rw,relatime unbindable - tmpfs nsr-a rw\n")
    fm = ("/t/a shared\n/t/slave private,slave\n/t/ss shared,slave\n/t/p private\n"
          "/t/u\\x20x private,unbindable\n")
    expected = {"/t/a": "shared", "/t/slave": "slave", "/t/ss": "shared and slave",
                "/t/p": "private", "/t/u x": "unbindable"}
    assert mount.parse_mountinfo(info) == expected
    assert mount.parse_findmnt(fm) == expected


def test_failure_half_way_leaves_nothing(backend):
    """A step failing after the host bind was made: everything is undone."""
    from nsutil.errors import NsrError
    with pytest.raises(NsrError, match="boom"):
        with Runner(backend=backend, out=io.StringIO()) as run:
            scratch = mount.make_scratch(run)
            mount.host_mkdir(run, mount.sub(scratch, "probe"))
            mount.bind(run, None, scratch, scratch, "on the host", undo=True)
            holder = mount.start_holder(run, "mnt", propagation="unchanged")
            mount.mount_tmpfs(run, holder, mount.sub(scratch, "probe"))
            assert _host_mounts_of_ours()  # bind + the propagated tmpfs
            raise NsrError("boom")
    assert _host_mounts_of_ours() == [] and not os.path.exists(scratch)
    assert not holder.alive()


@pytest.mark.userspace
def test_explain_changes_nothing():
    before = set(glob.glob("/tmp/nsr-mount-*"))
    out = io.StringIO()
    with Runner(explain=True, out=out) as run:
        mount.demo(run)
    text = out.getvalue()
    for line in ("$ mktemp -d /tmp/nsr-mount-XXXXXX",
                 "$ nsenter -t $PID --mount -- mount --make-slave $DIR/slave",
                 "$ findmnt --task $PID -r -n -o TARGET,PROPAGATION",
                 "$ unshare --mount --propagation=unchanged -- sleep infinity",
                 "$ nsenter -t $PID --mount -- mount --make-rprivate /",
                 "$ umount --lazy $DIR"):
        assert line in text, line
    assert set(glob.glob("/tmp/nsr-mount-*")) == before
    assert _host_mounts_of_ours() == []


@pytest.mark.userspace
def test_cli():
    proc = cli("mount-demo", "--backend", "shell")
    assert proc.returncode == 0, proc.stderr
    assert "shared and slave" in proc.stdout and "不可绑定挂载" in proc.stdout
    assert "seen on the host: yes" in proc.stdout and "seen on the host: no" in proc.stdout
    assert proc.stderr == ""
    explain = cli("mount-demo", "--explain")
    assert explain.returncode == 0 and "--make-unbindable" in explain.stdout
    assert "bogus" in one_line_error(cli("mount-demo", "--backend", "bogus"))
