"""AWS Signature Version 4 for S3 GET requests, with hashlib and hmac (no SDK to install).

`helix weights fetch` only reads objects, so this signs GETs of URLs without a query string:
the host, the empty payload's hash, the time, a session token when there is one, and any
extra headers given (a Range, say). The canonical path is the URL's path as sent, which the
caller has already percent-encoded (S3 encodes once and keeps the slashes).
"""

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None


def signed_headers(url: str, credentials: Credentials, region: str, when: datetime,
                   extra: Mapping[str, str] | None = None, service: str = "s3") -> dict[str, str]:
    """Every header the GET of `url` must carry, Authorization included (names in lower case)."""
    parts = urlsplit(url)
    if parts.query:
        raise ValueError(f"cannot sign {url}: query strings are not supported")
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    headers = {"host": parts.netloc, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": amz_date,
               **{name.lower(): value.strip() for name, value in (extra or {}).items()}}
    if credentials.session_token:
        headers["x-amz-security-token"] = credentials.session_token
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    signed = ";".join(sorted(headers))
    canonical = canonical_request("GET", parts.path or "/", headers)
    key = signing_key(credentials.secret_key, amz_date[:8], region, service)
    signature = hmac.new(key, string_to_sign(amz_date, scope, canonical).encode(), hashlib.sha256).hexdigest()
    authorization = f"{ALGORITHM} Credential={credentials.access_key}/{scope},SignedHeaders={signed},Signature={signature}"
    return {**headers, "authorization": authorization}


def canonical_request(method: str, path: str, headers: Mapping[str, str]) -> str:
    """Method, path, (empty) query, sorted headers, their names, and the empty payload's hash."""
    names = sorted(headers)
    return "\n".join([method, path, "", *(f"{name}:{headers[name]}" for name in names), "", ";".join(names),
                      EMPTY_SHA256])


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """HMAC chain over date, region, service and "aws4_request", keyed by "AWS4" + the secret."""
    key = f"AWS4{secret_key}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key
