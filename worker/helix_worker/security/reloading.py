"""Files read again when they change: TLS material, the peer list, API keys.

Kubernetes updates a mounted ConfigMap or Secret (without subPath) by writing the new files
into a fresh directory and swapping a symlink, so every file of the volume changes at once
and readers see old or new, never half. Checking costs one stat() per file (inode, size,
mtime, after symlinks), cheap enough to do for every connection or request.
"""

import logging
import os
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
Stamp = tuple[tuple[int, int, int], ...]


class Reloading(Generic[T]):
    """What `load` makes of `paths`, made again when any of them changed since."""

    def __init__(self, paths: tuple[Path, ...], load: Callable[[], T], what: str) -> None:
        self.paths, self._load, self.what = paths, load, what
        self._lock = threading.Lock()  # gRPC asks for server certificates from its own threads
        self._stamp: Stamp | None = None
        self._value: T | None = None
        self._refused: Stamp | None = None

    def _stat(self) -> Stamp:
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in map(os.stat, self.paths))

    def current(self) -> T:
        """The value for the files as they are now. The first load's errors are raised; later a
        set of files that does not load (half written, a key without its certificate) is logged
        once and the last good value stays in use until a good set arrives."""
        with self._lock:
            stamp: Stamp | None = None
            try:
                stamp = self._stat()
                if stamp == self._stamp:
                    return self._value  # type: ignore[return-value]
                value = self._load()
                if self._stat() != stamp:
                    raise OSError("they changed while being read")
            except (OSError, ssl.SSLError, ValueError) as err:
                if self._value is None:
                    raise
                if stamp != self._refused:
                    self._refused = stamp
                    log.warning("keeping %s as loaded before: %s do not load now (%s)", self.what,
                                ", ".join(map(str, self.paths)), err)
                return self._value
            if self._value is not None:
                log.info("%s changed (%s): in use from now on", self.what, ", ".join(map(str, self.paths)))
            self._stamp, self._value = stamp, value
            return value
