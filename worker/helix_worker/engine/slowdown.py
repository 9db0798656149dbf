"""An emulated GPU's slowdown, which may change while the worker runs.

HELIX_SLOWDOWN fixes it at start; HELIX_SLOWDOWN_FILE names a file holding the factor, which a
running stage re-reads when the file changes (one stat per step), so a benchmark or a person can
make a worker 2x slower under load (`echo 2 > FILE`) and watch the fleet notice. While the file is
missing the start value holds; a file that does not hold a number is reported once and ignored.
"""

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class Slowdown:
    def __init__(self, factor: float = 1.0, path: str = "") -> None:
        self._start, self._factor = factor, factor
        self._path = Path(path) if path else None
        self._seen: tuple[int, int] | None = None  # the file's (mtime_ns, size) when last read

    def factor(self) -> float:
        """The factor now: each step takes this many times its compute time."""
        if self._path is None:
            return self._factor
        try:
            stat = os.stat(self._path)
        except OSError:
            self._seen, self._factor = None, self._start
            return self._factor
        if (stat.st_mtime_ns, stat.st_size) != self._seen:
            self._seen = (stat.st_mtime_ns, stat.st_size)
            self._factor = self._read(self._path)
        return self._factor

    def _read(self, path: Path) -> float:
        try:
            text = path.read_text().strip()
            value = float(text)
        except (OSError, ValueError):
            log.warning("slowdown file %s does not hold a number; keeping %g", path, self._factor)
            return self._factor
        if value != self._factor:
            log.info("slowdown %g (from %s)", value, path)
        return value
