"""A stage's network endpoint: its gRPC server and, unless disabled, the data-channel
listener beside it, started and stopped together (the worker and the benchmark use this).
With the cluster's `tls` both accept only peers holding a certificate from the cluster CA.
The gRPC server keeps the limits of `grpcserver`; links to next stages ping as the liveness
bounds of `settings` say (`links.Keepalive`)."""

from dataclasses import dataclass

import grpc

from helix_proto import helix_stage_pb2_grpc as pb_grpc
from helix_worker.engine.stage_engine import StageEngine
from helix_worker.envs import Settings
from helix_worker.security.peers import PlanPeers
from helix_worker.security.tls import ClusterTLS
from helix_worker.stage.server import StageIdentity, StageServicer
from helix_worker.transport.datachannel import DataListener
from helix_worker.transport.grpcserver import new_server
from helix_worker.transport.links import Keepalive


@dataclass
class StageEndpoint:
    servicer: StageServicer
    server: grpc.aio.Server
    port: int

    @classmethod
    async def start(cls, engine: StageEngine, identity: StageIdentity, host: str, port: int,
                    settings: Settings, *, tls: ClusterTLS | None = None,
                    peers: PlanPeers | None = None) -> "StageEndpoint":
        """`peers`: the next hops this stage may dial (none: it forwards nowhere)."""
        listener = None
        if settings.data_channel == "tcp":
            listener = DataListener(settings.max_message_bytes, tls)
            await listener.start(host, settings.data_port)
        servicer = StageServicer(engine, identity, max_message_bytes=settings.max_message_bytes, data_listener=listener,
                                 tls=tls, peers=peers, keepalive=Keepalive.of(settings))
        server = new_server(settings)
        pb_grpc.add_StageServiceServicer_to_server(servicer, server)
        try:
            address = f"{host}:{port}"
            bound = (server.add_insecure_port(address) if tls is None
                     else server.add_secure_port(address, tls.server_credentials()))
            await server.start()
        except BaseException:
            if listener is not None:
                await listener.close()
            raise
        return cls(servicer, server, bound)

    @property
    def data_port(self) -> int | None:
        return self.servicer.data_listener.port if self.servicer.data_listener is not None else None

    async def stop(self, grace: float | None = 1.0) -> None:
        """Close the links to next stages, then the server, then the data channels."""
        await self.servicer.close()
        await self.server.stop(grace)
        if self.servicer.data_listener is not None:
            await self.servicer.data_listener.close()
