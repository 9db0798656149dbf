"""The engine's parts in process: paged attention (the CPU decode kernel and the gather path
CUDA runs) against the dense reference, block tables, and the scheduler's token budget,
chunked prefill, waiting and preemption."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helix_worker.engine import cpu_kernels
from helix_worker.engine.kv_pool import PAD_BLOCK, BlockAllocator
from helix_worker.engine.model import LayerSlice
from helix_worker.engine.reference import ReferenceModel
from helix_worker.engine.scheduler import Piece, Scheduler
from helix_worker.engine.static_batch import StaticBatch
from helix_worker.model.random_checkpoint import DemoModel, write_demo_checkpoint
from helix_worker.protocol import Chunk, FailureKind, Hop, Phase

HOP = (Hop("n", "a:1", 0, 2),)


@pytest.fixture(params=["decode kernel", "gather"])
def decode_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways single-token rows are attended: the CPU kernel, and the gathered pages
    (what CUDA, or a host without a compiler, runs)."""
    if request.param == "gather":
        monkeypatch.setattr(cpu_kernels, "paged_decode", lambda: None)
    return request.param


@pytest.mark.parametrize("kv_heads, block_tokens", [(2, 4), (1, 16), (4, 1), (2, 5)])
def test_paged_mixed_steps_match_the_dense_reference(tmp_path: Path, kv_heads: int, block_tokens: int,
                                                     decode_path: str) -> None:
    """Requests of unequal lengths in one step: a prompt in two chunks, a one-token prompt, whole
    prompts, then decodes; every last-row logit equals the cache-free reference's within 1e-4."""
    write_demo_checkpoint(tmp_path, DemoModel(num_layers=3, num_kv_heads=kv_heads))
    model, reference = LayerSlice.load(tmp_path, 0, 3), ReferenceModel(tmp_path)
    prompts = [list(range(5, 28)), [7], list(range(40, 49)), [3, 1, 4, 1, 5, 9, 2, 6]]
    sequences = [p + [11 + i] * 4 for i, p in enumerate(prompts)]  # prompt, then fed-back tokens
    batch = StaticBatch(model, len(prompts), 64, block_tokens=block_tokens)
    fed = [0] * len(prompts)
    for lengths in ([10, 1, 9, 8], [13, 1, 1, 1], [1, 1, 1, 1]):  # request 0's prompt comes in two chunks
        rows = sum((sequences[i][fed[i]:fed[i] + n] for i, n in enumerate(lengths)), [])
        fed = [f + n for f, n in zip(fed, lengths)]
        logits = model.logits(batch.forward(torch.tensor(rows), lengths)[torch.tensor(lengths).cumsum(0) - 1])
        for i, prompt in enumerate(prompts):
            if fed[i] >= len(prompt):  # a whole prompt (or more) is in: this row samples
                expected = reference.next_logits(sequences[i][:fed[i]])
                assert torch.allclose(logits[i], expected, atol=1e-4, rtol=0), (i, (logits[i] - expected).abs().max())


def test_the_cpu_decode_kernel_is_built_here() -> None:
    """CI's machines have g++ and ninja: a silent fallback to the gather path would cost every
    long-context decode step about 2.5x its attention time."""
    assert cpu_kernels.paged_decode() is not None


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 2e-6), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("heads, kv_heads, dim, block_tokens", [(8, 2, 64, 16), (4, 4, 20, 5), (6, 1, 8, 1)])
def test_decode_kernel_matches_attention_over_gathered_pages(dtype: torch.dtype, tolerance: float, heads: int,
                                                             kv_heads: int, dim: int, block_tokens: int) -> None:
    """Scattered blocks, lengths from 1 to a full table (head dims that are not a multiple of
    the kernel's 16 lanes included) against float32 SDPA over the same pages, gathered."""
    kernel = cpu_kernels.paged_decode()
    assert kernel is not None
    generator = torch.Generator().manual_seed(heads * dim + block_tokens)
    lengths = torch.tensor([1, block_tokens, block_tokens + 1, 37, 64])
    width = -(-int(lengths.max()) // block_tokens)
    blocks = 1 + len(lengths) * width
    tables = (torch.randperm(blocks - 1, generator=generator) + 1).view(len(lengths), width)
    keys, values = (torch.randn(blocks, kv_heads, block_tokens, dim, generator=generator).to(dtype) for _ in "kv")
    q = torch.randn(len(lengths), heads, dim, generator=generator).to(dtype)
    out = torch.empty_like(q)
    kernel(out, q, keys, values, tables, lengths, dim ** -0.5)
    for i, length in enumerate(lengths.tolist()):
        k, v = (pages[tables[i]].transpose(0, 1).reshape(kv_heads, -1, dim)[:, :length].float()
                for pages in (keys, values))
        expected = F.scaled_dot_product_attention(q[i].float().view(kv_heads, heads // kv_heads, dim), k, v)
        assert torch.allclose(out[i].float(), expected.reshape(heads, dim), atol=tolerance, rtol=0), (i, length)


def test_block_tables_hand_out_and_take_back_every_block() -> None:
    allocator = BlockAllocator(6, 4)  # 5 usable blocks of 4 tokens, block 0 pads
    assert allocator.capacity_tokens == 20
    assert allocator.grow("a", 9) == [1, 2, 3] and allocator.grow("a", 12) == []
    assert allocator.shortfall("b", 9) == 1 and allocator.shortfall("a", 16) == 0
    assert PAD_BLOCK not in allocator.grow("b", 8)
    assert allocator.usage().used_tokens == 20 and allocator.usage().requests == 2
    with pytest.raises(RuntimeError, match="1 blocks asked"):
        allocator.grow("a", 13)
    assert allocator.free("a") and not allocator.free("a")
    allocator.free("b")
    assert allocator.free_blocks == 5 and allocator.usage().used_tokens == 0


def _piece(rid: str, position: int, length: int, reply_to: str = "fe") -> Piece:
    phase = Phase.PREFILL if position == 0 else Phase.DECODE
    return Piece(Chunk(rid, phase, position, length, HOP, reply_to), torch.zeros(length, dtype=torch.int64), 0.0)


def test_decodes_go_first_and_long_prompts_are_chunked_to_the_budget() -> None:
    scheduler = Scheduler("n", BlockAllocator(64, 4), token_budget=8)
    scheduler.add(_piece("old", 0, 3))
    assert [p.chunk.length for p in scheduler.next_step().pieces] == [3]
    scheduler.add(_piece("long", 0, 13))
    scheduler.add(_piece("short", 0, 2))
    scheduler.add(_piece("old", 3, 1))
    step = scheduler.next_step()
    assert [(p.chunk.request_id, p.chunk.position, p.chunk.length, p.chunk.partial) for p in step.pieces] == [
        ("old", 3, 1, False), ("long", 0, 7, True)]  # the decode row, then the head prompt cut to the budget
    assert [(s.position, s.length) for s in step.sequences] == [(3, 1), (0, 7)]
    step = scheduler.next_step()
    assert [(p.chunk.request_id, p.chunk.position, p.chunk.length, p.chunk.partial) for p in step.pieces] == [
        ("long", 7, 6, False), ("short", 0, 2, False)]
    assert step.pieces[0].rows.shape[0] == 6 and not scheduler.has_work


def test_new_requests_wait_for_blocks_in_arrival_order() -> None:
    scheduler = Scheduler("n", BlockAllocator(4, 4), token_budget=64)  # 3 usable blocks
    scheduler.add(_piece("a", 0, 8))
    scheduler.next_step()
    scheduler.add(_piece("b", 0, 8))  # needs 2 blocks, 1 free: waits
    scheduler.add(_piece("c", 0, 2))  # would fit, but arrived after b
    step = scheduler.next_step()
    assert step.pieces == [] and step.refused == [] and scheduler.has_work
    scheduler.release("a")
    assert [p.chunk.request_id for p in scheduler.next_step().pieces] == ["b", "c"]


def test_preemption_frees_the_youngest_holder_and_tells_its_front_end() -> None:
    allocator = BlockAllocator(4, 4)  # 3 usable blocks
    scheduler = Scheduler("n", allocator, token_budget=64)
    scheduler.add(_piece("old", 0, 4, reply_to="fe-1"))
    scheduler.add(_piece("young", 0, 8, reply_to="fe-2"))
    assert len(scheduler.next_step().pieces) == 2 and allocator.free_blocks == 0
    scheduler.add(_piece("old", 4, 1))  # needs a second block: "young" is preempted for it
    step = scheduler.next_step()
    assert [p.chunk.request_id for p in step.pieces] == ["old"]
    [(failure, reply_to)] = step.refused
    assert (failure.request_id, failure.kind, reply_to) == ("young", FailureKind.PREEMPTED, "fe-2")
    assert not scheduler.holds("young") and allocator.free_blocks == 1
    scheduler.add(_piece("young", 8, 1))  # its token still in flight arrives: dropped
    assert not scheduler.has_work
    scheduler.add(_piece("old", 5, 1))
    assert scheduler.next_step().refused == []
    scheduler.release("old")
    assert allocator.free_blocks == allocator.total


def test_a_request_alone_needing_more_than_it_holds_preempts_itself() -> None:
    allocator = BlockAllocator(3, 4)  # 2 usable blocks
    scheduler = Scheduler("n", allocator, token_budget=64)
    scheduler.add(_piece("a", 0, 4))
    scheduler.add(_piece("b", 0, 4))
    scheduler.next_step()
    scheduler.add(_piece("b", 4, 1))  # "b" is the youngest: it gives way to nobody but itself
    step = scheduler.next_step()
    assert step.pieces == [] and [f.request_id for f, _ in step.refused] == ["b"]
    assert scheduler.holds("a") and allocator.free_blocks == 1


def test_requests_that_cannot_run_here_are_refused_alone() -> None:
    scheduler = Scheduler("n", BlockAllocator(3, 4), token_budget=64)  # 8 tokens in all
    scheduler.add(_piece("huge", 0, 9))
    scheduler.add(_piece("ghost", 5, 1))  # a decode for a request this stage never saw
    scheduler.add(_piece("fine", 0, 3))
    step = scheduler.next_step()
    assert [p.chunk.request_id for p in step.pieces] == ["fine"]
    refused = {f.request_id: (f.kind, f.message) for f, _ in step.refused}
    assert refused["huge"][0] == FailureKind.INVALID and "9 tokens need 3 KV blocks" in refused["huge"][1]
    assert refused["ghost"][0] == FailureKind.ROUTE_BROKEN and "no KV cache" in refused["ghost"][1]
