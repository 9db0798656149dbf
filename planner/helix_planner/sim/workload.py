"""What the simulated users send: request lengths and, online, when requests arrive.

Lengths are drawn (with replacement, seeded) from a paired trace: the reference traces
(`azure-conv`, `azure-code`, `sharegpt`, `alpaca`) from the Helix artifact, any CSV with
`input_tokens,output_tokens` columns, `fixed:IN,OUT`, or `synthetic-conv`, a bundled look-alike
of `azure-conv` for installs without the reference data. Arrivals are a Poisson process,
a gamma renewal process (`gamma:CV`, burstier for CV > 1), or the shape of the Azure
production arrival traces (`azure-conv`, `azure-code`: requests per 3-second bin over one
hour, repeated if the run is longer) scaled to the requested mean rate.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from helix_planner.errors import PlanningError

LENGTH_TRACES = {"azure-conv": "azure_conv", "azure-code": "azure_code", "sharegpt": "shared_gpt", "alpaca": "alpaca"}
ARRIVAL_TRACES = {"azure-conv": "azure_conv", "azure-code": "azure_code"}
ARRIVAL_BIN_SECONDS = 3.0
SYNTHETIC_CONV = "synthetic-conv"
# The Azure conversation trace in 21 numbers each (its 0, 5, ..., 100th percentiles of prompt and output
# tokens) and the Gaussian-copula correlation that gives its rank correlation of the two (0.44):
# enough to draw look-alike requests.
CONV_INPUT_PERCENTILES = (7, 181, 203, 240, 378, 391, 397, 403, 412, 447, 947, 1004, 1029, 1050, 1072, 1094,
                          1121, 1161, 1273, 1353, 2047)
CONV_OUTPUT_PERCENTILES = (7, 52, 68, 80, 87, 92, 97, 104, 115, 133, 157, 181, 217, 383, 394, 397, 407, 415,
                           429, 463, 1000)
CONV_NORMAL_SCORE_CORRELATION = 0.457


def default_traces_dir() -> Path:
    """$HELIX_REFERENCE/traces, else the reference data beside the working directory."""
    if os.environ.get("HELIX_REFERENCE"):
        return Path(os.environ["HELIX_REFERENCE"]) / "traces"
    for base in (Path.cwd(), Path.cwd().parent):
        if (base / "shared" / "helix-reference" / "traces").is_dir():
            return base / "shared" / "helix-reference" / "traces"
    return Path("shared") / "helix-reference" / "traces"


@dataclass(frozen=True)
class LengthTrace:
    """Paired (input, output) token counts to sample requests from."""

    name: str
    inputs: np.ndarray
    outputs: np.ndarray

    def sample(self, rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
        picks = rng.integers(0, len(self.inputs), size=count)
        return list(zip(self.inputs[picks].tolist(), self.outputs[picks].tolist()))


def default_lengths(traces_dir: Path | None) -> LengthTrace:
    """`azure-conv` from `traces_dir` (given, or found by `default_traces_dir`), else `synthetic-conv`:
    `helix simulate` runs out of the box, from a pip install too, and says which one it used."""
    found = traces_dir or default_traces_dir()
    if traces_dir is not None or (found / f"{LENGTH_TRACES['azure-conv']}_lengths.csv").is_file():
        return load_lengths("azure-conv", found)
    return synthetic_conv()


def synthetic_conv(count: int = 16_384, seed: int = 0) -> LengthTrace:
    """Pairs drawn (seeded) with the Azure conversation trace's percentiles, correlated as in the trace."""
    rng = np.random.default_rng(seed)
    r = CONV_NORMAL_SCORE_CORRELATION
    shares = ndtr(rng.multivariate_normal([0.0, 0.0], [[1.0, r], [r, 1.0]], size=count))
    levels = np.linspace(0.0, 1.0, len(CONV_INPUT_PERCENTILES))
    inputs = np.interp(shares[:, 0], levels, CONV_INPUT_PERCENTILES).round().astype(np.int64)
    outputs = np.interp(shares[:, 1], levels, CONV_OUTPUT_PERCENTILES).round().astype(np.int64)
    return LengthTrace(SYNTHETIC_CONV, inputs, outputs)


def load_lengths(spec: str, traces_dir: Path) -> LengthTrace:
    """A trace name, a CSV path, `fixed:IN,OUT`, or `synthetic-conv`."""
    if spec == SYNTHETIC_CONV:
        return synthetic_conv()
    if spec.startswith("fixed:"):
        try:
            inp, out = (int(x) for x in spec[len("fixed:"):].split(","))
        except ValueError:
            raise PlanningError(f"bad length spec {spec!r}: write fixed:INPUT,OUTPUT, e.g. fixed:750,240") from None
        if inp < 1 or out < 1:
            raise PlanningError(f"bad length spec {spec!r}: input and output need at least one token")
        return LengthTrace(spec, np.array([inp]), np.array([out]))
    path = traces_dir / f"{LENGTH_TRACES[spec]}_lengths.csv" if spec in LENGTH_TRACES else Path(spec)
    data = _read_csv(path, spec, 2)
    if len(data) == 0 or data.min() < 1:
        raise PlanningError(f"{path}: every row needs input_tokens >= 1 and output_tokens >= 1")
    return LengthTrace(spec, data[:, 0].astype(np.int64), data[:, 1].astype(np.int64))


def arrival_times(process: str, rate: float, end: float, rng: np.random.Generator, traces_dir: Path) -> np.ndarray:
    """Arrival instants in [0, end) with mean `rate` requests/s."""
    if rate <= 0:
        raise PlanningError(f"online mode needs a positive --rate (requests/s), got {rate}")
    if process == "poisson":
        return _renewal(lambda n: rng.exponential(1.0 / rate, size=n), rate, end)
    if process.startswith("gamma"):
        try:
            cv = float(process.split(":", 1)[1]) if ":" in process else 2.0
        except ValueError:
            raise PlanningError(f"bad arrival process {process!r}: write gamma:CV, e.g. gamma:2") from None
        if cv <= 0:
            raise PlanningError(f"bad arrival process {process!r}: the coefficient of variation must be positive")
        shape = 1.0 / cv**2
        return _renewal(lambda n: rng.gamma(shape, 1.0 / (rate * shape), size=n), rate, end)
    if process in ARRIVAL_TRACES:
        counts = _read_csv(traces_dir / f"{ARRIVAL_TRACES[process]}_arrivals_per_3s.csv", process, 1)[:, 0]
        bins = int(np.ceil(end / ARRIVAL_BIN_SECONDS))
        profile = np.resize(counts, bins).astype(float)
        expected = profile / counts.mean() * rate * ARRIVAL_BIN_SECONDS
        per_bin = rng.poisson(expected)
        starts = np.repeat(np.arange(bins) * ARRIVAL_BIN_SECONDS, per_bin)
        times = np.sort(starts + rng.uniform(0, ARRIVAL_BIN_SECONDS, size=len(starts)))
        return times[times < end]
    raise PlanningError(f"unknown arrival process {process!r}: use poisson, gamma:CV, "
                        f"or a trace ({', '.join(ARRIVAL_TRACES)})")


def _renewal(draw: Callable[[int], np.ndarray], rate: float, end: float) -> np.ndarray:
    """Cumulative sums of drawn gaps until the horizon is passed."""
    chunk = int(rate * end * 1.2) + 16
    times = np.cumsum(draw(chunk))
    while times[-1] < end:
        times = np.concatenate([times, times[-1] + np.cumsum(draw(chunk))])
    return times[times < end]


def _read_csv(path: Path, spec: str, columns: int) -> np.ndarray:
    if not path.is_file():
        names = ", ".join(LENGTH_TRACES if columns == 2 else ARRIVAL_TRACES)
        raise PlanningError(f"trace file {path} not found for {spec!r}: give --traces DIR (the reference "
                            f"`traces` folder, or set HELIX_REFERENCE), a CSV path, or one of {names}")
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except ValueError as err:
        raise PlanningError(f"{path} is not a numeric CSV with a header row: {err}") from None
    if data.shape[1] < columns:
        raise PlanningError(f"{path} needs {columns} columns, has {data.shape[1]}")
    return data[:, :columns]
