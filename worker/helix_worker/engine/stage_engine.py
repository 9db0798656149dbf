"""The stage engine: continuous batching of request pieces through this stage's layers.

Pieces from any upstream stream queue in the scheduler; each step runs what it picked (decode
rows and prefill chunks of many requests together) in one forward pass on a compute thread,
then hands hidden states to the next hop or, at the last stage, sampled tokens to the front
end. The scheduler and block tables live on the event loop's thread and change only between
steps; the compute thread touches tensors only. The engine never sees a transport: it talks
to an `Outputs` object, which the gRPC server implements.

Unlike an engine that samples in process, a stage gets each request's next token back over
the network, and starting a step the moment the first one is back splits the running
requests into groups that then alternate, each step half full. So when tokens have been
coming back quickly (their round trip under a quarter of a step, as with one stage next to
its front end), the engine waits that long for the rest of the requests it expects before
stepping; in a deeper pipeline, where they come back a pipeline's round trip later, it does
not wait, and the groups keep every stage busy.
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from helix_worker.engine.attention import StepLayout
from helix_worker.engine.grammar import Grammars
from helix_worker.engine.kv_pool import BlockAllocator, KVPool, KVUsage
from helix_worker.engine.model import LayerSlice
from helix_worker.engine.observations import PieceShape, StepWindow
from helix_worker.engine.penalties import TokenHistory, problem
from helix_worker.engine.sampling import sample_row
from helix_worker.engine.scheduler import Piece, Scheduler, Step
from helix_worker.engine.slowdown import Slowdown
from helix_worker.protocol import Chunk, Failure, FailureKind, Hop, Phase, Sampled

log = logging.getLogger(__name__)
_WAIT_SHARE = 0.25  # wait for stragglers only while their round trip is under this share of a step
_EMA = 0.2  # weight of the newest sample in the round-trip and step-time averages


class Outputs(Protocol):
    def forward(self, hop: Hop, chunks: list[Chunk], hidden: torch.Tensor) -> None: ...

    def deliver(self, reply_to: str, results: list[Sampled], failures: list[Failure]) -> None: ...


class StepObserver(Protocol):
    def step(self, requests: int, tokens: int, seconds: float, queued: int, usage: KVUsage,
             hop_seconds: list[tuple[Phase, float]], preempted: int, overhead: float) -> None: ...


@dataclass
class _StepResult:
    forwards: list[tuple[Hop, list[Chunk], torch.Tensor]]
    sampled: list[tuple[str, Sampled]]
    failed: list[tuple[str, Failure]]  # requests whose output grammar could not go on
    seconds: float = 0.0  # the layers' time on the compute thread (emulated slowdown included); 0: failed


class StageEngine:
    def __init__(self, node: str, model: LayerSlice, pool: KVPool, *, max_batch_tokens: int,
                 slowdown: Slowdown | float = 1.0, observer: StepObserver | None = None,
                 grammars: Grammars | None = None) -> None:
        self.node, self.model, self.pool = node, model, pool
        self.allocator = BlockAllocator(pool.blocks, pool.block_tokens)
        self.scheduler = Scheduler(node, self.allocator, max_batch_tokens)
        self.slowdown = slowdown if isinstance(slowdown, Slowdown) else Slowdown(slowdown)  # a factor: fixed
        self.observer = observer
        self.outputs: Outputs | None = None
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage-{node}")
        self._rng = torch.Generator()
        self._rng.seed()  # unseeded requests draw from a non-deterministic stream
        self._history = TokenHistory()  # what the penalties of requests sampled here count
        self._grammars = grammars  # JSON output; None where this stage has no tokenizer
        self._awaited: dict[str, float] = {}  # requests whose next input is due: when their step ended
        self._round_trip = 0.0  # average time from a step's end to a request's next input
        self._step_seconds = 0.0  # average step time
        self._progress: float | None = None  # last step's end while busy; None while waiting for input or room
        self.steps = StepWindow()  # recent step times, reported as observed capacity
        self.failure: str | None = None  # why run() stopped, if it did by an error

    def usage(self) -> KVUsage:
        return self.allocator.usage()

    def holds(self, request_id: str) -> bool:
        """Whether `request_id` has KV blocks here (it is being served)."""
        return self.scheduler.holds(request_id)

    def requests_by_peer(self) -> dict[str, list[str]]:
        """Requests here (holding blocks or queued) by the front end they answer to (their KV lease's owner)."""
        return self.scheduler.by_peer()

    def held_tokens(self, request_ids: list[str]) -> int:
        """Tokens' worth of KV blocks these requests hold here."""
        tables = self.allocator.tables
        return sum(len(tables.get(r, ())) for r in request_ids) * self.allocator.block_tokens

    def stalled_seconds(self) -> float:
        """How long the engine has had work it could run without finishing a step (0 while it waits
        for input or KV room): a hung device or compute thread shows here, not in the event loop."""
        return 0.0 if self._progress is None else time.monotonic() - self._progress

    def submit(self, chunks: list[Chunk], payload: torch.Tensor) -> None:
        """Queue a forward batch; its payload rows follow the chunks' order. Chunks this stage
        cannot run are answered with a failure at once, each alone."""
        offset, now = 0, time.perf_counter()
        for chunk in chunks:
            if (ended := self._awaited.pop(chunk.request_id, None)) is not None:
                self._round_trip += _EMA * (now - ended - self._round_trip)
            rows = payload[offset:offset + max(chunk.length, 0)]
            offset += max(chunk.length, 0)
            problem = self._check(chunk, rows)
            if problem is not None:
                self._send_failures(chunk.reply_to,
                                    [Failure(chunk.request_id, self.node, FailureKind.INVALID, problem)])
                continue
            self.scheduler.add(Piece(chunk, rows, now))
        self._wakeup.set()

    def _check(self, chunk: Chunk, rows: torch.Tensor) -> str | None:
        if not chunk.route or chunk.route[0].node != self.node:
            return f"chunk routed to {chunk.route[0].node if chunk.route else 'nowhere'}, not {self.node}"
        hop = chunk.route[0]
        if not self.model.start <= hop.start < hop.end <= self.model.end:
            return f"layers [{hop.start}, {hop.end}) are not all in [{self.model.start}, {self.model.end})"
        if chunk.length < 1 or chunk.position < 0 or rows.shape[0] != chunk.length:
            return (f"chunk of {chunk.length} tokens at position {chunk.position} with {rows.shape[0]} payload rows: "
                    "need at least one token, a position >= 0 and one row per token")
        if hop.end < self.model.config.num_layers and len(chunk.route) < 2:
            return f"the route ends at layer {hop.end} of {self.model.config.num_layers}: no next hop"
        if chunk.sampling.json_schema and hop.end == self.model.config.num_layers and self._grammars is None:
            return f"{self.node} has no tokenizer.json in its checkpoint, which JSON output (response_format) needs"
        return problem(chunk.sampling, self.model.config.vocab_size)

    def release(self, request_ids: list[str]) -> None:
        """Free finished or abandoned requests; their pieces that arrive later are dropped, and so
        are the outputs of a step running now."""
        for request_id in request_ids:
            self.scheduler.release(request_id)
            self._awaited.pop(request_id, None)
            self._forget(request_id)
        self._wakeup.set()

    def _forget(self, request_id: str) -> None:
        self._history.forget(request_id)
        if self._grammars is not None:
            self._grammars.forget(request_id)

    async def run(self) -> None:
        """Step forever (until cancelled)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._wakeup.clear()
                self._progress = self._progress or time.monotonic()
                if self.scheduler.has_work and self._awaited:
                    await self._gather_stragglers(loop)
                formed = time.perf_counter()
                step = self.scheduler.next_step() if self.scheduler.has_work else None
                if step is not None:
                    for failure, reply_to in step.refused:
                        self._send_failures(reply_to, [failure])
                if step is None or not (step.pieces or step.refused):
                    self._progress = None
                    await self._wakeup.wait()  # idle, or new requests wait for blocks
                    continue
                if not step.pieces:
                    continue  # preemptions freed blocks: schedule again
                started = time.perf_counter()
                try:
                    result = await loop.run_in_executor(self._executor, self._compute, step)
                except Exception as err:  # a bug or a device error: fail these requests, keep serving
                    log.exception("stage step failed")
                    for piece in step.pieces:
                        chunk = piece.chunk
                        self.scheduler.release(chunk.request_id)
                        self._send_failures(chunk.reply_to, [Failure(chunk.request_id, self.node,
                                                                     FailureKind.INTERNAL, repr(err))])
                    result = _StepResult([], [], [])
                self._finish_step(step, result, time.perf_counter() - started, formed)
                self._progress = time.monotonic()
        except Exception as err:
            self.failure = f"the engine stopped: {err!r}"
            raise
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _gather_stragglers(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait (briefly) for the inputs of requests that stepped last time, so they step together."""
        if self._round_trip >= _WAIT_SHARE * self._step_seconds:
            return
        now = time.perf_counter()
        stale = now - max(1.0, 10 * self._step_seconds)
        self._awaited = {r: t for r, t in self._awaited.items() if t > stale and not self.scheduler.is_gone(r)}
        deadline = loop.time() + min(2 * self._round_trip, _WAIT_SHARE * self._step_seconds)
        while self._awaited and (remaining := deadline - loop.time()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _compute(self, step: Step) -> _StepResult:
        started = time.perf_counter()
        self.pool.clear(step.fresh_blocks)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, piece in enumerate(step.pieces):
            hop = piece.chunk.route[0]
            groups.setdefault((hop.start, hop.end), []).append(index)
        config = self.model.config
        forwards, sampled, failed = [], [], []
        for (start, end), members in groups.items():
            pieces = [step.pieces[i] for i in members]
            layout = StepLayout.build([step.sequences[i] for i in members], self.pool.block_tokens, config.num_heads,
                                      config.num_kv_heads, self.model.dtype, self.model.device)
            hidden = self.model.forward(torch.cat([p.rows for p in pieces]), layout, self.pool, start, end)
            if end == config.num_layers:
                done, refused = self._sample(pieces, hidden)
                sampled += done
                failed += refused
            else:
                forwards += _split_by_next_hop(pieces, hidden)
        factor = self.slowdown.factor()
        if factor > 1.0:
            time.sleep((time.perf_counter() - started) * (factor - 1.0))
        return _StepResult(forwards, sampled, failed, time.perf_counter() - started)

    def _sample(self, pieces: list[Piece],
                hidden: torch.Tensor) -> tuple[list[tuple[str, Sampled]], list[tuple[str, Failure]]]:
        """Sample after each request's whole input; partial prompt chunks only fill the cache.
        Penalties, then the JSON grammar's mask, shape what a row draws from."""
        ends = torch.tensor([p.chunk.length for p in pieces]).cumsum(0) - 1
        done = [i for i, p in enumerate(pieces) if not p.chunk.partial]
        if not done:
            return [], []
        logits = self.model.logits(hidden[ends[done].to(hidden.device)]).cpu()  # sampling lives on the CPU
        out, failed = [], []
        for i, row in zip(done, logits):
            chunk = pieces[i].chunk
            position = chunk.position + chunk.length
            adjusted = self._history.adjust(chunk.request_id, row, chunk.sampling)
            try:
                if self._grammars is not None:
                    adjusted = self._grammars.constrain(chunk.request_id, adjusted, chunk.sampling)
                token, logprob, top = sample_row(row, chunk.sampling, position, self._rng, adjusted)
                if self._grammars is not None and not self._grammars.accept(chunk.request_id, token):
                    raise ValueError(f"token {token} breaks the json_schema grammar (non-finite logits?)")
            except ValueError as err:
                failed.append((chunk.reply_to, Failure(chunk.request_id, self.node, FailureKind.INVALID, str(err))))
                continue
            self._history.record(chunk.request_id, token)
            out.append((chunk.reply_to, Sampled(chunk.request_id, token, position, logprob, top,
                                                row.clone() if chunk.sampling.return_logits else None)))
        return out, failed

    def _finish_step(self, step: Step, result: _StepResult, seconds: float, formed: float) -> None:
        """Record the step, hand its outputs on; `formed`: when the engine began forming it (what the step
        cost beyond its compute, to the observer: forming it, the thread hand-off, sending its outputs)."""
        gone = self.scheduler.is_gone
        self._step_seconds += _EMA * (seconds - self._step_seconds)
        if result.seconds > 0:  # compute time alone: what a profile measures, without the thread hand-off
            self.steps.record([PieceShape(p.chunk.phase, p.chunk.length, p.chunk.route[0].end - p.chunk.route[0].start)
                               for p in step.pieces], result.seconds)
        ended = time.perf_counter()
        for piece in step.pieces:
            if not piece.chunk.partial and not gone(piece.chunk.request_id):
                self._awaited[piece.chunk.request_id] = ended
        for hop, chunks, hidden in result.forwards:
            keep = [i for i, c in enumerate(chunks) if not gone(c.request_id)]
            if len(keep) < len(chunks):
                hidden = torch.cat([_rows_of(chunks, hidden, i) for i in keep]) if keep else hidden[:0]
                chunks = [chunks[i] for i in keep]
            if chunks and self.outputs is not None:
                self.outputs.forward(hop, chunks, hidden)
        by_peer: dict[str, list[Sampled]] = {}
        for reply_to, item in result.sampled:
            if not gone(item.request_id):
                by_peer.setdefault(reply_to, []).append(item)
            else:
                self._forget(item.request_id)  # released while its step ran
        failures: dict[str, list[Failure]] = {}
        for reply_to, failure in result.failed:
            self.scheduler.release(failure.request_id)
            self._forget(failure.request_id)
            failures.setdefault(reply_to, []).append(failure)
        for reply_to in by_peer.keys() | failures.keys():
            if self.outputs is not None:
                self.outputs.deliver(reply_to, by_peer.get(reply_to, []), failures.get(reply_to, []))
        if self.observer is not None:
            now = time.perf_counter()
            preempted = sum(f.kind == FailureKind.PREEMPTED for f, _ in step.refused)
            self.observer.step(len(step.pieces), step.tokens, seconds, self.scheduler.queued, self.usage(),
                               [(p.chunk.phase, now - p.received) for p in step.pieces], preempted,
                               max(0.0, now - formed - result.seconds) if result.seconds > 0 else 0.0)

    def _send_failures(self, reply_to: str, failures: list[Failure]) -> None:
        if self.outputs is not None:
            self.outputs.deliver(reply_to, [], failures)


def _split_by_next_hop(pieces: list[Piece], hidden: torch.Tensor) -> list[tuple[Hop, list[Chunk], torch.Tensor]]:
    """Group rows by the next hop's address, keeping each request's rows together."""
    by_hop: dict[Hop, tuple[list[Chunk], list[torch.Tensor]]] = {}
    offset = 0
    for piece in pieces:
        chunk = piece.chunk
        rows = hidden[offset:offset + chunk.length]
        offset += chunk.length
        chunks, tensors = by_hop.setdefault(chunk.route[1], ([], []))
        chunks.append(replace(chunk, route=chunk.route[1:]))
        tensors.append(rows)
    return [(hop, chunks, torch.cat(tensors)) for hop, (chunks, tensors) in by_hop.items()]


def _rows_of(chunks: list[Chunk], hidden: torch.Tensor, index: int) -> torch.Tensor:
    start = sum(c.length for c in chunks[:index])
    return hidden[start:start + chunks[index].length]
