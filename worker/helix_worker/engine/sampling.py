"""Token sampling at the last stage: greedy, temperature, top-k, top-p, seeded per position.

A seeded request draws step n from a generator seeded by (seed, position), not from a
stream of draws, so it samples the same tokens when a fault moves it to another pipeline.
Rows of a step are sampled one by one, and a row whose parameters or logits make no
distribution (NaN temperature, overflowing logits) is sampled greedily instead of raising:
an exception here would fail every request of the step.
"""

import torch

from helix_worker.protocol import SamplingParams

_SEED_MIX = 0x9E3779B97F4A7C15
_MASK = (1 << 63) - 1


def step_generator(seed: int, position: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed & _MASK) * _SEED_MIX + position) & _MASK)


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on one row of float32 logits."""
    scaled = logits / params.temperature
    if 0 < params.top_k < scaled.numel():
        kth = torch.topk(scaled, params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if 0.0 < params.top_p < 1.0:
        ordered, order = torch.sort(scaled, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(ordered, dim=-1) >= params.top_p  # keep the token crossing top_p
        scaled = scaled.clone()
        scaled[order[drop]] = float("-inf")
    return scaled


def sample_row(logits: torch.Tensor, params: SamplingParams, position: int, rng: torch.Generator,
               adjusted: torch.Tensor | None = None) -> tuple[int, float, tuple[tuple[int, float], ...]]:
    """(token id, its logprob, top logprobs) for one row, drawn from `adjusted` (the logits after
    bias and penalties) when given; logprobs are of the raw distribution, as vLLM reports them."""
    logprobs = torch.log_softmax(logits, dim=-1)
    token = _draw(logits if adjusted is None else adjusted, params, position, rng)
    top: tuple[tuple[int, float], ...] = ()
    if params.logprobs > 0:
        values, ids = torch.topk(logprobs, min(params.logprobs, logprobs.numel()))
        top = tuple(zip(ids.tolist(), values.tolist()))
    return token, float(logprobs[token]), top


def _draw(logits: torch.Tensor, params: SamplingParams, position: int, rng: torch.Generator) -> int:
    if not params.greedy:
        probs = torch.softmax(filter_logits(logits, params), dim=-1)
        if bool(torch.isfinite(probs).all()) and float(probs.sum()) > 0.0:
            generator = step_generator(params.seed, position) if params.seed is not None else rng
            return int(torch.multinomial(probs, 1, generator=generator))
    return int(torch.argmax(logits))
