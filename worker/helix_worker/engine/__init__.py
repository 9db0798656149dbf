"""The serving engine of one stage: its layer slice, paged KV cache, batched attention and step scheduler.

`model` holds the weights of layers [start, end) and runs them over a packed step; `attention`
runs every request of a step against the paged cache in one call per layer for single-token
rows and one for multi-token (prefill) rows; `kv_pool` owns the preallocated blocks and the
per-request block tables; `scheduler` builds each step from decode rows and chunks of prefill
under a token budget and preempts the youngest request when blocks run out; `stage_engine`
drives steps on a compute thread for the transport-free stage. Nothing here knows gRPC.
"""
