"""The OCI image layout: ``oci-layout``, ``index.json`` and ``blobs/sha256/HEX``.

As a directory (``umoci init``, ``skopeo copy ... oci:DIR:REF``), as a tar of one
(``oci-archive:``), or as Docker 25's ``docker save`` (the same layout, plus the old
``manifest.json`` beside it). ``DIR:REF`` picks the manifest whose
``org.opencontainers.image.ref.name`` is REF; without REF the index must hold one image
(an index per platform is followed to this machine's).
"""
from __future__ import annotations

import json
import os

from recipes.images import mediatypes as mt
from recipes.images.blobs import BadImage
from recipes.images.source import Files, Source

REF_ANNOTATION = "org.opencontainers.image.ref.name"
NAME_ANNOTATION = "io.containerd.image.name"


def is_layout(files: Files) -> bool:
    """True if ``files`` holds an OCI image layout."""
    return files.exists("oci-layout") and files.exists("index.json")


def pick(index: dict, ref: str | None, where: str) -> dict:
    """The manifest descriptor of ``index`` named ``ref`` (or the only one)."""
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise BadImage(f"{where}'s index.json lists no image", hint="the layout is empty: "
                       "make an image in it first (umoci new, skopeo copy)")
    if ref is not None:
        named = [d for d in manifests
                 if isinstance(d, dict) and (d.get("annotations") or {}).get(REF_ANNOTATION) == ref]
        if not named:
            refs = sorted({(d.get("annotations") or {}).get(REF_ANNOTATION, "?")
                           for d in manifests if isinstance(d, dict)})
            raise BadImage(f"{where} has no image named {ref!r} (it has: {', '.join(refs)})",
                           hint="write DIR:REF with one of those names")
        return mt.descriptor(named[0], f"{where}:{ref}")
    if len(manifests) > 1:
        refs = sorted({(d.get("annotations") or {}).get(REF_ANNOTATION, "?")
                       for d in manifests if isinstance(d, dict)})
        raise BadImage(f"{where} holds {len(manifests)} images ({', '.join(refs)})",
                       hint="say which one: DIR:REF")
    return mt.descriptor(manifests[0], f"{where}'s image")


def suggested_names(desc: dict, files: Files) -> list[str]:
    """NAME:TAG the layout suggests: Docker's RepoTags, containerd's image name."""
    names = []
    if files.exists("manifest.json"):
        data = files.read_json("manifest.json")
        for entry in data if isinstance(data, list) else []:
            names += [t for t in entry.get("RepoTags") or [] if isinstance(t, str)]
    name = (desc.get("annotations") or {}).get(NAME_ANNOTATION)
    if isinstance(name, str) and name not in names:
        names.append(name)
    return names


def read(files: Files, ref: str | None, kind: str) -> Source:
    """A :class:`Source` for the image ``ref`` of the layout in ``files``."""
    layout = files.read_json("oci-layout")
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise BadImage(f"{files.what}'s oci-layout has no imageLayoutVersion",
                       hint="not an OCI image layout")
    desc = pick(files.read_json("index.json"), ref, files.what)
    source = Source(kind, files, suggested_names(desc, files), lambda staging: ({}, None, b""))

    def read_top(staging: str) -> tuple[dict, str | None, bytes]:
        top = desc
        for _ in range(4):     # an index (one per platform) may point at the manifest
            manifest = load_verified(source, top, staging, "the image's manifest")
            if manifest.get("mediaType") in mt.INDEX or top.get("mediaType") in mt.INDEX:
                top = mt.choose_manifest(manifest, files.what)
                continue
            config, _ = mt.check_manifest(manifest, "the image's manifest")
            path = os.path.join(staging, config["digest"].split(":")[1])
            source.copy_blob(config, path, "the image's config")
            with open(path, "rb") as f:
                return manifest, top["digest"], f.read()
        raise BadImage(f"{files.what}: indexes nested too deep", hint="the image is damaged")

    source.read_top = read_top
    return source


def load_verified(source: Source, desc: dict, staging: str, what: str) -> dict:
    """Copy the JSON blob of ``desc`` into ``staging`` (verified) and parse it."""
    path = os.path.join(staging, desc["digest"].split(":")[1])
    source.copy_blob(desc, path, what)
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except ValueError:
        raise BadImage(f"{what} is not JSON", hint="the image is damaged") from None
    if not isinstance(data, dict):
        raise BadImage(f"{what} is not a JSON object", hint="the image is damaged")
    return data
