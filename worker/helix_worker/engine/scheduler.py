"""Which rows run in the next step, and who is preempted when KV blocks run out.

Each request at this stage has a queue of input pieces (a prompt, or one chunk of it, from
upstream; then one token per decode step). A step takes, under a token budget, the head piece
of every request with one-token input first (decode rows keep streaming) and then prefill
pieces in arrival order, splitting the first that does not fit (chunked prefill: a long
prompt runs over several steps between decode steps instead of stalling them). A split piece
travels on marked `partial`, so the last stage samples only after a request's whole input.

Blocks are taken as a piece is scheduled. When the pool is short, a request that holds no
blocks yet waits in the queue (and so does every newer one: arrival order is kept), while a
running request makes room by preempting the youngest request holding blocks here, itself
included, as vLLM does: the victim's blocks are freed, its queued input dropped, and its
front end told, which re-prefills it later with its prompt and the tokens so far (the same
path as failover), so nothing is lost. A request that could not fit even in the empty pool is
refused instead.
"""

import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace

import torch

from helix_worker.engine.attention import SequenceRows
from helix_worker.engine.kv_pool import BlockAllocator
from helix_worker.protocol import Chunk, Failure, FailureKind

_TOMBSTONES = 16384


@dataclass(frozen=True)
class Piece:
    """Input rows of one request waiting at this stage; `chunk` says where they sit."""

    chunk: Chunk
    rows: torch.Tensor
    received: float


@dataclass
class _Sequence:
    request_id: str
    reply_to: str
    order: int  # arrival at this stage: preemption takes the largest
    pending: deque[Piece] = field(default_factory=deque)
    cached: int = 0  # tokens whose keys and values this stage holds


@dataclass(frozen=True)
class Step:
    pieces: list[Piece]  # what runs, in packed-row order
    sequences: list[SequenceRows]  # the same, as attention sees them
    fresh_blocks: list[int]  # blocks handed out for this step (cleared before use)
    refused: list[tuple[Failure, str]]  # failures and the peer to tell: preempted or impossible requests

    @property
    def tokens(self) -> int:
        return sum(p.chunk.length for p in self.pieces)


class Scheduler:
    def __init__(self, node: str, allocator: BlockAllocator, token_budget: int) -> None:
        if token_budget < 1:
            raise ValueError(f"the step token budget must be at least 1, not {token_budget}")
        self.node, self.allocator, self.token_budget = node, allocator, token_budget
        self._sequences: dict[str, _Sequence] = {}
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        self._arrivals = itertools.count()

    @property
    def queued(self) -> int:
        """Input pieces waiting for a step."""
        return sum(len(s.pending) for s in self._sequences.values())

    @property
    def has_work(self) -> bool:
        return any(s.pending for s in self._sequences.values())

    def holds(self, request_id: str) -> bool:
        return request_id in self.allocator.tables

    def by_peer(self) -> dict[str, list[str]]:
        """Request ids here (holding blocks or queued) by the peer their tokens go back to."""
        owners: dict[str, list[str]] = {}
        for sequence in self._sequences.values():
            owners.setdefault(sequence.reply_to, []).append(sequence.request_id)
        return owners

    def add(self, piece: Piece) -> None:
        """Queue input; pieces of released or preempted requests are dropped."""
        request_id = piece.chunk.request_id
        if request_id in self._tombstones:
            return
        sequence = self._sequences.get(request_id)
        if sequence is None:
            sequence = _Sequence(request_id, piece.chunk.reply_to, next(self._arrivals))
            self._sequences[request_id] = sequence
        sequence.pending.append(piece)

    def release(self, request_id: str) -> None:
        """Forget a finished or abandoned request and free its blocks; later input is dropped."""
        self._sequences.pop(request_id, None)
        self.allocator.free(request_id)
        self._tombstones[request_id] = None
        while len(self._tombstones) > _TOMBSTONES:
            self._tombstones.popitem(last=False)

    def is_gone(self, request_id: str) -> bool:
        return request_id in self._tombstones

    def next_step(self) -> Step:
        ready = [s for s in self._sequences.values() if s.pending]
        ready.sort(key=lambda s: (s.pending[0].chunk.length > 1, s.order))
        budget, fresh = self.token_budget, []
        chosen: list[tuple[_Sequence, Piece]] = []
        refused: list[tuple[Failure, str]] = []
        waiting = False  # a new request found no room: newer ones wait behind it
        for sequence in ready:
            if budget <= 0:
                break
            if sequence.request_id not in self._sequences:  # preempted for an older request's rows
                continue
            new = not self.holds(sequence.request_id)
            if new and waiting:
                continue
            piece = sequence.pending[0]
            problem = self._check(sequence, piece.chunk)
            if problem is not None:
                refused.append((Failure(piece.chunk.request_id, self.node, *problem), piece.chunk.reply_to))
                self.release(sequence.request_id)
                continue
            take = min(piece.chunk.length, budget)
            if new and self.allocator.shortfall(sequence.request_id, piece.chunk.position + take) > 0:
                waiting = True
                continue
            if not self._make_room(sequence, piece.chunk.position + take, chosen, refused):
                continue
            fresh += self.allocator.grow(sequence.request_id, piece.chunk.position + take)
            chosen.append((sequence, self._take(sequence, take)))
            budget -= take
        return Step([p for _, p in chosen],
                    [SequenceRows(p.chunk.position, p.chunk.length, list(self.allocator.tables[s.request_id]))
                     for s, p in chosen], fresh, refused)

    def _check(self, sequence: _Sequence, chunk: Chunk) -> tuple[FailureKind, str] | None:
        if chunk.position != sequence.cached:
            if sequence.cached == 0:
                return FailureKind.ROUTE_BROKEN, "no KV cache for this request here (stage restarted?)"
            return (FailureKind.INVALID,
                    f"input at position {chunk.position}, but this stage holds {sequence.cached} tokens")
        need = self.allocator.blocks_for(chunk.position + chunk.length)
        if need > self.allocator.total:
            return (FailureKind.INVALID, f"{chunk.position + chunk.length} tokens need {need} KV blocks; this stage "
                                         f"has {self.allocator.total} of {self.allocator.block_tokens} tokens")
        return None

    def _make_room(self, sequence: _Sequence, tokens: int, chosen: list[tuple[_Sequence, Piece]],
                   refused: list[tuple[Failure, str]]) -> bool:
        """Preempt the youngest holders until `sequence` can hold `tokens`; False if it was the youngest."""
        while self.allocator.shortfall(sequence.request_id, tokens) > 0:
            holders = [s for s in self._sequences.values() if self.holds(s.request_id)]
            victim = max(holders + [sequence], key=lambda s: s.order)
            refused.append((Failure(victim.request_id, self.node, FailureKind.PREEMPTED,
                                    f"KV cache full on {self.node}: preempted to make room for older requests"),
                            victim.reply_to))
            chosen[:] = [(s, p) for s, p in chosen if s is not victim]
            self.release(victim.request_id)
            if victim is sequence:
                return False
        return True

    def _take(self, sequence: _Sequence, tokens: int) -> Piece:
        """The head piece's first `tokens` rows; a remainder stays queued, and the part taken is partial."""
        piece = sequence.pending.popleft()
        sequence.cached = piece.chunk.position + tokens
        if tokens == piece.chunk.length:
            return piece
        chunk = piece.chunk
        rest = replace(chunk, position=chunk.position + tokens, length=chunk.length - tokens)
        sequence.pending.appendleft(Piece(rest, piece.rows[tokens:], piece.received))
        return Piece(replace(chunk, length=tokens, partial=True), piece.rows[:tokens], piece.received)
