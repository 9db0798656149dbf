"""`helix plan` and friends as a user runs them: output formats, files, errors without tracebacks."""

import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from picturekit import assert_png_matches_svg, svg_groups, texts

from helix_planner.errors import PlanningError
from helix_planner.figures import INSTALL_HINT, drawing
from helix_planner.io.cluster_files import DEFAULT_CLUSTER, load_cluster
from helix_planner.plan_format import load_plan
from helix_planner.profiles import load_catalog
from helix_planner.render import region_crossings
from helix_planner.serving_plan import DEFAULT_LENGTHS, ServingObjective, judge
from helix_planner.sim.workload import load_lengths
from helix_planner.status import StatusLine


def helix(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helix_planner.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_plan_bundled_example_as_json_with_serving_estimate_and_picture(tmp_path) -> None:
    svg = tmp_path / "plan.svg"
    done = helix("plan", "--time-limit", "5", "--svg", str(svg))
    assert done.returncode == 0, done.stderr
    plan = load_plan(done.stdout)
    assert json.loads(done.stdout)["kind"] == "HelixPlan" and plan.throughput > 0 and plan.pipelines
    assert "\r" not in done.stderr and "incumbent" not in done.stderr, "no status line off a terminal"
    # Beside max flow, what serving the plan gives: exactly what the simulator says of it.
    cluster, model = load_cluster(DEFAULT_CLUSTER)
    assert model is not None
    lengths = load_lengths(DEFAULT_LENGTHS, tmp_path)
    judged = judge(plan, 0.0, ServingObjective(), cluster, model, load_catalog(), lengths)
    printed = re.search(r"decode ([\d.]+) tok/s \(max flow ([\d.]+) .*p95 time to first token ([\d.]+) s", done.stderr)
    assert printed, done.stderr
    assert printed.groups() == (f"{judged.decode_throughput:.1f}", f"{plan.throughput:.1f}", f"{judged.ttft_p95:.1f}")
    assert "upper bound" in done.stderr and "helix plan --objective serving" in done.stderr
    # The picture: a legend naming every GPU type and the crossing style, each region crossing drawn and marked.
    (legend,) = svg_groups(svg, "legend")
    assert {n.gpu_type for n in plan.nodes} | {"region crossing"} <= set(texts(legend))
    crossings = region_crossings(plan)
    assert crossings, "geo-demo's plan hands activations between regions"
    assert len(svg_groups(svg, "region-crossing-")) == len(crossings)
    assert {f"region {n.region}" for n in plan.nodes} <= set(texts(ElementTree.parse(svg).getroot()))
    assert_png_matches_svg(svg)


def test_pictures_without_matplotlib_say_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what a base install without the plots extra has
    with pytest.raises(PlanningError, match=re.escape(INSTALL_HINT)), drawing():
        pass


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_is_redrawn_on_a_terminal_and_silent_elsewhere() -> None:
    terminal, pipe = Terminal(), io.StringIO()
    with StatusLine("planning geo-demo", limit=60, stream=terminal, tick=0.01) as status:
        status("milp  incumbent 8402.3")
        drawn = status.text()
    with StatusLine("planning geo-demo", limit=60, stream=pipe) as status:
        status("milp incumbent 8402.3")
    with StatusLine("planning geo-demo", limit=60, stream=terminal, quiet=True) as status:
        status("quiet")
    assert re.fullmatch(r"planning geo-demo  \d+ s of 60 s  milp incumbent 8402\.3", drawn)
    assert f"\r\033[K{drawn}" in terminal.getvalue() and terminal.getvalue().endswith("\r\033[K")
    assert "quiet" not in terminal.getvalue() and pipe.getvalue() == ""


def test_plan_reference_cluster_exports_helix_ini(reference, tmp_path) -> None:
    done = helix("plan", str(reference / "clusters" / "small10.ini"), "--model", "llama1-30b",
                 "--throughput-model", "helix", "--time-limit", "10", "-o", "helix-ini", "-q", "--no-simulate")
    assert done.returncode == 0, done.stderr
    assert "upper bound" in done.stderr and "what serving would give" not in done.stderr
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
    assert "max flow" in done.stdout and "what serving would give" in done.stdout and done.stderr == ""


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
