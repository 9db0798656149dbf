"""The one registry of environment variables that configure workers and the front end.

Each field of `Settings` is read from `HELIX_<FIELD NAME IN CAPITALS>`; its metadata holds
the help text. Command-line flags override the environment; nothing else reads `os.environ`.
`REMOTE_STORAGE` lists the standard variables of Hugging Face and AWS tools that `helix
weights fetch` honours under their usual names (a credentials Secret already holds them so).
`DESCRIPTIVE` lists the other HELIX_* names a process may legitimately carry; any further
HELIX_* variable is most likely a misspelt setting, which `warn_unknown` reports at start.
"""

import difflib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from helix_worker.errors import ServingError

DATA_CHANNELS = ("tcp", "grpc")
ROUTINGS = ("adaptive", "iwrr")


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    device: str = _setting("auto", "torch device for the layers: auto (cuda when present), cpu, cuda, cuda:N")
    dtype: str = _setting("", "weight/activation dtype (float32, bfloat16, float16); empty: the checkpoint's")
    kv_cache_tokens: int = _setting(0, "KV cache size in tokens; 0: derive from kv_cache_bytes")
    kv_cache_bytes: int = _setting(1 << 30, "KV cache memory budget in bytes when kv_cache_tokens is 0")
    kv_block_tokens: int = _setting(16, "tokens per KV cache block (requests take memory a block at a time)")
    max_batch_tokens: int = _setting(512, "token budget of one stage step: every decode row counts 1, and longer "
                                          "prompts are prefilled in chunks that fit beside them")
    kv_watermark: float = _setting(0.02, "share of each stage's KV blocks the front end keeps free when admitting, "
                                         "room for running requests to grow before a stage must preempt")
    torch_threads: int = _setting(0, "torch intra-op threads; 0: torch's default")
    slowdown: float = _setting(1.0, "emulate a slower GPU: each step takes this many times its compute time")
    slowdown_file: str = _setting("", "file holding the slowdown factor, re-read when it changes while the worker "
                                      "runs (emulates a GPU that turns slower under load); while it is missing, "
                                      "HELIX_SLOWDOWN holds")
    max_message_bytes: int = _setting(256 << 20, "largest gRPC message (activations of a long prefill)")
    max_request_bytes: int = _setting(4 << 20, "largest request the front end takes, an HTTP body or a KServe gRPC "
                                               "message (128k tokens of text are well under 1 MiB); larger ones get "
                                               "413 or RESOURCE_EXHAUSTED")
    http_idle_seconds: float = _setting(15.0, "the front end closes an HTTP connection that sends no whole request "
                                              "head this long after it opened or got its last response (idle "
                                              "keep-alives, slow-header clients), or that still sends a body "
                                              "this long after its answer")
    http_body_seconds: float = _setting(30.0, "how long the front end waits for a request's whole HTTP body before "
                                              "answering 408")
    data_channel: str = _setting("tcp", "how messages to stages travel: tcp (a raw TCP side channel each stream "
                                        "negotiates, falling back to the gRPC stream when it cannot connect; a stage "
                                        "accepts it, links offer it) or grpc (the gRPC stream only)")
    data_port: int = _setting(0, "port a stage's data-channel listener binds; 0: any free port (the operator sets a "
                                 "fixed one, so that network policies can open it)")
    reconnect_seconds: float = _setting(0.5, "how often the front end probes a stage that went down")
    routing: str = _setting("adaptive", "how the front end routes requests: adaptive (over the plan's hop graph, the "
                                        "route with KV room of least expected completion time, from measured "
                                        "latencies, step round trips and queues) or iwrr (interleaved weighted round "
                                        "robin over the plan's pipelines by their planned flow)")
    route_wait_seconds: float = _setting(60.0, "how long a request waits for a usable pipeline before failing")
    step_timeout_seconds: float = _setting(120.0, "a step with no answer by then is re-routed (a lost message)")
    heartbeat_seconds: float = _setting(1.0, "how often the front end asks every stage it uses for its health "
                                             "(Describe: answers, readiness, engine progress, KV room, the next hops "
                                             "it cannot reach), and how often every link (front end to stage, stage "
                                             "to stage) pings its peer; at least 0.1")
    hung_seconds: float = _setting(10.0, "a stage that does not answer a heartbeat within this, or holds runnable work "
                                         "without finishing a step for this long, is declared hung, and a link whose "
                                         "ping has no answer within this is given up (cut on the way): the pipelines "
                                         "over it leave rotation (within heartbeat + hung seconds) and their requests "
                                         "re-prefill elsewhere; they rejoin when the stage answers healthy, or the "
                                         "stage before the link reaches the next one again")
    lease_seconds: float = _setting(30.0, "a stage releases the KV of a front end's requests when that front end has "
                                          "had no stream to it for this long (killed, or its connection gone)")
    grpc_idle_seconds: float = _setting(300.0, "a gRPC server (a stage's, the front end's KServe port) closes a client "
                                               "connection that has had no call open for this long (GOAWAY; the "
                                               "client reconnects when it next calls); 0: never")
    grpc_unary_seconds: float = _setting(600.0, "a unary gRPC call (KServe ModelInfer, ServerReady, a stage's "
                                                "Describe) ends DEADLINE_EXCEEDED unless its request has arrived and "
                                                "its answer is sent within this: a client that sends its request "
                                                "slowly, or never, holds nothing longer (stream long generations: "
                                                "ModelStreamInfer); 0: no limit")
    grpc_max_connection_age_seconds: float = _setting(0.0, "the front end's KServe port closes client connections "
                                                           "this old (GOAWAY: calls in flight get "
                                                           "HELIX_DRAIN_SECONDS to finish; clients reconnect, through "
                                                           "a load balancer perhaps to another replica); 0: never. "
                                                           "Stage connections are never aged: their streams live "
                                                           "as long as the pipeline")
    max_queue: int = _setting(1024, "requests the front end holds waiting for KV cache before refusing more")
    max_in_flight: int = _setting(0, "requests the front end runs at once (more wait in its queue); 0: the plan's "
                                     "maxInFlight, or KV room alone when the plan sets none")
    drain_seconds: float = _setting(30.0, "after SIGTERM, how long the front end lets requests in flight finish")
    drain_delay_seconds: float = _setting(0.0, "after SIGTERM, how long the front end still accepts new requests "
                                               "before it drains: the time a Service or load balancer takes to "
                                               "stop sending to a terminating pod, whose new connections would "
                                               "otherwise be refused (the operator sets it)")
    tls_cert: str = _setting("", "path of this member's certificate (PEM) for mutual TLS between the front end and "
                                 "the stages; signed by HELIX_TLS_CA")
    tls_key: str = _setting("", "path of the private key (PEM) of HELIX_TLS_CERT")
    tls_ca: str = _setting("", "path of the cluster CA certificate (PEM): only peers presenting a certificate it "
                               "signed are accepted, and only servers presenting one are dialled")
    plaintext: bool = _setting(False, "run the stage network without TLS when HELIX_TLS_* are unset (only on a "
                                      "network you trust: anyone who reaches a stage can run the model); without "
                                      "it a worker or front end refuses to start plaintext")
    client_tls_cert: str = _setting("", "certificate (PEM) the front end's client endpoints (OpenAI HTTP, KServe "
                                        "gRPC) serve TLS with; unset: they serve plaintext")
    client_tls_key: str = _setting("", "private key (PEM) of HELIX_CLIENT_TLS_CERT")
    api_keys_file: str = _setting("", "file of client API keys, one a line: the OpenAI API then requires "
                                      "`Authorization: Bearer <key>` and KServe gRPC the same `authorization` "
                                      "metadata (health, readiness and metrics stay open); re-read when it changes")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            name = env_name(spec.name)
            if name in environ and environ[name] != "":
                try:
                    values[spec.name] = _parse(type(spec.default), environ[name])
                except ValueError:
                    raise ServingError(f"{name}={environ[name]!r} is not a valid "
                                       f"{type(spec.default).__name__}") from None
        settings = replace(cls(**values), **{k: v for k, v in overrides.items() if v is not None})
        if settings.data_channel not in DATA_CHANNELS:
            raise ServingError(f"{env_name('data_channel')}={settings.data_channel!r}: "
                               f"use one of {', '.join(DATA_CHANNELS)}")
        if settings.routing not in ROUTINGS:
            raise ServingError(f"{env_name('routing')}={settings.routing!r}: use one of {', '.join(ROUTINGS)}")
        for name in ("kv_block_tokens", "max_batch_tokens"):
            if getattr(settings, name) < 1:
                raise ServingError(f"{env_name(name)}={getattr(settings, name)}: give a positive number of tokens")
        for name in ("max_request_bytes", "http_idle_seconds", "http_body_seconds", "heartbeat_seconds",
                     "hung_seconds", "lease_seconds"):
            if getattr(settings, name) <= 0:
                raise ServingError(f"{env_name(name)}={getattr(settings, name)}: give a positive number")
        for name in ("grpc_idle_seconds", "grpc_unary_seconds", "grpc_max_connection_age_seconds"):
            if getattr(settings, name) < 0:
                raise ServingError(f"{env_name(name)}={getattr(settings, name)}: give a number of seconds, or 0 for "
                                   "no limit")
        if settings.heartbeat_seconds < 0.1:
            raise ServingError(f"{env_name('heartbeat_seconds')}={settings.heartbeat_seconds}: give at least 0.1 s "
                               "(links ping their peers that often, and stages allow no more)")
        if not 0.0 <= settings.kv_watermark < 1.0:
            raise ServingError(f"{env_name('kv_watermark')}={settings.kv_watermark}: give a share in [0, 1)")
        if settings.max_in_flight < 0:
            raise ServingError(f"{env_name('max_in_flight')}={settings.max_in_flight}: give a positive number of "
                               "requests, or 0 for the plan's limit")
        return settings


def _parse(kind: type, text: str) -> Any:
    """bool("0") is True, so booleans are spelled out."""
    if kind is not bool:
        return kind(text)
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ValueError(text)


REMOTE_STORAGE = {
    "HF_TOKEN": "Hugging Face access token for hf:// weights (gated or private repositories)",
    "HF_ENDPOINT": "Hugging Face endpoint for hf:// weights (default https://huggingface.co), e.g. a mirror",
    "AWS_ACCESS_KEY_ID": "access key for s3:// weights; without one, botocore's credential chain (AWS_PROFILE, "
                         "IRSA's AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, EKS Pod Identity, instance metadata), "
                         "else anonymous reads (public buckets)",
    "AWS_SECRET_ACCESS_KEY": "secret key for s3:// weights",
    "AWS_SESSION_TOKEN": "session token of temporary AWS credentials",
    "AWS_REGION": "region of the s3:// bucket (default: AWS_DEFAULT_REGION, else the shared config's)",
    "AWS_DEFAULT_REGION": "region of the s3:// bucket when AWS_REGION is unset",
    "AWS_ENDPOINT_URL_S3": "S3-compatible endpoint (MinIO, Ceph, R2...), addressed path-style",
    "AWS_ENDPOINT_URL": "endpoint for every AWS service, used when AWS_ENDPOINT_URL_S3 is unset",
}


def remote_storage_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The set, non-empty `REMOTE_STORAGE` variables."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in REMOTE_STORAGE if environ.get(name)}


def env_name(field_name: str) -> str:
    return "HELIX_" + field_name.upper()


# HELIX_* variables that configure nothing here: the operator describes its pods with them (for
# people and tools reading a pod's environment; the command line carries the same values), and
# the planner reads the last two.
DESCRIPTIVE = {
    "HELIX_NODE": "the plan node this worker serves (operator pods; also --node)",
    "HELIX_LAYER_START": "first layer of this worker's slice (operator pods)",
    "HELIX_LAYER_END": "end of this worker's slice, exclusive (operator pods)",
    "HELIX_PLAN_HASH": "hash of the plan this pod serves (operator pods)",
    "HELIX_MODEL": "the HelixCluster's model name (operator pods)",
    "HELIX_WORKER_PORT": "the worker's gRPC port (operator pods; also --port)",
    "HELIX_WEIGHTS_URI": "where the pod's weights come from (operator pods)",
    "HELIX_HTTP_PORT": "the front end's OpenAI HTTP port (operator pods; also --http-port)",
    "HELIX_GRPC_PORT": "the front end's KServe gRPC port (operator pods; also --grpc-port)",
    "HELIX_CATALOG": "more GPU catalog directories for the planner (os.pathsep-separated)",
    "HELIX_REFERENCE": "the Helix reference data directory (the simulator's traces)",
}


def known_names() -> set[str]:
    return {env_name(f.name) for f in fields(Settings)} | set(DESCRIPTIVE)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per HELIX_* variable of `environ` that nothing reads, with the closest known name."""
    known = known_names()
    lines = []
    for name in sorted(n for n in environ if n.startswith("HELIX_") and n not in known):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"unknown environment variable {name}{hint}: it is ignored; `helix worker --help` lists "
                     "the settings")
    return lines


def warn_unknown(environ: Mapping[str, str] | None = None) -> None:
    """Log `unknown_variables` of the process environment; each command calls it once at start."""
    for line in unknown_variables(os.environ if environ is None else environ):
        logging.getLogger(__name__).warning("warning: %s", line)


def describe() -> str:
    """One line per variable, for `--help` epilogs and the README."""
    return "\n".join(f"  {env_name(f.name)} (default {f.default!r}): {f.metadata['help']}" for f in fields(Settings))
