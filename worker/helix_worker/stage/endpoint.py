"""A stage's network endpoint: its gRPC server and, unless disabled, the data-channel
listener beside it, started and stopped together (the worker and the benchmark use this)."""

from dataclasses import dataclass

import grpc

from helix_proto import helix_stage_pb2_grpc as pb_grpc
from helix_worker.datachannel import DataListener
from helix_worker.envs import Settings
from helix_worker.links import server_options
from helix_worker.engine.stage_engine import StageEngine
from helix_worker.stage.server import StageIdentity, StageServicer


@dataclass
class StageEndpoint:
    servicer: StageServicer
    server: grpc.aio.Server
    port: int

    @classmethod
    async def start(cls, engine: StageEngine, identity: StageIdentity, host: str, port: int,
                    settings: Settings) -> "StageEndpoint":
        listener = None
        if settings.data_channel == "tcp":
            listener = DataListener(settings.max_message_bytes)
            await listener.start(host, settings.data_port)
        servicer = StageServicer(engine, identity, max_message_bytes=settings.max_message_bytes, data_listener=listener)
        server = grpc.aio.server(options=server_options(settings.max_message_bytes))
        pb_grpc.add_StageServiceServicer_to_server(servicer, server)
        try:
            bound = server.add_insecure_port(f"{host}:{port}")
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
