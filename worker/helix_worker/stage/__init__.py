"""A pipeline stage: the batching engine (transport-free) and its gRPC server."""
