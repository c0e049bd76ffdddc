"""``image-import``: an image from a layout, an oci-archive or a docker save tar, verified.

1. find what ``PATH`` is (a directory or a tar; an OCI layout or docker save's old form);
2. copy the manifest and the config into the import's own ``tmp/`` directory, each checked
   against its descriptor (sha256 and size) before it is read;
3. per layer, bottom-up: copy the blob (checked the same way), decompress it (tar, gzip,
   zstd) and unpack it into a new directory, hashing the tar as it streams by: the hash must
   be the config's diff_id for that layer. A layer the store has already is only hashed;
4. commit under the store's lock: blobs and new layers renamed into place, the image record
   written last, then its NAME:TAG. Until then nothing outside ``tmp/`` changed, and any
   failure removes the import's directory: nothing half-imported stays.

Blobs come in through :meth:`Importer.add_blob` only, which a registry pull can call with
an HTTP response as the stream.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable

from nsutil.backend import resolve_backend
from nsutil.errors import InvalidInput

from recipes.images import decompress, dockerarchive, layout
from recipes.images import mediatypes as mt
from recipes.images import refs as refnames
from recipes.images import whiteouts
from recipes.images.blobs import BadImage, chunks, copy_verified, hex_of, short
from recipes.images.source import Source, TarFiles, open_files
from recipes.images.store import Store, remove_tree, write_json
from recipes.images.unpack import LayerUnpacker, Unpacked

LINK_LEN = 26


class HashingReader:
    """A read-only stream that hashes (sha256) what is read through it."""

    def __init__(self, stream: BinaryIO):
        self.stream, self.hash = stream, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        """Read and hash up to ``n`` bytes."""
        data = self.stream.read(n)
        self.hash.update(data)
        return data

    def digest(self) -> str:
        """``sha256:HEX`` of everything read (the rest of the stream is read first)."""
        for _ in chunks(self):      # type: ignore[arg-type]
            pass
        return "sha256:" + self.hash.hexdigest()


def split_path(path: str) -> tuple[str, str | None]:
    """``DIR:REF`` or ``TAR:NAME:TAG`` -> (path, ref); a path that exists as given wins."""
    if os.path.exists(path) or ":" not in path:
        return path, None
    head, ref = path.split(":", 1)
    return head, ref or None


def open_source(path: str) -> Source:
    """The :class:`Source` ``path`` names (see :func:`split_path`), or one line why not."""
    where, ref = split_path(path)
    files = open_files(where)
    if layout.is_layout(files):
        if isinstance(files, TarFiles):
            kind = ("docker save tar (Docker 25, OCI form)" if files.exists("manifest.json")
                    else "oci-archive")
        else:
            kind = "OCI image layout"
        return layout.read(files, ref, kind)
    if isinstance(files, TarFiles) and dockerarchive.is_docker_archive(files):
        return dockerarchive.read(files, ref)
    files.close()
    raise BadImage(f"{where} is not an image: no oci-layout and index.json, no manifest.json",
                   hint="give an OCI image layout directory (DIR or DIR:REF), an oci-archive "
                        "or a docker save tar")


@dataclass
class Imported:
    """The outcome of an import: the image record and what it cost."""

    record: dict[str, Any]
    name: str | None
    kind: str
    new_layers: int = 0
    seconds: float = 0.0
    skipped_devices: list[str] = field(default_factory=list)
    dropped_xattrs: list[str] = field(default_factory=list)
    dropped_caps: list[str] = field(default_factory=list)


class Importer:
    """One import into ``store``: blobs verified into a staging directory, layers unpacked
    there, then :meth:`commit`."""

    def __init__(self, store: Store, staging: str, backend: str = "auto"):
        self.store, self.staging, self.backend = store, staging, backend
        self.blobs: dict[str, str] = {}          # digest -> staged path
        self.layers: dict[str, dict] = {}        # diff_id -> {"dir", "size"} staged
        self.claimed: set[str] = set()           # diff_ids unpacked (or being) by this import
        self.results: dict[str, Unpacked] = {}   # layer -> what its unpacking made
        self.lock = threading.Lock()
        self.skipped_devices: list[str] = []
        self.dropped_xattrs: list[str] = []
        self.dropped_caps: list[str] = []
        os.mkdir(os.path.join(staging, "layers"), 0o700)

    def add_blob(self, stream: BinaryIO, desc: dict, what: str) -> str:
        """Copy a blob into the staging directory, verified against ``desc``; its path."""
        path = os.path.join(self.staging, hex_of(desc["digest"]))
        if desc["digest"] not in self.blobs:
            copy_verified(stream, desc["digest"], desc["size"], path, what)
            self.blobs[desc["digest"]] = path
        return path

    def add_layer(self, blob: str, desc: dict, diff_id: str, what: str) -> Callable[[], None]:
        """Claim a layer (in the importing thread) and return its work: unpack the staged
        blob (only hash it if the store has the layer, or an earlier layer of this image is
        the same) and check its diff_id. The work may run in any thread (:class:`Unpacks`)."""
        compression = mt.layer_compression(desc.get("mediaType", ""), what)
        have = os.path.isdir(self.store.diff(diff_id)) or diff_id in self.claimed
        self.claimed.add(diff_id)
        target = os.path.join(self.staging, "layers", hex_of(diff_id))
        return lambda: self.unpack_layer(blob, compression, None if have else target,
                                         diff_id, what)

    def unpack_layer(self, blob: str, compression: str, target: str | None, diff_id: str,
                     what: str) -> None:
        """Decompress the blob, hash its tar and (with ``target``) unpack it there; the hash
        must be ``diff_id``. A tool that failed (shell backend) is the reason given, also
        when the unpacking stopped first (on the tool's short output)."""
        with open(blob, "rb", buffering=0) as raw:
            stream = decompress.open_layer(raw, compression, self.backend, what)
            tool = stream if isinstance(stream, decompress.ToolReader) else None
            reader = decompress.Prefetch(stream)
            try:
                result = None
                if target is not None:
                    os.makedirs(os.path.join(target, "diff"), 0o755)
                    result = LayerUnpacker(os.path.join(target, "diff"), what).unpack(reader)
                got = reader.digest()
            except decompress.errors() as exc:
                failed = tool.finish() if tool else None    # the tool's words, if it failed
                if failed:
                    raise failed from None
                if isinstance(exc, BadImage):
                    raise
                raise BadImage(f"{what} cannot be decompressed ({compression or 'tar'}): {exc}",
                               hint="the layer is damaged or its media type is wrong: nothing "
                                    "was imported") from None
            else:
                failed = tool.finish() if tool else None
                if failed:
                    raise failed
            finally:
                reader.close()
                if tool:
                    tool.kill()
        if got != diff_id:
            raise BadImage(f"{what}'s content does not match the config's diff_id: "
                           f"{short(got)} is not {short(diff_id)}",
                           hint="the image is damaged or was changed: nothing was imported")
        if result is not None:
            with self.lock:
                self.layers[diff_id] = {"dir": target, "size": result.size}
                self.results[what] = result

    def notes(self, order: list[str]) -> None:
        """The layers' notes (devices skipped, xattrs and capabilities dropped), bottom-up."""
        for what in order:
            result = self.results.get(what)
            if result is not None:
                self.skipped_devices += result.skipped_devices
                self.dropped_xattrs += result.dropped_xattrs
                self.dropped_caps += result.dropped_caps

    def commit(self, record: dict[str, Any], name: str | None) -> int:
        """Under the store's lock: blobs and layers into place, the record, the name.
        An image the store has already (same id) keeps its record and blobs: only the
        name is added. Returns the number of new layers. What it moved is removed again if
        it fails."""
        moved: list[str] = []
        with self.store.locked():
            try:
                kept = self.store.image(record["id"])    # the same image, reached before
                record = kept if kept and "layers" in kept else record
                wanted = referenced(record)
                for digest, path in self.blobs.items():
                    final = self.store.blob(digest)
                    if digest in wanted and not os.path.exists(final):
                        os.rename(path, final)
                        moved.append(final)
                new = 0
                for diff_id, info in self.layers.items():
                    final = self.store.layer(diff_id)
                    if os.path.isdir(final):
                        continue
                    link = self.link_name(diff_id)
                    write_json(os.path.join(info["dir"], "layer.json"),
                               {"diff_id": diff_id, "size": info["size"], "link": link})
                    os.rename(info["dir"], final)
                    moved.append(final)
                    linkpath = self.store.path("l", link)
                    os.symlink(os.path.join("..", "layers", hex_of(diff_id), "diff"), linkpath)
                    moved.append(linkpath)
                    new += 1
                if record is not kept:
                    write_json(self.store.image_file(record["id"]), record)
                if name:
                    refs = self.store.refs()
                    refs[name] = record["id"]
                    self.store.save_refs(refs)
                return new
            except BaseException:
                for path in reversed(moved):
                    remove_tree(path)
                raise

    def link_name(self, diff_id: str) -> str:
        """A short name for ``l/`` (26 characters, as containers-storage's): the diff_id's
        hex re-spelled in base 32, so it is stable and (at 130 bits) unique."""
        return base64.b32encode(bytes.fromhex(hex_of(diff_id))).decode()[:LINK_LEN]


class Unpacks:
    """The layers' unpacking, run beside the copying of the next blobs: in threads (one per
    CPU, at most one per layer), since zlib, hashlib and the file system calls let go of the
    GIL. Blobs come in one at a time (a stream may be an archive's member or an HTTP
    response); each layer unpacks from its own staged blob into its own directory. Leaving
    the ``with`` block waits for every unpacking (none writes into a staging directory that
    is being removed) and raises the error of the lowest layer that failed, as a serial
    import would have."""

    def __init__(self, layers: int):
        workers = max(1, min(layers, os.cpu_count() or 1))
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="nsr-unpack")
        self.futures: list[Future] = []

    def start(self, work: Callable[[], None]) -> None:
        """Run ``work`` (an :meth:`Importer.add_layer`'s) in the pool."""
        self.futures.append(self.pool.submit(work))

    def __enter__(self) -> "Unpacks":
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        interrupted = kind is not None and not issubclass(kind, Exception)
        # an error here (a blob that fails its check) comes from a layer above every one
        # started: those still run to the end, so a lower layer's error wins, as serially
        self.pool.shutdown(wait=True, cancel_futures=interrupted)
        if interrupted:
            return                            # Ctrl-C: raised as it is
        for future in self.futures:
            if not future.cancelled() and future.exception() is not None:
                raise future.exception()     # type: ignore[misc]


def import_image(path: str, name: str | None = None, store: Store | None = None,
                 backend: str | None = None) -> Imported:
    """``image-import PATH [--name NAME[:TAG]]``: verify, unpack and keep the image.
    ``backend``: who decompresses (:mod:`recipes.images.decompress`)."""
    wanted = refnames.normalize(name) if name else None
    return import_source(open_source(path), wanted, store, backend)


def import_source(source: Source, wanted: str | None = None, store: Store | None = None,
                  backend: str | None = None) -> Imported:
    """Verify, unpack and keep the image ``source`` gives (an archive's or a registry's), as
    ``wanted`` (NAME:TAG, normalized) or the first name it suggests; closes its files."""
    began = time.monotonic()
    store = store or Store()
    backend = resolve_backend(backend)
    try:
        store.make_dirs()
        with store.staging() as staging:
            whiteouts.probe(store.root, staging)
            imp = Importer(store, staging, backend)
            manifest, manifest_digest, config_raw = source.read_top(staging)
            config_desc, layer_descs = mt.check_manifest(manifest, "the image's manifest")
            imp.blobs[config_desc["digest"]] = os.path.join(staging, hex_of(config_desc["digest"]))
            if manifest_digest:
                imp.blobs[manifest_digest] = os.path.join(staging, hex_of(manifest_digest))
            try:
                config = json.loads(config_raw)
            except ValueError:
                raise BadImage("the image's config is not JSON", hint="the image is damaged: "
                               "nothing was imported") from None
            diff_ids = mt.check_config(config, layer_descs, "the image's config")
            order = [f"layer {i + 1} of {len(layer_descs)} ({short(d['digest'])})"
                     for i, d in enumerate(layer_descs)]
            with Unpacks(len(layer_descs)) as unpacks:
                for what, desc, diff_id in zip(order, layer_descs, diff_ids):
                    with source.files.open(source.blob_name(desc["digest"])) as stream:
                        blob = imp.add_blob(stream, desc, what)
                    unpacks.start(imp.add_layer(blob, desc, diff_id, what))
            imp.notes(order)
            record = make_record(config_desc, manifest_digest, layer_descs, diff_ids, source.kind)
            if not wanted and source.names:
                wanted = refnames.normalize(source.names[0])
            new = imp.commit(record, wanted)
    finally:
        source.files.close()
    return Imported(record, wanted, source.kind, new, time.monotonic() - began,
                    imp.skipped_devices, imp.dropped_xattrs, imp.dropped_caps)


def referenced(record: dict[str, Any]) -> set[str]:
    """The digests of the blobs an image record refers to: config, manifest, layers."""
    return {record["id"], *([record["manifest"]] if record.get("manifest") else []),
            *(layer["digest"] for layer in record["layers"])}


def make_record(config: dict, manifest_digest: str | None, layers: list[dict],
                diff_ids: list[str], kind: str) -> dict[str, Any]:
    """The image's record: its id (the config's digest), config, manifest, layers bottom-up."""
    return {"id": config["digest"], "config": config, "manifest": manifest_digest,
            "layers": [{"digest": d["digest"], "size": d["size"], "mediaType": d.get("mediaType"),
                        "diff_id": diff_id} for d, diff_id in zip(layers, diff_ids)],
            "source": kind, "imported": time.time()}


def check_not_both(image: str | None, rootfs: str | None) -> None:
    """``--image`` and ``--rootfs`` exclude each other."""
    if image and rootfs:
        raise InvalidInput("--image and --rootfs exclude each other",
                           hint="a container's root filesystem is either an image's layers "
                                "or a directory: give one of them")
