"""`helix plan` and friends as a user runs them: output formats, files, errors without tracebacks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def helix(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helix_planner.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_plan_bundled_example_as_json_and_svg(tmp_path) -> None:
    svg = tmp_path / "plan.svg"
    done = helix("plan", "--time-limit", "5", "--svg", str(svg))
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["kind"] == "HelixPlan" and plan["throughput"] > 0 and plan["pipelines"]
    assert "incumbent" in done.stderr or "heuristic" in done.stderr, "progress goes to stderr"
    assert svg.read_text().startswith("<svg") and "region us-east" in svg.read_text()


def test_plan_reference_cluster_exports_helix_ini(reference, tmp_path) -> None:
    done = helix("plan", str(reference / "clusters" / "small10.ini"), "--model", "llama1-30b",
                 "--throughput-model", "helix", "--time-limit", "10", "-o", "helix-ini", "-q")
    assert done.returncode == 0, done.stderr
    layout = tmp_path / "ours.ini"
    layout.write_text(done.stdout)
    evaluated = helix("evaluate", str(reference / "clusters" / "small10.ini"), str(layout),
                      "--model", "llama1-30b", "--throughput-model", "helix")
    assert evaluated.returncode == 0, evaluated.stderr
    assert float(evaluated.stdout.split()[2]) == pytest.approx(286.59, rel=0.005)


def test_table_output_lists_nodes_and_bottleneck() -> None:
    done = helix("plan", "--time-limit", "3", "-q", "-o", "table")
    assert done.returncode == 0, done.stderr
    assert "throughput" in done.stdout and "upper bound" in done.stdout and "pipelines" in done.stdout
    assert "bottleneck" in done.stdout


@pytest.mark.parametrize(("content", "message"), [
    ("nodes: [{name: a, gpu: B300}]\nmodel: llama3-8b\n", "unknown GPU type 'B300'"),
    ("nodes: [{name: a, gpu: T4}]\nmodel: llama3-70b\n", "does not fit"),
    ("nodes: [{name: a, gpu: A100}]\nmodel: gpt-9\n", "unknown model 'gpt-9'"),
    ("nodes: [{name: a, gpu: A100}]\nnetwork: {links: [{from: a, to: sink, bandwidth: 0}]}\n", "zero bandwidth"),
    ("pools: [{gpu: A100}]\n", "needs `gpu` and `count`"),
])
def test_bad_input_gets_one_clear_message(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(content)
    done = helix("plan", str(path), "--time-limit", "3", "-q")
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_cluster_file_lists_examples() -> None:
    done = helix("plan", "no-such-cluster.yaml")
    assert done.returncode == 2 and "geo-demo" in done.stderr and "Traceback" not in done.stderr


def test_user_catalog_adds_a_gpu_type_without_code(tmp_path) -> None:
    (tmp_path / "extra.yaml").write_text(
        "gpus:\n  B300:\n    vram: 288GB\n    memoryBandwidth: 8e12\n    peakFlops: 2.5e15\n    nic: 50Gbps\n")
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("model: llama3-70b\nnodes: [{name: a, gpu: B300}, {name: b, gpu: B300}]\n")
    done = helix("plan", str(cluster), "--catalog", str(tmp_path), "--time-limit", "3", "-q")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert {n["gpuType"] for n in plan["nodes"]} == {"B300"} and plan["throughput"] > 0


def test_model_given_by_raw_sizes(tmp_path) -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("model: {name: mine, numLayers: 40, hiddenSize: 5120, bytesPerLayer: 6e8, "
                       "kvBytesPerTokenLayer: 20480}\nnodes: [{name: a, gpu: L4}, {name: b, gpu: L4}]\n")
    done = helix("plan", str(cluster), "--time-limit", "3", "-q")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["model"]["numLayers"] == 40 and plan["nodes"][-1]["end"] == 40
