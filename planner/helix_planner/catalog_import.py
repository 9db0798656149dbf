"""Convert the Helix artifact's measurements into the project's catalog format.

`helix catalog import ../shared/helix-reference -o planner/helix_planner/catalog` writes
`measured-<model>.yaml` per model: the per-layer latency curves (milliseconds), vLLM's KV
blocks and batch limits per layer count, and the tables of Helix's throughput model.
"""

import csv
import json
from pathlib import Path

import yaml

_MODEL_DIRS = {"llama2_70b": "llama2-70b", "llama1_30b": "llama1-30b"}
_GPU_DIRS = {"a100": "A100", "v100": "V100", "l4": "L4", "l4x2": "L4x2", "t4": "T4", "t4x2": "T4x2", "t4x4": "T4x4"}


def _points(path: Path) -> list[list[float]]:
    with path.open() as handle:
        return [[float(row[0]), float(row[1])] for row in csv.reader(handle) if row]


def import_reference(reference_dir: Path, out_dir: Path) -> list[Path]:
    """Write one catalog file per model found under `reference_dir/profiles`; return their paths."""
    constants = json.loads((reference_dir / "gpu_constants.json").read_text())
    written = []
    for model_dir, model in _MODEL_DIRS.items():
        model_consts = constants["models"][model_dir]
        tables = constants["helix_throughput_model_tables"][model_dir]
        fixed = constants["helix_throughput_model_tables"]["constants"]
        measured = {}
        for gpu_dir, gpu in _GPU_DIRS.items():
            base = reference_dir / "profiles" / model_dir / gpu_dir
            gpu_consts = model_consts["gpus"][gpu]
            measured[gpu] = {
                "maxLayers": gpu_consts["max_num_layers"],
                "blockSize": fixed["vllm_block_size"],
                "kvBlocks": {int(k): v for k, v in gpu_consts["vllm_num_blocks"].items()},
                "promptMaxRequests": {int(k): v for k, v in gpu_consts["prompt_max_requests"].items()},
                "decodeMaxTokens": {int(k): v for k, v in gpu_consts["decode_max_tokens"].items()},
                "promptMs": _points(base / "prompt_bs2time.csv"),
                "decodeMs": _points(base / "decode_bs2time.csv"),
            }
        document = {
            "model": model,
            "source": "Helix artifact (ASPLOS'25), vLLM fp16 per-layer latency; Apache-2.0",
            "helixTables": {
                "typicalLayers": tables["typical_layers"],
                "typicalLayersWhenCapacityBelow1.2L": tables["typical_layers_when_capacity_below_1.2L"],
                "initialNormalizedPerf": tables["initial_normalized_perf"],
                "avgInputLen": fixed["avg_input_len"],
                "avgOutputLen": fixed["avg_output_len"],
                "kvHighWaterMark": fixed["kv_cache_high_water_mark"],
                "fixedPointIterations": fixed["fixed_point_iterations"],
            },
            "measured": measured,
        }
        path = out_dir / f"measured-{model}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=100))
        written.append(path)
    return written
