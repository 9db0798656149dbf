"""Value objects of the stage-to-stage protocol, free of any transport.

The gRPC adapter converts them to and from `helix_stage.proto` messages (see `wire`); the
stage engine and the front end's coordinator only see these.
"""

import enum
from dataclasses import dataclass, field

import torch


class Phase(enum.IntEnum):
    PREFILL = 1
    DECODE = 2


class FailureKind(enum.IntEnum):
    INTERNAL = 0
    PREEMPTED = 1  # the stage ran out of KV blocks; re-prefill the request later
    ROUTE_BROKEN = 2
    INVALID = 3


@dataclass(frozen=True)
class Hop:
    """One stage of a route: node name, its address, and the layers [start, end) it runs."""

    node: str
    address: str
    start: int
    end: int


# Temperatures below this sample greedily, as vLLM's _SAMPLING_EPS does: logits divided by
# 1e-40 overflow float32 to inf, and their softmax is NaN.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    logprobs: int = 0
    return_logits: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # vLLM's: 1 is off
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    # What the last stage's penalties count but did not sample itself (see `penalties`), sent on
    # prefill chunks only: the prompt when repetition_penalty is on, the tokens generated before
    # a re-prefill when any penalty is.
    seen_prompt_ids: tuple[int, ...] = ()
    seen_output_ids: tuple[int, ...] = ()
    # JSON Schema text the output must be valid JSON for (`engine.grammar`); "" is unconstrained.
    json_schema: str = ""

    @property
    def greedy(self) -> bool:
        return not self.temperature >= GREEDY_BELOW  # NaN too

    @property
    def penalized(self) -> bool:
        """Whether the last stage changes this request's logits before drawing."""
        return bool(self.logit_bias) or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 \
            or self.repetition_penalty != 1.0


@dataclass(frozen=True)
class Chunk:
    """One request's tokens in a forward batch; `route[0]` is the receiving stage."""

    request_id: str
    phase: Phase
    position: int
    length: int
    route: tuple[Hop, ...]
    reply_to: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    partial: bool = False  # more of this request's input follows: the last stage does not sample yet


@dataclass(frozen=True)
class Sampled:
    """A token the last stage sampled for `request_id`; it will sit at `position`."""

    request_id: str
    token_id: int
    position: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    logits: torch.Tensor | None = None


@dataclass(frozen=True)
class Failure:
    """A request a stage could not carry on, and why."""

    request_id: str
    node: str
    kind: FailureKind
    message: str
