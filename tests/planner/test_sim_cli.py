"""`helix simulate` as a user runs it: summary, JSON, charts, progress, and one-line errors."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from picturekit import SVG, assert_png_matches_svg, svg_groups, texts

from helix_planner.io.cluster_files import DEFAULT_CLUSTER
from helix_planner.pipelines import Pipeline, Stage
from helix_planner.plan_format import Plan, PlannedNode, SolverReport
from helix_planner.sim.workload import SYNTHETIC_CONV


def simulate(reference: Path, *args: str) -> subprocess.CompletedProcess:
    cluster = str(reference / "clusters" / "single24.ini")
    return subprocess.run([sys.executable, "-m", "helix_planner.cli", "simulate", cluster, *args],
                          capture_output=True, text=True, timeout=120)


def helix_layout(reference: Path) -> str:
    return str(reference / "layouts" / "single24-llama70b" / "helix.ini")


def test_quick_run_prints_json_writes_charts_and_shows_progress(reference, tmp_path) -> None:
    done = simulate(reference, "--layout", helix_layout(reference), "--throughput-model", "helix", "--quick",
                    "-o", "json", "--plots", str(tmp_path), "--traces", str(reference / "traces"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["mode"] == "offline" and result["warmup"] == 60 and result["duration"] == 120
    assert result["decodeThroughput"] > 0 and result["ttft"]["p95"] >= result["ttft"]["p50"]
    assert len(result["nodes"]) == 24 and {"kvMean", "queueMax", "busy"} <= set(result["nodes"][0])
    assert len(result["series"]["kvUtilisation"]) == 24
    assert done.stderr.splitlines() == [f"wrote {tmp_path / name}" for name in (
        "throughput.svg", "throughput.png", "latency_cdf.svg", "latency_cdf.png", "nodes.svg", "nodes.png")]
    for name in ("throughput.svg", "latency_cdf.svg", "nodes.svg"):
        assert_png_matches_svg(tmp_path / name)
    # Decode and prompt throughput on an axis each, each axis labelled with its one quantity.
    axes = svg_groups(tmp_path / "throughput.svg", "axes_")
    assert [[t for t in texts(a) if "tokens/s" in t] for a in axes] == [["decode tokens/s"], ["prompt tokens/s"]]
    # The TTFT CDF is a step through every measured request: two vertices a request, and the start.
    (cdf,) = svg_groups(tmp_path / "latency_cdf.svg", "ttft-cdf")
    vertices = len(re.findall(r"[ML]\s*-?[\d.]+\s+-?[\d.]+", cdf.find(f"{SVG}path").get("d")))
    assert len(result["ttftValues"]) >= 20 and vertices == 2 * len(result["ttftValues"]) + 1


def test_runs_with_defaults_from_anywhere(tmp_path) -> None:
    """No cluster, no --traces, no reference data beside the working directory: the bundled example
    and the bundled look-alike of the Azure conversation lengths, and the output says so."""
    environ = {k: v for k, v in os.environ.items() if k != "HELIX_REFERENCE"}
    done = subprocess.run([sys.executable, "-m", "helix_planner.cli", "simulate", "--quick", "--plan-time-limit", "2",
                           "-o", "json"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=environ)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["lengths"] == SYNTHETIC_CONV and result["label"].startswith(DEFAULT_CLUSTER)
    assert result["decodeThroughput"] > 0 and result["completed"] > 0


def test_table_reports_slo_attainment_and_speed(reference) -> None:
    done = simulate(reference, "--layout", helix_layout(reference), "--throughput-model", "helix", "--quick", "-q",
                    "--scheduler", "adaptive", "--slo-ttft", "30", "--slo-tpot", "5")
    assert done.returncode == 0, done.stderr
    assert "scheduler adaptive" in done.stdout and "decode throughput" in done.stdout
    assert "SLO (TTFT <= 30 s and TPOT <= 5 s)" in done.stdout and "simulated s per wall s" in done.stdout
    assert done.stderr == ""


def foreign_plan(tmp_path: Path) -> Path:
    """A plan for a cluster with a node `node-99` that single24 does not have."""
    plan = Plan(model={"name": "llama2-70b", "numLayers": 80}, cluster="elsewhere", throughput_model="helix",
                nodes=[PlannedNode("node-99", "A100", "r0", 0, 80, 1.0, 1.0)], edges=[],
                pipelines=[Pipeline((Stage("node-99", 0, 80),), 1.0)], throughput=1.0, upper_bound=None,
                solver=SolverReport("test", "heuristic", 0.0), inputs_hash="")
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    return path


@pytest.mark.parametrize(("args", "message"), [
    (["--scheduler", "fastest"], "unknown scheduler 'fastest'"),
    (["--traces", "/nonexistent"], "trace file /nonexistent/azure_conv_lengths.csv not found"),
    (["--mode", "online"], "positive --rate"),
    (["--layout", "PLAN"], "plan/cluster mismatch: plan node node-99 is not in cluster 'single24'"),
    (["--layout", "missing.ini"], "layout file missing.ini not found"),
    (["--layout", "GAP"], "carries no flow on single24; for overlapping (Petals/Swarm) layouts add --partial"),
])
def test_bad_input_gets_one_clear_message(reference, tmp_path, args: list[str], message: str) -> None:
    gap = tmp_path / "gap.ini"
    gap.write_text("[Solution]\ncompute_node_2=[0, 1, 2]\n")  # nobody holds layers 3..79
    swaps = {"PLAN": str(foreign_plan(tmp_path)), "GAP": str(gap)}
    args = [swaps.get(a, a) for a in args]
    if "--layout" not in args:
        args += ["--layout", helix_layout(reference)]
    if "--traces" not in args:
        args += ["--traces", str(reference / "traces")]
    done = simulate(reference, *args, "--quick", "-q")
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
