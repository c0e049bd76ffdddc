"""Test images, made offline by tools nobody here wrote (umoci, skopeo) and by hand.

:func:`umoci_image` makes a three-layer OCI layout with umoci: a base layer (static busybox,
/etc/passwd and /etc/group with a user ``app``, a hardlink, a symlink, a setuid file owned by
1000:50, a ``user.*`` xattr and a file capability), a second layer made by ``umoci
unpack``/``repack`` that deletes a file and replaces a directory, and a third of the tests'
own (``umoci raw add-layer``) with an opaque whiteout; then ``umoci config`` sets Cmd, Env,
WorkingDir and User. :func:`convert` copies it with skopeo to ``oci-archive:`` and
``docker-archive:``. :func:`docker25` builds Docker 25's ``docker save`` form by the format
(no Debian tool writes it): the OCI layout with uncompressed layers plus the old
``manifest.json``. :func:`write_layout` writes an OCI layout from layer tars the tests make
(hostile ones, damaged ones).
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from contextlib import contextmanager
from typing import Iterable, Iterator

from recipes.container.rootfs import find_busybox

#: a file capability (struct vfs_cap_data, revision 2): cap_net_raw in permitted, effective
CAP_NET_RAW = (b"\x01\x00\x00\x02" + (1 << 13).to_bytes(4, "little") + b"\x00" * 12)
MTIME = 1_600_000_000


def sh(*argv: str, cwd: str | None = None) -> str:
    """Run a tool; its stdout (its stderr in the assertion message when it fails)."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, check=False)
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return proc.stdout


def _base_rootfs(root: str) -> None:
    for d in ("bin", "etc", "data", "old", "opq"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy2(find_busybox(), os.path.join(root, "bin", "busybox"))
    os.symlink("busybox", os.path.join(root, "bin", "sh"))
    files = {"etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:50:app:/home/app:/bin/sh\n",
             "etc/group": "root:x:0:\nstaff:x:50:\nwheel:x:10:\n",
             "data/a": "alpha\n", "gone": "bye\n", "old/x": "x\n", "old/y": "y\n",
             "opq/p1": "p1\n", "suid": "#!/bin/sh\n"}
    for rel, text in files.items():
        with open(os.path.join(root, rel), "w") as f:
            f.write(text)
    os.link(os.path.join(root, "data/a"), os.path.join(root, "data/hard"))
    os.symlink("data/a", os.path.join(root, "link"))
    os.chown(os.path.join(root, "suid"), 1000, 50)
    os.chmod(os.path.join(root, "suid"), 0o4755)
    try:    # a tmpfs before Linux 6.6 (the VM's /tmp) has no user.* xattrs
        os.setxattr(os.path.join(root, "data/a"), "user.nsr", b"kept")
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP:
            raise
    os.setxattr(os.path.join(root, "bin/busybox"), "security.capability", CAP_NET_RAW)
    os.utime(os.path.join(root, "data/a"), (MTIME, MTIME))


def _second_layer(root: str, replace_dir: bool = True) -> None:
    os.unlink(os.path.join(root, "gone"))
    if not replace_dir:
        return
    shutil.rmtree(os.path.join(root, "old"))
    os.mkdir(os.path.join(root, "old"))
    with open(os.path.join(root, "old", "z"), "w") as f:
        f.write("new\n")


def tar_bytes(entries: Iterable[tuple[str, str, bytes | str]]) -> bytes:
    """A tar of (name, kind, data) entries: kind is file, dir, symlink (data: target) or
    hardlink (data: target name)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = str(data)
                tar.addfile(info)
            else:
                raw = data.encode() if isinstance(data, str) else data
                info.size, info.mode = len(raw), 0o644
                tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def umoci_image(work: str, opaque: bool = True) -> str:
    """The three-layer layout (see the module doc) in WORK/oci; ``WORK/oci:v1``. Without
    ``opaque``, no opaque directory at all: two layers, the second only deletes a file (a
    replaced directory is an opaque one in umoci's layer), the third is left out."""
    layout, bundle = os.path.join(work, "oci"), os.path.join(work, "bundle")
    sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:v1")
    sh("umoci", "unpack", "--image", f"{layout}:v1", bundle)
    _base_rootfs(os.path.join(bundle, "rootfs"))
    sh("umoci", "repack", "--image", f"{layout}:v1", bundle)
    shutil.rmtree(bundle)
    sh("umoci", "unpack", "--image", f"{layout}:v1", bundle)
    _second_layer(os.path.join(bundle, "rootfs"), replace_dir=opaque)
    sh("umoci", "repack", "--image", f"{layout}:v1", bundle)
    shutil.rmtree(bundle)
    if opaque:
        third = os.path.join(work, "opaque.tar")
        with open(third, "wb") as f:
            f.write(tar_bytes([("opq/", "dir", b""), ("opq/.wh..wh..opq", "file", b""),
                               ("opq/p2", "file", "p2\n")]))
        sh("umoci", "raw", "add-layer", "--image", f"{layout}:v1", third)
    sh("umoci", "config", "--image", f"{layout}:v1", "--config.cmd", "sh",
       "--config.cmd", "-c", "--config.cmd", "echo $GREETING from $(pwd) as $(id -u):$(id -g)",
       "--config.env", "GREETING=hello", "--config.workingdir", "/data",
       "--config.user", "app:wheel")
    return f"{layout}:v1"


def convert(ref: str, work: str) -> dict[str, str]:
    """skopeo copies of the layout ``ref``: {"oci-archive": PATH, "docker-archive": PATH}."""
    out = {"oci-archive": os.path.join(work, "image.oci.tar"),
           "docker-archive": os.path.join(work, "image.docker.tar")}
    sh("skopeo", "copy", "-q", f"oci:{ref}", f"oci-archive:{out['oci-archive']}:v1")
    sh("skopeo", "copy", "-q", f"oci:{ref}", f"docker-archive:{out['docker-archive']}:nsr/test:v1")
    return out


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_digest(data: bytes) -> str:
    """``sha256:HEX`` of a layer's tar (its diff_id)."""
    return _digest(data)


def docker25(docker_archive: str, dest: str) -> str:
    """Docker 25's ``docker save`` tar, by the format: an OCI layout (index.json,
    oci-layout, blobs/sha256/*) with the layers uncompressed, and the old manifest.json
    naming the same blobs, made from the old-form tar ``docker_archive``."""
    with tarfile.open(docker_archive) as tar:
        old = json.load(tar.extractfile("manifest.json"))[0]    # type: ignore[arg-type]
        config = tar.extractfile(old["Config"]).read()           # type: ignore[union-attr]
        layers = [tar.extractfile(name).read() for name in old["Layers"]]   # type: ignore[union-attr]
    blobs = {_digest(b): b for b in [config, *layers]}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": _digest(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": _digest(b), "size": len(b)} for b in layers]}).encode()
    blobs[_digest(manifest)] = manifest
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _digest(manifest),
        "size": len(manifest), "annotations": {"io.containerd.image.name": "docker.io/nsr/test:v1",
                                               "org.opencontainers.image.ref.name": "v1"}}]}
    docker_manifest = [{"Config": f"blobs/sha256/{_digest(config)[7:]}", "RepoTags": ["nsr/test:v1"],
                        "Layers": [f"blobs/sha256/{_digest(b)[7:]}" for b in layers]}]
    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
             "index.json": json.dumps(index).encode(),
             "manifest.json": json.dumps(docker_manifest).encode()}
    files.update({f"blobs/sha256/{d[7:]}": b for d, b in blobs.items()})
    with tarfile.open(dest, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def write_layout(dest: str, layers: list[bytes], *, compress: str = "gzip",
                 config: dict | None = None, diff_ids: list[str] | None = None,
                 media_type: str | None = None) -> str:
    """An OCI layout in ``dest`` with the given layer tars (gzip, gzip2: two members, zstd
    or "" none); the
    config's diff_ids and the layers' media type may be overridden (damaged images)."""
    blobs: dict[str, bytes] = {}
    descs = []
    for raw in layers:
        if compress == "gzip":
            blob, kind = gzip.compress(raw, mtime=0), "tar+gzip"
        elif compress == "gzip2":        # two gzip members, as a parallel gzip may write
            half = len(raw) // 2
            blob = gzip.compress(raw[:half], mtime=0) + gzip.compress(raw[half:], mtime=0)
            kind = "tar+gzip"
        elif compress == "zstd":
            import zstandard
            blob, kind = zstandard.ZstdCompressor().compress(raw), "tar+zstd"
        else:
            blob, kind = raw, "tar"
        blobs[_digest(blob)] = blob
        descs.append({"mediaType": media_type or f"application/vnd.oci.image.layer.v1.{kind}",
                      "digest": _digest(blob), "size": len(blob)})
    cfg = {"architecture": "amd64", "os": "linux", "config": {},
           "rootfs": {"type": "layers", "diff_ids": diff_ids or [_digest(r) for r in layers]}}
    cfg.update(config or {})
    cfg_raw = json.dumps(cfg).encode()
    blobs[_digest(cfg_raw)] = cfg_raw
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": _digest(cfg_raw), "size": len(cfg_raw)},
                           "layers": descs}).encode()
    blobs[_digest(manifest)] = manifest
    os.makedirs(os.path.join(dest, "blobs", "sha256"))
    for d, b in blobs.items():
        with open(os.path.join(dest, "blobs", "sha256", d[7:]), "wb") as f:
            f.write(b)
    with open(os.path.join(dest, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(dest, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _digest(manifest),
            "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, f)
    return dest


def layer_blobs(layout: str) -> list[str]:
    """The paths of the layer blobs of the only image of ``layout``, bottom-up."""
    with open(os.path.join(layout, "index.json")) as f:
        top = json.load(f)["manifests"][0]["digest"][7:]
    with open(os.path.join(layout, "blobs", "sha256", top)) as f:
        manifest = json.load(f)
    return [os.path.join(layout, "blobs", "sha256", d["digest"][7:]) for d in manifest["layers"]]


def busybox_layer() -> bytes:
    """A layer with a static busybox in /bin and /bin/sh linked to it."""
    with open(find_busybox(), "rb") as f:
        data = f.read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("bin/",):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("bin/sh")
        info.type, info.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(info)
    return buf.getvalue()


@contextmanager
def own_store(tmp_path, monkeypatch) -> Iterator:
    """An image store of the test's own ($NSR_STORE_DIR): under ``tmp_path``, or on /dev/shm
    where ``tmp_path`` is on overlayfs (a container's /tmp), which cannot hold layers;
    removed afterwards."""
    import tempfile
    from recipes.common.upperfs import fs_of
    from recipes.images import store as storemod
    path = str(tmp_path / "store")
    shm = None
    if fs_of(str(tmp_path)).fstype == "overlay":
        shm = tempfile.mkdtemp(prefix="nsrtest-store-", dir="/dev/shm")
        path = os.path.join(shm, "store")
    monkeypatch.setenv("NSR_STORE_DIR", path)
    try:
        yield storemod.Store(path)
    finally:
        if shm:
            storemod.remove_tree(shm)
