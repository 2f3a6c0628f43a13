"""Clip shards as raw samples, without decoding anything: a fast reader for the plain ustar/v7 tars
``ShardWriter`` writes (``tarfile`` for anything else) and WebDataset's grouping of a tar's members into
samples by key. A shard that breaks ends there: the samples before the break are kept, and the break is
logged and counted."""

from __future__ import annotations

import logging
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from shards.stats import LoaderStats, tally

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardInfo:
    """A shard and what its manifest says about it (None for an explicit list of paths)."""

    path: str
    num_samples: int | None = None
    sha256: str | None = None
    size_bytes: int | None = None


@dataclass
class RawSample:
    """One sample's undecoded members, keyed by extension ("mp4", "actions.npy", "json")."""

    shard: str
    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    cursor: tuple[int, int, int, int] = (0, 1, 0, 0)  # (slot, num_slots, epoch, pos), see skip_consumed


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key ends at the first dot of the file name."""
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(directory, stem), ext


def read_samples(shards: Iterable[ShardInfo], stats: LoaderStats | None = None) -> Iterator[RawSample]:
    """Group each tar's members by sample key, in file order, without decoding anything.

    A shard that cannot be opened or breaks mid-way (truncated, bad header) ends there: the samples
    read before the break are kept, the one being read is dropped (it may lack members) and counted.
    A shard that reads cleanly but holds fewer samples than its manifest count (a cut at a member
    boundary looks like a clean end of archive) is counted in ``shard_errors`` too.
    """
    for shard in shards:
        yield from _read_shard(shard, stats)


def _read_shard(shard: ShardInfo, stats: LoaderStats | None) -> Iterator[RawSample]:
    count, current = 0, None
    try:
        with open(shard.path, "rb") as f:
            for name, payload in tar_files(f):
                key, ext = _split_name(name)
                if current is not None and key != current.key:
                    count += 1
                    yield current
                    current = None
                if current is None:
                    current = RawSample(shard.path, key)
                current.members[ext] = payload
    except (tarfile.TarError, OSError) as err:
        cut = _split_name(err.name)[0] if isinstance(err, TruncatedMember) else None
        if current is not None and cut is not None and cut != current.key:
            count += 1
            yield current  # complete: the next sample had begun when the data ran out
            current = None
        tally(stats, "shard_errors")
        dropped = current.key if current is not None else cut
        if dropped is not None:
            tally(stats, "skip_tar")
        log.warning(
            "shard %s broke after %d samples (%s)%s",
            shard.path,
            count,
            err,
            f"; dropped the sample being read, {dropped}" if dropped else "",
        )
        return
    if current is not None:
        count += 1
        yield current
    if shard.num_samples is not None and count != shard.num_samples:
        tally(stats, "shard_errors")
        log.warning("shard %s holds %d samples, its manifest says %d", shard.path, count, shard.num_samples)


_ZERO_BLOCK = bytes(512)
_FILE_KINDS = (b"0", b"\x00")  # regular files
_OTHER_KINDS = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, directories, fifos


class TruncatedMember(tarfile.ReadError):
    """The data of member ``name`` ends early (its header was read: earlier samples are complete)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unexpected end of data in {name}")
        self.name = name


class _NotPlainTar(Exception):
    """An entry the fast tar reader leaves to tarfile: pax or GNU headers, base-256 sizes, odd checksums."""


def tar_files(f: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, payload) of every regular file of the tar in ``f``, in order, in one sequential pass.

    Plain ustar / v7 entries (what ShardWriter and most tools write for short names) are parsed here,
    about 10x faster than tarfile; at the first entry of another kind the shard is reread with tarfile
    from the start and the files already yielded are passed over. A cut raises tarfile.ReadError
    (TruncatedMember when it falls in a member's data); unlike tarfile, a corrupt header after the first
    one is an error, not the end of the archive.
    """
    done = 0
    try:
        for item in _plain_tar_files(f):
            done += 1
            yield item
        return
    except _NotPlainTar:
        pass
    f.seek(0)
    with tarfile.open(fileobj=f, mode="r|") as tar:
        for index, member in enumerate(m for m in tar if m.isfile()):
            try:
                payload = tar.extractfile(member).read()
            except tarfile.ReadError as err:
                raise TruncatedMember(member.name) from err
            if index >= done:
                yield member.name, payload


def _plain_tar_files(f: BinaryIO) -> Iterator[tuple[str, bytes]]:
    first = True
    while True:
        header = f.read(512)
        if len(header) < 512:
            if first and not header:
                raise tarfile.ReadError("empty file")
            if header:
                raise tarfile.ReadError("truncated header")
            return  # a clean cut at an entry boundary reads like the end: the manifest count catches it
        if header == _ZERO_BLOCK:
            return
        first = False
        if header[124] & 0x80 or _octal(header[148:156]) != sum(header[:148]) + 256 + sum(header[156:]):
            raise _NotPlainTar  # base-256 size or a checksum tarfile may still accept (signed sums)
        size, kind = _octal(header[124:136]), header[156:157]
        if size is None or kind not in _FILE_KINDS + _OTHER_KINDS:
            raise _NotPlainTar
        name = header[:100].split(b"\0", 1)[0]
        if header[257:263] == b"ustar\x00":  # POSIX ustar: long names continue in the prefix field
            prefix = header[345:500].split(b"\0", 1)[0]
            name = prefix + b"/" + name if prefix else name
        padding = -size % 512
        if kind in _FILE_KINDS:
            payload = f.read(size)
            if len(payload) < size:
                raise TruncatedMember(name.decode("utf-8", "surrogateescape"))
            yield name.decode("utf-8", "surrogateescape"), payload
            f.read(padding)
        else:  # directories, links, devices: nothing to read
            f.read(size + padding)


def _octal(field: bytes) -> int | None:
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else None
    except ValueError:
        return None
