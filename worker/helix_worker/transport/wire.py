"""Conversions between protocol value objects / torch tensors and `helix_stage.proto` messages.

Tensors travel as their raw bytes with dtype name and shape: no pickling. Over gRPC the bytes
sit in the message and the receiver rebuilds the tensor with one copy; over the data channel
(`datachannel`) they follow the message raw and land in the tensor's memory directly.
"""

import math

import torch

from helix_proto import helix_stage_pb2 as pb
from helix_worker.protocol import Chunk, Failure, FailureKind, Hop, Phase, Sampled, SamplingParams

_DTYPES = {str(d).removeprefix("torch."): d for d in
           (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.float64)}


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw bytes without copying them (the view keeps the tensor alive)."""
    data = tensor.detach().contiguous().cpu()
    return data.reshape(-1).view(torch.uint8).numpy().data


def describe_tensor(target: pb.Tensor, tensor: torch.Tensor) -> None:
    """Dtype and shape only: the bytes travel apart, on the data channel."""
    target.dtype = str(tensor.dtype).removeprefix("torch.")
    target.shape[:] = list(tensor.shape)


def fill_tensor(target: pb.Tensor, tensor: torch.Tensor) -> None:
    """Write `tensor` into a message in place: passing a large Tensor to a parent message's
    constructor copies it again (milliseconds per MiB with upb), assigning fields does not."""
    describe_tensor(target, tensor)
    target.data = tensor_bytes(tensor).tobytes()


def tensor_from_proto(message: pb.Tensor, data: torch.Tensor | None = None) -> torch.Tensor:
    """Rebuild a tensor from its message, or from `data` (uint8) when its bytes came apart."""
    dtype = _DTYPES.get(message.dtype)
    if dtype is None:
        raise ValueError(f"unsupported tensor dtype {message.dtype!r}")
    shape = tuple(message.shape)
    if data is None:
        data = (torch.frombuffer(bytearray(message.data), dtype=torch.uint8) if message.data
                else torch.empty(0, dtype=torch.uint8))
    if data.numel() != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{data.numel()} bytes do not hold a {message.dtype} tensor of shape {list(shape)}")
    return data.view(dtype).reshape(shape)


def hop_to_proto(hop: Hop) -> pb.Hop:
    return pb.Hop(node=hop.node, address=hop.address, start=hop.start, end=hop.end)


def hop_from_proto(message: pb.Hop) -> Hop:
    return Hop(message.node, message.address, message.start, message.end)


def sampling_to_proto(params: SamplingParams) -> pb.Sampling:
    return pb.Sampling(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                       seed=params.seed or 0, has_seed=params.seed is not None, logprobs=params.logprobs,
                       return_logits=params.return_logits, presence_penalty=params.presence_penalty,
                       frequency_penalty=params.frequency_penalty, repetition_penalty=params.repetition_penalty,
                       logit_bias=dict(params.logit_bias), seen_prompt_ids=params.seen_prompt_ids,
                       seen_output_ids=params.seen_output_ids, json_schema=params.json_schema)


def chunk_to_proto(chunk: Chunk) -> pb.Chunk:
    return pb.Chunk(request_id=chunk.request_id, phase=pb.Phase.ValueType(chunk.phase), start_position=chunk.position,
                    num_tokens=chunk.length, route=[hop_to_proto(h) for h in chunk.route],
                    sampling=sampling_to_proto(chunk.sampling), reply_to=chunk.reply_to, partial=chunk.partial)


def chunk_from_proto(message: pb.Chunk) -> Chunk:
    s = message.sampling
    return Chunk(
        request_id=message.request_id, phase=Phase(message.phase), position=message.start_position,
        length=message.num_tokens, reply_to=message.reply_to, partial=message.partial,
        route=tuple(hop_from_proto(h) for h in message.route),
        sampling=SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                seed=s.seed if s.has_seed else None, logprobs=s.logprobs,
                                return_logits=s.return_logits, presence_penalty=s.presence_penalty,
                                frequency_penalty=s.frequency_penalty, repetition_penalty=s.repetition_penalty or 1.0,
                                logit_bias=tuple(sorted(s.logit_bias.items())),
                                seen_prompt_ids=tuple(s.seen_prompt_ids), seen_output_ids=tuple(s.seen_output_ids),
                                json_schema=s.json_schema),
    )


def batch_to_proto(chunks: list[Chunk], payload: torch.Tensor, *, with_data: bool = True) -> pb.StageRequest:
    """The whole batch, or (`with_data` False) all but the payload's bytes, for the data channel."""
    message = pb.StageRequest()
    message.batch.chunks.extend(chunk_to_proto(c) for c in chunks)
    (fill_tensor if with_data else describe_tensor)(message.batch.payload, payload)
    return message


def release_to_proto(request_ids: list[str]) -> pb.StageRequest:
    return pb.StageRequest(release=pb.Release(request_ids=request_ids))


def sampled_to_proto(item: Sampled) -> pb.TokenResult:
    message = pb.TokenResult(request_id=item.request_id, token_id=item.token_id, position=item.position,
                             logprob=item.logprob, top_token_ids=[t for t, _ in item.top],
                             top_logprobs=[lp for _, lp in item.top])
    if item.logits is not None:
        fill_tensor(message.logits, item.logits)
    return message


def sampled_from_proto(message: pb.TokenResult) -> Sampled:
    return Sampled(request_id=message.request_id, token_id=message.token_id, position=message.position,
                   logprob=message.logprob, top=tuple(zip(message.top_token_ids, message.top_logprobs)),
                   logits=tensor_from_proto(message.logits) if message.HasField("logits") else None)


def failure_to_proto(item: Failure) -> pb.RequestError:
    return pb.RequestError(request_id=item.request_id, node=item.node, kind=pb.RequestError.Kind.ValueType(item.kind),
                           message=item.message)


def failure_from_proto(message: pb.RequestError) -> Failure:
    return Failure(message.request_id, message.node, FailureKind(message.kind), message.message)
