"""Helpers the data-plane tests share (plain functions; fixtures live in conftest.py)."""

import json
import time
import urllib.request
from pathlib import Path

from helix_planner.plan_format import Plan
from helix_worker.launcher import LocalFleet
from helix_worker.local_plan import Layout, manual_plan

MODEL = "tiny-llama"
NUM_LAYERS = 6
# Workers run with one torch thread each: the CI machine has two cores shared by everyone.
WORKER_ENV = {"HELIX_TORCH_THREADS": "1", "HELIX_KV_CACHE_TOKENS": "4096", "HELIX_RECONNECT_SECONDS": "0.2"}


def write_plan(directory: Path, pipelines: list[Layout], weights: list[float] | None = None) -> tuple[Plan, Path]:
    plan = manual_plan(MODEL, NUM_LAYERS, pipelines, weights)
    path = directory / "plan.json"
    path.write_text(plan.to_json())
    return plan, path


def start_workers(fleet: LocalFleet, plan: Plan, plan_path: Path, checkpoint: Path) -> dict[str, str]:
    """Start one worker per plan node; returns node -> gRPC address."""
    children = [fleet.start_worker(plan_path, node.name, checkpoint) for node in plan.nodes]
    return {child.name: fleet.wait(child).grpc_address for child in children}


def write_endpoints(directory: Path, endpoints: dict[str, str]) -> Path:
    path = directory / "endpoints.json"
    path.write_text(json.dumps(endpoints))
    return path


def wait_http_ready(url: str, timeout: float = 60.0) -> None:
    """Poll /readyz until it answers 200 (a pipeline is fully up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")
