"""Batched attention of one step over the paged KV cache.

Every request of a step is attended in one kernel call per layer and row shape: one call for
all single-token rows (decodes, and one-token prefill pieces) and one for all multi-token
prefill chunks, the split FlashInfer's and vLLM's batch decode and batch prefill wrappers make
too (padding decode rows to a prefill chunk's length would multiply their work). The kernel
is torch's `scaled_dot_product_attention`, which runs its fused flash kernel on the CPU (and
flash / memory-efficient kernels on CUDA). Its inputs are built without per-request Python:

* a request's blocks are gathered with one `index_select` over the pool, seen as one row per
  block (8x faster on the CPU than selecting 4-D slices), into buffers kept across steps and
  viewed as padded [requests, kv_heads, tokens, head_dim] (block 0, always zero, pads shorter
  tables);
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
    blocks: torch.Tensor  # [S * tokens / block_tokens] pool blocks to gather, request by request
    mask: torch.Tensor  # additive [S, 1, queries x group, tokens]
    queries: int
    tokens: int


@dataclass(frozen=True)
class StepLayout:
    """Where a step's rows write keys and values, and how they are grouped for attention."""

    positions: torch.Tensor  # [T] absolute position of each packed row (rotary embeddings)
    slots: torch.Tensor  # [T] pool slot (block x block_tokens + offset) of each row's key and value
    single: _Group | None  # requests with one row in this step
    multi: _Group | None  # requests with several rows (prefill chunks)

    @classmethod
    def build(cls, sequences: list[SequenceRows], block_tokens: int, group: int, dtype: torch.dtype,
              device: torch.device) -> "StepLayout":
        lengths = torch.tensor([s.length for s in sequences])
        starts = torch.tensor([s.position for s in sequences])
        offsets = torch.cumsum(lengths, 0) - lengths
        owner = torch.repeat_interleave(torch.arange(len(sequences)), lengths)
        positions = starts[owner] + torch.arange(int(lengths.sum())) - offsets[owner]
        width = max(len(s.table) for s in sequences)
        tables = torch.tensor([s.table + [PAD_BLOCK] * (width - len(s.table)) for s in sequences])
        slots = tables[owner, positions // block_tokens] * block_tokens + positions % block_tokens
        single = [i for i, s in enumerate(sequences) if s.length == 1]
        multi = [i for i, s in enumerate(sequences) if s.length > 1]
        return cls(positions.to(device), slots.to(device),
                   _group(single, sequences, offsets, tables, block_tokens, group, dtype, device),
                   _group(multi, sequences, offsets, tables, block_tokens, group, dtype, device))


def _group(members: list[int], sequences: list[SequenceRows], offsets: torch.Tensor, tables: torch.Tensor,
           block_tokens: int, group: int, dtype: torch.dtype, device: torch.device) -> _Group | None:
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
    return _Group(rows.to(device), None if bool(real.all()) else real.to(device),
                  tables[index, :width].reshape(-1).to(device), mask.to(device), queries, width * block_tokens)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pool: KVPool, layer: int,
                    layout: StepLayout) -> torch.Tensor:
    """Write this step's keys and values into the pool, then attend every row to its request's cache.

    q [T, heads, dim], k and v [T, kv_heads, dim]; `layer` indexes the pool's layers. Returns
    [T, heads, dim].
    """
    keys, values = pool.layer(layer)
    kv_heads, dim = keys.shape[2], keys.shape[3]
    keys.view(-1, kv_heads, dim).index_copy_(0, layout.slots, k)
    values.view(-1, kv_heads, dim).index_copy_(0, layout.slots, v)
    out = torch.empty_like(q)
    for part in (layout.single, layout.multi):
        if part is not None:
            _attend(q, pool, layer, part, out)
    return out


def _attend(q: torch.Tensor, pool: KVPool, layer: int, part: _Group, out: torch.Tensor) -> None:
    heads, dim = q.shape[1], q.shape[2]
    kv_heads = pool.data.shape[4]
    group = heads // kv_heads
    requests = part.rows.shape[0]
    flat_rows = part.rows.reshape(-1)
    query = (q.index_select(0, flat_rows).view(requests, part.queries, kv_heads, group, dim)
             .transpose(1, 2).reshape(requests, kv_heads, part.queries * group, dim))
    keys, values = pool.gather(layer, part.blocks)
    k = keys.view(requests, part.tokens, kv_heads, dim).transpose(1, 2)
    v = values.view(requests, part.tokens, kv_heads, dim).transpose(1, 2)
    result = F.scaled_dot_product_attention(query, k, v, attn_mask=part.mask)
    result = (result.view(requests, kv_heads, part.queries, group, dim).transpose(1, 2)
              .reshape(requests * part.queries, heads, dim))
    if part.real is None:
        out.index_copy_(0, flat_rows, result)
    else:
        out.index_copy_(0, flat_rows[part.real], result[part.real])
