"""In-process stand-ins at the network edge for `helix weights fetch`: the few Hugging Face Hub
endpoints `huggingface_hub` calls, and S3 plus STS as botocore calls them, over real HTTP."""

import hashlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

Commits = dict[str, dict[str, bytes]]  # sha -> file -> content


class Server(ThreadingHTTPServer):
    """`log`: (method, path, Range, Authorization) of every request; `cut_once`: paths whose next
    GET sends half the body and drops the connection."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.log: list[tuple[str, str, str | None, str | None]] = []
        self.cut_once: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Any
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        raise NotImplementedError  # each stand-in answers its own paths

    def _record(self) -> None:
        self.server.log.append((self.command, self.path, self.headers.get("Range"), self.headers.get("Authorization")))

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _content(self, path: str, body: bytes, headers: dict[str, str], head: bool) -> None:
        """A whole or ranged body; the first GET of a `cut_once` path stops halfway."""
        start = 0
        if (wanted := self.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-", wanted)):
            start = int(m.group(1))
        part = body[start:]
        code = 206 if start else 200
        if start:
            headers = headers | {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
        if not head and path in self.server.cut_once:
            self.server.cut_once.discard(path)
            self.send_response(code)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(part)))
            self.end_headers()
            self.wfile.write(part[:len(part) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(code, part, headers, head)


class HubServer(Server):
    """`/api/models/REPO/revision/REV` (sha and file list) and `/REPO/resolve/REV/FILE`; `refs`
    maps branch names to commit shas (move one to play a push during a download); a `gated` repo
    answers a request without the token as the Hub does for one whose terms were not accepted."""

    def __init__(self, repo: str, commits: Commits, refs: dict[str, str], token: str | None = None,
                 gated: bool = False) -> None:
        super().__init__(_HubHandler)
        self.repo, self.commits, self.refs, self.token, self.gated = repo, commits, refs, token, gated

    def sha(self, revision: str) -> str | None:
        revision = unquote(revision)
        return revision if revision in self.commits else self.refs.get(revision)


class _HubHandler(_Handler):
    server: HubServer

    def _serve(self, head: bool) -> None:
        self._record()
        hub, path = self.server, self.path.split("?")[0]
        if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
            if hub.gated:
                return self._send(401, b'{"error": "Access to this model is restricted"}',
                                  {"X-Error-Code": "GatedRepo"}, head)
            return self._send(401, b'{"error": "Invalid credentials"}', {"X-Error-Code": "RepoNotFound"}, head)
        if info := re.fullmatch(rf"/api/models/{hub.repo}/revision/(?P<rev>.+)", path):
            if (sha := hub.sha(info["rev"])) is None:
                return self._send(404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"}, head)
            siblings = ", ".join(f'{{"rfilename": "{n}"}}' for n in hub.commits[sha])
            body = f'{{"id": "{hub.repo}", "sha": "{sha}", "siblings": [{siblings}]}}'.encode()
            return self._send(200, body, {"Content-Type": "application/json"}, head)
        if file := re.fullmatch(rf"/{hub.repo}/resolve/(?P<rev>[^/]+)/(?P<name>.+)", path):
            sha = hub.sha(file["rev"])
            if sha is None or (body := hub.commits[sha].get(unquote(file["name"]))) is None:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
            etag = f'"{hashlib.sha256(body).hexdigest()}"'
            return self._content(path, body, {"X-Repo-Commit": sha, "ETag": etag}, head)
        return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head)


STS_RESPONSE = """<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{key}</AccessKeyId>
<SecretAccessKey>secret-from-sts</SecretAccessKey><SessionToken>session-from-sts</SessionToken>
<Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>
<AssumedRoleUser><AssumedRoleId>AROA:helix</AssumedRoleId><Arn>{role}/helix</Arn></AssumedRoleUser>
</AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"""


class S3Server(Server):
    """Path-style S3 (`/BUCKET/KEY`: HEAD, GET with Range and If-Match) over `objects`, and STS's
    AssumeRoleWithWebIdentity, which hands `sts_key` to the holder of `web_token`; with
    `require_key` set, S3 answers 403 to requests not signed with that access key."""

    def __init__(self, objects: dict[str, bytes], web_token: str = "", sts_key: str = "",
                 require_key: str | None = None) -> None:
        super().__init__(_S3Handler)
        self.objects, self.web_token, self.sts_key, self.require_key = objects, web_token, sts_key, require_key
        self.sts_calls: list[dict[str, list[str]]] = []


class _S3Handler(_Handler):
    server: S3Server

    def do_POST(self) -> None:
        self._record()
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
        self.server.sts_calls.append(form)
        if form.get("Action") != ["AssumeRoleWithWebIdentity"] \
                or form.get("WebIdentityToken") != [self.server.web_token]:
            return self._send(403, b"<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>")
        body = STS_RESPONSE.format(key=self.server.sts_key, role=form["RoleArn"][0]).encode()
        return self._send(200, body, {"Content-Type": "text/xml"})

    def _serve(self, head: bool) -> None:
        self._record()
        path = unquote(self.path.split("?")[0])
        required = self.server.require_key
        if required and f"Credential={required}/" not in (self.headers.get("Authorization") or ""):
            return self._send(403, b"" if head else b"<Error><Code>AccessDenied</Code></Error>")
        body = self.server.objects.get(path)
        if body is None:
            return self._send(404, b"" if head else b"<Error><Code>NoSuchKey</Code></Error>")
        etag = f'"{hashlib.md5(body).hexdigest()}"'
        if (match := self.headers.get("If-Match")) and match != etag:
            return self._send(412, b"<Error><Code>PreconditionFailed</Code></Error>")
        return self._content(path, body, {"ETag": etag, "Accept-Ranges": "bytes"}, head)


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def checkpoint_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
