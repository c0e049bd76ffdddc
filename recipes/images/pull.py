"""``image-pull REF``: an image from a registry, through the same verified path as an import.

1. read REF as Docker does (:func:`~recipes.images.registry.parse_ref`);
2. fetch the manifest by tag or digest; an index (manifest list) chooses this machine's
   platform, and its manifest is fetched by digest and checked against it;
3. hand the importer a :class:`~recipes.images.source.Source` whose blobs are the
   registry's HTTP responses: every blob goes through ``copy_verified`` (sha256 and size),
   every layer's tar is checked against its diff_id, and nothing is kept before the commit,
   exactly as for ``image-import``. A pull killed midway leaves only its ``tmp/`` directory,
   which ``cleanup`` removes.
"""
from __future__ import annotations

import io
import json
import os
from typing import BinaryIO

from recipes.images import mediatypes as mt
from recipes.images import refs as refnames
from recipes.images.blobs import BadImage, copy_verified, hex_of, sha256_bytes
from recipes.images.importer import Imported, import_source
from recipes.images.registry import Client, Reference, RegistryError, parse_ref
from recipes.images.source import Files, Source
from recipes.images.store import Store

ACCEPT = ", ".join((*mt.MANIFEST, *mt.INDEX))
MAX_DEPTH = 4


class RegistryFiles(Files):
    """A repository's blobs by their layout names (``blobs/sha256/HEX``), fetched on open."""

    def __init__(self, client: Client):
        self.client, self.what = client, str(client.ref)

    def exists(self, name: str) -> bool:
        """Blobs are asked for by name; the registry answers 404 for a missing one."""
        return name.startswith("blobs/sha256/")

    def open(self, name: str) -> BinaryIO:
        """The blob ``blobs/sha256/HEX`` as the registry's HTTP response."""
        return self.client.blob("sha256:" + name.rsplit("/", 1)[1])

    def size(self, name: str) -> int:
        """Not known before the blob is fetched (the descriptor says it)."""
        raise NotImplementedError


def fetch_manifest(client: Client, reference: str, staging: str, want_digest: str | None,
                   size: int | None) -> tuple[dict, str]:
    """(manifest or index, its digest), verified: against ``want_digest`` (and ``size``)
    when known, else against the registry's ``Docker-Content-Digest`` if it sends one; kept
    in ``staging`` under its digest."""
    body, content_type = client.manifest(reference, ACCEPT)
    digest = want_digest or sha256_bytes(body)
    what = f"the manifest of {client.ref}"
    copy_verified(io.BytesIO(body), digest, len(body) if size is None else size,
                  os.path.join(staging, hex_of(digest)), what)
    try:
        manifest = json.loads(body)
    except ValueError:
        raise BadImage(f"{what} is not JSON", hint="is it a registry?") from None
    if not isinstance(manifest, dict):
        raise BadImage(f"{what} is not a JSON object", hint="is it a registry?")
    manifest.setdefault("mediaType", content_type)
    return manifest, digest


def registry_source(client: Client) -> Source:
    """A :class:`Source` reading the image ``client.ref`` names from its registry."""
    ref = client.ref
    source = Source(f"registry {ref.host}", RegistryFiles(client),
                    [ref.name] if ref.name else [], lambda staging: ({}, None, b""))

    def read_top(staging: str) -> tuple[dict, str | None, bytes]:
        reference, want, size = ref.reference, ref.digest, None
        for _ in range(MAX_DEPTH):
            manifest, digest = fetch_manifest(client, reference, staging, want, size)
            if manifest.get("mediaType") in mt.INDEX or "manifests" in manifest:
                chosen = mt.choose_manifest(manifest, str(ref))
                reference = want = chosen["digest"]
                size = chosen["size"]
                continue
            config, _ = mt.check_manifest(manifest, f"the manifest of {ref}")
            path = os.path.join(staging, hex_of(config["digest"]))
            source.copy_blob(config, path, "the image's config")
            with open(path, "rb") as f:
                return manifest, digest, f.read()
        raise BadImage(f"{ref}: indexes nested too deep", hint="the image is damaged")

    source.read_top = read_top
    return source


def pull_image(ref: str, name: str | None = None, *, username: str | None = None,
               password: str | None = None, ca_file: str | None = None,
               insecure: bool = False, store: Store | None = None,
               backend: str | None = None) -> Imported:
    """``image-pull REF [--name NAME[:TAG]]``: fetch, verify, unpack and keep the image.

    ``username``/``password`` log in (else ``~/.docker/config.json``'s ``auths``);
    ``ca_file`` adds a CA for HTTPS; ``insecure`` allows plain HTTP and unchecked
    certificates for any host (loopback registries may speak plain HTTP anyway)."""
    parsed: Reference = parse_ref(ref)
    wanted = refnames.normalize(name) if name else None
    if username and password is None:
        raise RegistryError("--username needs a password", hint="pipe it in: "
                            "echo PASSWORD | invoke image-pull REF --username U --password-stdin")
    if ca_file and not os.path.isfile(ca_file):
        raise RegistryError(f"--ca-file {ca_file} is not a file", hint="give a PEM file of "
                            "the CA that signed the registry's certificate")
    client = Client(parsed, (username, password) if username else None, ca_file, insecure)
    return import_source(registry_source(client), wanted, store, backend)
