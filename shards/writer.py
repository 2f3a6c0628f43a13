"""Atomic, deterministic tar shard writer.

A shard is written under a unique temporary name, fsynced, then renamed to its final name, so a final
name always holds a complete tar. Tar headers carry no time, owner or host facts: the same samples give
the same bytes, which makes reruns idempotent and checksums meaningful.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class WrittenShard:
    path: Path
    num_samples: int
    sha256: str
    size_bytes: int


class _HashingFile(io.RawIOBase):
    """Write-through file wrapper that hashes and counts the bytes it passes on."""

    def __init__(self, raw) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._raw.write(data)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class ShardWriter:
    """Write WebDataset samples into one tar, atomically.

    >>> with ShardWriter(path) as w:
    ...     w.write("key", {"mp4": video, "json": meta})
    >>> w.result  # WrittenShard with count and sha256, available after a clean exit
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
        self._file = open(self._tmp, "wb")
        self._hashing = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.USTAR_FORMAT)
        self._keys: set[str] = set()
        self.result: WrittenShard | None = None

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample; ``members`` maps extensions (``"mp4"``, ``"actions.npy"``) to bytes."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in {self.path.name}")
        self._keys.add(key)
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> WrittenShard:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)
        self.result = WrittenShard(
            self.path, len(self._keys), self._hashing.digest.hexdigest(), self._hashing.size
        )
        return self.result

    def abort(self) -> None:
        """Drop the temporary file; the final name is never touched."""
        self._tar.close()
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
