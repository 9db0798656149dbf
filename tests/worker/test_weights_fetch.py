"""`helix weights fetch` against a real HTTP server on 127.0.0.1 that plays the Hugging Face
resolve endpoint (with a CDN redirect to another host name) and a path-style S3 endpoint that
checks AWS Signature V4, serving a sharded `helix model init` checkpoint."""

import dataclasses
import hmac
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from helix_operator import weights_uri
from helix_planner.cli import main
from helix_worker.model_init import DemoModel, write_demo_checkpoint
from helix_worker.sigv4 import Credentials, canonical_request, signed_headers, signing_key, string_to_sign
from helix_worker.engine.model import LayerSlice
from helix_worker.errors import ServingError
from helix_worker.weights_fetch import S3, fetch, needed_shards, parse_source

TOKEN = "hf_secret"
KEYS = Credentials("AKIDTEST", "s3-secret-key", "session-token")
REGION = "eu-west-1"
SHARD = "model-{:05d}-of-00004.safetensors"
TEXT_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four layers in four shards: embedding + layer 0 | layer 1 | layer 2 | layer 3 + norm + head (about)."""
    directory = tmp_path_factory.mktemp("sharded")
    write_demo_checkpoint(directory, DemoModel(num_layers=4, shards=4))
    return directory


class Store(ThreadingHTTPServer):
    """Hugging Face under /ORG/REPO/resolve/REV/FILE (shards redirect to /cdn/ on host `localhost`)
    and S3 under /BUCKET/PREFIX/FILE; `log` records (path, Authorization header) of every request."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.checkpoint = checkpoint
        self.log: list[tuple[str, str | None]] = []
        self.fail_once: set[str] = set()

    @property
    def port(self) -> int:
        return self.server_address[1]


class Handler(BaseHTTPRequestHandler):
    server: Store

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.log.append((self.path, self.headers.get("Authorization")))
        if self.path in self.server.fail_once:
            self.server.fail_once.discard(self.path)
            return self._status(503)
        if hf := re.fullmatch(r"/tiny/llama/resolve/(?P<rev>[^/]+)/(?P<file>[^/]+)", self.path):
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._status(401)
            if hf["rev"] != "v1":
                return self._status(404)
            if hf["file"].endswith(".safetensors"):  # large files live on the CDN, as on the Hub
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{self.server.port}/cdn/{hf['file']}")
                self.end_headers()
                return None
            return self._file(hf["file"])
        if cdn := re.fullmatch(r"/cdn/(?P<file>[^/]+)", self.path):
            return self._file(cdn["file"])
        if s3 := re.fullmatch(r"/(?P<bucket>models|public)/ckpt/tiny/(?P<file>[^/]+)", self.path):
            if s3["bucket"] == "models" and not self._signed():
                return self._status(403)
            return self._file(s3["file"], missing=403 if s3["bucket"] == "models" else 404)
        return self._status(404)

    def _signed(self) -> bool:
        """Recompute the SigV4 signature from what arrived, with the secret only the server knows."""
        match = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<scope>[^,]+),"
                             r"SignedHeaders=(?P<names>[^,]+),Signature=(?P<signature>[0-9a-f]{64})",
                             self.headers.get("Authorization") or "")
        if not match or match["key"] != KEYS.access_key or not match["scope"].endswith(f"/{REGION}/s3/aws4_request"):
            return False
        names = match["names"].split(";")
        if not {"host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"} <= set(names):
            return False
        headers = {name: (self.headers.get(name) or "").strip() for name in names}
        canonical = canonical_request("GET", self.path, headers)
        key = signing_key(KEYS.secret_key, headers["x-amz-date"][:8], REGION, "s3")
        expected = hmac.new(key, string_to_sign(headers["x-amz-date"], match["scope"], canonical).encode(),
                            "sha256").hexdigest()
        return hmac.compare_digest(expected, match["signature"])

    def _file(self, name: str, missing: int = 404) -> None:
        path = self.server.checkpoint / name
        if not path.is_file():
            return self._status(missing)
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return None

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def store(checkpoint: Path) -> Iterator[Store]:
    server = Store(checkpoint)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _hf_env(store: Store) -> dict[str, str]:
    return {"HF_ENDPOINT": f"http://127.0.0.1:{store.port}/", "HF_TOKEN": TOKEN}


def _s3_env(store: Store, credentials: Credentials | None = KEYS) -> dict[str, str]:
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{store.port}", "AWS_REGION": REGION}
    if credentials:
        env |= {"AWS_ACCESS_KEY_ID": credentials.access_key, "AWS_SECRET_ACCESS_KEY": credentials.secret_key,
                "AWS_SESSION_TOKEN": credentials.session_token or ""}
    return env


def _same_slice(fetched: Path, checkpoint: Path, start: int, end: int) -> None:
    mine, whole = LayerSlice.load(fetched, start, end), LayerSlice.load(checkpoint, start, end)
    for a, b in zip(mine.layers, whole.layers, strict=True):
        for field in dataclasses.fields(a):
            x, y = getattr(a, field.name), getattr(b, field.name)
            assert (x is None and y is None) or torch.equal(x, y), field.name
    for name in ("embed", "norm", "head"):
        assert (getattr(mine, name) is None) == (getattr(whole, name) is None)
        if getattr(mine, name) is not None:
            assert torch.equal(getattr(mine, name), getattr(whole, name))


def test_hf_fetches_only_the_shards_of_the_layer_range(store: Store, checkpoint: Path, tmp_path: Path) -> None:
    source = parse_source("hf://tiny/llama@v1", _hf_env(store))
    files = fetch(source, tmp_path / "ckpt", (1, 2), log=lambda _: None)
    assert files == [*TEXT_FILES, "model.safetensors.index.json", SHARD.format(2)]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(files), "no partial files left"
    cdn = [(path, auth) for path, auth in store.log if path.startswith("/cdn/")]
    assert cdn == [(f"/cdn/{SHARD.format(2)}", None)], "only the needed shard, and no token sent to the CDN host"
    _same_slice(tmp_path / "ckpt", checkpoint, 1, 2)

    # The last stage also needs the final norm and LM head; a second run keeps what is there.
    files = fetch(source, tmp_path / "last", (3, 4), log=lambda _: None)
    assert files[-2:] == [SHARD.format(3), SHARD.format(4)]
    _same_slice(tmp_path / "last", checkpoint, 3, 4)
    requests = len(store.log)
    fetch(source, tmp_path / "last", (3, 4), log=lambda _: None)
    assert len(store.log) - requests == 3, "only the three absent optional tokenizer files are asked again"


def test_front_end_fetch_and_hf_errors(store: Store, tmp_path: Path) -> None:
    env = _hf_env(store)
    assert fetch(parse_source("hf://tiny/llama@v1", env), tmp_path / "fe", None, weights=False,
                 log=lambda _: None) == TEXT_FILES
    with pytest.raises(ServingError, match="HTTP 401: a gated or private repository needs HF_TOKEN"):
        fetch(parse_source("hf://tiny/llama@v1", {**env, "HF_TOKEN": "wrong"}), tmp_path / "x", None)
    with pytest.raises(ServingError, match="HTTP 404: check that tiny/llama exists .* has revision v2"):
        fetch(parse_source("hf://tiny/llama@v2", env), tmp_path / "y", None)


def test_s3_fetch_is_signed_and_retries_a_server_error(store: Store, checkpoint: Path, tmp_path: Path) -> None:
    store.fail_once.add(f"/models/ckpt/tiny/{SHARD.format(1)}")
    source = parse_source("s3://models/ckpt/tiny/", _s3_env(store))
    files = fetch(source, tmp_path / "ckpt", (0, 1), log=lambda _: None, backoff=0)
    assert files == [*TEXT_FILES, "model.safetensors.index.json", SHARD.format(1), SHARD.format(2)]
    assert all(auth and auth.startswith("AWS4-HMAC-SHA256 ") for _, auth in store.log)
    assert [p for p, _ in store.log].count(f"/models/ckpt/tiny/{SHARD.format(1)}") == 2, "retried after a 503"
    _same_slice(tmp_path / "ckpt", checkpoint, 0, 1)

    wrong = Credentials(KEYS.access_key, "not-the-secret", KEYS.session_token)
    with pytest.raises(ServingError, match="HTTP 403: check AWS_ACCESS_KEY_ID"):
        fetch(parse_source("s3://models/ckpt/tiny", _s3_env(store, wrong)), tmp_path / "x", None)


def test_s3_anonymous_reads_a_public_bucket_whole(store: Store, checkpoint: Path, tmp_path: Path) -> None:
    files = fetch(parse_source("s3://public/ckpt/tiny", _s3_env(store, None)), tmp_path / "all", None,
                  log=lambda _: None)
    assert files[-4:] == [SHARD.format(i) for i in range(1, 5)]
    assert all(auth is None for _, auth in store.log)
    _same_slice(tmp_path / "all", checkpoint, 0, 4)


def test_sigv4_matches_the_aws_documented_example() -> None:
    """The GET Object example of the S3 API reference ("Signature Calculations for the Authorization
    Header"): the first 10 bytes of examplebucket/test.txt on 2013-05-24."""
    credentials = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    headers = signed_headers("https://examplebucket.s3.amazonaws.com/test.txt", credentials, "us-east-1",
                             datetime(2013, 5, 24, tzinfo=timezone.utc), {"Range": "bytes=0-9"})
    canonical = canonical_request("GET", "/test.txt", {k: v for k, v in headers.items() if k != "authorization"})
    to_sign = string_to_sign("20130524T000000Z", "20130524/us-east-1/s3/aws4_request", canonical)
    assert to_sign.endswith("\n7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972")
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_uris_and_addresses() -> None:
    hf = parse_source("hf://org/repo@refs/pr/1", {})
    assert hf.request("config.json").full_url == "https://huggingface.co/org/repo/resolve/refs%2Fpr%2F1/config.json"
    assert parse_source("hf://gpt2", {}).request("config.json").full_url.endswith("/gpt2/resolve/main/config.json")
    s3 = parse_source("s3://models/llama+3/", {"AWS_DEFAULT_REGION": "us-west-2"})
    assert isinstance(s3, S3) and s3.credentials is None
    assert s3.url("config.json") == "https://models.s3.us-west-2.amazonaws.com/llama%2B3/config.json"
    assert parse_source("s3://my.models", {}).url("a") == "https://s3.us-east-1.amazonaws.com/my.models/a"
    for bad in ("gs://bucket/x", "hf://org/repo/extra", "s3://Bad_Bucket", "hf://"):
        with pytest.raises(ServingError, match="neither hf://ORG/REPO"):
            parse_source(bad, {})


@pytest.mark.parametrize("uri", ["hf://gpt2", "hf://meta-llama/Llama-3.1-8B@main", "hf://org/repo@refs/pr/1",
                                 "hf://a/b/c", "hf://org/re po", "s3://models", "s3://my.bucket/a/b", "s3://ab",
                                 "s3://UPPER/x", "s3://-bad/x"])
def test_the_operator_accepts_exactly_the_uris_the_fetcher_reads(uri: str) -> None:
    try:
        parse_source(uri, {})
        fetchable = True
    except ServingError:
        fetchable = False
    assert (weights_uri.problem(uri) is None) == fetchable


def test_needed_shards_and_the_command_line(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    weight_map = {"model.embed_tokens.weight": "a", "model.layers.0.mlp.up_proj.weight": "a",
                  "model.layers.1.mlp.up_proj.weight": "b", "model.norm.weight": "c"}
    assert needed_shards(weight_map, (1, 2), 2, tied=False) == ["a", "b", "c"], "no lm_head: the embedding is the head"
    assert needed_shards({**weight_map, "lm_head.weight": "c"}, (1, 2), 2, tied=False) == ["b", "c"]
    assert needed_shards(weight_map, (0, 1), 2, tied=False) == ["a"]
    with pytest.raises(ServingError, match="outside the model's 2 layers"):
        needed_shards(weight_map, (1, 3), 2, tied=False)

    for name, value in _hf_env(store).items():
        monkeypatch.setenv(name, value)
    assert main(["weights", "fetch", "hf://tiny/llama@v1", str(tmp_path / "cli"), "--layers", "2-3"]) == 0
    assert (tmp_path / "cli" / SHARD.format(3)).exists() and not (tmp_path / "cli" / SHARD.format(1)).exists()
    assert main(["weights", "fetch", "gs://bucket/x", str(tmp_path / "bad")]) == 2
    assert "error: 'gs://bucket/x' is neither hf://" in capsys.readouterr().err
