"""Batched attention of one step over the paged KV cache.

Every request of a step is attended in one kernel call per layer and row shape: one call for
all single-token rows (decodes, and one-token prefill pieces) and one for all multi-token
prefill chunks, the split FlashInfer's and vLLM's batch decode and batch prefill wrappers make
too (padding decode rows to a prefill chunk's length would multiply their work).

On the CPU, single-token rows go to this project's paged decode kernel (`cpu_kernels`), which
reads each request's blocks in place. Everything else (prompt chunks; decodes on CUDA, or
where the kernel cannot be built) runs torch's `scaled_dot_product_attention` (its fused
flash kernel on the CPU, flash / memory-efficient kernels on CUDA) over gathered pages, with
inputs built without per-request Python:

* the pool is heads-first within a block, so one `index_select` over its rows (one per block
  and KV head) gathers every request's keys straight into the kernel's [requests, kv_heads,
  tokens, head_dim] layout, contiguous, into buffers kept across steps (block 0, always zero,
  pads shorter tables). With tokens outermost instead, the gathered view needs a transpose
  that the kernel pays for: 64 requests of ~640 tokens, one layer, one thread, 15.1 ms
  against 12.9 ms heads-first;
* grouped-query attention never repeats keys: the query heads that share a KV head become
  extra query rows of that head ([requests, kv_heads, rows x group, head_dim]), so each key is
  read once per KV head;
* an additive mask [requests, 1, rows x group, tokens] hides padding and applies causality
  from each request's own position (chunked prefill attends to its earlier chunks).

`StepLayout.build` computes all indices and masks once per step; each layer reuses them.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from helix_worker.engine import cpu_kernels
from helix_worker.engine.kv_pool import PAD_BLOCK, KVPool


@dataclass(frozen=True)
class SequenceRows:
    """One request's rows in a packed step: `length` new tokens after `position` cached ones."""

    position: int
    length: int
    table: list[int]  # its blocks, enough for position + length tokens


@dataclass(frozen=True)
class _Group:
    """Requests of one row shape, padded to `queries` rows and `tokens` key positions each."""

    rows: torch.Tensor  # [S, queries] packed row of each query row (padding repeats a real row)
    real: torch.Tensor | None  # [S * queries] which padded rows are real; None when all are
    blocks: torch.Tensor  # [S * kv_heads * tokens / block_tokens] pool rows (block x kv_heads + head) to gather
    mask: torch.Tensor  # additive [S, 1, queries x group, tokens]
    queries: int
    tokens: int


@dataclass(frozen=True)
class _Decode:
    """Single-token rows for the CPU decode kernel, which reads the pool through block tables."""

    kernel: cpu_kernels.PagedDecode
    rows: torch.Tensor  # [S] packed row of each request's token
    tables: torch.Tensor  # [S, width] int64 block ids
    lengths: torch.Tensor  # [S] int64 tokens each attends to: its position + 1


@dataclass(frozen=True)
class StepLayout:
    """Where a step's rows write keys and values, and how they are grouped for attention."""

    positions: torch.Tensor  # [T] absolute position of each packed row (rotary embeddings)
    slots: torch.Tensor  # [T * kv_heads] pool row ((block x kv_heads + head) x block_tokens + offset) of each key
    single: _Decode | _Group | None  # requests with one row in this step
    multi: _Group | None  # requests with several rows (prefill chunks)

    @classmethod
    def build(cls, sequences: list[SequenceRows], block_tokens: int, heads: int, kv_heads: int,
              dtype: torch.dtype, device: torch.device) -> "StepLayout":
        lengths = torch.tensor([s.length for s in sequences])
        starts = torch.tensor([s.position for s in sequences])
        offsets = torch.cumsum(lengths, 0) - lengths
        owner = torch.repeat_interleave(torch.arange(len(sequences)), lengths)
        positions = starts[owner] + torch.arange(int(lengths.sum())) - offsets[owner]
        width = max(len(s.table) for s in sequences)
        tables = torch.tensor([s.table + [PAD_BLOCK] * (width - len(s.table)) for s in sequences])
        block_rows = tables[owner, positions // block_tokens][:, None] * kv_heads + torch.arange(kv_heads)
        slots = (block_rows * block_tokens + (positions % block_tokens)[:, None]).reshape(-1)
        single = [i for i, s in enumerate(sequences) if s.length == 1]
        multi = [i for i, s in enumerate(sequences) if s.length > 1]
        shape = (block_tokens, heads // kv_heads, kv_heads, dtype, device)
        kernel = cpu_kernels.paged_decode() if single and device.type == "cpu" else None
        decode = (_decode(kernel, single, starts, offsets, tables, device) if kernel is not None
                  else _group(single, sequences, offsets, tables, *shape))
        return cls(positions.to(device), slots.to(device), decode,
                   _group(multi, sequences, offsets, tables, *shape))


def _decode(kernel: cpu_kernels.PagedDecode, members: list[int], starts: torch.Tensor, offsets: torch.Tensor,
            tables: torch.Tensor, device: torch.device) -> _Decode:
    index = torch.tensor(members)
    lengths = starts[index] + 1
    return _Decode(kernel, offsets[index].to(device), tables[index].contiguous().to(device), lengths.to(device))


def _group(members: list[int], sequences: list[SequenceRows], offsets: torch.Tensor, tables: torch.Tensor,
           block_tokens: int, group: int, kv_heads: int, dtype: torch.dtype, device: torch.device) -> _Group | None:
    if not members:
        return None
    index = torch.tensor(members)
    lengths = torch.tensor([sequences[i].length for i in members])
    starts = torch.tensor([sequences[i].position for i in members])
    queries = int(lengths.max())
    width = -(-int((starts + lengths).max()) // block_tokens)
    step = torch.arange(queries)
    rows = offsets[index][:, None] + torch.minimum(step[None, :], lengths[:, None] - 1)
    real = (step[None, :] < lengths[:, None]).reshape(-1)
    # Key j is visible to query row t of request s when j <= position_s + t (padding rows see
    # what their request's last real row sees, so no row is all -inf).
    last = starts[:, None] + torch.minimum(step[None, :], lengths[:, None] - 1)  # [S, queries]
    visible = torch.arange(width * block_tokens)[None, None, :] <= last[:, :, None]  # [S, queries, tokens]
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, float("-inf"))
    mask = mask[:, :, None, :].expand(-1, -1, group, -1).reshape(len(members), 1, queries * group, -1)
    block_rows = tables[index, :width][:, None, :] * kv_heads + torch.arange(kv_heads)[None, :, None]
    return _Group(rows.to(device), None if bool(real.all()) else real.to(device),
                  block_rows.reshape(-1).to(device), mask.to(device), queries, width * block_tokens)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pool: KVPool, layer: int,
                    layout: StepLayout) -> torch.Tensor:
    """Write this step's keys and values into the pool, then attend every row to its request's cache.

    q [T, heads, dim], k and v [T, kv_heads, dim]; `layer` indexes the pool's layers. Returns
    [T, heads, dim].
    """
    keys, values = pool.layer(layer)
    dim = keys.shape[-1]
    keys.view(-1, dim).index_copy_(0, layout.slots, k.reshape(-1, dim))
    values.view(-1, dim).index_copy_(0, layout.slots, v.reshape(-1, dim))
    out = torch.empty_like(q)
    if isinstance(layout.single, _Decode):
        _attend_in_place(q, pool, layer, layout.single, out)
    for part in (layout.single, layout.multi):
        if isinstance(part, _Group):
            _attend(q, pool, layer, part, out)
    return out


def _attend_in_place(q: torch.Tensor, pool: KVPool, layer: int, part: _Decode, out: torch.Tensor) -> None:
    query = q.index_select(0, part.rows)
    result = torch.empty_like(query)
    keys, values = pool.layer(layer)
    part.kernel(result, query, keys, values, part.tables, part.lengths, query.shape[-1] ** -0.5)
    out.index_copy_(0, part.rows, result)


def _attend(q: torch.Tensor, pool: KVPool, layer: int, part: _Group, out: torch.Tensor) -> None:
    heads, dim = q.shape[1], q.shape[2]
    kv_heads = pool.kv_heads
    group = heads // kv_heads
    requests = part.rows.shape[0]
    flat_rows = part.rows.reshape(-1)
    query = (q.index_select(0, flat_rows).view(requests, part.queries, kv_heads, group, dim)
             .transpose(1, 2).reshape(requests, kv_heads, part.queries * group, dim))
    keys, values = pool.gather(layer, part.blocks)
    k = keys.view(requests, kv_heads, part.tokens, dim)
    v = values.view(requests, kv_heads, part.tokens, dim)
    result = F.scaled_dot_product_attention(query, k, v, attn_mask=part.mask)
    result = (result.view(requests, kv_heads, part.queries, group, dim).transpose(1, 2)
              .reshape(requests * part.queries, heads, dim))
    if part.real is None:
        out.index_copy_(0, flat_rows, result)
    else:
        out.index_copy_(0, flat_rows[part.real], result[part.real])
