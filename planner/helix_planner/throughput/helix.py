"""A faithful re-implementation of Helix's node capacity T_i(k), for comparable objectives.

Helix (ASPLOS'25 artifact, `model_manager/<model>/helper.py`) derives a node's token
throughput at a "typical" batch: vLLM's KV capacity for k layers, of which 30% holds
sequences of 750 prompt + 240 output tokens; a workload ratio r(k) = k t_m / (k t_m +
(L-k) t_avg) that scales the batch by the share of a request's round trip spent on this
node; t_m = 1/perf_m where perf_m comes from a 10-step fixed point over the cluster's
composition. So T_i(k) depends on which GPU types the whole cluster holds and how many.
"""

from helix_planner.errors import PlanningError
from helix_planner.profiles import Catalog, HelixTables, MeasuredProfile


class HelixCapacityModel:
    """T(k) exactly as the Helix artifact computes it (same rounding, same interpolation)."""

    name = "helix"

    def __init__(self, catalog: Catalog, model: str, num_layers: int, gpu_counts: dict[str, int]) -> None:
        tables = catalog.helix_tables.get(model)
        if tables is None:
            raise PlanningError(
                f"the helix throughput model has tables only for {', '.join(sorted(catalog.helix_tables))}; "
                f"use --throughput-model profiled for {model!r}"
            )
        self.tables: HelixTables = tables
        self.num_layers = num_layers
        self.counts = {gpu: n for gpu, n in gpu_counts.items() if n > 0}
        self.profiles: dict[str, MeasuredProfile] = {}
        for gpu in self.counts:
            profile = catalog.measurement(model, gpu)
            if profile is None or gpu not in tables.typical_layers:
                raise PlanningError(
                    f"the helix throughput model has no measurement of {model!r} on {gpu!r}; "
                    "use --throughput-model profiled (roofline estimate) for this cluster"
                )
            self.profiles[gpu] = profile
        capacity = sum(n * tables.typical_layers[g] for g, n in self.counts.items())
        source = tables.typical_layers if capacity >= 1.2 * num_layers else tables.typical_layers_small
        self.typical_layers = {g: source[g] for g in self.counts}
        perf = {g: tables.initial_perf[g] for g in self.counts}
        for _ in range(tables.iterations):
            perf = {g: self._throughput(g, self.typical_layers[g], perf) * self.typical_layers[g] for g in self.counts}
        self.normalized_perf = perf
        self._cache = {
            (g, k): self._throughput(g, k, perf)
            for g in self.counts
            for k in range(1, self.profiles[g].max_layers + 1)
        }

    def max_layers(self, gpu: str) -> int:
        return self.profiles[gpu].max_layers if gpu in self.profiles else 0

    def capacity(self, gpu: str, layers: int) -> float:
        return self._cache[(gpu, layers)]

    def _workload_ratio(self, gpu: str, layers: int, perf: dict[str, float]) -> float:
        layer_time = {g: 1.0 / p for g, p in perf.items()}
        time_sum = sum(n * self.typical_layers[g] * layer_time[g] for g, n in self.counts.items())
        layer_sum = sum(n * self.typical_layers[g] for g, n in self.counts.items())
        batch_time = layers * layer_time[gpu]
        round_trip = (self.num_layers - layers) * (time_sum / layer_sum) + batch_time
        return batch_time / round_trip

    def _throughput(self, gpu: str, layers: int, perf: dict[str, float]) -> float:
        tables, profile = self.tables, self.profiles[gpu]
        ratio = self._workload_ratio(gpu, layers, perf)
        kv_entries = profile.block_size * profile.kv_blocks[layers] * layers
        seq_len = tables.avg_input_len + tables.avg_output_len
        layer_entries = int(tables.kv_high_water_mark * kv_entries / layers)
        prompt_requests = layer_entries / seq_len * ratio / tables.avg_output_len
        prompt_tokens = round(prompt_requests * tables.avg_input_len)
        decode_tokens = round(layer_entries / seq_len * ratio)
        if prompt_requests > 1:
            prompt_requests, prompt_tokens, decode_tokens = 1, tables.avg_input_len, tables.avg_output_len
        if prompt_requests >= 1:
            total_tokens: float = prompt_tokens + decode_tokens
            total_time = layers * (profile.prompt(prompt_tokens) + profile.decode(decode_tokens))
        else:
            rescale = 1 / prompt_requests
            total_tokens = rescale * (prompt_tokens + decode_tokens)
            total_time = layers * (profile.prompt(int(prompt_tokens * rescale))
                                   + profile.decode(decode_tokens) * rescale)
        return total_tokens / total_time
