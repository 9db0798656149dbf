"""Request lengths and arrival processes the simulator feeds in."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from helix_planner.errors import PlanningError
from helix_planner.sim.workload import SYNTHETIC_CONV, arrival_times, default_lengths, load_lengths


def test_reference_length_traces_load_with_their_published_means(reference) -> None:
    conv = load_lengths("azure-conv", reference / "traces")
    assert len(conv.inputs) == 16_657
    assert conv.inputs.mean() == pytest.approx(763, abs=1) and conv.outputs.mean() == pytest.approx(232, abs=1)
    sample = conv.sample(np.random.default_rng(0), 5000)
    assert np.mean([i for i, _ in sample]) == pytest.approx(763, rel=0.05)


def test_bundled_synthetic_conv_looks_like_the_azure_conversation_trace(reference) -> None:
    conv, synthetic = load_lengths("azure-conv", reference / "traces"), load_lengths(SYNTHETIC_CONV, reference)
    for real, drawn in ((conv.inputs, synthetic.inputs), (conv.outputs, synthetic.outputs)):
        assert drawn.mean() == pytest.approx(real.mean(), rel=0.05)
        assert np.percentile(drawn, [10, 50, 90]) == pytest.approx(np.percentile(real, [10, 50, 90]), rel=0.06)
    assert spearmanr(synthetic.inputs, synthetic.outputs)[0] == pytest.approx(
        spearmanr(conv.inputs, conv.outputs)[0], abs=0.03)
    assert default_lengths(reference / "traces").name == "azure-conv"


def test_fixed_lengths_and_csv_files(tmp_path) -> None:
    assert load_lengths("fixed:750,240", tmp_path).sample(np.random.default_rng(0), 3) == [(750, 240)] * 3
    path = tmp_path / "mine.csv"
    path.write_text("input_tokens,output_tokens\n10,2\n20,4\n")
    trace = load_lengths(str(path), tmp_path)
    assert sorted(set(trace.sample(np.random.default_rng(1), 50))) == [(10, 2), (20, 4)]


@pytest.mark.parametrize(("spec", "message"), [
    ("azure-conv", "trace file .* not found"),
    ("fixed:750", "write fixed:INPUT,OUTPUT"),
    ("fixed:0,5", "at least one token"),
])
def test_bad_length_specs_say_what_to_change(tmp_path, spec: str, message: str) -> None:
    with pytest.raises(PlanningError, match=message):
        load_lengths(spec, tmp_path / "nowhere")


@pytest.mark.parametrize("process", ["poisson", "gamma:3", "azure-conv", "azure-code"])
def test_arrivals_have_the_requested_mean_rate(reference, process: str) -> None:
    times = arrival_times(process, 5.0, 3600.0, np.random.default_rng(7), reference / "traces")
    assert times.min() >= 0 and times.max() < 3600 and np.all(np.diff(times) >= 0)
    assert len(times) / 3600 == pytest.approx(5.0, rel=0.1)


def test_gamma_arrivals_are_burstier_than_poisson(reference) -> None:
    def cv(process: str) -> float:
        gaps = np.diff(arrival_times(process, 2.0, 20_000.0, np.random.default_rng(1), reference / "traces"))
        return gaps.std() / gaps.mean()

    assert cv("poisson") == pytest.approx(1.0, abs=0.05)
    assert cv("gamma:3") == pytest.approx(3.0, rel=0.15)


def test_unknown_arrival_process_and_bad_rate(reference) -> None:
    with pytest.raises(PlanningError, match="unknown arrival process 'bursty'"):
        arrival_times("bursty", 1.0, 10.0, np.random.default_rng(0), reference / "traces")
    with pytest.raises(PlanningError, match="positive --rate"):
        arrival_times("poisson", 0.0, 10.0, np.random.default_rng(0), reference / "traces")
