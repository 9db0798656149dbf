"""Logit bias and repetition, presence and frequency penalties, as vLLM's sampler applies them.

The last stage samples every token of a request, so it counts them itself (`TokenHistory`);
what it cannot have seen, the prompt (which only the first stage holds as ids) and the tokens
generated before a re-prefill on another route, rides on the prefill chunk
(`with_history`). Order, as in vLLM: logit bias, then repetition penalty (over prompt and
output tokens: positive logits divided by it, negative ones multiplied), then frequency and
presence penalties (over output tokens: minus frequency x count, minus presence once seen).
"""

from collections import Counter
from dataclasses import dataclass, field, replace

import torch

from helix_worker.protocol import SamplingParams


def with_history(params: SamplingParams, prompt_ids: tuple[int, ...], generated: list[int]) -> SamplingParams:
    """`params` for a prefill chunk: with the tokens its penalties count, or its JSON grammar
    replays, that the last stage has not sampled (nothing is added to a request without either)."""
    if not (params.penalized or params.json_schema):
        return params
    repetition = params.repetition_penalty != 1.0
    counts_output = repetition or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0 \
        or bool(params.json_schema)
    return replace(params, seen_prompt_ids=tuple(prompt_ids) if repetition else (),
                   seen_output_ids=tuple(generated) if counts_output else ())


def problem(params: SamplingParams, vocab_size: int) -> str | None:
    """Why the stage cannot apply `params` to logits of `vocab_size` entries, if it cannot."""
    ids = [t for t, _ in params.logit_bias] + list(params.seen_prompt_ids) + list(params.seen_output_ids)
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        return f"token id {bad[0]} in the penalties or logit_bias is outside the vocabulary [0, {vocab_size})"
    if not params.repetition_penalty > 0.0:
        return f"repetition_penalty must be above 0, not {params.repetition_penalty}"
    return None


@dataclass
class _Seen:
    prompt: set[int]
    output: Counter[int] = field(default_factory=Counter)


class TokenHistory:
    """Per request at the last stage: the tokens its penalties count. Only requests with
    penalties are tracked; `forget` drops one when it is released."""

    def __init__(self) -> None:
        self._requests: dict[str, _Seen] = {}

    def adjust(self, request_id: str, logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        """The logits to draw from: `logits` itself for a request without penalties, else a copy."""
        if not params.penalized:
            return logits
        seen = self._requests.get(request_id)
        if seen is None:
            seen = self._requests[request_id] = _Seen(set(params.seen_prompt_ids), Counter(params.seen_output_ids))
        out = logits.clone()
        if params.logit_bias:
            biased = torch.tensor([t for t, _ in params.logit_bias])
            out[biased] += torch.tensor([v for _, v in params.logit_bias], dtype=out.dtype)
        if params.repetition_penalty != 1.0 and (appeared := seen.prompt | seen.output.keys()):
            repeated = torch.tensor(sorted(appeared))
            chosen = out[repeated]
            out[repeated] = torch.where(chosen > 0, chosen / params.repetition_penalty,
                                        chosen * params.repetition_penalty)
        if (params.frequency_penalty != 0.0 or params.presence_penalty != 0.0) and seen.output:
            outputs = torch.tensor(list(seen.output.keys()))
            counts = torch.tensor(list(seen.output.values()), dtype=out.dtype)
            out[outputs] -= params.frequency_penalty * counts + params.presence_penalty
        return out

    def record(self, request_id: str, token: int) -> None:
        """Count a token sampled for a tracked request."""
        seen = self._requests.get(request_id)
        if seen is not None:
            seen.output[token] += 1

    def forget(self, request_id: str) -> None:
        self._requests.pop(request_id, None)
