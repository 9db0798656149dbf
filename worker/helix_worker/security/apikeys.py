"""Client API keys: `Authorization: Bearer <key>` on the OpenAI API and the same
`authorization` metadata on KServe gRPC, checked against a file of keys.

The file holds one key a line (blank lines and `#` comments skipped) and is read again
when it changes, so that a rotated Kubernetes Secret takes effect without a restart. Keys
are compared as SHA-256 digests with `hmac.compare_digest`, so the time a check takes says
nothing about how much of a key was right.
"""

import hashlib
import hmac
from pathlib import Path

from helix_worker.errors import ServingError
from helix_worker.security.reloading import Reloading

SCHEME = "bearer"


class ApiKeys:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._digests = Reloading((path,), self._load, "the API keys")
        try:
            keys = self._digests.current()
        except (OSError, ValueError) as err:
            raise ServingError(f"cannot read the API keys file {path}: {err}") from None
        if not keys:
            raise ServingError(f"the API keys file {path} holds no key; write one a line")

    def _load(self) -> tuple[bytes, ...]:
        lines = self.path.read_text().splitlines()
        return tuple(_digest(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#"))

    def allows(self, authorization: str | None) -> bool:
        """Whether an `Authorization` value carries a valid bearer key."""
        scheme, _, key = (authorization or "").strip().partition(" ")
        if scheme.lower() != SCHEME or not key.strip():
            return False
        presented = _digest(key.strip())
        return any([hmac.compare_digest(presented, d) for d in self._digests.current()])


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load_api_keys(path: str) -> ApiKeys | None:
    """The keys of HELIX_API_KEYS_FILE, or None when it is unset (the APIs are open)."""
    return ApiKeys(Path(path)) if path else None
