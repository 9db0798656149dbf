"""Sampling filters and seeding, and the per-stage KV cache budget."""

import pytest
import torch

from helix_worker.engine.sampling import filter_logits, sample_row
from helix_worker.protocol import SamplingParams

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])


def test_greedy_takes_the_argmax_with_its_logprob() -> None:
    token, logprob, top = sample_row(LOGITS, SamplingParams(logprobs=2), 5, torch.Generator())
    assert token == 0
    assert logprob == pytest.approx(float(torch.log_softmax(LOGITS, -1)[0]))
    assert [t for t, _ in top] == [0, 1]


def test_top_k_keeps_the_k_best() -> None:
    kept = filter_logits(LOGITS, SamplingParams(temperature=1.0, top_k=2))
    assert torch.isfinite(kept).tolist() == [True, True, False, False, False, False]


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.softmax(LOGITS, -1)
    p = float(probs[0] + probs[1]) - 1e-3  # needs tokens 0 and 1
    kept = filter_logits(LOGITS, SamplingParams(temperature=1.0, top_p=p))
    assert torch.isfinite(kept).tolist() == [True, True, False, False, False, False]
    only_first = filter_logits(LOGITS, SamplingParams(temperature=1.0, top_p=float(probs[0]) / 2))
    assert torch.isfinite(only_first).sum() == 1


def test_temperature_scales_logits() -> None:
    assert torch.allclose(filter_logits(LOGITS, SamplingParams(temperature=2.0)), LOGITS / 2)


def test_seeded_sampling_depends_only_on_seed_and_position() -> None:
    params = SamplingParams(temperature=5.0, seed=1234)
    draws = [sample_row(LOGITS, params, position, torch.Generator())[0] for position in range(40)]
    again = [sample_row(LOGITS, params, position, torch.Generator().manual_seed(99))[0] for position in range(40)]
    assert draws == again
    assert len(set(draws)) > 2  # hot temperature: not always the argmax
    other = [sample_row(LOGITS, SamplingParams(temperature=5.0, seed=1235), p, torch.Generator())[0] for p in range(40)]
    assert other != draws


@pytest.mark.parametrize("params, logits", [
    (SamplingParams(temperature=float("nan")), LOGITS),
    (SamplingParams(temperature=1e-40), LOGITS),  # float32 on the wire: the logits would overflow to inf
    (SamplingParams(temperature=1.0, top_p=float("nan"), top_k=2**31 - 1, seed=2**64 - 1), LOGITS.clone().fill_(5.0)),
    (SamplingParams(temperature=1.0, seed=-1), torch.tensor([float("inf"), 1.0, 0.0])),
    (SamplingParams(temperature=0.7), torch.tensor([0.0, float("nan"), 1.0])),
])
def test_a_row_that_makes_no_distribution_falls_back_to_greedy(params: SamplingParams, logits: torch.Tensor) -> None:
    """Sampling never raises for one row: an exception would fail every request of the step."""
    token, _, _ = sample_row(logits, params, 3, torch.Generator())
    expected = int(torch.argmax(logits))
    assert token == expected or bool((logits == logits[0]).all())  # a flat row may draw any token
    assert 0 <= token < logits.numel()
