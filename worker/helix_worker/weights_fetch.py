"""`helix weights fetch`: one node's part of a Hugging Face or S3 checkpoint, into a directory.

A worker pod's init container runs it, so each node downloads only what its layer range
reads: config.json and the tokenizer files, then model.safetensors.index.json and only the
shards holding its layers' tensors (with the embedding on the first stage, the final norm
and LM head on the last). The index stays whole: the worker's reader maps every name and
opens only the shards it needs. A checkpoint without an index is one file, fetched whole;
the front end fetches config and tokenizer only. Files appear atomically (written aside,
then renamed) and files already there are kept, so a restarted init container resumes.

hf://ORG/REPO[@REVISION] reads https://huggingface.co/{repo}/resolve/{revision}/{file}
(HF_ENDPOINT replaces the host, HF_TOKEN authenticates and is not sent on to the CDN host a
download redirects to). s3://BUCKET[/PREFIX] reads with AWS Signature V4 when keys are set,
anonymously otherwise; AWS_ENDPOINT_URL(_S3) selects an S3-compatible endpoint, path-style.
"""

import os
import re
import shutil
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import Message
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlsplit

from helix_worker.checkpoint import INDEX_FILE, SINGLE_FILE, index_weight_map, read_json
from helix_worker.errors import ServingError
from helix_worker.sigv4 import Credentials, signed_headers

CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")
HF_ENDPOINT = "https://huggingface.co"
HF_URI = re.compile(r"hf://(?P<repo>[A-Za-z0-9][-\w.]*(?:/[A-Za-z0-9][-\w.]*)?)(?:@(?P<revision>[-\w./]+))?",
                    re.ASCII)
S3_URI = re.compile(r"s3://(?P<bucket>[a-z0-9][-a-z0-9.]{1,61}[a-z0-9])(?:/(?P<prefix>\S*))?")
LAYER_TENSOR = re.compile(r"model\.layers\.(\d+)\.")
ATTEMPTS = 3
TIMEOUT = 60.0
CHUNK = 1 << 20
USER_AGENT = "helix-weights-fetch"

Log = Callable[[str], None]


class Source(Protocol):
    """Where a checkpoint's files come from."""

    uri: str
    absent: tuple[int, ...]  # HTTP statuses meaning "no such file" (for optional files)

    def request(self, name: str) -> urllib.request.Request: ...

    def advice(self, status: int) -> str: ...


@dataclass(frozen=True)
class HuggingFace:
    uri: str
    repo: str
    revision: str
    endpoint: str
    token: str | None
    absent: tuple[int, ...] = (404,)

    def request(self, name: str) -> urllib.request.Request:
        url = f"{self.endpoint}/{self.repo}/resolve/{quote(self.revision, safe='')}/{quote(name)}"
        headers = {"User-Agent": USER_AGENT}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return urllib.request.Request(url, headers=headers)

    def advice(self, status: int) -> str:
        if status in (401, 403):
            return "a gated or private repository needs HF_TOKEN (a key of spec.model.credentialsSecret)"
        return f"check that {self.repo} exists on {self.endpoint} and has revision {self.revision}"


@dataclass(frozen=True)
class S3:
    uri: str
    bucket: str
    prefix: str
    region: str
    endpoint: str | None
    credentials: Credentials | None
    absent: tuple[int, ...] = (403, 404)  # S3 says 403 for a missing key to callers that may not list the bucket

    def url(self, name: str) -> str:
        key = quote(f"{self.prefix}/{name}" if self.prefix else name)
        if self.endpoint:
            return f"{self.endpoint}/{self.bucket}/{key}"
        if "." in self.bucket:  # a dotted bucket name breaks the virtual host's TLS certificate
            return f"https://s3.{self.region}.amazonaws.com/{self.bucket}/{key}"
        return f"https://{self.bucket}.s3.{self.region}.amazonaws.com/{key}"

    def request(self, name: str) -> urllib.request.Request:
        url = self.url(name)
        headers = {"User-Agent": USER_AGENT}
        if self.credentials:
            headers |= signed_headers(url, self.credentials, self.region, datetime.now(timezone.utc))
        return urllib.request.Request(url, headers=headers)

    def advice(self, status: int) -> str:
        if status in (401, 403):
            return ("check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (keys of spec.model.credentialsSecret), "
                    f"the bucket's region (AWS_REGION, now {self.region}) and read access to the objects")
        return f"check the bucket and prefix of {self.uri}"


def parse_source(uri: str, environ: Mapping[str, str]) -> Source:
    """The source an hf:// or s3:// URI names, configured from the standard variables in `environ`."""
    if match := HF_URI.fullmatch(uri):
        endpoint = (environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")
        return HuggingFace(uri, match["repo"], match["revision"] or "main", endpoint, environ.get("HF_TOKEN"))
    if match := S3_URI.fullmatch(uri):
        region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
        key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
        credentials = Credentials(key, secret, environ.get("AWS_SESSION_TOKEN")) if key and secret else None
        return S3(uri, match["bucket"], (match["prefix"] or "").strip("/"), region,
                  endpoint.rstrip("/") if endpoint else None, credentials)
    raise ServingError(f"{uri!r} is neither hf://ORG/REPO[@REVISION] (a Hugging Face repository id) nor "
                       "s3://BUCKET[/PREFIX] (a bucket name of 3-63 lowercase letters, digits, '-' and '.')")


def needed_shards(weight_map: Mapping[str, str], layers: tuple[int, int], num_layers: int, tied: bool) -> list[str]:
    """The shards holding what a stage with `layers` [start, end) reads (see `LayerSlice.load`)."""
    start, end = layers
    if not 0 <= start < end <= num_layers:
        raise ServingError(f"layer range [{start}, {end}) is outside the model's {num_layers} layers")
    first, last = start == 0, end == num_layers
    tied = tied or "lm_head.weight" not in weight_map

    def read(name: str) -> bool:
        if match := LAYER_TENSOR.match(name):
            return start <= int(match.group(1)) < end
        if name.startswith("model.embed_tokens."):
            return first or last and tied
        return last and name.startswith(("model.norm.", "lm_head."))

    return sorted({shard for name, shard in weight_map.items() if read(name)})


def fetch(source: Source, directory: Path, layers: tuple[int, int] | None, *, weights: bool = True,
          log: Log = print, backoff: float = 2.0) -> list[str]:
    """Download config, tokenizer and (unless not `weights`) the shards `layers` need, all of them
    when `layers` is None; returns the names of the files now in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    opener = urllib.request.build_opener(_KeepAuthOnSameHost)

    def get(name: str, optional: bool = False) -> bool:
        return _download(opener, source, name, directory, log, backoff, optional)

    get(CONFIG_FILE)
    have = [CONFIG_FILE] + [name for name in TOKENIZER_FILES if get(name, optional=True)]
    if not weights:
        return have
    if get(INDEX_FILE, optional=True):
        weight_map = index_weight_map(directory / INDEX_FILE)
        shards = sorted(set(weight_map.values())) if layers is None else needed_shards(
            weight_map, layers, *_model_shape(read_json(directory / CONFIG_FILE, f"{CONFIG_FILE} vanished")))
        have.append(INDEX_FILE)
    else:
        shards = [SINGLE_FILE]
    for shard in shards:
        get(shard)
    log(f"{source.uri}: {len(shards)} weight file(s) in {directory}")
    return have + shards


class _KeepAuthOnSameHost(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never hand the Authorization header to another host (a CDN)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Message,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _download(opener: urllib.request.OpenerDirector, source: Source, name: str, directory: Path, log: Log,
              backoff: float, optional: bool) -> bool:
    """Fetch one file unless it is already there; False if an optional file does not exist."""
    if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
        raise ServingError(f"{source.uri}: refusing file name {name!r} from the checkpoint index")
    target = directory / name
    if target.exists():
        return True
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    problem = ""
    for attempt in range(ATTEMPTS):
        began = time.monotonic()
        try:
            with opener.open(source.request(name), timeout=TIMEOUT) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out, CHUNK)
                size, expected = out.tell(), response.headers.get("Content-Length")
            if expected is not None and int(expected) != size:
                raise URLError(f"got {size} of {expected} bytes")
            os.replace(partial, target)
            seconds = time.monotonic() - began
            log(f"{name}: {size / 1e6:.1f} MB in {seconds:.1f} s ({size / 1e6 / max(seconds, 1e-3):.1f} MB/s)")
            return True
        except HTTPError as err:
            err.close()
            if optional and err.code in source.absent:
                return False
            if err.code < 500 and err.code != 429:
                raise ServingError(f"cannot fetch {name} from {source.uri}: HTTP {err.code}: "
                                   f"{source.advice(err.code)}") from None
            problem = f"HTTP {err.code}"
        except (URLError, OSError) as err:
            problem = str(getattr(err, "reason", err))
        if attempt + 1 < ATTEMPTS:
            log(f"{name}: {problem}; retrying")
            time.sleep(backoff * 2 ** attempt)
    partial.unlink(missing_ok=True)
    raise ServingError(f"cannot fetch {name} from {source.uri} after {ATTEMPTS} attempts: {problem}")


def _model_shape(config: Any) -> tuple[int, bool]:
    """(layer count, tied embeddings) from config.json."""
    try:
        return int(config["num_hidden_layers"]), bool(config.get("tie_word_embeddings"))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ServingError("config.json has no num_hidden_layers: is it a Llama-family checkpoint?") from None
