"""Generated gRPC stubs: KServe v2 (`grpc_service_pb2*`) and the stage stream (`helix_stage_pb2*`).

Regenerate with `python -m helix_worker.transport.codegen`; never edit the `*_pb2*.py` files by hand.
"""
