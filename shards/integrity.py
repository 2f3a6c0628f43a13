"""Integrity checks shared by every consumer of the shards: is each shard there and intact, and did
every shard give the samples its manifest promises?

A consumer verifies the shards it is about to read (``check_shards``: size always, sha256 unless told
not to), counts what each shard actually gave, and turns the difference into a ``shortfall``: one
entry per shard that is missing, damaged or short, with what was expected, what was got and why. The
shortfall goes into the consumer's summary and into what it writes (token-cache index, scores.json,
the run folder); ``require_complete`` refuses to go on with one unless the user opted in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from shards.writer import sha256_file

REPAIR_HINT = (
    "rerun the same `make ingest` command (it redoes missing or damaged shards, byte for byte), then rerun "
    "this step"
)


class PartialDataError(RuntimeError):
    """Samples the manifest promises are missing, and the user did not accept running without them."""


class ShardLike(Protocol):
    path: str
    num_samples: int | None
    sha256: str | None
    size_bytes: int | None


def shard_problem(path: str | Path, size_bytes: int | None, sha256: str | None = None) -> str | None:
    """Why the file at ``path`` is not the one the manifest recorded (None when it is): missing, another
    size, or (when ``sha256`` is given) other bytes."""
    path = Path(path)
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size_bytes is not None and size != size_bytes:
        return f"{path} has {size} bytes, the manifest says {size_bytes} (truncated or replaced)"
    if sha256 is not None and sha256_file(path) != sha256:
        return f"{path} fails its sha256 check (its bytes changed since ingest: damaged)"
    return None


def check_shards(shards: Sequence[ShardLike], verify: bool = True) -> tuple[list[Any], dict[str, str]]:
    """Split ``shards`` into the intact ones and ``{stem: problem}`` for the others. ``verify``: compare
    sha256 (reads every byte once); otherwise presence and size only (for very large sets)."""
    good, problems = [], {}
    for shard in shards:
        problem = shard_problem(shard.path, shard.size_bytes, shard.sha256 if verify else None)
        if problem:
            problems[Path(shard.path).stem] = problem
        else:
            good.append(shard)
    return good, problems


def shortfall(
    expected: Mapping[str, int], got: Mapping[str, int], problems: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """``{stem: {"expected", "got", "problem"}}`` for every shard that gave fewer samples than expected
    or has a problem (more than expected is a problem too: the manifest and the shard disagree)."""
    problems = problems or {}
    out = {}
    for stem, want in expected.items():
        have = got.get(stem, 0)
        problem = problems.get(stem, "")
        if have != want and not problem:
            problem = f"gave {have} of the {want} samples the manifest lists (see the skip warnings above)"
        if problem:
            out[stem] = {"expected": int(want), "got": int(have), "problem": problem}
    return out


def describe(missing: Mapping[str, Mapping[str, Any]]) -> str:
    """Shortfall as lines for a summary: one per shard, plus the total."""
    lost = sum(max(0, m["expected"] - m["got"]) for m in missing.values())
    lines = [f"  {stem}: {m['got']}/{m['expected']} ({m['problem']})" for stem, m in sorted(missing.items())]
    return f"{lost} sample(s) missing from {len(missing)} shard(s):\n" + "\n".join(lines)


def require_complete(missing: Mapping[str, Mapping[str, Any]], what: str, opt_in: str, allow: bool) -> None:
    """Refuse to go on with missing data unless ``allow`` (the user set ``opt_in``=true)."""
    if missing and not allow:
        raise PartialDataError(
            f"{what}: {describe(missing)}\nFix: {REPAIR_HINT}; or accept the loss with {opt_in}=true "
            "(what is missing is then recorded in the output)."
        )
