"""Content-addressed blob storage: one file per distinct message, named by its SHA-256.

Layout: ``<root>/ab/cd/<64 hex digits>``. A blob is written to ``<root>/tmp``, fsync'd, renamed
into place and its directory fsync'd, so a name that exists always holds complete content: a crash leaves
at most an orphan temporary file, never a torn blob. Identical messages (a copy, a re-delivery) share
one file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mmap
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from store.errors import BlobMissing, InvalidInput

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
READ_CHUNK = 256 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Durable, content-addressed files under ``root``. Blocking work runs in a thread pool so
    concurrent writers overlap their fsyncs."""

    def __init__(self, root: Path | str, *, io_threads: int = 32) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="blob-io")
        self._known_dirs: set[Path] = set()

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise InvalidInput(f"not a blob digest: {digest!r}")
        return self.root / digest[:2] / digest[2:4] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).exists()

    async def put(self, data: bytes | bytearray | memoryview) -> tuple[str, int]:
        """Store ``data`` durably; return (sha256 hex digest, size)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._put_sync, data)

    def _put_sync(self, data: bytes | bytearray | memoryview) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        final = self.path(digest)
        if self._reuse(final):
            return digest, len(data)
        tmp = self._tmp / uuid.uuid4().hex
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._install(tmp, final)
        return digest, len(data)

    def _reuse(self, final: Path) -> bool:
        """True when an identical blob is already in place and may be referenced again.

        Touching it tells garbage collection it is wanted (GC spares young files, and checks the
        age after moving the file aside, so a touch either lands before the check or fails here
        and the blob is written afresh). The directory is fsync'd because the writer that put the
        file there may not have done so yet.
        """
        try:
            os.utime(final)
        except FileNotFoundError:
            return False
        _fsync_dir(final.parent)
        return True

    def import_file(self, source: Path, *, expected: str | None = None) -> str:
        """Copy a file in as a blob (the port tool moving blobs to a new directory)."""
        digest = hashlib.sha256()
        tmp = self._tmp / uuid.uuid4().hex
        with open(source, "rb") as src, open(tmp, "wb") as out:
            while chunk := src.read(READ_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        name = digest.hexdigest()
        if expected is not None and name != expected:
            tmp.unlink()
            raise BlobMissing(expected)  # the source file is corrupt: refuse to propagate it
        self._install(tmp, self.path(name))
        return name

    def writer(self) -> BlobWriter:
        """An incremental writer, for messages streamed from the network (never held in memory)."""
        return BlobWriter(self)

    def _install(self, tmp: Path, final: Path) -> None:
        self._ensure_dir(final.parent)
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        directory.mkdir(parents=True, exist_ok=True)
        # The directory entries themselves must reach the disk before a blob inside them counts;
        # done once per directory and process, also when another thread created it.
        _fsync_dir(self.root)
        _fsync_dir(directory.parent)
        self._known_dirs.add(directory)

    async def read(self, digest: str) -> bytes:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.read_sync, digest)

    def read_sync(self, digest: str) -> bytes:
        if not _DIGEST.match(digest):
            raise InvalidInput(f"not a blob digest: {digest!r}")
        # os calls, not pathlib: a FETCH of one small message spent a quarter of its time
        # building Path objects and a buffered reader.
        try:
            fd = os.open(f"{self._root}/{digest[:2]}/{digest[2:4]}/{digest}", os.O_RDONLY)
        except FileNotFoundError:
            raise BlobMissing(digest) from None
        try:
            size = os.fstat(fd).st_size
            chunks = []
            while size > 0 and (chunk := os.read(fd, size)):
                chunks.append(chunk)
                size -= len(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        finally:
            os.close(fd)

    async def read_range(self, digest: str, start: int, end: int) -> bytes:
        """Octets ``[start, end)`` of a blob: a partial IMAP FETCH reads only what it sends."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._read_range_sync, digest, start, end)

    def _read_range_sync(self, digest: str, start: int, end: int) -> bytes:
        try:
            with open(self.path(digest), "rb") as f:
                f.seek(start)
                return f.read(max(0, end - start))
        except FileNotFoundError:
            raise BlobMissing(digest) from None

    async def stream(self, digest: str) -> AsyncIterator[bytes]:
        """The blob in chunks, for large bodies sent to a socket."""
        size = (
            await asyncio.get_running_loop().run_in_executor(None, self.path(digest).stat)
        ).st_size
        offset = 0
        while offset < size:
            chunk = await self.read_range(digest, offset, min(size, offset + READ_CHUNK))
            if not chunk:
                raise BlobMissing(digest)
            offset += len(chunk)
            yield chunk

    @contextmanager
    def mapped(self, digest: str) -> Iterator[mmap.mmap | bytes]:
        """The blob memory-mapped (large messages are parsed without being copied)."""
        try:
            f = open(self.path(digest), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise BlobMissing(digest) from None
        with f:
            if os.fstat(f.fileno()).st_size == 0:
                yield b""
                return
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                yield m

    def remove_unreferenced(self, referenced: set[str], *, older_than: float) -> tuple[int, int]:
        """Delete blobs not in ``referenced`` whose file is older than ``older_than`` (a Unix
        time), and temporary files left by a crash; return (files removed, octets freed).

        The age test protects deliveries in flight: their blob is written before their row is
        committed, so a young unreferenced blob may be about to be referenced.
        """
        removed = freed = 0
        for path in list(self._tmp.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                if path.name.startswith("gc-"):
                    # Moved aside by a collection that crashed: put back, judged again below.
                    self._restore(path, self.path(path.name[3:]))
                    continue
                st = path.stat()
                if st.st_mtime < older_than:
                    path.unlink()
                    removed += 1
                    freed += st.st_size
        for digest in [d for d in self.digests() if d not in referenced]:
            final = self.path(digest)
            # Move aside first, then judge the age of what was moved: a delivery reusing the
            # blob either touched it before the move (the age check sees it, it goes back) or
            # finds it gone and writes it again. Deciding on a stat made before the unlink
            # would leave a window where a just-reused blob is deleted.
            aside = self._tmp / f"gc-{digest}"
            try:
                os.replace(final, aside)
            except FileNotFoundError:
                continue
            st = aside.stat()
            if st.st_mtime >= older_than:
                self._restore(aside, final)
                continue
            aside.unlink()
            removed += 1
            freed += st.st_size
        return removed, freed

    def _restore(self, aside: Path, final: Path) -> None:
        if final.exists():
            aside.unlink()  # written again meanwhile: same content
        else:
            os.replace(aside, final)
            _fsync_dir(final.parent)

    def digests(self) -> Iterator[str]:
        """Every blob present (for garbage collection and the port tool)."""
        for path in self.root.glob("??/??/*"):
            if _DIGEST.match(path.name):
                yield path.name


class BlobWriter:
    """Writes a blob chunk by chunk; ``commit()`` makes it durable and returns its digest."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._hash = hashlib.sha256()
        self._tmp = store._tmp / uuid.uuid4().hex
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._store._executor, self._file.write, chunk)

    async def commit(self) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store._executor, self._commit_sync)

    def _commit_sync(self) -> str:
        digest = self._hash.hexdigest()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._store.path(digest)
        if self._store._reuse(final):
            self._tmp.unlink()
        else:
            self._store._install(self._tmp, final)
        return digest

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)
