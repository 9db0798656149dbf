"""Processes announce their bound ports in a small JSON "ready file"; launchers wait for it.

Binding port 0 and reporting the port back avoids the race of picking a free port in the
parent and hoping it is still free when the child binds it.
"""

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from helix_worker.errors import ServingError


def write_ready_file(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def wait_ready_file(path: Path, process: subprocess.Popen[bytes], timeout: float, what: str) -> dict[str, Any]:
    """The JSON a child wrote to `path`; a clear error if it exits or takes too long first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            data: dict[str, Any] = json.loads(path.read_text())
            return data
        if process.poll() is not None:
            raise ServingError(f"{what} exited with code {process.returncode} before it was ready; see its log above")
        time.sleep(0.05)
    raise ServingError(f"{what} was not ready after {timeout:.0f}s")
