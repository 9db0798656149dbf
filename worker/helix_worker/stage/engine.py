"""The stage engine: continuous batching of request chunks through this stage's layers.

Chunks from any upstream stream queue here; each step packs as many as fit the token
budget (prefills and decodes of different requests together), runs them in one forward
pass on a compute thread, then hands hidden states to the next hop or, at the last stage,
sampled tokens to the front end. The engine never sees a transport: it talks to an
`Outputs` object, which the gRPC server implements.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from helix_worker.kv_cache import KVCache, KVCacheFull, KVUsage, RequestCache
from helix_worker.protocol import Chunk, Failure, FailureKind, Hop, Phase, Sampled
from helix_worker.sampling import sample_row
from helix_worker.slice_model import LayerSlice, Rows

log = logging.getLogger(__name__)
_TOMBSTONES = 16384


class Outputs(Protocol):
    def forward(self, hop: Hop, chunks: list[Chunk], hidden: torch.Tensor) -> None: ...

    def deliver(self, reply_to: str, results: list[Sampled], failures: list[Failure]) -> None: ...


class StepObserver(Protocol):
    def step(self, requests: int, tokens: int, seconds: float, queued: int, usage: KVUsage,
             hop_seconds: list[float]) -> None: ...


@dataclass
class _Item:
    chunk: Chunk
    rows: torch.Tensor
    received: float
    cache: RequestCache | None = None


@dataclass
class _StepResult:
    forwards: list[tuple[Hop, list[Chunk], torch.Tensor]]
    sampled: list[tuple[str, Sampled]]


class StageEngine:
    def __init__(self, node: str, model: LayerSlice, kv: KVCache, *, max_batch_tokens: int,
                 slowdown: float = 1.0, observer: StepObserver | None = None) -> None:
        self.node, self.model, self.kv = node, model, kv
        self.max_batch_tokens, self.slowdown, self.observer = max_batch_tokens, slowdown, observer
        self.outputs: Outputs | None = None
        self._queue: list[_Item] = []
        self._wakeup = asyncio.Event()
        self._running: set[str] = set()
        self._released_in_step: set[str] = set()
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage-{node}")
        self._rng = torch.Generator()
        self._rng.seed()  # unseeded requests draw from a non-deterministic stream

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, chunks: list[Chunk], payload: torch.Tensor) -> None:
        """Queue a forward batch; its payload rows follow the chunks' order."""
        offset, now = 0, time.perf_counter()
        for chunk in chunks:
            rows = payload[offset:offset + chunk.length]
            offset += chunk.length
            if chunk.request_id in self._tombstones:
                continue
            self._queue.append(_Item(chunk, rows, now))
        self._wakeup.set()

    def release(self, request_ids: list[str]) -> None:
        """Free finished or abandoned requests; chunks of theirs that arrive later are dropped."""
        gone = set(request_ids)
        self._queue = [item for item in self._queue if item.chunk.request_id not in gone]
        for request_id in gone:
            self._tombstones[request_id] = None
            if request_id in self._running:
                self._released_in_step.add(request_id)
            else:
                self.kv.free(request_id)
        while len(self._tombstones) > _TOMBSTONES:
            self._tombstones.popitem(last=False)

    async def run(self) -> None:
        """Step forever (until cancelled)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                items, failures = self._admit(self._take())
                for failure, reply_to in failures:
                    self._send_failures(reply_to, [failure])
                if not items:
                    continue
                self._running = {i.chunk.request_id for i in items}
                started = time.perf_counter()
                try:
                    result = await loop.run_in_executor(self._executor, self._compute, items)
                except Exception as err:  # a bug or a device error: fail these requests, keep serving
                    log.exception("stage step failed")
                    for item in items:
                        self._send_failures(item.chunk.reply_to, [Failure(item.chunk.request_id, self.node,
                                                                          FailureKind.INTERNAL, repr(err))])
                    result = _StepResult([], [])
                self._finish_step(items, result, time.perf_counter() - started)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _take(self) -> list[_Item]:
        taken, tokens = [], 0
        while self._queue and (not taken or tokens + self._queue[0].chunk.length <= self.max_batch_tokens):
            item = self._queue.pop(0)
            taken.append(item)
            tokens += item.chunk.length
        return taken

    def _admit(self, items: list[_Item]) -> tuple[list[_Item], list[tuple[Failure, str]]]:
        """Attach KV caches (allocating on prefill); reject what cannot run here."""
        ready, failures = [], []
        for item in items:
            chunk = item.chunk
            problem = self._check(chunk)
            if problem is None:
                try:
                    item.cache = self._cache_for(chunk)
                except KVCacheFull as err:
                    failures.append((Failure(chunk.request_id, self.node, FailureKind.KV_FULL, str(err)), chunk.reply_to))
                    continue
                if item.cache is None:
                    problem = (FailureKind.ROUTE_BROKEN, "no KV cache for this request here (stage restarted?)")
                elif chunk.position + chunk.length > item.cache.capacity:
                    problem = (FailureKind.INVALID, f"position {chunk.position + chunk.length} exceeds the "
                                                    f"{item.cache.capacity} tokens reserved")
            if problem is not None:
                failures.append((Failure(chunk.request_id, self.node, *problem), chunk.reply_to))
                continue
            ready.append(item)
        return ready, failures

    def _check(self, chunk: Chunk) -> tuple[FailureKind, str] | None:
        if not chunk.route or chunk.route[0].node != self.node:
            return FailureKind.INVALID, f"chunk routed to {chunk.route[0].node if chunk.route else 'nowhere'}, not {self.node}"
        hop = chunk.route[0]
        if not self.model.start <= hop.start < hop.end <= self.model.end:
            return FailureKind.INVALID, f"layers [{hop.start}, {hop.end}) are not all in [{self.model.start}, {self.model.end})"
        return None

    def _cache_for(self, chunk: Chunk) -> RequestCache | None:
        if chunk.phase == Phase.PREFILL and chunk.position == 0:
            return self.kv.allocate(chunk.request_id, max(chunk.reserve, chunk.length))
        return self.kv.get(chunk.request_id)

    def _compute(self, items: list[_Item]) -> _StepResult:
        started = time.perf_counter()
        groups: dict[tuple[int, int], list[_Item]] = {}
        for item in items:
            hop = item.chunk.route[0]
            groups.setdefault((hop.start, hop.end), []).append(item)
        forwards, sampled = [], []
        for (start, end), group in groups.items():
            hidden = self.model.forward(torch.cat([i.rows for i in group]),
                                        [Rows(i.chunk.length, i.chunk.position, i.cache) for i in group], start, end)
            if end == self.model.config.num_layers:
                sampled += self._sample(group, hidden)
            else:
                forwards += _split_by_next_hop(group, hidden)
        if self.slowdown > 1.0:
            time.sleep((time.perf_counter() - started) * (self.slowdown - 1.0))
        return _StepResult(forwards, sampled)

    def _sample(self, group: list[_Item], hidden: torch.Tensor) -> list[tuple[str, Sampled]]:
        ends = torch.tensor([i.chunk.length for i in group], device=hidden.device).cumsum(0) - 1
        logits = self.model.logits(hidden[ends]).cpu()  # sampling and its generators live on the CPU
        out = []
        for item, row in zip(group, logits):
            chunk = item.chunk
            position = chunk.position + chunk.length
            token, logprob, top = sample_row(row, chunk.sampling, position, self._rng)
            out.append((chunk.reply_to, Sampled(chunk.request_id, token, position, logprob, top,
                                                row.clone() if chunk.sampling.return_logits else None)))
        return out

    def _finish_step(self, items: list[_Item], result: _StepResult, seconds: float) -> None:
        released, self._released_in_step, self._running = self._released_in_step, set(), set()
        for request_id in released:
            self.kv.free(request_id)
        for hop, chunks, hidden in result.forwards:
            keep = [i for i, c in enumerate(chunks) if c.request_id not in released]
            if len(keep) < len(chunks):
                hidden = torch.cat([_rows_of(chunks, hidden, i) for i in keep]) if keep else hidden[:0]
                chunks = [chunks[i] for i in keep]
            if chunks and self.outputs is not None:
                self.outputs.forward(hop, chunks, hidden)
        by_peer: dict[str, list[Sampled]] = {}
        for reply_to, item in result.sampled:
            if item.request_id not in released:
                by_peer.setdefault(reply_to, []).append(item)
        for reply_to, results in by_peer.items():
            if self.outputs is not None:
                self.outputs.deliver(reply_to, results, [])
        if self.observer is not None:
            now = time.perf_counter()
            self.observer.step(len(items), sum(i.chunk.length for i in items), seconds, len(self._queue),
                               self.kv.usage(), [now - i.received for i in items])

    def _send_failures(self, reply_to: str, failures: list[Failure]) -> None:
        if self.outputs is not None:
            self.outputs.deliver(reply_to, [], failures)


def _split_by_next_hop(group: list[_Item], hidden: torch.Tensor) -> list[tuple[Hop, list[Chunk], torch.Tensor]]:
    """Group rows by the next hop's address, keeping each request's rows together."""
    by_hop: dict[Hop, tuple[list[Chunk], list[torch.Tensor]]] = {}
    offset = 0
    for item in group:
        chunk = item.chunk
        rows = hidden[offset:offset + chunk.length]
        offset += chunk.length
        chunks, tensors = by_hop.setdefault(chunk.route[1], ([], []))
        chunks.append(replace(chunk, route=chunk.route[1:]))
        tensors.append(rows)
    return [(hop, chunks, torch.cat(tensors)) for hop, (chunks, tensors) in by_hop.items()]


def _rows_of(chunks: list[Chunk], hidden: torch.Tensor, index: int) -> torch.Tensor:
    start = sum(c.length for c in chunks[:index])
    return hidden[start:start + chunks[index].length]
