"""Shared fixtures: a tiny random checkpoint and local worker processes."""

from pathlib import Path

import pytest
from dataplane_helpers import NUM_LAYERS, WORKER_ENV, start_workers, wait_http_ready, write_endpoints, write_plan

from helix_worker.fleet.launcher import LocalFleet
from helix_worker.model.random_checkpoint import DemoModel, write_demo_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six layers, hidden 64, GQA 4:2, two safetensors shards (exercises the index file)."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    write_demo_checkpoint(directory, DemoModel(num_layers=NUM_LAYERS, shards=2))
    return directory


@pytest.fixture
def fleet(tmp_path: Path):
    """Local worker processes, always stopped (SIGTERM, then SIGKILL) when the test ends."""
    with LocalFleet(tmp_path / "fleet", env=WORKER_ENV) as local:
        yield local


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path):
    """Two stages (1024 KV tokens each) and a front end as processes, shared by all API tests."""
    directory = tmp_path_factory.mktemp("served")
    plan, plan_path = write_plan(directory, [[("left", 0, 3), ("right", 3, NUM_LAYERS)]])
    with LocalFleet(directory / "fleet", env=WORKER_ENV | {"HELIX_KV_CACHE_TOKENS": "1024"}) as local:
        endpoints = write_endpoints(directory, start_workers(local, plan, plan_path, checkpoint))
        frontend = local.wait(local.start_frontend(plan_path, endpoints, checkpoint))
        wait_http_ready(frontend.http_url)
        yield frontend
