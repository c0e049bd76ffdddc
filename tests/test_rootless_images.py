"""Images as a real unprivileged user (uid 65534), on both backends, against the real kernel.

Root makes the image with umoci (:func:`imagekit.umoci_image`: a deleted file, a replaced
directory, an opaque directory, a file capability) and adds one layer with a device node
(``umoci raw add-layer``); the user imports it into its own data directory
(``~/.local/share/nsrecipes``), lists it, runs a container from it (the overlay mounted with
``userxattr``, whiteouts as the user may make them: 0/0 devices and ``user.overlay.opaque``),
runs ``cow-demo --image`` and removes it. Nothing may be left: no layer, no runtime record,
no /tmp/nsr-cow-* directory.
"""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tarfile
import tempfile
from typing import Callable, Iterator

import pytest

import imagekit
from asuser import as_user, home  # noqa: F401 (home: a fixture)

IMAGE = "nsr-rootless:v1"
#: what the container shows: the whiteouts of layers 2 and 3 hide what layer 1 had
SCRIPT = ("id -u; test -e /gone || echo gone-hidden; ls /old; ls /opq; "
          "echo w >> /data/a && tail -n1 /data/a; grep -c ' overlay .*userxattr' /proc/self/mountinfo")


def _make_layout(work: str, opaque: bool) -> str:
    """The umoci image (with or without its opaque layer) plus a layer with a char device,
    under ``work`` (readable by uid 65534)."""
    ref = imagekit.umoci_image(work, opaque=opaque)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind in (("dev/", tarfile.DIRTYPE), ("dev/nsr-null", tarfile.CHRTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.devmajor, info.devminor = kind, 0o755, 1, 3
            tar.addfile(info)
    with open(os.path.join(work, "dev.tar"), "wb") as f:
        f.write(buf.getvalue())
    imagekit.sh("umoci", "raw", "add-layer", "--image", ref, os.path.join(work, "dev.tar"))
    imagekit.sh("chmod", "-R", "a+rX", work)
    return ref


@pytest.fixture(scope="module")
def layouts() -> Iterator[Callable[[bool], str]]:
    """``layouts(opaque)``: the test image with or without its opaque layer, made once."""
    if os.geteuid() != 0:
        pytest.skip("making the test image (owners, a file capability) needs root")
    for tool in ("umoci", "skopeo"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (./bootstrap pytest installs it)")
    work = tempfile.mkdtemp(prefix="nsr-rlimg-", dir="/tmp")
    made: dict[bool, str] = {}

    def get(opaque: bool) -> str:
        if opaque not in made:
            os.mkdir(os.path.join(work, str(opaque)), 0o755)
            made[opaque] = _make_layout(os.path.join(work, str(opaque)), opaque)
        return made[opaque]
    try:
        os.chmod(work, 0o755)
        yield get
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _user_xattrs(path: str) -> bool:
    """Whether the filesystem of ``path`` keeps ``user.*`` xattrs (a tmpfs: since 6.6)."""
    probe = os.path.join(path, ".nsr-xattr-probe")
    open(probe, "w").close()
    try:
        os.setxattr(probe, "user.nsr", b"y")
        return True
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP:
            raise
        return False
    finally:
        os.unlink(probe)


def _cow_dirs() -> set[str]:
    return {n for n in os.listdir("/tmp") if n.startswith("nsr-cow-")}


def test_image_import_run_cow_rm_as_user(layouts: Callable[[bool], str], backend: str,
                                         home: str) -> None:
    """image-import (the store in the user's data directory; the device node and the file
    capability skipped with a word each), image-ls, container-run --image (whiteouts,
    opaque directory, a write, userxattr), cow-demo --image, image-rm: nothing left.
    Where the user's data directory has no ``user.*`` xattrs (a tmpfs before Linux 6.6),
    the image with an opaque directory is refused in one line, and one without it works."""
    env = {"NSR_BACKEND": backend}
    before = _cow_dirs()
    store = os.path.join(home, ".local", "share", "nsrecipes")
    opaque = _user_xattrs(home)
    if not opaque:       # a tmpfs before 6.6 (the VM's /tmp): no opaque directory there
        refused = as_user(home, "image-import", layouts(True), "--name", IMAGE, env=env)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert "opaque directory" in refused.stderr and "Linux 6.6" in refused.stderr
        assert os.listdir(os.path.join(store, "layers")) == []
    layout = layouts(opaque)
    done = as_user(home, "image-import", layout, "--name", IMAGE, env=env)
    assert done.returncode == 0, done.stderr
    assert "device nodes skipped without root: dev/nsr-null" in done.stdout
    assert "file capabilities dropped without root" in done.stdout and "bin/busybox" in done.stdout
    layers = 4 if opaque else 3
    assert len(os.listdir(os.path.join(store, "layers"))) == layers
    listed = as_user(home, "image-ls", "--json", env=env)
    assert [(r["name"], r["layers"]) for r in json.loads(listed.stdout)] == \
        [("nsr-rootless", layers)], listed.stdout + listed.stderr
    # the image's User (app:wheel) needs an /etc/subuid range: root inside instead
    run = as_user(home, "container-run", "--image", IMAGE, "--user", "0", "--",
                  "sh", "-c", SCRIPT, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == (["0", "gone-hidden", "z", "p2", "w", "1"] if opaque else
                                 ["0", "gone-hidden", "x", "y", "p1", "w", "1"]), run.stdout
    cow = as_user(home, "cow-demo", "--image", IMAGE, env=env)
    assert cow.returncode == 0, cow.stderr
    assert "(a whiteout: True)" in cow.stdout and ",userxattr " in cow.stdout, cow.stdout
    assert "the layer's copy is unchanged: True" in cow.stdout
    rm = as_user(home, "image-rm", IMAGE, env=env)
    assert rm.returncode == 0, rm.stderr
    for sub in ("layers", "images", "blobs/sha256", "tmp", "uses"):
        assert os.listdir(os.path.join(store, sub)) == [], sub
    assert _cow_dirs() <= before
