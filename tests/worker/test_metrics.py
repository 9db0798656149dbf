"""Prometheus metrics of a served pipeline: vLLM's names, labels and meaning at the front end."""

import aiohttp
import pytest
from dataplane_helpers import MODEL
from prometheus_client.parser import text_string_to_metric_families

from helix_worker.frontend.request_timeline import RequestTimeline
from helix_worker.metrics import FrontendMetrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def _scrape(url: str) -> tuple[Samples, set[str]]:
    """Every sample by (name, labels), and the names of the families."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
    families = list(text_string_to_metric_families(text))
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}
    return samples, {f.name for f in families}


def _value(samples: Samples, name: str, **labels: str) -> float:
    """Summed over the label sets that contain `labels`; model_name must be the served model's."""
    want = {("model_name", MODEL), *labels.items()}
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def _complete(url: str, body: dict) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/completions", json=body) as response:
            assert response.status == 200
            return await response.json()


async def test_requests_are_counted_and_timed_under_vllm_names(served) -> None:
    before, _ = await _scrape(served.http_url)
    base = {"model": MODEL, "prompt": "Helix places layers", "temperature": 0, "ignore_eos": True}
    long = await _complete(served.http_url, base | {"max_tokens": 12})
    text = long["choices"][0]["text"]
    stop = await _complete(served.http_url, base | {"max_tokens": 12, "stop": [text[5:8]]})
    assert (long["choices"][0]["finish_reason"], stop["choices"][0]["finish_reason"]) == ("length", "stop")
    after, families = await _scrape(served.http_url)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    usage = [long["usage"], stop["usage"]]
    generated = sum(u["completion_tokens"] for u in usage)
    assert delta("vllm:request_success_total", finished_reason="length") == 1
    assert delta("vllm:request_success_total", finished_reason="stop") == 1, "a stop string is a success"
    assert delta("helix_request_failures_total") == 0
    assert delta("vllm:prompt_tokens_total") == sum(u["prompt_tokens"] for u in usage)
    # The stop request's stop string is cut from its text, but its tokens were generated.
    assert delta("vllm:generation_tokens_total") >= generated
    for histogram in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                      "vllm:request_queue_time_seconds", "vllm:request_prefill_time_seconds",
                      "vllm:request_decode_time_seconds", "vllm:request_time_per_output_token_seconds",
                      "vllm:request_prompt_tokens", "vllm:request_generation_tokens"):
        assert delta(histogram + "_count") == 2, histogram
    assert delta("vllm:request_generation_tokens_sum") == delta("vllm:generation_tokens_total")
    assert delta("vllm:inter_token_latency_seconds_count") == delta("vllm:generation_tokens_total") - 2
    assert delta("vllm:request_params_max_tokens_sum") == 24
    assert delta("helix_pipeline_step_seconds_count") == delta("vllm:generation_tokens_total") - 2
    assert _value(after, "vllm:num_requests_running") == 0 and _value(after, "vllm:num_requests_waiting") == 0
    assert _value(after, "helix_pipeline_up") == 1

    # Every family is vLLM's or Helix's, and every sample carries the served model's name.
    assert all(f.startswith(("vllm:", "helix_")) for f in families), families
    assert {dict(labels).get("model_name") for _, labels in after} == {MODEL}
    ttft = sorted(float(dict(ls)["le"]) for (n, ls), _ in after.items()
                  if n == "vllm:time_to_first_token_seconds_bucket")
    assert ttft[-2] >= 60, "TTFT buckets reach multi-region latencies"


def _sample(metrics: FrontendMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"model_name": "m", **labels}) or 0.0


@pytest.mark.parametrize("reason", ["abort", "Unavailable"])
def test_a_request_that_does_not_finish_is_a_failure_once(reason: str) -> None:
    metrics = FrontendMetrics("m")
    timeline = RequestTimeline(metrics, prompt_tokens=4, max_tokens=8)
    timeline.admitted()
    timeline.token()
    timeline.failed(reason)
    timeline.failed(reason)
    assert _sample(metrics, "helix_request_failures_total", reason=reason) == 1
    assert _sample(metrics, "vllm:e2e_request_latency_seconds_count") == 0
    assert _sample(metrics, "vllm:time_to_first_token_seconds_count") == 1


def test_a_finished_request_counts_once_and_a_late_close_is_no_failure() -> None:
    metrics = FrontendMetrics("m")
    timeline = RequestTimeline(metrics, prompt_tokens=4, max_tokens=3)
    timeline.admitted()
    for _ in range(3):
        timeline.token()
    timeline.finished("length")
    timeline.finished("stop")  # a stop string on the last token: the request was already counted
    timeline.failed("abort")  # the client closes the stream after the last token
    assert _sample(metrics, "vllm:request_success_total", finished_reason="length") == 1
    assert _sample(metrics, "vllm:request_success_total", finished_reason="stop") == 0
    assert _sample(metrics, "helix_request_failures_total", reason="abort") == 0
    assert _sample(metrics, "vllm:inter_token_latency_seconds_count") == 2
    assert _sample(metrics, "vllm:prompt_tokens_total") == 4
    assert _sample(metrics, "vllm:generation_tokens_total") == 3
