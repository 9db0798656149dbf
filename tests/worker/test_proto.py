"""The committed stubs match the .proto files, and the KServe messages match Triton's wire format."""

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton

from helix_proto import grpc_service_pb2 as kserve
from helix_worker.transport.codegen import PROTO_DIR, generate


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    written = generate(tmp_path)
    assert {p.name for p in written} == {f"{stem}{suffix}" for stem in ("grpc_service_pb2", "grpc_service_pb2_grpc",
                                                                        "helix_stage_pb2", "helix_stage_pb2_grpc")
                                         for suffix in (".py", ".pyi")}
    for path in written:
        committed = PROTO_DIR / "helix_proto" / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale: run `python -m helix_worker.transport.codegen` and commit the result")


def test_generated_imports_are_package_imports() -> None:
    for name in ("grpc_service_pb2_grpc.py", "grpc_service_pb2_grpc.pyi"):
        text = (PROTO_DIR / "helix_proto" / name).read_text()
        assert "from helix_proto import grpc_service_pb2" in text
        assert "\nimport grpc_service_pb2" not in text


def _fields(descriptor) -> dict[str, tuple]:
    return {f.name: (f.number, f.type, f.is_repeated,
                     f.message_type.full_name if f.message_type else None) for f in descriptor.fields}


def test_kserve_messages_match_triton_field_for_field() -> None:
    ours = kserve.DESCRIPTOR
    theirs = triton.DESCRIPTOR
    assert ours.package == theirs.package == "inference"
    checked = 0
    for name, message in ours.message_types_by_name.items():
        # ModelConfig and its parts live in Triton's model_config.proto
        reference = theirs.message_types_by_name.get(name) or triton_config.DESCRIPTOR.message_types_by_name[name]
        assert _fields(message) == {k: v for k, v in _fields(reference).items() if k in _fields(message)}, name
        for nested in message.nested_types:
            assert _fields(nested) == _fields(reference.nested_types_by_name[nested.name]), f"{name}.{nested.name}"
        checked += 1
    assert checked >= 15
    data_types = triton_config.DESCRIPTOR.enum_types_by_name["DataType"]
    assert {v.name: v.number for v in ours.enum_types_by_name["DataType"].values} == \
        {v.name: v.number for v in data_types.values}
    ours_methods = {m.name: (m.input_type.full_name, m.output_type.full_name)
                    for m in ours.services_by_name["GRPCInferenceService"].methods}
    theirs_methods = {m.name: (m.input_type.full_name, m.output_type.full_name)
                      for m in theirs.services_by_name["GRPCInferenceService"].methods}
    assert ours_methods == {k: theirs_methods[k] for k in ours_methods}
    assert {"ModelInfer", "ModelStreamInfer", "ServerLive", "ModelMetadata", "ModelConfig",
            "ModelStatistics"} <= set(ours_methods)


def test_request_bytes_cross_between_the_two_definitions() -> None:
    request = kserve.ModelInferRequest(model_name="m", id="7", raw_input_contents=[b"\x03\x00\x00\x00abc"])
    request.parameters["seed"].uint64_param = 5
    request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    decoded = triton.ModelInferRequest.FromString(request.SerializeToString())
    assert decoded.model_name == "m" and decoded.parameters["seed"].uint64_param == 5
    assert decoded.inputs[0].name == "text_input" and decoded.raw_input_contents[0].endswith(b"abc")
