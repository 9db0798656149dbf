"""Logit bias and penalties on the last stage: vLLM's arithmetic, untouched logits without them,
the history a re-prefill carries, and a bad row refused alone."""

import torch

from helix_worker.engine.penalties import TokenHistory, problem, with_history
from helix_worker.engine.sampling import sample_row
from helix_worker.protocol import Chunk, Phase, SamplingParams
from helix_worker.transport import wire

LOGITS = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0])


def test_without_penalties_the_logits_are_the_same_tensor_and_nothing_is_tracked() -> None:
    history = TokenHistory()
    params = SamplingParams(presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0)
    assert history.adjust("r", LOGITS, params) is LOGITS
    history.record("r", 3)
    assert with_history(params, (1, 2), [3]) is params
    assert sample_row(LOGITS, params, 0, torch.Generator(), LOGITS)[0] == sample_row(LOGITS, params, 0,
                                                                                      torch.Generator())[0] == 3


def test_bias_then_repetition_then_frequency_and_presence() -> None:
    history = TokenHistory()
    params = SamplingParams(logit_bias=((1, 4.0),), repetition_penalty=2.0, frequency_penalty=0.5,
                            presence_penalty=0.25, seen_prompt_ids=(0, 4), seen_output_ids=(3, 3))
    adjusted = history.adjust("r", LOGITS, params)
    # token 0: prompt, positive -> /2; token 1: +4 bias; token 3: output twice -> /2, then -0.5*2 - 0.25;
    # token 4: prompt, negative -> *2; token 2: untouched.
    assert torch.allclose(adjusted, torch.tensor([1.0, 3.0, 0.5, 1.5 - 1.25, -4.0]))
    assert torch.equal(LOGITS, torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0])), "the raw logits stay for logprobs"
    history.record("r", 2)
    again = history.adjust("r", LOGITS, params)
    assert float(again[2]) == 0.5 / 2 - 0.5 - 0.25  # token 2 is an output now
    history.forget("r")
    assert torch.equal(history.adjust("r", LOGITS, params), adjusted)  # a new request starts from its prefill


def test_greedy_draws_from_the_adjusted_logits_and_reports_raw_logprobs() -> None:
    params = SamplingParams(logit_bias=((4, 100.0),))
    adjusted = TokenHistory().adjust("r", LOGITS, params)
    token, logprob, _ = sample_row(LOGITS, params, 0, torch.Generator(), adjusted)
    assert token == 4 and logprob == float(torch.log_softmax(LOGITS, -1)[4])


def test_a_prefill_carries_what_the_last_stage_did_not_sample() -> None:
    frequency = SamplingParams(frequency_penalty=1.0)
    assert with_history(frequency, (1, 2), [7]) == SamplingParams(frequency_penalty=1.0, seen_output_ids=(7,))
    repetition = with_history(SamplingParams(repetition_penalty=1.5), (1, 2), [7])
    assert (repetition.seen_prompt_ids, repetition.seen_output_ids) == ((1, 2), (7,))
    assert with_history(SamplingParams(logit_bias=((1, 1.0),)), (1, 2), [7]).seen_output_ids == ()


def test_the_fields_survive_the_wire() -> None:
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=-1.0, repetition_penalty=1.25,
                            logit_bias=((3, -100.0), (9, 2.5)), seen_prompt_ids=(1, 2), seen_output_ids=(5,))
    chunk = Chunk("r", Phase.PREFILL, 0, 2, (), "fe", params)
    assert wire.chunk_from_proto(wire.chunk_to_proto(chunk)).sampling == params
    assert wire.chunk_from_proto(wire.chunk_to_proto(Chunk("r", Phase.DECODE, 0, 1, (), "fe"))).sampling \
        == SamplingParams()


def test_ids_outside_the_vocabulary_are_the_rows_own_problem() -> None:
    assert problem(SamplingParams(logit_bias=((5, 1.0),)), 5) is not None
    assert problem(SamplingParams(repetition_penalty=1.1, seen_prompt_ids=(9,)), 5) is not None
    assert problem(SamplingParams(repetition_penalty=0.0), 5) is not None
    assert problem(SamplingParams(logit_bias=((4, 1.0),), seen_output_ids=(0,)), 5) is None
