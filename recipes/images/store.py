"""The content-addressed store: blobs by digest, each layer unpacked once, images by id.

Where: ``$NSR_STORE_DIR``; else /var/lib/nsrecipes as root; else the user's own data
directory (``$XDG_DATA_HOME/nsrecipes`` or ``~/.local/share/nsrecipes``). Inside::

    blobs/sha256/HEX        every blob (manifest, config, layer) under its digest
    layers/HEX/diff/        a layer unpacked (HEX: its diff_id, the digest of its tar)
    layers/HEX/layer.json   its size and short link name
    l/SHORT -> ../layers/HEX/diff   short names for long lowerdir lists (containers-storage's)
    images/HEX.json         an image (HEX: the digest of its config, the image id)
    refs.json               NAME:TAG -> image id
    uses/CONTAINER.json     a container running from an image (image-rm refuses meanwhile)
    tmp/import-PID-*/       an import under way: nothing there counts until it is committed

Everything an import brings is verified and unpacked below ``tmp/`` first; the commit (under
the store's lock) renames it into place, image record last, so a crash leaves only
``tmp/`` entries and unused blobs, which ``cleanup`` and ``image-prune`` remove.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
from typing import Any, Iterator

from nsutil import procfs
from nsutil import rootless
from nsutil.errors import SyscallError

from recipes.images.blobs import hex_of

STORE_ENV = "NSR_STORE_DIR"
ROOT_STORE = "/var/lib/nsrecipes"
TMP_PREFIX = "import-"


def store_dir() -> str:
    """The store's directory (read at each call, so a script or test may point it elsewhere)."""
    if os.environ.get(STORE_ENV):
        return os.path.abspath(os.environ[STORE_ENV])
    if not rootless.decide():
        return ROOT_STORE
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "nsrecipes")


class Store:
    """The store at ``root`` (default :func:`store_dir`); directories are made on first write."""

    def __init__(self, root: str | None = None):
        self.root = root or store_dir()

    # --- paths ------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """A path inside the store."""
        return os.path.join(self.root, *parts)

    def blob(self, digest: str) -> str:
        """Where the blob ``digest`` is kept."""
        return self.path("blobs", "sha256", hex_of(digest))

    def layer(self, diff_id: str) -> str:
        """The directory of the layer ``diff_id`` (its unpacked tree is ``diff/`` in it)."""
        return self.path("layers", hex_of(diff_id))

    def diff(self, diff_id: str) -> str:
        """The unpacked tree of the layer ``diff_id`` (an overlay lower directory)."""
        return os.path.join(self.layer(diff_id), "diff")

    def image_file(self, image_id: str) -> str:
        """The record of the image ``image_id``."""
        return self.path("images", hex_of(image_id) + ".json")

    def make_dirs(self) -> None:
        """Make the store's directories (0700 at the top: the layers hold setuid files)."""
        try:
            os.makedirs(self.root, 0o700, exist_ok=True)
            for sub in ("blobs/sha256", "layers", "l", "images", "uses", "tmp"):
                os.makedirs(self.path(sub), 0o700, exist_ok=True)
        except OSError as exc:
            raise SyscallError.from_oserror(f"mkdir({self.root!r})", exc,
                                            hint=f"set {STORE_ENV} to a directory you may write") from None

    # --- the lock -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock (flock on ``lock``): commits, removals and prunes take it."""
        self.make_dirs()
        fd = os.open(self.path("lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- staging --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def staging(self) -> Iterator[str]:
        """A directory below ``tmp/`` for one import (``import-PID-RANDOM``), removed on the
        way out whatever happened (what the commit moved out of it is kept)."""
        self.make_dirs()
        path = self.path("tmp", f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        os.mkdir(path, 0o700)
        try:
            yield path
        finally:
            remove_tree(path)

    def stale_staging(self) -> list[str]:
        """``tmp/import-PID-*`` directories whose importing process is gone."""
        tmp = self.path("tmp")
        out = []
        for entry in sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []:
            pid = entry[len(TMP_PREFIX):].split("-", 1)[0]
            if not entry.startswith(TMP_PREFIX) or not pid.isdigit() or not _alive(int(pid)):
                out.append(os.path.join(tmp, entry))
        return out

    # --- records ------------------------------------------------------------------------------
    def images(self) -> list[dict[str, Any]]:
        """Every complete image record (``images/*.json``)."""
        d = self.path("images")
        out = []
        for entry in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if entry.endswith(".json"):
                data = read_json(os.path.join(d, entry))
                if isinstance(data, dict) and "id" in data:
                    out.append(data)
        return out

    def image(self, image_id: str) -> dict[str, Any] | None:
        """The record of ``image_id``, or None."""
        data = read_json(self.image_file(image_id))
        return data if isinstance(data, dict) else None

    def refs(self) -> dict[str, str]:
        """NAME:TAG -> image id."""
        data = read_json(self.path("refs.json"))
        return data if isinstance(data, dict) else {}

    def save_refs(self, refs: dict[str, str]) -> None:
        """Write refs.json (atomically; hold the lock)."""
        write_json(self.path("refs.json"), refs)

    def layer_info(self, diff_id: str) -> dict[str, Any]:
        """layers/HEX/layer.json: {"size": bytes unpacked, "link": short name}."""
        data = read_json(os.path.join(self.layer(diff_id), "layer.json"))
        return data if isinstance(data, dict) else {}

    def uses(self) -> list[dict[str, Any]]:
        """Containers that run from an image now (their tool is alive); stale records dropped."""
        d = self.path("uses")
        out = []
        for entry in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            path = os.path.join(d, entry)
            data = read_json(path)
            if (isinstance(data, dict) and data.get("starttime") is not None
                    and procfs.start_time(data.get("pid", 0)) == data["starttime"]):
                out.append(data)
            elif not entry.endswith(".tmp"):
                drop(path)
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_json(path: str) -> Any:
    """The JSON in ``path``, or None if it is missing or damaged."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path: str, data: Any) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        drop(tmp)
        raise SyscallError.from_oserror(f"write({path!r})", exc) from None


def drop(path: str) -> None:
    """Remove a file if it is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_tree(path: str) -> None:
    """Remove a directory tree of the store (layers may hold read-only directories and
    immutable-looking modes: they are made writable first)."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        drop(path)
        return

    def onerror(fn, p, exc_info):  # type: ignore[no-untyped-def]
        parent = os.path.dirname(p)
        try:
            os.chmod(parent, 0o700)
            fn(p)
        except FileNotFoundError:
            pass

    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                try:
                    os.chmod(full, 0o700)
                except OSError:
                    pass
    shutil.rmtree(path, onerror=onerror)
