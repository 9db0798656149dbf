"""Mutual TLS on a stage's ports and the plan's next hops: only holders of a certificate from
the cluster CA get a stream or a data channel, and a stage never dials outside its plan (or
its peer list, read again when it changes). Renewed certificate files serve new connections
without a restart."""

import asyncio
import json
import pickle
import socket
import ssl
from pathlib import Path

import grpc
import pytest
import torch
from cryptography import x509
from dataplane_helpers import write_volume

from helix_proto import helix_stage_pb2 as pb
from helix_proto import helix_stage_pb2_grpc as pb_grpc
from helix_worker.envs import Settings
from helix_worker.errors import ServingError
from helix_worker.protocol import Chunk, FailureKind, Hop, Phase
from helix_worker.security.issuing import CA_FILE, CERT_FILE, KEY_FILE, MEMBER_NAME, Issued, issue, new_ca, write_bundle
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
        if len(chunks[0].route) == 1:
            return  # the last stage of the route: nothing to forward
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

    async def start(peers: PlanPeers | None = None, tls: ClusterTLS | None = None,
                    engine: _Forwarder | None = None) -> StageEndpoint:
        endpoint = await StageEndpoint.start(engine or _Forwarder(), StageIdentity("solo", "m", "h"), "127.0.0.1", 0,
                                             Settings(max_message_bytes=4 * MIB), tls=tls or identities["stage"],
                                             peers=peers)
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


async def test_a_reloaded_peer_list_admits_the_new_peer_and_still_refuses_others(stage, identities,
                                                                                  tmp_path: Path) -> None:
    """The operator's peer list (a ConfigMap volume): a node that joined later is dialled once the
    list names it, without a restart; nodes and addresses it does not name stay refused."""
    dialled: list[str] = []
    trap = await asyncio.start_server(lambda r, w: dialled.append("trap") or w.close(), "127.0.0.1", 0)
    trap_address = f"127.0.0.1:{trap.sockets[0].getsockname()[1]}"
    volume = write_volume(tmp_path / "peers", {"endpoints.json": json.dumps({"old": "127.0.0.1:1"})})
    endpoint = await stage(PlanPeers({"solo", "late"}, peer_list=volume / "endpoints.json"))
    servicer, address = endpoint.servicer, f"127.0.0.1:{endpoint.port}"
    failures: asyncio.Queue = asyncio.Queue()
    link = StreamLink(address, "fe", max_message_bytes=4 * MIB, tls=identities["peer"],
                      on_event=lambda event: [failures.put_nowait(e) for e in event.errors])
    await link.connect(timeout=5)
    here, late = Hop("solo", address, 0, 1), Hop("late", trap_address, 1, 2)
    others = [Hop("evil", trap_address, 1, 2), Hop("old", trap_address, 1, 2)]  # unlisted; listed elsewhere

    async def route(request_id: str, hop: Hop) -> pb.RequestError:
        link.send_batch([Chunk(request_id, Phase.PREFILL, 0, 1, (here, hop), "fe")], torch.zeros(1, 4))
        return await asyncio.wait_for(failures.get(), 20)

    try:
        # Its plan names "late", but the list decides: not in it, not dialled (and the heartbeat says so).
        assert "not in this stage's peer list" in servicer.next_hop_problems([late])["late"]
        error = await route("before", late)
        assert (error.kind, "not dialled" in error.message) == (int(FailureKind.INVALID), True)
        await asyncio.sleep(0.3)
        assert dialled == []
        write_volume(volume, {"endpoints.json": json.dumps({"old": "127.0.0.1:1", "late": trap_address})})
        assert servicer.next_hop_problems([late]) == {}
        assert set(servicer.next_hop_problems(others)) == {"evil", "old"}
        for request_id, hop in zip(("evil", "old"), others):
            error = await route(request_id, hop)
            assert (error.request_id, error.kind) == (request_id, int(FailureKind.INVALID)), error.message
        await asyncio.sleep(0.3)
        assert dialled == []
        error = await route("after", late)  # dialled now; the trap speaks no TLS, so the route breaks
        assert (error.request_id, error.kind) == ("after", int(FailureKind.ROUTE_BROKEN))
        assert dialled, "the peer list names the node, yet it was not dialled"
        # A node the list drops is refused again.
        write_volume(volume, {"endpoints.json": json.dumps({"old": "127.0.0.1:1"})})
        assert "not in this stage's peer list" in servicer.next_hop_problems([late])["late"]
    finally:
        await link.close()
        trap.close()


def _bundle(ca: Issued, member: Issued) -> dict[str, bytes]:
    return {CERT_FILE: member.cert_pem, KEY_FILE: member.key_pem, CA_FILE: ca.cert_pem}


def _serial(issued: Issued) -> int:
    return x509.load_pem_x509_certificate(issued.cert_pem).serial_number


def _served_serial(port: int, client: ClusterTLS) -> int:
    """The serial number of the certificate a stage port presents to `client` (a blocking handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(client.cert, client.key)
    context.load_verify_locations(cafile=client.ca)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=MEMBER_NAME) as connection:
            return x509.load_der_x509_certificate(connection.getpeercert(binary_form=True)).serial_number


async def test_renewed_certificates_serve_new_connections_without_a_restart(stage, tmp_path: Path) -> None:
    """cert-manager renews the leaf under the same CA: new connections get the new certificate and
    members keep connecting. The CA itself is replaced: members of the new CA connect, those of
    the old one no longer do, and the stage's own links to next stages present the new files.
    Connections made before keep what they were made with."""
    old_ca, new_ca_ = new_ca("cluster"), new_ca("cluster, renewed")
    first, renewed, last = issue(old_ca, "stage"), issue(old_ca, "stage"), issue(new_ca_, "stage")
    volume = write_volume(tmp_path / "stage", _bundle(old_ca, first))
    old_member = ClusterTLS.from_dir(write_bundle(tmp_path / "old", old_ca, issue(old_ca, "old")))
    new_member = ClusterTLS.from_dir(write_bundle(tmp_path / "new", new_ca_, issue(new_ca_, "new")))
    sink = _Forwarder()
    following = await stage(tls=new_member, engine=sink)  # a next stage of the new CA only
    next_hop = Hop("next", f"127.0.0.1:{following.port}", 1, 2)
    endpoint = await stage(PlanPeers({"solo", "next"}, {"next": next_hop.address}), tls=ClusterTLS.from_dir(volume))
    address, data_port = f"127.0.0.1:{endpoint.port}", endpoint.data_port
    failures: asyncio.Queue = asyncio.Queue()
    links: list[StreamLink] = []

    async def member_link(tls: ClusterTLS) -> StreamLink:
        link = StreamLink(address, f"fe-{len(links)}", max_message_bytes=4 * MIB, tls=tls,
                          on_event=lambda event: [failures.put_nowait(e) for e in event.errors])
        links.append(link)
        await link.connect(timeout=5)
        return link

    def forward(link: StreamLink, request_id: str) -> None:
        link.send_batch([Chunk(request_id, Phase.PREFILL, 0, 1, (Hop("solo", address, 0, 1), next_hop),
                               link.peer_name)], torch.zeros(1, 4))

    try:
        kept = await member_link(old_member)
        served = await asyncio.gather(*(asyncio.to_thread(_served_serial, port, old_member)
                                        for port in (endpoint.port, data_port)))
        assert served == [_serial(first)] * 2
        forward(kept, "old certificate")  # the next stage trusts the new CA only
        error = await asyncio.wait_for(failures.get(), 20)
        assert (error.request_id, error.kind) == ("old certificate", int(FailureKind.ROUTE_BROKEN))

        write_volume(volume, _bundle(old_ca, renewed))
        served = await asyncio.gather(*(asyncio.to_thread(_served_serial, port, old_member)
                                        for port in (endpoint.port, data_port)))
        assert served == [_serial(renewed)] * 2
        assert (await member_link(old_member)).transport == "tcp"

        write_volume(volume, _bundle(new_ca_, last))
        fresh = await member_link(new_member)
        assert fresh.up and fresh.transport == "tcp", "a member of the new CA gets a stream and a data channel"
        assert await asyncio.to_thread(_served_serial, data_port, new_member) == _serial(last)
        channel = _channel(address, old_member)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.StageServiceStub(channel).Describe(pb.DescribeRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        await channel.close()
        channel, call, answer = await _offer(address, new_member)
        with pytest.raises((ConnectionError, ssl.SSLError, OSError, TimeoutError)):
            sender = await DataSender.open(address, answer, 5.0, lambda: None, old_member)
            sender.close()
        call.cancel()
        await channel.close()
        assert kept.up, "a stream opened before the renewal keeps its connection"
        forward(fresh, "new certificate")  # the stage dials the next one with the new files
        await asyncio.wait_for(_until(lambda: sink.batches == 1), 20)
        assert failures.empty()
    finally:
        for link in links:
            await link.close()


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.02)


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
    handed = pickle.loads(pickle.dumps(tls))  # to a process of its own (bench/dataplane.py)
    assert handed == tls and handed.client_context() is not tls.client_context()
    assert Settings.from_env({"HELIX_PLAINTEXT": "0"}).plaintext is False
    assert Settings.from_env({"HELIX_PLAINTEXT": "true"}).plaintext is True
