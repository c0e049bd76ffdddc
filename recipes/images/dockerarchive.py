"""``docker save``'s old form, as skopeo's ``docker-archive:`` writes it.

``manifest.json`` lists, per image, its config file (``HEX.json``: HEX is the config's
sha256, the image id) and its layer tars in order (``HEX/layer.tar`` or ``HEX.tar``,
uncompressed), with ``RepoTags``. There are no layer digests: an uncompressed layer's digest
is its diff_id, so the config's diff_ids are the descriptors the layers are checked against.
"""
from __future__ import annotations

import hashlib
import json
import os
import re

from recipes.images import mediatypes as mt
from recipes.images.blobs import BadImage, chunks
from recipes.images.source import Files, Source

DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
_CONFIG_NAME = re.compile(r"(?:.*/)?([0-9a-f]{64})\.json")


def is_docker_archive(files: Files) -> bool:
    """True if ``files`` has a docker save ``manifest.json``."""
    return files.exists("manifest.json")


def _config_digest(files: Files, name: str) -> str:
    """The config's digest: from its name where that is ``HEX.json``, else its hash."""
    m = _CONFIG_NAME.fullmatch(name)
    if m:
        return "sha256:" + m.group(1)
    h = hashlib.sha256()
    with files.open(name) as f:
        for data in chunks(f):
            h.update(data)
    return "sha256:" + h.hexdigest()


def pick(entries: object, ref: str | None, what: str) -> dict:
    """The manifest.json entry tagged ``ref`` (or the only one)."""
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise BadImage(f"{what}'s manifest.json lists no image", hint="not a docker save tar")
    if ref is not None:
        for e in entries:
            if ref in (e.get("RepoTags") or []):
                return e
        raise BadImage(f"{what} has no image tagged {ref!r}", hint="see its manifest.json")
    if len(entries) > 1:
        raise BadImage(f"{what} holds {len(entries)} images", hint="say which: PATH:NAME:TAG")
    return entries[0]


def read(files: Files, ref: str | None) -> Source:
    """A :class:`Source` for the image of a docker save tar (old form)."""
    entry = pick(files.read_json("manifest.json"), ref, files.what)
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise BadImage(f"{files.what}'s manifest.json has no Config and Layers",
                       hint="not a docker save tar")
    config_desc = {"mediaType": mt.CONFIG[1], "digest": _config_digest(files, config_name),
                   "size": files.size(config_name)}
    source = Source("docker save tar", files, list(entry.get("RepoTags") or []),
                    lambda staging: ({}, None, b""))
    source.blob_names[config_desc["digest"]] = config_name

    def read_top(staging: str) -> tuple[dict, str | None, bytes]:
        path = os.path.join(staging, config_desc["digest"].split(":")[1])
        source.copy_blob(config_desc, path, "the image's config")
        with open(path, "rb") as f:
            raw = f.read()
        try:
            config = json.loads(raw)
        except ValueError:
            raise BadImage("the image's config is not JSON", hint="the image is damaged") from None
        diff_ids = mt.check_config(config, layer_names, "the image's config")
        layers = []
        for name, diff_id in zip(layer_names, diff_ids):
            if not isinstance(name, str) or not files.exists(name):
                raise BadImage(f"{files.what} has no layer {name!r}",
                               hint="the archive is incomplete: nothing was imported")
            source.blob_names[diff_id] = name
            layers.append({"mediaType": DOCKER_LAYER, "digest": diff_id, "size": files.size(name)})
        manifest = {"schemaVersion": 2, "mediaType": mt.MANIFEST[1], "config": config_desc,
                    "layers": layers}
        return manifest, None, raw

    source.read_top = read_top
    return source
