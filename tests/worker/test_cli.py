"""The data plane's commands as a user runs them: model init, up, profile, and their errors."""

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helix_planner.profiles import Catalog
from helix_worker.commands import register, run_up
from helix_worker.engine.reference import ReferenceModel
from helix_worker.fleet.profile import monotone
from helix_worker.model.config import load_model_config

FAST_ENV = {**os.environ, "HELIX_TORCH_THREADS": "1"}


def helix(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helix_worker", *args], capture_output=True, text=True,
                          timeout=timeout, env=FAST_ENV)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _child_pids(workdir: Path) -> list[int]:
    return [json.loads(p.read_text())["pid"] for p in (workdir / "logs").glob("*.ready.json")]


def test_register_adds_every_subcommand() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["up", "--exit-after-sample"]).func is run_up
    for command in (["worker", "--plan", "p", "--model", "m", "--node", "n"],
                    ["frontend", "--plan", "p", "--model", "m"], ["model", "init", "d"], ["profile"]):
        assert callable(parser.parse_args(command).func)


def test_model_init_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    result = helix("model", "init", str(tmp_path / "m"), "--layers", "3", "--shards", "2", "--qkv-bias")
    assert result.returncode == 0, result.stderr
    config = load_model_config(tmp_path / "m")
    assert (config.num_layers, config.model_type, config.qkv_bias) == (3, "qwen2", True)
    assert len(ReferenceModel(tmp_path / "m").greedy([1, 2, 3], 2).tokens) == 2


@pytest.mark.timeout(240)
def test_up_plans_measured_local_workers_then_serves_and_exits_cleanly(tmp_path: Path) -> None:
    result = helix("up", "--workers", "3", "--slowdown", "1,1,4", "--grpc-port", "0", "--http-port", "0",
                   "--exit-after-sample", "--workdir", str(tmp_path), "--max-tokens", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "measuring helix-demo on CPU" in out and "decode batch" in out  # the quick profile
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["solver"]["method"] != "manual" and plan["throughputModel"] == "profiled"
    assert plan["throughput"] > 0 and f"throughput {plan['throughput']:.1f} tok/s" in out
    assert f"pipelines ({len(plan['pipelines'])}):" in out  # the plan summary comes before the endpoints
    assert out.index("pipelines (") < out.index("KServe v2 gRPC")
    nodes = {n["name"]: n for n in plan["nodes"]}
    assert {n["gpuType"] for n in nodes.values()} <= {"CPU", "CPU-x4"}
    slow, fast = nodes.get("worker-2"), [nodes[n] for n in ("worker-0", "worker-1") if n in nodes]
    assert fast, plan
    if slow is None:
        assert "worker-2 (slowdown 4) is left unused by the plan" in out
    else:  # the 4x slower worker holds fewer layers, or as many layers for a smaller share of the traffic
        assert slow["gpuType"] == "CPU-x4" and "slowdown 4" in out
        assert all(slow["end"] - slow["start"] < f["end"] - f["start"] or slow["flow"] < f["flow"] for f in fast)
    assert f"over {len(nodes)} workers, {len(plan['pipelines'])} pipeline(s)" in out
    assert "KServe v2 gRPC  127.0.0.1:" in out and "OpenAI HTTP     http://127.0.0.1:" in out
    assert "sample: 'Helix serves' -> " in out
    pids = _child_pids(tmp_path)
    assert len(pids) == len(nodes) + 1 and not any(_alive(pid) for pid in pids)
    logs = "".join(log.read_text() for log in (tmp_path / "logs").glob("*.log"))
    assert "unknown environment variable" not in result.stderr + logs, "`helix up` sets only known HELIX_* names"


CLUSTER = """
name: lab
nodes:
  - {name: a100-0, gpu: A100, region: lab}
  - {name: t4-0, gpu: T4, region: lab}
network:
  intraRegion: {bandwidth: 10Gbps, latency: 1ms}
"""


@pytest.mark.timeout(240)
def test_up_plans_a_cluster_file_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    cluster = tmp_path / "lab.yaml"
    cluster.write_text(CLUSTER)
    process = subprocess.Popen([sys.executable, "-m", "helix_worker", "up", "--cluster", str(cluster),
                                "--plan-seconds", "5", "--grpc-port", "0", "--http-port", "0",
                                "--workdir", str(tmp_path / "run")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=FAST_ENV)
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        text = "".join(lines)
        assert "planning" in text and "bound" in text, text  # the planner's progress lines
        assert "a100-0" in text and "t4-0" in text and "slowdown 4.8" in text  # T4: 65 vs 312 TFLOP/s
        pids = _child_pids(tmp_path / "run")
        assert len(pids) == 3 and all(_alive(pid) for pid in pids)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert not any(_alive(pid) for pid in pids)
    finally:
        process.kill()
        process.wait()


def test_helix_command_line_has_the_data_plane_commands(tmp_path: Path) -> None:
    """The installed `helix` script finds these commands through the entry-point group."""
    helix_script = str(Path(sys.executable).parent / "helix")
    made = subprocess.run([helix_script, "model", "init", "m", "--layers", "2"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, env=FAST_ENV)
    assert made.returncode == 0, made.stderr
    assert "wrote a random-weight llama checkpoint" in made.stdout
    failed = subprocess.run([helix_script, "worker", "--plan", "missing.json", "--model", "m", "--node", "x"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120, env=FAST_ENV)
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: cannot read plan missing.json") and "Traceback" not in failed.stderr


def test_up_rejects_mismatched_slowdowns_with_one_line() -> None:
    result = helix("up", "--workers", "3", "--slowdown", "1,2", "--exit-after-sample")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: give one slowdown factor per worker: 3 workers, 2 factors"


def test_profile_curves_never_fall_as_size_grows() -> None:
    """A point slowed by another process (72 ms at 16 tokens, 22 at 512) is lowered to the
    later one, so the planner never extrapolates to a negative latency."""
    measured = [[16.0, 72.0], [128.0, 272.0], [512.0, 22.4]]
    assert monotone(measured) == [[0.0, 0.0], [16.0, 22.4], [128.0, 22.4], [512.0, 22.4]]
    assert monotone([[8.0, 1.0], [16.0, 2.5]]) == [[0.0, 0.0], [8.0, 1.0], [16.0, 2.5]]


def test_profile_writes_a_catalog_file_the_planner_reads(tmp_path: Path) -> None:
    out = tmp_path / "measured-helix-demo.yaml"
    result = helix("profile", "--prompt-tokens", "8,16", "--decode-batches", "1,2", "--repeats", "1",
                   "--gpu-name", "my-cpu", "--model-name", "helix-demo", "-o", str(out))
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(out.read_text())
    assert [x for x, _ in document["measured"]["my-cpu"]["promptMs"]] == [0.0, 8.0, 16.0]
    catalog = Catalog()
    catalog.merge_file(out)
    profile = catalog.measurement("helix-demo", "my-cpu")
    assert profile.decode(2) > 0 and profile.prompt(16) > 0 and profile.max_layers >= 1
