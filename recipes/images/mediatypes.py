"""The media types an image is made of, and how each layer's bytes become a tar stream.

OCI (``application/vnd.oci.image.*``) and Docker (``application/vnd.docker.*``) name the
same things: an index (a list of manifests, one per platform), a manifest (a config and
layers), a config (JSON), and layers (tar, tar+gzip, tar+zstd). Anything else is refused
in one line before anything is kept.
"""
from __future__ import annotations

import gzip
import platform
from typing import Any, BinaryIO

from recipes.images.blobs import BadImage, check_digest

INDEX = ("application/vnd.oci.image.index.v1+json",
         "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST = ("application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json")
CONFIG = ("application/vnd.oci.image.config.v1+json",
          "application/vnd.docker.container.image.v1+json")
#: layer media type -> compression ("" none, "gzip", "zstd")
LAYERS = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
#: platform.machine() -> the OCI architecture name
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
        "s390x": "s390x", "riscv64": "riscv64"}


def descriptor(obj: Any, what: str) -> dict:
    """A descriptor (mediaType, digest, size), checked; else :class:`BadImage`."""
    if not isinstance(obj, dict) or not isinstance(obj.get("size"), int) or obj["size"] < 0:
        raise BadImage(f"{what} is not a descriptor with a digest and a size",
                       hint="the manifest is damaged")
    check_digest(obj.get("digest"), what)
    return obj


def layer_compression(media_type: str, what: str) -> str:
    """``""``, ``"gzip"`` or ``"zstd"`` for a layer media type, else :class:`BadImage`."""
    if media_type not in LAYERS:
        raise BadImage(f"{what} has the unknown media type {media_type!r}",
                       hint="layers may be tar, tar+gzip or tar+zstd (OCI or Docker types)")
    return LAYERS[media_type]


def check_manifest(manifest: Any, what: str) -> tuple[dict, list[dict]]:
    """(config descriptor, layer descriptors bottom-up) of an image manifest."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        raise BadImage(f"{what} is not an image manifest (no layers)",
                       hint="give an OCI image layout, an oci-archive or a docker save tar")
    media = manifest.get("mediaType", MANIFEST[0])
    if media not in MANIFEST:
        raise BadImage(f"{what} has the unknown media type {media!r}",
                       hint=f"an image manifest is {MANIFEST[0]} or {MANIFEST[1]}")
    config = descriptor(manifest.get("config"), f"{what}'s config")
    if config.get("mediaType", CONFIG[0]) not in CONFIG:
        raise BadImage(f"{what}'s config has the unknown media type {config.get('mediaType')!r}",
                       hint="only container images can be imported (not artifacts)")
    layers = [descriptor(d, f"{what}'s layer {i + 1}") for i, d in enumerate(manifest["layers"])]
    for i, d in enumerate(layers):
        layer_compression(d.get("mediaType", ""), f"layer {i + 1} ({d['digest'][:19]}...)")
    return config, layers


def this_platform() -> tuple[str, str]:
    """(os, architecture) of this machine as OCI names them: ("linux", "amd64")."""
    machine = platform.machine()
    return "linux", ARCH.get(machine, machine)


def choose_manifest(index: dict, what: str) -> dict:
    """The manifest descriptor of an index that fits this machine (the only one, or the one
    whose platform is this machine's)."""
    manifests = [descriptor(d, f"{what}'s manifest") for d in index.get("manifests", [])]
    if len(manifests) == 1 and "platform" not in manifests[0]:
        return manifests[0]
    want = this_platform()
    for d in manifests:
        p = d.get("platform") or {}
        if (p.get("os"), p.get("architecture")) == want:
            return d
    seen = ", ".join(f"{(d.get('platform') or {}).get('os')}/{(d.get('platform') or {}).get('architecture')}"
                     for d in manifests) or "none"
    raise BadImage(f"{what} has no image for {want[0]}/{want[1]} (it has: {seen})",
                   hint="import an image built for this machine")


def check_config(config: Any, layers: list[dict], what: str) -> list[str]:
    """The config's diff_ids (one per layer, bottom-up), checked against the manifest."""
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise BadImage(f"{what} is not an image config (no rootfs.diff_ids)",
                       hint="the image is damaged, or not a container image")
    if len(diff_ids) != len(layers):
        raise BadImage(f"{what} lists {len(diff_ids)} diff_ids for {len(layers)} layers",
                       hint="the image is damaged")
    return [check_digest(d, f"{what}'s diff_id {i + 1}") for i, d in enumerate(diff_ids)]


def decompressed(stream: BinaryIO, compression: str) -> BinaryIO:
    """A stream of the layer's tar bytes (gzip through zlib, zstd through ``zstandard``)."""
    if compression == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")   # type: ignore[return-value]
    if compression == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
    return stream
