"""`helix weights fetch`: one node's part of a Hugging Face or S3 checkpoint, into a directory.

A worker pod's init container runs it, so each node downloads only what its layer range
reads: config.json and the tokenizer files, then model.safetensors.index.json and only the
shards holding its layers' tensors (with the embedding on the first stage, the final norm
and LM head on the last). The index stays whole: the worker's reader maps every name and
opens only the shards it needs. A checkpoint without an index is one file, fetched whole;
the front end fetches config and tokenizer only. Files already there are kept and partial
ones resumed, so a restarted init container picks up where it stopped.

hf://ORG/REPO[@REVISION] goes through `huggingface_hub` (`weights_hf`: one commit for all
files), s3://BUCKET[/PREFIX] through `botocore` (`weights_s3`: the standard credential chain).
"""

import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from helix_worker.errors import ServingError
from helix_worker.model.checkpoint import INDEX_FILE, SINGLE_FILE, index_weight_map, read_json
from helix_worker.weights.hf import HF_ENDPOINT, HuggingFace
from helix_worker.weights.s3 import S3

CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")
HF_URI = re.compile(r"hf://(?P<repo>[A-Za-z0-9][-\w.]*(?:/[A-Za-z0-9][-\w.]*)?)(?:@(?P<revision>[-\w./]+))?",
                    re.ASCII)
S3_URI = re.compile(r"s3://(?P<bucket>[a-z0-9][-a-z0-9.]{1,61}[a-z0-9])(?:/(?P<prefix>\S*))?")
LAYER_TENSOR = re.compile(r"model\.layers\.(\d+)\.")

Log = Callable[[str], None]


class Source(Protocol):
    """Where a checkpoint's files come from."""

    uri: str

    def has(self, name: str) -> bool: ...

    def download(self, name: str, directory: Path) -> None: ...


def parse_source(uri: str, environ: Mapping[str, str], log: Log = print, cache: Path | None = None) -> Source:
    """The source an hf:// or s3:// URI names, configured from the standard variables in `environ`
    (the AWS credential chain reads its own from the process environment); `cache`: a shared
    huggingface_hub cache directory for hf:// files (see `weights_hf`)."""
    if match := HF_URI.fullmatch(uri):
        endpoint = (environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")
        return HuggingFace(uri, match["repo"], match["revision"] or "main", endpoint, environ.get("HF_TOKEN"), log,
                           cache)
    if cache is not None:
        raise ServingError(f"{uri!r}: a weights cache holds hf:// checkpoints only (huggingface_hub's layout)")
    if match := S3_URI.fullmatch(uri):
        s3_endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
        return S3(uri, match["bucket"], (match["prefix"] or "").strip("/"),
                  environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION"), s3_endpoint, log)
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
          log: Log = print) -> list[str]:
    """Download config, tokenizer and (unless not `weights`) the shards `layers` need, all of them
    when `layers` is None; returns the names of the files now in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)

    def get(name: str, optional: bool = False) -> bool:
        if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            raise ServingError(f"{source.uri}: refusing file name {name!r} from the checkpoint index")
        if (directory / name).exists():
            return True
        if optional and not source.has(name):
            return False
        began = time.monotonic()
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        source.download(name, directory)
        size, seconds = (directory / name).stat().st_size, time.monotonic() - began
        log(f"{name}: {size / 1e6:.1f} MB in {seconds:.1f} s ({size / 1e6 / max(seconds, 1e-3):.1f} MB/s)")
        return True

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
    for number, shard in enumerate(shards, 1):
        log(f"{source.uri}: weight file {number} of {len(shards)}: {shard}")
        get(shard)
    log(f"{source.uri}: {len(shards)} weight file(s) in {directory}")
    return have + shards


def _model_shape(config: Any) -> tuple[int, bool]:
    """(layer count, tied embeddings) from config.json."""
    try:
        return int(config["num_hidden_layers"]), bool(config.get("tie_word_embeddings"))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ServingError("config.json has no num_hidden_layers: is it a Llama-family checkpoint?") from None
