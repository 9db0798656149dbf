"""`helix weights fetch` through huggingface_hub and botocore, against in-process stand-ins for
the Hub and for S3/STS over real HTTP, serving a sharded `helix model init` checkpoint."""

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
from huggingface_hub import _CACHED_NO_EXIST, try_to_load_from_cache
from weights_standins import HubServer, S3Server, checkpoint_files, serving

from helix_operator.api import weights_uri
from helix_planner.cli import main
from helix_worker.engine.model import LayerSlice
from helix_worker.errors import ServingError
from helix_worker.model.random_checkpoint import DemoModel, write_demo_checkpoint
from helix_worker.weights.fetch import fetch, needed_shards, parse_source
from helix_worker.weights.hf import HuggingFace
from helix_worker.weights.partial import resume_from
from helix_worker.weights.s3 import S3

REPO = "tiny/llama"
OLD, NEW = "a" * 40, "b" * 40
TOKEN = "hf_secret"
SHARD = "model-{:05d}-of-00004.safetensors"
TEXT_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json"]
QUIET = {"log": lambda _: None}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four layers in four shards: embedding + layer 0 | layer 1 | layer 2 | layer 3 + norm + head (about)."""
    directory = tmp_path_factory.mktemp("sharded")
    write_demo_checkpoint(directory, DemoModel(num_layers=4, shards=4))
    return directory


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real credentials, config or metadata service from this machine reach the code under test."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _hub(checkpoint: Path, token: str | None = TOKEN) -> HubServer:
    """`main` points at OLD; NEW has other shard contents (a push that lands mid-rollout)."""
    files = checkpoint_files(checkpoint)
    changed = {name: (body[::-1] if name.endswith(".safetensors") else body) for name, body in files.items()}
    return HubServer(REPO, {OLD: files, NEW: changed}, {"main": OLD}, token)


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


def test_hf_resolves_the_revision_once_and_fetches_only_the_layer_range(checkpoint: Path, tmp_path: Path) -> None:
    with serving(_hub(checkpoint)) as hub:
        source = parse_source(f"hf://{REPO}", {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN})
        assert source.resolve() == OLD
        hub.refs["main"] = NEW  # pushed after the plan resolved it: this fetch stays on OLD
        files = fetch(source, tmp_path / "ckpt", (1, 2), **QUIET)
        assert files == [*TEXT_FILES, "model.safetensors.index.json", SHARD.format(2)]
        resolves = {path.split("/resolve/")[1].split("/")[0] for _, path, _, _ in hub.log if "/resolve/" in path}
        assert resolves == {OLD}, "every file at the one resolved commit"
        assert all(auth == f"Bearer {TOKEN}" for *_, auth in hub.log)
        _same_slice(tmp_path / "ckpt", checkpoint, 1, 2)
        assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.is_file()) == sorted(files)

        # A pinned sha (what the operator hands every pod) needs no branch at all.
        pinned = parse_source(f"hf://{REPO}@{OLD}", {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN})
        fetch(pinned, tmp_path / "last", (3, 4), **QUIET)
        _same_slice(tmp_path / "last", checkpoint, 3, 4)


def test_hf_resumes_what_an_earlier_run_left(checkpoint: Path, tmp_path: Path) -> None:
    """A restarted init container finds huggingface_hub's partial file and asks for the rest only."""
    shard = checkpoint / SHARD.format(1)
    body = shard.read_bytes()
    (tmp_path / "ckpt").mkdir()
    partial, _ = resume_from(tmp_path / "ckpt" / shard.name, hashlib.sha256(body).hexdigest(), len(body), print)
    partial.write_bytes(body[:1000])
    (tmp_path / "ckpt" / f".{shard.name}.0123456789abcdef.partial").write_bytes(b"another version")
    with serving(_hub(checkpoint)) as hub:
        fetch(parse_source(f"hf://{REPO}@{OLD}", {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}), tmp_path / "ckpt",
              (0, 1), **QUIET)
        path = f"/{REPO}/resolve/{OLD}/{shard.name}"
        assert [rng for method, p, rng, _ in hub.log if method == "GET" and p == path] == ["bytes=1000-"]
    _same_slice(tmp_path / "ckpt", checkpoint, 0, 1)
    assert not list((tmp_path / "ckpt").glob(".*.partial")), "another version's partial file is gone too"


def test_hf_cache_is_shared_so_a_second_pod_downloads_nothing(checkpoint: Path, tmp_path: Path) -> None:
    """Pods pointing `--cache` at one volume: the first fills huggingface_hub's snapshot layout, a
    second (or a restarted one) with the same layers sends no request at all, one with other
    layers downloads only its missing shard."""
    cache = tmp_path / "hf-cache"
    with serving(_hub(checkpoint)) as hub:
        def source() -> HuggingFace:
            return parse_source(f"hf://{REPO}@{OLD}", {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}, cache=cache)

        first = fetch(source(), tmp_path / "pod-1", (1, 2), **QUIET)
        assert sum(method == "GET" and "/resolve/" in path for method, path, _, _ in hub.log) == len(first)
        hub.log.clear()
        assert fetch(source(), tmp_path / "pod-2", (1, 2), **QUIET) == first
        assert hub.log == [], "every file, and every absent optional one, came from the cache"
        _same_slice(tmp_path / "pod-2", checkpoint, 1, 2)
        fetch(source(), tmp_path / "pod-3", (2, 3), **QUIET)
        got = [path.rsplit("/", 1)[1] for method, path, _, _ in hub.log if method == "GET" and "/resolve/" in path]
        assert got == [SHARD.format(3)]
    _same_slice(tmp_path / "pod-3", checkpoint, 2, 3)
    snapshot = try_to_load_from_cache(REPO, SHARD.format(3), cache_dir=cache, revision=OLD)
    assert snapshot == str(cache / "models--tiny--llama" / "snapshots" / OLD / SHARD.format(3))
    assert (tmp_path / "pod-3" / SHARD.format(3)).resolve() == Path(snapshot).resolve()
    assert try_to_load_from_cache(REPO, "chat_template.jinja", cache_dir=cache, revision=OLD) is _CACHED_NO_EXIST
    with pytest.raises(ServingError, match="hf:// checkpoints only"):
        parse_source("s3://bucket/x", {}, cache=cache)


def test_hf_errors_say_what_to_change(checkpoint: Path, tmp_path: Path) -> None:
    with serving(_hub(checkpoint)) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}
        with pytest.raises(ServingError, match="no repository other/model .*needs HF_TOKEN"):
            fetch(parse_source("hf://other/model", env), tmp_path / "a", None, **QUIET)
        with pytest.raises(ServingError, match="has no revision 'v9'"):
            fetch(parse_source(f"hf://{REPO}@v9", env), tmp_path / "b", None, **QUIET)
        with pytest.raises(ServingError, match="no repository tiny/llama .*needs HF_TOKEN"):
            fetch(parse_source(f"hf://{REPO}", {"HF_ENDPOINT": hub.url}), tmp_path / "c", None, **QUIET)
        del hub.commits[OLD][SHARD.format(2)]
        with pytest.raises(ServingError, match=f"at commit {OLD[:12]} has no file {SHARD.format(2)}"):
            fetch(parse_source(f"hf://{REPO}", env), tmp_path / "d", (1, 2), **QUIET)
        hub.gated = True
        with pytest.raises(ServingError, match="tiny/llama is gated; set HF_TOKEN"):
            fetch(parse_source(f"hf://{REPO}", {"HF_ENDPOINT": hub.url}), tmp_path / "e", None, **QUIET)


def _objects(checkpoint: Path, bucket: str) -> dict[str, bytes]:
    return {f"/{bucket}/ckpt/tiny/{name}": body for name, body in checkpoint_files(checkpoint).items()}


def test_s3_credentials_from_a_web_identity_and_resume(checkpoint: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """IRSA: botocore trades the pod's token file for keys at STS, then signs S3 reads with them;
    a partial file left by an earlier run continues with a ranged GET."""
    token = tmp_path / "token"
    token.write_text("pod-identity-token")
    store = S3Server(_objects(checkpoint, "models"), web_token="pod-identity-token", sts_key="ASIASTS",
                     require_key="ASIASTS")
    with serving(store):
        monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
        monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/helix")
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", store.url)
        shard = checkpoint / SHARD.format(1)
        (tmp_path / "ckpt").mkdir()
        etag = f'"{hashlib.md5(shard.read_bytes()).hexdigest()}"'
        partial, _ = resume_from(tmp_path / "ckpt" / shard.name, etag, shard.stat().st_size, print)
        partial.write_bytes(shard.read_bytes()[:1000])
        store.cut_once.add(f"/models/ckpt/tiny/{SHARD.format(2)}")
        source = parse_source("s3://models/ckpt/tiny/", {"AWS_ENDPOINT_URL_S3": store.url, "AWS_REGION": "eu-west-1"})
        files = fetch(source, tmp_path / "ckpt", (0, 1), **QUIET)
        assert files == [*TEXT_FILES, "model.safetensors.index.json", SHARD.format(1), SHARD.format(2)]
        assert store.sts_calls and store.sts_calls[0]["RoleArn"] == ["arn:aws:iam::123456789012:role/helix"]
        ranges = {(p.rsplit("/", 1)[1], rng) for method, p, rng, _ in store.log if method == "GET" and rng}
        assert (SHARD.format(1), "bytes=1000-") in ranges, "resumed from the partial file"
        half = (checkpoint / SHARD.format(2)).stat().st_size // 2
        assert (SHARD.format(2), f"bytes={half}-") in ranges, "resumed after the connection dropped"
        _same_slice(tmp_path / "ckpt", checkpoint, 0, 1)


def test_s3_anonymous_public_bucket_and_clear_errors(checkpoint: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(S3Server(_objects(checkpoint, "public"))) as store:
        env = {"AWS_ENDPOINT_URL": store.url}
        files = fetch(parse_source("s3://public/ckpt/tiny", env), tmp_path / "all", None, **QUIET)
        assert files[-4:] == [SHARD.format(i) for i in range(1, 5)]
        assert all(auth is None for *_, auth in store.log), "no credentials anywhere: unsigned reads"
        _same_slice(tmp_path / "all", checkpoint, 0, 4)
        with pytest.raises(ServingError, match="no object s3://public/elsewhere/config.json"):
            fetch(parse_source("s3://public/elsewhere", env), tmp_path / "none", None, **QUIET)
    with serving(S3Server(_objects(checkpoint, "models"), require_key="AKIARIGHT")) as store:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONG")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
        with pytest.raises(ServingError, match="no object .*config.json \\(or no read access to it: 403\\)"):
            fetch(parse_source("s3://models/ckpt/tiny", {"AWS_ENDPOINT_URL": store.url}), tmp_path / "x", None,
                  **QUIET)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIARIGHT")
        fetch(parse_source("s3://models/ckpt/tiny", {"AWS_ENDPOINT_URL": store.url}), tmp_path / "y", (0, 1),
              **QUIET)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "missing-token"))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/helix")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(ServingError, match="credentials come from"):
        fetch(parse_source("s3://models/ckpt/tiny", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}), tmp_path / "z",
              None, **QUIET)


def test_uris() -> None:
    hf = parse_source("hf://org/repo@refs/pr/1", {})
    assert (hf.repo, hf.revision, hf.endpoint) == ("org/repo", "refs/pr/1", "https://huggingface.co")
    assert parse_source("hf://gpt2", {}).revision == "main"
    s3 = parse_source("s3://models/llama+3/", {"AWS_DEFAULT_REGION": "us-west-2"})
    assert isinstance(s3, S3) and (s3.bucket, s3.prefix, s3.region, s3.endpoint) == (
        "models", "llama+3", "us-west-2", None)
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


def test_needed_shards_and_the_command_line(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    weight_map = {"model.embed_tokens.weight": "a", "model.layers.0.mlp.up_proj.weight": "a",
                  "model.layers.1.mlp.up_proj.weight": "b", "model.norm.weight": "c"}
    assert needed_shards(weight_map, (1, 2), 2, tied=False) == ["a", "b", "c"], "no lm_head: the embedding is the head"
    assert needed_shards({**weight_map, "lm_head.weight": "c"}, (1, 2), 2, tied=False) == ["b", "c"]
    assert needed_shards(weight_map, (0, 1), 2, tied=False) == ["a"]
    with pytest.raises(ServingError, match="outside the model's 2 layers"):
        needed_shards(weight_map, (1, 3), 2, tied=False)

    with serving(_hub(checkpoint)) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        assert main(["weights", "fetch", f"hf://{REPO}", str(tmp_path / "cli"), "--layers", "2-3"]) == 0
    assert (tmp_path / "cli" / SHARD.format(3)).exists() and not (tmp_path / "cli" / SHARD.format(1)).exists()
    assert f"resolved to commit {OLD}" in capsys.readouterr().err
    assert main(["weights", "fetch", "gs://bucket/x", str(tmp_path / "bad")]) == 2
    assert "error: 'gs://bucket/x' is neither hf://" in capsys.readouterr().err
