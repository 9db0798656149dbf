"""Partial downloads that survive a restart: bytes go to `.NAME.VERSION.partial` beside the
target and the file is renamed into place only when whole. VERSION hashes the object's ETag,
so a restarted download continues only from bytes of the same object version; partial files
of other versions are removed."""

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from helix_worker.errors import ServingError

Log = Callable[[str], None]


def resume_from(target: Path, version: str, size: int, log: Log) -> tuple[Path, int]:
    """The partial file of this version of `target`, and the bytes already in it."""
    partial = target.with_name(f".{target.name}.{hashlib.sha256(version.encode()).hexdigest()[:16]}.partial")
    if target.parent.is_dir():
        for other in target.parent.glob(f".{target.name}.*.partial"):
            if other != partial:
                other.unlink()
    have = partial.stat().st_size if partial.exists() else 0
    if have > size:
        partial.unlink()
        have = 0
    if have:
        log(f"{target.name}: resuming at {have / 1e6:.1f} of {size / 1e6:.1f} MB")
    return partial, have


def complete(partial: Path, target: Path, size: int) -> None:
    """Rename the whole file into place; a short one is an error (the next run continues it)."""
    have = partial.stat().st_size
    if have != size:
        raise ServingError(f"{target.name}: got {have} of {size} bytes; run again to continue")
    os.replace(partial, target)
