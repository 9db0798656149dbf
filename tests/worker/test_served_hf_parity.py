"""Checkpoints that transformers writes, served end to end (two stage processes and the front
end, asked through tritonclient), generate exactly the greedy tokens transformers' own
`generate` does."""

from pathlib import Path

import numpy as np
import torch
import tritonclient.http as httpclient
from dataplane_helpers import WORKER_ENV, start_workers, wait_http_ready, write_endpoints
from hf_builders import build

from helix_worker.fleet.launcher import LocalFleet
from helix_worker.fleet.layouts import manual_plan

MODEL = "hf-model"
PROMPTS = [[5, 17, 99, 3], [42] * 9, list(range(20, 52))]
NEW_TOKENS = 12


def _served_greedy(client: httpclient.InferenceServerClient, prompt: list[int]) -> list[int]:
    """Greedy ids from the KServe REST side (output_ids: the ids themselves, no detokenising)."""
    inputs = [httpclient.InferInput("input_ids", [len(prompt)], "INT64"),
              httpclient.InferInput("max_tokens", [1], "INT32"), httpclient.InferInput("ignore_eos", [1], "BOOL")]
    for tensor, value in zip(inputs, (np.array(prompt, dtype=np.int64), np.array([NEW_TOKENS], dtype=np.int32),
                                      np.array([True]))):
        tensor.set_data_from_numpy(value)
    return client.infer(MODEL, inputs).as_numpy("output_ids").reshape(-1).tolist()


def test_served_greedy_tokens_equal_transformers_generate(tmp_path: Path) -> None:
    """Llama with GQA, llama3 RoPE and attention and MLP biases (the other architectures' logits
    are checked on the reference path in test_hf_parity.py; one fleet here keeps CI short)."""
    model = build("llama")
    checkpoint = tmp_path / "model"
    model.save_pretrained(checkpoint, max_shard_size="40KB")
    layers = model.config.num_hidden_layers
    plan = manual_plan(MODEL, layers, [[("first", 0, 1), ("second", 1, layers)]])
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan.to_json())
    with LocalFleet(tmp_path / "fleet", env=WORKER_ENV | {"HELIX_DTYPE": "float32"}) as fleet:
        endpoints = write_endpoints(tmp_path, start_workers(fleet, plan, plan_path, checkpoint))
        frontend = fleet.wait(fleet.start_frontend(plan_path, endpoints, checkpoint, model_name=MODEL))
        wait_http_ready(frontend.http_url)
        client = httpclient.InferenceServerClient(frontend.http_url.removeprefix("http://"), network_timeout=120)
        for prompt in PROMPTS:
            with torch.no_grad():
                expected = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                          min_new_tokens=NEW_TOKENS)[0, len(prompt):].tolist()
            assert _served_greedy(client, prompt) == expected, prompt
