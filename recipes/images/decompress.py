"""A layer blob's bytes as its tar stream: gzip, zstd or none, in this process or by a tool.

The native backend decompresses in this process: gzip with a ``decompressobj`` that
reads the gzip header and checks its CRC and length itself, fed 1 MiB at a time -- the
``isal`` package's (Intel's ISA-L inflate, about 2.5 times zlib's speed here; the extra
``nsrecipes[fast]``; ./bootstrap installs it with the test extras) where it is installed, else :mod:`zlib`'s,
the same interface -- and zstd with the ``zstandard``
package. The shell backend runs the tools a
learner would: ``gzip -dc < BLOB`` and ``zstd -dc < BLOB``, whose stdout is the tar
stream (the decompression then runs on another core beside the unpacking). ``auto``
takes the tool where it is installed.
"""
from __future__ import annotations

import hashlib
import queue
import threading
import zlib
from typing import BinaryIO

from nsutil import shell
from nsutil.errors import ToolMissing

from recipes.images.blobs import CHUNK, BadImage

try:
    from isal import isal_zlib as inflate_lib      # ISA-L: zlib's interface, faster inflate
except ImportError:                                # pragma: no cover -- zlib then
    inflate_lib = zlib                             # type: ignore[misc]

#: compression -> the tool that decompresses it to stdout
TOOLS = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dc"]}


class DamagedBlob(ValueError):
    """The compressed bytes are not what their media type says, or are damaged."""


class GzipReader:
    """The decompressed bytes of a gzip stream (one or more members), read(n) at a time."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.inflate = inflate_lib.decompressobj(wbits=31)    # 16 + 15: gzip header, trailer
        self.pending = b""                             # input not yet given to inflate
        self.started = False

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left with ``n < 0``); b"" at the end."""
        limit = n if n > 0 else 0
        while True:
            if self.inflate.unconsumed_tail:
                data = self.inflate.unconsumed_tail
            elif self.pending:
                data, self.pending = self.pending, b""
            else:
                data = self.raw.read(CHUNK)
                if not data:
                    if self.started and not self.inflate.eof:
                        raise EOFError("the gzip stream ends before its end marker")
                    return b""
            self.started = True
            try:
                out = self.inflate.decompress(data, limit)
            except (zlib.error, inflate_lib.error) as exc:   # tarfile: "not a valid tar"
                raise DamagedBlob(str(exc)) from None
            if self.inflate.eof:                       # a member ended: maybe another follows
                self.pending = self.inflate.unused_data
                if self.pending.strip(b"\0"):
                    self.inflate = inflate_lib.decompressobj(wbits=31)
                    self.started = False
                else:
                    self.pending = b""
            if out:
                return out


class ToolReader:
    """The stdout of ``TOOL -dc`` reading the blob: the tar stream, from another process."""

    def __init__(self, argv: list[str], raw: BinaryIO, what: str):
        self.argv, self.what = argv, what
        self.proc = shell.stream(argv, raw.fileno())
        assert self.proc.stdout is not None
        self.out = self.proc.stdout

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the tool's output."""
        return self.out.read(n)

    def finish(self) -> BadImage | None:
        """Read what is left of the tool's output (tar padding, or all of it when the
        unpacking stopped early) and wait for it: None if it succeeded, else its failure (a
        damaged blob) as one line with its words."""
        while self.out.read(CHUNK):
            pass
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        code = self.proc.wait()
        if code == 0:
            return None
        said = err.strip().splitlines()[-1] if err.strip() else f"exit status {code}"
        return BadImage(f"{self.what} cannot be decompressed ({' '.join(self.argv)}): {said}",
                        hint="the layer is damaged or its media type is wrong: nothing was "
                             "imported")

    def kill(self) -> None:
        """Stop the tool if it still runs (the import was interrupted) and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


def errors() -> tuple[type[BaseException], ...]:
    """What a damaged blob raises while it is decompressed here (zlib's and zstandard's
    errors, EOFError for one cut short)."""
    import zstandard
    return (OSError, EOFError, ValueError, zlib.error, inflate_lib.error, zstandard.ZstdError)


def uses_tool(compression: str, backend: str) -> bool:
    """True if ``backend`` (shell, native or auto) decompresses ``compression`` with its
    tool; the shell backend without the tool: :class:`ToolMissing` (one line, the package)."""
    if not compression or backend == "native":
        return False
    tool = TOOLS[compression][0]
    if shell.have(tool):
        return True
    if backend == "shell":
        raise ToolMissing(tool, tool)
    return False


def open_layer(raw: BinaryIO, compression: str, backend: str, what: str) -> BinaryIO:
    """The tar stream of the layer blob ``raw`` (see the module doc). A :class:`ToolReader`
    must be finished (and killed) by the caller."""
    if uses_tool(compression, backend):
        return ToolReader(TOOLS[compression], raw, what)     # type: ignore[return-value]
    if compression == "gzip":
        return GzipReader(raw)                               # type: ignore[return-value]
    if compression == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return raw



class Prefetch:
    """Reads ``stream`` (a decompressing reader) in another thread, 1 MiB ahead, hashing
    what it reads (sha256: the layer's diff_id): zlib, zstandard and hashlib let go of the
    GIL, so the decompression runs on one core while the tar is unpacked on another. The
    importing thread reads it as a stream; :meth:`digest` reads the rest first."""

    AHEAD = 8

    def __init__(self, stream: BinaryIO):
        self.stream, self.hash = stream, hashlib.sha256()
        self.chunks: queue.Queue = queue.Queue(self.AHEAD)
        self.buf, self.pos, self.done = b"", 0, False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._fill, name="nsr-inflate", daemon=True)
        self.thread.start()

    def _fill(self) -> None:
        try:
            while not self.stop.is_set():
                data = self.stream.read(CHUNK)
                if not data:
                    break
                self.hash.update(data)
                self.chunks.put(data)
            self.chunks.put(b"")
        except BaseException as exc:      # noqa: BLE001 -- handed to the reading thread
            self.chunks.put(exc)

    def _next(self) -> bool:
        item = self.chunks.get()
        if isinstance(item, BaseException):
            self.done = True
            raise item
        if not item:
            self.done = True
            return False
        self.buf, self.pos = item, 0
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``n < 0``: the rest)."""
        if n is None or n < 0:
            parts = [self.buf[self.pos:]]
            self.buf, self.pos = b"", 0
            while not self.done and self._next():
                parts.append(self.buf)
                self.buf, self.pos = b"", 0
            return b"".join(parts)
        if self.pos >= len(self.buf) and (self.done or not self._next()):
            return b""
        out = self.buf[self.pos:self.pos + n] if (self.pos or n < len(self.buf)) else self.buf
        self.pos += len(out)
        return out

    def digest(self) -> str:
        """``sha256:HEX`` of the whole stream (what is left is read first)."""
        while not self.done and self._next():
            pass
        self.thread.join()
        return "sha256:" + self.hash.hexdigest()

    def close(self) -> None:
        """Stop reading ahead (the unpacking failed) and wait for the thread."""
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.chunks.get(timeout=0.1)
            except queue.Empty:
                pass
        self.thread.join()
