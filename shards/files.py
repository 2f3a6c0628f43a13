"""Files the pipeline owns: JSON that names itself when it is unreadable, and one writer per folder.

``read_json`` turns a bare ``JSONDecodeError`` into an error that names the file and the fix.
``exclusive`` is the advisory lock every writer of a folder takes (ingest per dataset folder, training
per run folder, precompute per token cache): a second writer is refused with a message that names the
holder. The lock is an ``flock`` on ``<folder>/.lock``, so the kernel releases it when the holder dies,
even by SIGKILL: a rerun after a kill is never blocked.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"


class DataFileError(ValueError):
    """A file of the pipeline (manifest, index, progress record, config) that cannot be read."""


class FolderLocked(RuntimeError):
    """Another process is writing the folder."""


def read_json(path: str | Path, fix: str) -> Any:
    """Parse the JSON file at ``path``; unreadable or malformed -> DataFileError naming it and ``fix``."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as err:  # ValueError: JSONDecodeError, bad UTF-8
        raise DataFileError(f"{path} is unreadable ({type(err).__name__}: {err}); {fix}") from err


def _holder(lock_file) -> str:
    lock_file.seek(0)
    text = lock_file.read().strip()
    return text or "a process that did not say who it is"


@contextmanager
def exclusive(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold ``<folder>/.lock`` for the block; ``what`` says who holds it (shown to a refused writer)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # "a+": opening must not truncate the holder's note before the lock is ours.
    with open(folder / LOCK_NAME, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise FolderLocked(
                f"{folder} is being written by another process ({_holder(lock)}): wait for it to finish "
                "or stop it; two writers would mix their output"
            ) from err
        lock.seek(0)
        lock.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        lock.write(f"{what}, pid {os.getpid()} on {socket.gethostname()}, since {started}: {sys.argv}\n")
        lock.flush()
        try:
            yield folder
        finally:
            lock.truncate(0)
