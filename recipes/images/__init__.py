"""Images: Docker's copy-on-write for real -- read-only layers shared on disk.

The document's third principle is copy-on-write, and Docker's copy-on-write is its image
layers: an image is a stack of tar layers and a config; every container of the image
mounts the same unpacked layers as overlayfs lower directories, with one writable upper of
its own. This package is that store, below the container package:

* :mod:`~recipes.images.importer` -- ``image-import``: OCI layout, oci-archive, docker save
  (its readers: :mod:`~recipes.images.layout`, :mod:`~recipes.images.dockerarchive`,
  :mod:`~recipes.images.source`), every blob verified (:mod:`~recipes.images.blobs`);
* :mod:`~recipes.images.pull` -- ``image-pull``: a registry's image (HTTP API v2, client in
  :mod:`~recipes.images.registry`) through the same verified path as an import;
* :mod:`~recipes.images.store` -- blobs by digest, layers unpacked once, images by id;
* :mod:`~recipes.images.unpack` and :mod:`~recipes.images.whiteouts` -- a layer's tar into a
  directory, safely, OCI whiteouts as overlayfs whiteouts;
* :mod:`~recipes.images.view`, :mod:`~recipes.images.lowers` -- what a container asks:
  its files before mounting, and the lowerdir list.

This module: list, inspect, tag, remove and prune images, and :func:`for_container`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from nsutil import fsmount, procfs
from nsutil.errors import Conflict, NsrError

from recipes.common.leftover import Leftover
from recipes.images import refs as refnames
from recipes.images import view
from recipes.images.blobs import BadImage, hex_of, short  # noqa: F401 (public API)
from recipes.images.importer import (Imported, check_not_both, import_image,  # noqa: F401
                                     referenced)
from recipes.images.lowers import Lowers, choose, fits
from recipes.images.store import Store, drop, read_json, remove_tree, store_dir, write_json  # noqa: F401

SECTION = "images: read-only layers shared on disk (copy-on-write)"


@dataclass
class ImageRow:
    """One line of ``image-ls``."""

    name: str
    tag: str
    id: str
    layers: int
    size: int          #: bytes of file data in its layers
    shared: int        #: of which in layers another image uses too

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return dict(self.__dict__)


def _layer_users(store: Store) -> dict[str, set[str]]:
    """diff_id -> ids of the images that use it."""
    users: dict[str, set[str]] = {}
    for rec in store.images():
        for layer in rec["layers"]:
            users.setdefault(layer["diff_id"], set()).add(rec["id"])
    return users


def list_images(store: Store | None = None) -> list[ImageRow]:
    """Every image with its names (an unnamed one once, as ``<none>``)."""
    store = store or Store()
    users = _layer_users(store)
    names: dict[str, list[str]] = {}
    for ref, image_id in sorted(store.refs().items()):
        names.setdefault(image_id, []).append(ref)
    rows = []
    for rec in store.images():
        size = shared = 0
        for diff_id in {layer["diff_id"] for layer in rec["layers"]}:
            n = int(store.layer_info(diff_id).get("size", 0))
            size += n
            shared += n if len(users.get(diff_id, ())) > 1 else 0
        for ref in names.get(rec["id"], ["<none>:<none>"]):
            name, tag = ref.rsplit(":", 1)
            rows.append(ImageRow(name, tag, rec["id"], len(rec["layers"]), size, shared))
    return sorted(rows, key=lambda r: (r.name, r.tag))


def find(ref: str, store: Store | None = None) -> dict[str, Any]:
    """The record of the image ``ref`` (NAME[:TAG] or id), or one line why not."""
    store = store or Store()
    image_id, _ = refnames.resolve(ref, store.refs(), [r["id"] for r in store.images()])
    rec = store.image(image_id)
    if rec is None:
        raise NsrError(f"image {ref!r} is named in refs.json but its record is missing",
                       hint="run `invoke image-rm` on the name and import it again")
    return rec


def inspect(ref: str, store: Store | None = None) -> dict[str, Any]:
    """``image-inspect``: id, names, config, layers bottom-up (with their directories), history."""
    store = store or Store()
    rec = find(ref, store)
    config = read_json(store.blob(rec["id"])) or {}
    return {"Id": rec["id"], "RepoTags": sorted(n for n, i in store.refs().items() if i == rec["id"]),
            "Source": rec.get("source"), "Manifest": rec.get("manifest"),
            "Architecture": config.get("architecture"), "Os": config.get("os"),
            "Config": config.get("config") or {},
            "Layers": [{"Digest": layer["digest"], "DiffID": layer["diff_id"],
                        "MediaType": layer.get("mediaType"), "Size": layer["size"],
                        "Unpacked": store.layer_info(layer["diff_id"]).get("size"),
                        "Dir": store.diff(layer["diff_id"])} for layer in rec["layers"]],
            "History": config.get("history") or []}


def tag(src: str, dst: str, store: Store | None = None) -> str:
    """``image-tag SRC DST``: one more name for an image; the new NAME:TAG."""
    store = store or Store()
    rec = find(src, store)
    name = refnames.normalize(dst)
    with store.locked():
        refs = store.refs()
        refs[name] = rec["id"]
        store.save_refs(refs)
    return name


def _users_of(store: Store, image_id: str) -> list[str]:
    return [u["container"] for u in store.uses() if u.get("image") == image_id]


def remove(ref: str, store: Store | None = None) -> tuple[str, bool]:
    """``image-rm NAME``: drop the name; the image goes with its last name (layers another
    image uses stay). Refused while a container runs from it. (id, whether it was removed)."""
    store = store or Store()
    rec = find(ref, store)
    image_id, by_name = refnames.resolve(ref, store.refs(), [rec["id"]])
    with store.locked():
        running = _users_of(store, image_id)
        if running:
            raise Conflict(f"image {ref} is used by the container(s) {', '.join(running)}",
                           hint="stop them first (or `invoke cleanup` if they are gone)")
        refs = store.refs()
        if by_name:
            refs.pop(by_name, None)
        else:
            refs = {n: i for n, i in refs.items() if i != image_id}
        store.save_refs(refs)
        if image_id in refs.values():
            return image_id, False
        drop(store.image_file(image_id))
    prune(store)
    return image_id, True


@dataclass
class Pruned:
    """What ``image-prune`` removed."""

    layers: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    bytes: int = 0


def prune(store: Store | None = None) -> Pruned:
    """``image-prune``: layers and blobs no image uses (and unnamed records stay: they are
    images). Holds the lock, so an import's commit never races it."""
    store = store or Store()
    out = Pruned()
    if not os.path.isdir(store.root):
        return out
    with store.locked():
        used_layers, used_blob_hex = set(), set()
        for rec in store.images():
            used_blob_hex.update(hex_of(d) for d in referenced(rec))
            used_layers.update(hex_of(layer["diff_id"]) for layer in rec["layers"])
        for entry in sorted(os.listdir(store.path("layers"))):
            if entry not in used_layers:
                info = read_json(store.path("layers", entry, "layer.json")) or {}
                if info.get("link"):
                    drop(store.path("l", info["link"]))
                out.bytes += int(info.get("size", 0))
                remove_tree(store.path("layers", entry))
                out.layers.append("sha256:" + entry)
        for entry in sorted(os.listdir(store.path("blobs", "sha256"))):
            if entry not in used_blob_hex:
                path = store.path("blobs", "sha256", entry)
                out.bytes += os.path.getsize(path)
                drop(path)
                out.blobs.append("sha256:" + entry)
        for entry in os.listdir(store.path("l")):
            if not os.path.exists(store.path("l", entry)):
                drop(store.path("l", entry))
    return out


def leftovers() -> list[Leftover]:
    """Half-imported leftovers: ``tmp/import-PID-*`` of imports whose process is gone (a
    complete image is never one: it is a record under ``images/``)."""
    store = Store()
    return [Leftover("image-import", path, lambda p=path: remove_tree(p))
            for path in store.stale_staging()]


@dataclass
class RunImage:
    """What a container needs of an image: its lowers and its config."""

    id: str
    name: str
    layers: list[str]          #: the layers' directories, top first
    lowers: Lowers             #: the same as the mount gets them
    config: dict[str, Any]     #: the config's "config" (Entrypoint, Cmd, Env, WorkingDir, User)

    def resolve(self, path: str) -> str | None:
        """The host file of ``path`` inside the image (:func:`recipes.images.view.resolve`)."""
        return view.resolve(self.layers, path)


def for_container(ref: str, store: Store | None = None, backend: str = "native") -> RunImage:
    """The image ``ref`` as a container mounts it: lowers bottom layer last, and its config.
    Past the options' page, the native (or auto) backend appends the lowers with fsconfig
    where the kernel can (probed: Linux 6.8+); the shell backend uses short links."""
    store = store or Store()
    rec = find(ref, store)
    config = read_json(store.blob(rec["id"])) or {}
    diff_ids = [layer["diff_id"] for layer in reversed(rec["layers"])]
    diffs = [store.diff(d) for d in diff_ids]
    links = [str(store.layer_info(d).get("link", "")) for d in diff_ids]
    plus = backend != "shell" and not fits(diffs) and fsmount.lowerdir_plus()
    return RunImage(rec["id"], ref, diffs, choose(store.root, diffs, links, plus),
                    config.get("config") or {})


def use(image_id: str, container: str, store: Store | None = None) -> str:
    """Record that ``container`` runs from ``image_id`` (``image-rm`` refuses meanwhile);
    the record's path, to :func:`drop` when the container is gone."""
    store = store or Store()
    store.make_dirs()
    path = store.path("uses", f"{container}.json")
    write_json(path, {"image": image_id, "container": container, "pid": os.getpid(),
                      "starttime": procfs.start_time(os.getpid())})
    return path


def describe_size(n: int) -> str:
    """Bytes as ``docker images`` shows them (kB, MB, GB; powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n}B"


def dumps(data: Any) -> str:
    """JSON as the CLI prints it."""
    return json.dumps(data, indent=2, sort_keys=False)
