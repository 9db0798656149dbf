"""The project's own node-capacity model: measured latency curves where known, roofline else.

For a node holding k layers (documented in the README, "Throughput models"):
  * memory: weights take k * bytes_per_layer of the usable VRAM (90%; weights may use at
    most 80% of it); the rest holds KV cache, kv_bytes_per_token_layer * k per token;
  * concurrency: sequences of avg_input + avg_output tokens that the KV cache holds, capped
    by `max_sequences`;
  * batch per pass: a pipeline spreads its sequences over its stages, so a node's pass sees
    the share k / L of them (at least one); every decode step of a sequence also brings
    avg_input / avg_output prompt tokens (prefill mixed into decode passes);
  * T(k) = (decode + prompt tokens per pass) / (k * (decode time + prompt time per layer)),
    capped by what the NIC moves (activation bytes per token).
Latency per layer comes from the catalog's measured curves for (model, GPU) when present,
otherwise from a roofline: max(weight bytes / (bandwidth * 0.7), FLOPs / (peak * 0.5))
plus KV reads for decode.
"""

from dataclasses import dataclass

from helix_planner.errors import PlanningError
from helix_planner.models import ModelSpec
from helix_planner.profiles import Catalog, Curve, GpuType

MEMORY_EFFICIENCY = 0.7
COMPUTE_EFFICIENCY = 0.5
USABLE_VRAM = 0.9
MAX_WEIGHT_SHARE = 0.8


@dataclass(frozen=True)
class Workload:
    avg_input: int = 750
    avg_output: int = 240
    max_sequences: int = 256


def roofline_curves(gpu: GpuType, model: ModelSpec, workload: Workload) -> tuple[Curve, Curve]:
    """(prompt, decode) per-layer latency curves estimated from bandwidth and peak FLOP/s."""
    weight_time = model.bytes_per_layer / (gpu.memory_bandwidth * MEMORY_EFFICIENCY)
    context = workload.avg_input + workload.avg_output / 2
    xs = (0.0, 1.0, 8.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0)

    def prompt(tokens: float) -> float:
        if not tokens:
            return 0.0
        return max(weight_time, model.flops_per_token_layer * tokens / (gpu.peak_flops * COMPUTE_EFFICIENCY))

    def decode(batch: float) -> float:
        if not batch:
            return 0.0
        kv_time = batch * context * model.kv_bytes_per_token_layer / (gpu.memory_bandwidth * MEMORY_EFFICIENCY)
        return prompt(batch) + kv_time

    return Curve(xs, tuple(prompt(x) for x in xs)), Curve(xs, tuple(decode(x) for x in xs))


def layer_curves(catalog: Catalog, model: ModelSpec, gpu: GpuType,
                 workload: Workload | None = None) -> tuple[Curve, Curve]:
    """(prompt, decode) per-layer latency of `model` on `gpu`: measured where the catalog has it, else roofline."""
    measured = catalog.measurement(model.name, gpu.name)
    if measured:
        return measured.prompt, measured.decode
    return roofline_curves(gpu, model, workload or Workload())


class ProfiledCapacityModel:
    name = "profiled"

    def __init__(self, catalog: Catalog, model: ModelSpec, gpus: set[str], workload: Workload | None = None) -> None:
        self.model = model
        self.workload = workload or Workload()
        self._max: dict[str, int] = {}
        self._caps: dict[tuple[str, int], float] = {}
        for name in sorted(gpus):
            gpu = catalog.gpu(name)
            measured = catalog.measurement(model.name, gpu.name)
            prompt, decode = layer_curves(catalog, model, gpu, self.workload)
            usable = gpu.vram_bytes * USABLE_VRAM
            k_max = min(model.num_layers, int(usable * MAX_WEIGHT_SHARE // model.bytes_per_layer))
            if measured:
                k_max = min(k_max, measured.max_layers)
            self._max[name] = k_max
            for k in range(1, k_max + 1):
                self._caps[(name, k)] = self._capacity(gpu, k, usable, prompt, decode)

    def max_layers(self, gpu: str) -> int:
        return self._max.get(gpu, 0)

    def capacity(self, gpu: str, layers: int) -> float:
        try:
            return self._caps[(gpu, layers)]
        except KeyError:
            raise PlanningError(f"{gpu} cannot hold {layers} layers of {self.model.name}") from None

    def _capacity(self, gpu: GpuType, k: int, usable: float, prompt: Curve, decode: Curve) -> float:
        w, m = self.workload, self.model
        kv_tokens = (usable - k * m.bytes_per_layer) / (k * m.kv_bytes_per_token_layer)
        sequences = min(w.max_sequences, kv_tokens / (w.avg_input + w.avg_output))
        batch = max(1.0, sequences * k / m.num_layers)
        prompt_tokens = batch * w.avg_input / w.avg_output
        seconds = k * (decode(batch) + prompt(prompt_tokens))
        tokens = batch + prompt_tokens
        nic_cap = gpu.nic_bytes_per_s / m.activation_bytes_per_token
        return min(tokens / seconds, nic_cap)
