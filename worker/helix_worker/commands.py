"""The data plane's `helix` subcommands: worker, frontend, up, model init, weights fetch, profile.

Registered through the `helix.commands` entry-point group; every command returns an exit
code, and user errors surface as one `ServingError` line (the CLI prints it).
"""

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from helix_planner.plan_format import Plan, load_plan
from helix_worker.envs import REMOTE_STORAGE, Settings, describe, warn_unknown
from helix_worker.errors import ServingError


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    env_help = "environment variables:\n" + describe()
    worker = subparsers.add_parser("worker", help="serve one pipeline stage of a plan",
                                   epilog=env_help, formatter_class=argparse.RawDescriptionHelpFormatter)
    _plan_and_model(worker)
    worker.add_argument("--node", required=True, help="this worker's node name in the plan")
    worker.add_argument("--port", type=int, default=50051, help="gRPC port (0: any free port)")
    worker.add_argument("--http-port", type=int, default=8081, help="health and metrics port (0: any)")
    worker.add_argument("--slowdown", type=float, help="emulate a slower GPU (overrides HELIX_SLOWDOWN)")
    worker.add_argument("--endpoint", action="append", default=[], metavar="NODE=HOST:PORT",
                        help="address of a plan node's worker (repeat): the only next hops this stage dials")
    worker.add_argument("--endpoints", action="append", type=Path, default=[], metavar="FILE",
                        help="JSON file mapping node names to HOST:PORT, read again when a next hop is not in it")
    worker.add_argument("--peers", type=Path, metavar="FILE",
                        help="JSON file mapping node names to HOST:PORT: the only next hops this stage dials, "
                             "whatever its plan lists; read again whenever it changes (the operator keeps one "
                             "current for every plan in service)")
    worker.set_defaults(func=run_worker)

    frontend = subparsers.add_parser("frontend", help="serve KServe v2 gRPC and OpenAI HTTP over a plan's workers",
                                     epilog=env_help, formatter_class=argparse.RawDescriptionHelpFormatter)
    _plan_and_model(frontend)
    frontend.add_argument("--endpoint", action="append", default=[], metavar="NODE=HOST:PORT",
                          help="address of a plan node's worker (repeat)")
    frontend.add_argument("--endpoints", action="append", type=Path, default=[], metavar="FILE",
                          help="JSON file mapping node names to HOST:PORT")
    frontend.add_argument("--model-name", default="", help="name clients use (default: the plan's model name)")
    frontend.add_argument("--grpc-port", type=int, default=8001, help="KServe v2 gRPC port (0: any)")
    frontend.add_argument("--http-port", type=int, default=8000, help="OpenAI HTTP, health and metrics port (0: any)")
    frontend.set_defaults(func=run_frontend)

    up = subparsers.add_parser("up", help="plan a local fleet, start workers and a front end, serve until Ctrl-C",
                               epilog=env_help, formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("--model", type=Path, help="checkpoint directory (default: write a random-weight demo model)")
    up.add_argument("--cluster", type=Path, help="cluster YAML to plan (default: --workers local workers, "
                                                 "planned with this machine's measured latency)")
    up.add_argument("--plan-seconds", type=float, help="planner time limit (default: 5 for local workers, "
                                                       "20 for --cluster)")
    up.add_argument("--workers", type=int, default=3, help="local workers when no --cluster is given")
    up.add_argument("--slowdown", type=_floats, default=(), metavar="F,F,...",
                    help="per-worker slowdown factors to emulate unlike GPUs, e.g. 1,1,2 (the planner sees "
                         "each worker's measured latency times its factor)")
    up.add_argument("--workdir", type=Path, help="where plan, logs and the demo model go (default: a temp dir)")
    up.add_argument("--grpc-port", type=int, default=8001, help="KServe v2 gRPC port (0: any)")
    up.add_argument("--http-port", type=int, default=8000, help="OpenAI HTTP port (0: any)")
    up.add_argument("--prompt", default="Helix serves", help="prompt of the sample generation")
    up.add_argument("--max-tokens", type=int, default=16)
    up.add_argument("--exit-after-sample", action="store_true", help="stop everything after the sample (for CI)")
    up.add_argument("--emulate-network", action="store_true",
                    help="with --cluster: run each node and the front end in a network namespace of its own, joined "
                         "by paths shaped to the file's bandwidths and latencies (needs root)")
    up.add_argument("--no-replan", dest="replan", action="store_false",
                    help="serve the first plan only: no replanning from observed capacity, and the front end "
                         "listens on the public ports itself (no entry relays in front of it)")
    up.add_argument("--replan-debounce", type=float, default=30.0, metavar="SECONDS",
                    help="how long observed capacity must stay off before a replan (default 30)")
    up.set_defaults(func=run_up)

    profile = subparsers.add_parser("profile", help="measure per-layer prompt/decode latency curves (catalog YAML)")
    profile.add_argument("--model", type=Path, help="checkpoint whose layer shape to time (default: the demo shape)")
    profile.add_argument("--model-name", help="model name in the catalog (default: the checkpoint folder's name)")
    profile.add_argument("--gpu-name", help="catalog GPU type name (default: the device's name)")
    profile.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    profile.add_argument("--layers", type=int, default=2, help="layers timed together (result is per layer)")
    profile.add_argument("--prompt-tokens", type=_ints, default=(32, 64, 128, 256, 512), metavar="N,N,...")
    profile.add_argument("--decode-batches", type=_ints, default=(1, 2, 4, 8, 16, 32), metavar="N,N,...")
    profile.add_argument("--repeats", type=int, default=3)
    profile.add_argument("-o", "--output", type=Path, help="write the catalog YAML here (default: stdout)")
    profile.set_defaults(func=run_profile)

    model = subparsers.add_parser("model", help="model checkpoints")
    model_sub = model.add_subparsers(dest="model_command", metavar="COMMAND", required=True)
    init = model_sub.add_parser("init", help="write a small random-weight Llama checkpoint (HF layout)")
    init.add_argument("directory", type=Path)
    init.add_argument("--layers", type=int, default=6)
    init.add_argument("--hidden", type=int, default=64)
    init.add_argument("--intermediate", type=int, default=176)
    init.add_argument("--heads", type=int, default=4)
    init.add_argument("--kv-heads", type=int, default=2)
    init.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    init.add_argument("--shards", type=int, default=1, help="split the weights over this many safetensors files")
    init.add_argument("--qkv-bias", action="store_true", help="Qwen2-style q/k/v biases")
    init.add_argument("--tie-embeddings", action="store_true")
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(func=run_model_init)

    weights = subparsers.add_parser("weights", help="checkpoints in remote storage")
    weights_sub = weights.add_subparsers(dest="weights_command", metavar="COMMAND", required=True)
    storage_help = "environment variables:\n" + "\n".join(f"  {k}: {v}" for k, v in REMOTE_STORAGE.items())
    fetch = weights_sub.add_parser("fetch", help="download a node's part of an hf:// or s3:// checkpoint",
                                   epilog=storage_help, formatter_class=argparse.RawDescriptionHelpFormatter)
    fetch.add_argument("source", help="hf://ORG/REPO[@REVISION] or s3://BUCKET[/PREFIX]")
    fetch.add_argument("directory", type=Path, help="where the checkpoint goes (files already there are kept)")
    part = fetch.add_mutually_exclusive_group()
    part.add_argument("--layers", type=_layer_range, metavar="START-END",
                      help="only the safetensors shards holding layers [START, END) (default: every shard)")
    part.add_argument("--no-weights", action="store_true", help="config and tokenizer only (what a front end reads)")
    fetch.add_argument("--cache", type=Path, help="hf:// only: a huggingface_hub cache directory pods share; the "
                       "checkpoint directory then links into it, and files already there are not downloaded")
    fetch.set_defaults(func=run_weights_fetch)


def _plan_and_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", required=True, type=Path, help="plan JSON (from `helix plan -o json`)")
    parser.add_argument("--model", required=True, type=Path, help="checkpoint directory (config.json + safetensors)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--ready-file", type=Path, help="write the bound ports here as JSON once serving")


_Number = TypeVar("_Number", int, float)


def _numbers(kind: Callable[[str], _Number], text: str) -> tuple[_Number, ...]:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _floats(text: str) -> tuple[float, ...]:
    return _numbers(float, text)


def _ints(text: str) -> tuple[int, ...]:
    return _numbers(int, text)


def _layer_range(text: str) -> tuple[int, int]:
    start, _, end = text.partition("-")
    if not (start.isdigit() and end.isdigit()) or int(start) >= int(end):
        raise argparse.ArgumentTypeError(f"expected START-END with START < END, got {text!r}")
    return int(start), int(end)


def read_plan(path: Path) -> Plan:
    try:
        return load_plan(path.read_text())
    except OSError as err:
        raise ServingError(f"cannot read plan {path}: {err}") from None


def run_worker(args: argparse.Namespace) -> int:
    warn_unknown()
    plan = read_plan(args.plan)  # a wrong path fails before torch is imported
    from helix_worker.security.peers import parse_pairs
    from helix_worker.stage.main import StageOptions, serve_stage

    options = StageOptions(plan, args.node, args.model, args.host, args.port, args.http_port,
                           args.ready_file, parse_pairs(args.endpoint), tuple(args.endpoints), args.peers)
    asyncio.run(serve_stage(options, Settings.from_env(slowdown=args.slowdown)))
    return 0


def run_frontend(args: argparse.Namespace) -> int:
    from helix_worker.frontend.main import FrontendOptions, parse_endpoints, serve_frontend

    warn_unknown()
    options = FrontendOptions(read_plan(args.plan), parse_endpoints(args.endpoint, args.endpoints), args.model,
                              args.model_name, args.host, args.grpc_port, args.http_port, args.ready_file)
    asyncio.run(serve_frontend(options, Settings.from_env()))
    return 0


def run_model_init(args: argparse.Namespace) -> int:
    from helix_worker.model.random_checkpoint import DemoModel, write_demo_checkpoint

    if args.hidden % args.heads or args.heads % args.kv_heads:
        raise ServingError("--hidden must be a multiple of --heads, and --heads a multiple of --kv-heads")
    config = write_demo_checkpoint(args.directory, DemoModel(
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_layers=args.layers, num_heads=args.heads,
        num_kv_heads=args.kv_heads, dtype=args.dtype, qkv_bias=args.qkv_bias,
        tie_word_embeddings=args.tie_embeddings, shards=args.shards, seed=args.seed))
    print(f"wrote a random-weight {config.model_type} checkpoint to {args.directory}: {config.num_layers} layers, "
          f"hidden {config.hidden_size}, vocab {config.vocab_size}, {config.dtype}")
    return 0


def run_weights_fetch(args: argparse.Namespace) -> int:
    import sys

    from helix_worker.envs import remote_storage_env
    from helix_worker.weights.fetch import fetch, parse_source

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    fetch(parse_source(args.source, remote_storage_env(), log, args.cache), args.directory, args.layers,
          weights=not args.no_weights, log=log)
    return 0


def run_up(args: argparse.Namespace) -> int:
    from helix_worker.fleet.up import UpOptions, up

    warn_unknown()  # its workers and front end inherit the environment: one warning here, one in each log
    return up(UpOptions(checkpoint=args.model, cluster_file=args.cluster, workers=args.workers,
                        slowdowns=args.slowdown, workdir=args.workdir,
                        grpc_port=args.grpc_port, http_port=args.http_port, prompt=args.prompt,
                        max_tokens=args.max_tokens, exit_after_sample=args.exit_after_sample,
                        plan_seconds=args.plan_seconds, emulate_network=args.emulate_network,
                        replan=args.replan, replan_debounce=args.replan_debounce))


def run_profile(args: argparse.Namespace) -> int:
    import sys
    import tempfile

    from helix_worker.fleet.profile import ProfileOptions, device_name, measure, write_profile
    from helix_worker.model.random_checkpoint import write_demo_checkpoint
    from helix_worker.stage.main import resolve_device

    device = resolve_device(args.device)
    gpu = args.gpu_name or device_name(device)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.model
        if checkpoint is None:
            checkpoint = Path(scratch) / "helix-demo"
            write_demo_checkpoint(checkpoint)
        options = ProfileOptions(checkpoint, gpu, device, layers=args.layers, prompt_tokens=args.prompt_tokens,
                                 decode_batches=args.decode_batches, repeats=args.repeats)
        document = measure(options, log=lambda line: print(line, file=sys.stderr))
        document["model"] = args.model_name or document["model"]
    if args.output:
        write_profile(document, args.output)
        print(f"wrote {args.output}; pass its directory with --catalog (or HELIX_CATALOG) to plan with it")
    else:
        import yaml

        print(yaml.safe_dump(document, sort_keys=False, default_flow_style=None))
    return 0
