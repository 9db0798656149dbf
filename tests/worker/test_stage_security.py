"""Mutual TLS on a stage's ports and the plan's next hops: only holders of a certificate from
the cluster CA get a stream or a data channel, and a stage never dials outside its plan."""

import asyncio
import json
import ssl
from pathlib import Path

import grpc
import pytest
import torch

from helix_proto import helix_stage_pb2 as pb
from helix_proto import helix_stage_pb2_grpc as pb_grpc
from helix_worker.envs import Settings
from helix_worker.errors import ServingError
from helix_worker.protocol import Chunk, FailureKind, Hop, Phase
from helix_worker.security.issuing import issue, new_ca, write_bundle
from helix_worker.security.peers import PlanPeers
from helix_worker.security.tls import ClusterTLS, cluster_tls
from helix_worker.stage.endpoint import StageEndpoint
from helix_worker.stage.server import StageIdentity
from helix_worker.transport import datachannel
from helix_worker.transport.datachannel import DataSender
from helix_worker.transport.links import StreamLink

pytestmark = pytest.mark.timeout(60)
MIB = 1 << 20


class _Forwarder:
    """Stands in for the engine: hands every batch straight to the next hop of its route."""

    def __init__(self) -> None:
        self.outputs = None
        self.batches = 0

    def submit(self, chunks: list[Chunk], payload: torch.Tensor) -> None:
        self.batches += 1
        onward = [Chunk(c.request_id, c.phase, c.position, c.length, c.route[1:], c.reply_to) for c in chunks]
        self.outputs.forward(chunks[0].route[1], onward, payload)

    def release(self, request_ids: list[str]) -> None:
        pass

    def holds(self, request_id: str) -> bool:
        return True


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClusterTLS]:
    """The cluster's stage and peer, and a stranger whose certificate another CA signed."""
    directory = tmp_path_factory.mktemp("tls")
    cluster, other = new_ca("cluster"), new_ca("other")
    return {"stage": ClusterTLS.from_dir(write_bundle(directory / "stage", cluster, issue(cluster, "stage"))),
            "peer": ClusterTLS.from_dir(write_bundle(directory / "peer", cluster, issue(cluster, "peer"))),
            "stranger": ClusterTLS.from_dir(write_bundle(directory / "stranger", other, issue(other, "stranger")))}


@pytest.fixture
async def stage(identities):
    """A stage endpoint with TLS and its data channel, whose plan is itself and node "next"."""
    started: list[StageEndpoint] = []

    async def start(peers: PlanPeers | None = None) -> StageEndpoint:
        endpoint = await StageEndpoint.start(_Forwarder(), StageIdentity("solo", "m", "h"), "127.0.0.1", 0,
                                             Settings(max_message_bytes=4 * MIB), tls=identities["stage"], peers=peers)
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        await endpoint.stop(None)


def _channel(address: str, tls: ClusterTLS | None, *, client_cert: bool = True) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(address)
    cert, key, ca = tls.cert.read_bytes(), tls.key.read_bytes(), tls.ca.read_bytes()
    credentials = (grpc.ssl_channel_credentials(ca, key, cert) if client_cert
                   else grpc.ssl_channel_credentials(ca))
    return grpc.aio.secure_channel(address, credentials, options=tls.channel_options())


async def _offer(address: str, tls: ClusterTLS) -> tuple[grpc.aio.Channel, grpc.aio.StreamStreamCall, str]:
    """A member's Connect call offering a data channel; returns the stage's answer (port and token)."""
    async def silent():  # keep the stream (and so the token) open
        await asyncio.Event().wait()
        yield pb.StageRequest()

    channel = _channel(address, tls)
    call = pb_grpc.StageServiceStub(channel).Connect(silent(), metadata=((datachannel.HEADER, datachannel.OFFER),))
    answer = dict(await call.initial_metadata())[datachannel.HEADER]
    return channel, call, answer


async def test_the_grpc_port_takes_only_cluster_members(stage, identities) -> None:
    endpoint = await stage()
    address = f"127.0.0.1:{endpoint.port}"
    refused = {"plaintext": _channel(address, None),
               "no client certificate": _channel(address, identities["peer"], client_cert=False),
               "another CA": _channel(address, identities["stranger"])}
    for why, channel in refused.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.StageServiceStub(channel).Describe(pb.DescribeRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, why
        await channel.close()
    member = StreamLink(address, "fe", max_message_bytes=MIB, tls=identities["peer"])
    await member.connect(timeout=5)
    assert member.up and member.transport == "tcp"  # the data channel, over TLS too
    await member.close()


async def test_the_data_channel_takes_only_cluster_members_even_with_a_valid_token(stage, identities) -> None:
    endpoint = await stage()
    address = f"127.0.0.1:{endpoint.port}"
    for tls in (None, identities["stranger"]):
        channel, call, answer = await _offer(address, identities["peer"])  # a token the stage will honour
        with pytest.raises((ConnectionError, ssl.SSLError, OSError, TimeoutError)):
            sender = await DataSender.open(address, answer, 5.0, lambda: None, tls)
            sender.close()
        call.cancel()
        await channel.close()
    channel, call, answer = await _offer(address, identities["peer"])
    sender = await DataSender.open(address, answer, 5.0, lambda: None, identities["peer"])
    sender.close()
    call.cancel()
    await channel.close()


async def test_a_stage_never_dials_a_next_hop_outside_its_plan(stage, identities, tmp_path: Path) -> None:
    dialled: list[str] = []
    trap = await asyncio.start_server(lambda r, w: dialled.append("trap") or w.close(), "127.0.0.1", 0)
    trap_address = f"127.0.0.1:{trap.sockets[0].getsockname()[1]}"
    endpoints = tmp_path / "endpoints.json"
    endpoints.write_text(json.dumps({"next": "127.0.0.1:1"}))
    endpoint = await stage(PlanPeers({"solo", "next"}, files=[endpoints]))
    address = f"127.0.0.1:{endpoint.port}"
    failures = asyncio.Queue()
    link = StreamLink(address, "fe", max_message_bytes=4 * MIB, tls=identities["peer"],
                      on_event=lambda event: [failures.put_nowait(e) for e in event.errors])
    await link.connect(timeout=5)
    here = Hop("solo", address, 0, 1)
    routes = {"outside": Hop("evil", trap_address, 1, 2),  # a node the plan does not have
              "wrong address": Hop("next", trap_address, 1, 2)}  # a plan node, at another address
    try:
        for request_id, hop in routes.items():
            link.send_batch([Chunk(request_id, Phase.PREFILL, 0, 1, (here, hop), "fe")], torch.zeros(1, 4))
            error = await asyncio.wait_for(failures.get(), 10)
            assert (error.request_id, error.kind) == (request_id, int(FailureKind.INVALID))
            assert "not dialled" in error.message and hop.node in error.message
        await asyncio.sleep(0.5)
        assert dialled == []
        # The endpoints file is read again on a miss: once it names the trap for "next", it is dialled.
        endpoints.write_text(json.dumps({"next": trap_address}))
        link.send_batch([Chunk("listed", Phase.PREFILL, 0, 1, (here, routes["wrong address"]), "fe")],
                        torch.zeros(1, 4))
        error = await asyncio.wait_for(failures.get(), 20)  # the trap speaks no TLS: the route breaks
        assert (error.request_id, error.kind) == ("listed", int(FailureKind.ROUTE_BROKEN))
        assert dialled, "a next hop the plan lists was not dialled"
    finally:
        await link.close()
        trap.close()


def test_a_process_refuses_to_run_plaintext_unless_told(identities) -> None:
    with pytest.raises(ServingError, match="HELIX_PLAINTEXT"):
        cluster_tls(Settings())
    assert cluster_tls(Settings(plaintext=True)) is None
    with pytest.raises(ServingError, match="HELIX_TLS_CA"):
        cluster_tls(Settings(tls_cert=str(identities["peer"].cert), tls_key=str(identities["peer"].key)))
    with pytest.raises(ServingError, match="cannot load"):
        cluster_tls(Settings(tls_cert=str(identities["peer"].cert), tls_key=str(identities["stranger"].key),
                             tls_ca=str(identities["peer"].ca)))
    tls = cluster_tls(Settings(tls_cert=str(identities["peer"].cert), tls_key=str(identities["peer"].key),
                               tls_ca=str(identities["peer"].ca)))
    assert tls == identities["peer"]
    assert Settings.from_env({"HELIX_PLAINTEXT": "0"}).plaintext is False
    assert Settings.from_env({"HELIX_PLAINTEXT": "true"}).plaintext is True
