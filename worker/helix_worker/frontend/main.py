"""`helix frontend`: the coordinator with its KServe v2 gRPC and OpenAI HTTP endpoints.

Serves until SIGTERM / SIGINT, then drains: readiness turns red, the servers stop taking new
connections (gRPC clients get GOAWAY and reconnect elsewhere; HTTP keep-alive clients get their
next answers with `Connection: close`, `http_drain`) and requests in flight finish, for at most
HELIX_DRAIN_SECONDS. With `ready_file`, writes the bound ports as JSON once the
servers listen (readiness itself turns green when some pipeline is fully up). Streams to
the stages use the cluster's mutual TLS; the client endpoints serve TLS with HELIX_CLIENT_TLS_*
and require an API key with HELIX_API_KEYS_FILE.
"""

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from helix_planner.plan_format import Plan
from helix_proto import grpc_service_pb2_grpc as kserve_grpc
from helix_worker.envs import Settings
from helix_worker.errors import ServingError
from helix_worker.frontend.auth import RequireKey, require_key_middleware
from helix_worker.frontend.coordinator import Coordinator, ModelLimits
from helix_worker.frontend.grpc_decode import RefuseUndecodable
from helix_worker.frontend.kserve import KServeServicer
from helix_worker.frontend.kserve_dataplane import KServeDataPlane
from helix_worker.frontend.kserve_rest import add_kserve_routes
from helix_worker.frontend.observed_capacity import add_observed_route
from helix_worker.frontend.openai_http import add_openai_routes
from helix_worker.frontend.service import GenerationService
from helix_worker.metrics import FrontendMetrics
from helix_worker.model.config import load_model_config
from helix_worker.model.tokenizer import load_tokenizer, stop_ids
from helix_worker.security.apikeys import ApiKeys, load_api_keys
from helix_worker.security.peers import parse_pairs, read_endpoints
from helix_worker.security.tls import ClusterTLS, client_tls, cluster_tls
from helix_worker.transport.grpcserver import new_server
from helix_worker.transport.http_base import health_routes, start_site
from helix_worker.transport.http_drain import HttpDrain
from helix_worker.transport.readyfile import write_ready_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrontendOptions:
    plan: Plan
    endpoints: dict[str, str]
    checkpoint: Path
    model_name: str = ""
    host: str = "127.0.0.1"
    grpc_port: int = 0
    http_port: int = 0
    ready_file: Path | None = None


def parse_endpoints(pairs: list[str], files: list[Path]) -> dict[str, str]:
    """NODE=HOST:PORT pairs and JSON files mapping node names to addresses."""
    endpoints: dict[str, str] = {}
    for path in files:
        try:
            endpoints |= read_endpoints(Path(path))
        except (OSError, ValueError) as err:
            raise ServingError(f"cannot read endpoints file {path}: {err}") from None
    return endpoints | parse_pairs(pairs)


def http_app(service: GenerationService, metrics: FrontendMetrics, settings: Settings,
             keys: ApiKeys | None = None, plane: KServeDataPlane | None = None,
             drain: HttpDrain | None = None) -> web.Application:
    """Health, metrics, observed capacity, the OpenAI API and KServe v2 REST (over `plane`, which the gRPC server
    shares, so its statistics count both); bodies above HELIX_MAX_REQUEST_BYTES get 413, and
    with `keys` API calls without one of them 401. With `drain`, it can hand its clients over."""
    app = web.Application(client_max_size=settings.max_request_bytes)
    if drain is not None:
        drain.install(app)
    if keys is not None:
        app.middlewares.append(require_key_middleware(keys))
    health_routes(app, lambda: service.coordinator.ready, metrics.render)
    add_openai_routes(app, service, body_seconds=settings.http_body_seconds)
    add_kserve_routes(app, plane or KServeDataPlane(service), body_seconds=settings.http_body_seconds)
    add_observed_route(app, service.coordinator.observed)
    return app


def build_service(options: FrontendOptions, settings: Settings, metrics: FrontendMetrics,
                  tls: ClusterTLS | None = None) -> GenerationService:
    """The service over the plan; a tokenizer that fails to load leaves token-id requests working."""
    config = load_model_config(options.checkpoint)
    tokenizer, tokenizer_error = None, ""
    try:
        tokenizer = load_tokenizer(options.checkpoint)
    except ServingError as err:
        tokenizer_error = str(err)
        log.error("serving token ids only: %s", err)
    name = served_name(options)
    coordinator = Coordinator(options.plan, options.endpoints,
                              ModelLimits(config.vocab_size, config.max_position_embeddings), settings, metrics,
                              tls=tls)
    return GenerationService(coordinator, tokenizer, name, stop_ids(config, tokenizer), tokenizer_error)


def served_name(options: FrontendOptions) -> str:
    """The model's name in the APIs and in the metrics' model_name label."""
    return options.model_name or str(options.plan.model.get("name") or options.checkpoint.name)


async def serve_frontend(options: FrontendOptions, settings: Settings) -> None:
    tls, clients, keys = cluster_tls(settings), client_tls(settings), load_api_keys(settings.api_keys_file)
    metrics = FrontendMetrics(served_name(options))
    service = build_service(options, settings, metrics, tls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.coordinator.start()
    interceptors = ([RequireKey(keys)] if keys else []) + [RefuseUndecodable()]
    server = new_server(settings, clients=True, interceptors=interceptors, max_receive_bytes=settings.max_request_bytes)
    plane = KServeDataPlane(service)
    kserve_grpc.add_GRPCInferenceServiceServicer_to_server(KServeServicer(plane), server)
    address = f"{options.host}:{options.grpc_port}"
    grpc_port = (server.add_insecure_port(address) if clients is None
                 else server.add_secure_port(address, clients.server_credentials()))
    await server.start()
    drain = HttpDrain()
    runner, http_port = await start_site(http_app(service, metrics, settings, keys, plane, drain), options.host,
                                         options.http_port,
                                         shutdown_seconds=settings.drain_seconds,
                                         idle_seconds=settings.http_idle_seconds,
                                         ssl_context=clients.server_context() if clients else None)
    log.info("front end for %s: KServe gRPC %s:%d, OpenAI and KServe REST %s://%s:%d/v1 /v2%s", service.model_name,
             options.host, grpc_port, "https" if clients else "http", options.host, http_port,
             ", API keys required" if keys else "")
    if options.ready_file is not None:
        write_ready_file(options.ready_file, {"grpc": grpc_port, "http": http_port, "pid": os.getpid()})
    try:
        await stop.wait()
        if settings.drain_delay_seconds > 0:
            log.info("stopping: still accepting requests for %.0fs while load balancers let go of this front end",
                     settings.drain_delay_seconds)
            await asyncio.sleep(settings.drain_delay_seconds)
    finally:
        log.info("draining: finishing requests in flight (at most %.0fs)", settings.drain_seconds)
        service.coordinator.drain()
        await asyncio.gather(server.stop(grace=settings.drain_seconds), drain.close(runner, settings.drain_seconds))
        await service.coordinator.close()
        service.close()
