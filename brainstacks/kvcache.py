"""The served KV caches, behind one interface (select / extend / take / width) the engine's batch calls.

SlotKV, the fused decoder's (brainstacks/fastpath.py): preallocated, written in place, one slot per running row.

    K, V   (L, slots, H_kv, capacity, Dh)   slot b holds row b's keys at positions 0 .. lengths[b]-1

Rows are not padded: a row's position is its own length, so a row's keys sit at the same places whatever it is
batched with, and attention masks each row's columns >= its length (exactly zero weight). Only this module knows
the layout; the engine's batch (server/batch.py) calls `select`, `extend` and `take`, and the decoder writes
through `write_prefill` / `write_step` and reads `view`.

- a decode step writes one column per row in place (no `cat`, no reallocation), then `advance` moves the lengths;
- `select(keep)` keeps rows compact in slots 0..B-1 by moving the last kept rows into the holes (a few rows copied,
  not the whole cache); it returns the new row order, which the caller applies to its own per-row state;
- `extend(other)` copies the newcomers into the free slots, growing slots or capacity by doubling when they run out.
  Every new tensor is allocated before anything is assigned, so a failure leaves the cache as it was.

Its tensors are inference tensors (made under torch.inference_mode, as the forwards are), so every method that
writes them runs in inference mode itself.
"""

from __future__ import annotations

import torch

CAPACITY_STEP = 64  # capacity is a multiple of this (columns); it grows by doubling


def _round_up(n: int, step: int = CAPACITY_STEP) -> int:
    return max(step, -(-n // step) * step)


class SlotKV:
    """Keys and values of B rows in slots 0..B-1 of preallocated (L, slots, H, capacity, Dh) tensors."""

    def __init__(self, layers: int, heads: int, head_dim: int, *, rows: int, capacity: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (layers, max(1, rows), heads, _round_up(capacity), head_dim)
        self.K = torch.zeros(shape, dtype=dtype, device=device)
        self.V = torch.zeros(shape, dtype=dtype, device=device)
        self.rows = rows
        self.host_lengths: list[int] = [0] * rows  # the lengths on the host: capacity checks never sync
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self._ar: torch.Tensor | None = None  # arange(rows), the row index of write_step

    # ---- sizes ---------------------------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.K.shape[3]

    @property
    def slots(self) -> int:
        return self.K.shape[1]

    @property
    def width(self) -> int:
        """The longest row: the columns a step's attention reads."""
        return max(self.host_lengths, default=0)

    def __len__(self) -> int:
        return self.rows

    def nbytes(self) -> int:
        return self.K.nbytes + self.V.nbytes

    # ---- what the decoder calls ----------------------------------------------------------------------------------
    def write_prefill(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (rows, H, T, Dh) of a right-padded prefill: columns past a row's length are masked, never read."""
        T = k.shape[2]
        self.K[layer, : self.rows, :, :T].copy_(k)
        self.V[layer, : self.rows, :, :T].copy_(v)

    def write_step(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (rows, H, Dh): one new column per row, at that row's length (in place)."""
        b = self._arange()
        self.K[layer][b, :, self.lengths] = k
        self.V[layer][b, :, self.lengths] = v

    def view(self, layer: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, H, width, Dh) views of layer's keys and values."""
        return self.K[layer, : self.rows, :, :width], self.V[layer, : self.rows, :, :width]

    def set_lengths(self, lengths: list[int]) -> None:
        self.host_lengths = list(lengths)
        self.lengths = torch.tensor(lengths, dtype=torch.long, device=self.K.device)

    def advance(self) -> None:
        """Every row gained the column `write_step` wrote."""
        self.host_lengths = [n + 1 for n in self.host_lengths]
        self.lengths = self.lengths + 1

    @torch.inference_mode()
    def reserve(self, columns: int) -> None:
        """Make room for `columns` columns per row (before a step that writes column width)."""
        if columns > self.capacity:
            self._grow(self.slots, max(columns, 2 * self.capacity))

    def _arange(self) -> torch.Tensor:
        a = self._ar
        if a is None or a.shape[0] != self.rows:
            a = self._ar = torch.arange(self.rows, device=self.K.device)
        return a

    # ---- what the batch calls ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def select(self, keep: list[int]) -> list[int]:
        """Keep rows `keep` (indices, any order is accepted; duplicates are not). Returns the kept rows' new order as
        indices into the old rows: new row i is old row order[i]. Rows already in slots below len(keep) stay put;
        each kept row above moves into a hole."""
        keep = sorted(keep)
        n = len(keep)
        stay = [i for i in keep if i < n]
        movers = [i for i in keep if i >= n]
        holes = [i for i in range(n) if i not in set(stay)]
        order = list(range(n))
        if movers:
            src = torch.tensor(movers, device=self.K.device)
            dst = torch.tensor(holes, device=self.K.device)
            self.K.index_copy_(1, dst, self.K.index_select(1, src))
            self.V.index_copy_(1, dst, self.V.index_select(1, src))
            for h, m in zip(holes, movers, strict=True):
                order[h] = m
        lengths = [self.host_lengths[i] for i in order]
        self.rows = n
        self.set_lengths(lengths)
        return order

    @torch.inference_mode()
    def extend(self, other: SlotKV) -> None:
        """Append other's rows after ours."""
        if (other.K.shape[0], other.K.shape[2], other.K.shape[4]) != (self.K.shape[0], self.K.shape[2],
                                                                      self.K.shape[4]):
            raise ValueError(f"cannot merge KV caches of shapes {tuple(self.K.shape)} and {tuple(other.K.shape)}")
        n = self.rows + other.rows
        need_cols = max(self.width, other.width, 1)
        slots = self.slots if n <= self.slots else max(n, 2 * self.slots)
        cap = self.capacity if need_cols <= self.capacity else max(_round_up(need_cols), 2 * self.capacity)
        if slots != self.slots or cap != self.capacity:
            self._grow(slots, cap)
        lengths = self.host_lengths + other.host_lengths
        self._copy_rows(other, self.rows)
        self.rows = n  # assignments only from here: rows past self.rows were never read
        self.set_lengths(lengths)

    def _copy_rows(self, other: SlotKV, start: int) -> None:
        """other's rows into slots start.. (their columns up to other's width)."""
        w = min(other.width, self.capacity)
        if w:
            self.K[:, start : start + other.rows, :, :w].copy_(other.K[:, : other.rows, :, :w])
            self.V[:, start : start + other.rows, :, :w].copy_(other.V[:, : other.rows, :, :w])

    def _grow(self, slots: int, capacity: int) -> None:
        L, _, H, _, Dh = self.K.shape
        capacity = _round_up(capacity)
        K = self.K.new_zeros((L, slots, H, capacity, Dh))
        V = self.V.new_zeros((L, slots, H, capacity, Dh))
        w = min(self.width, self.capacity, capacity)
        if self.rows and w:
            K[:, : self.rows, :, :w].copy_(self.K[:, : self.rows, :, :w])
            V[:, : self.rows, :, :w].copy_(self.V[:, : self.rows, :, :w])
        self.K, self.V = K, V

    @torch.inference_mode()
    def take(self, src: list[int]) -> SlotKV:
        """A new cache of rows `src` (repeats allowed: the n samples of one prompt share its prefill)."""
        idx = torch.tensor(src, device=self.K.device)
        out = SlotKV.__new__(SlotKV)
        out.K, out.V = self.K.index_select(1, idx), self.V.index_select(1, idx)
        out.rows, out._ar = len(src), None
        out.set_lengths([self.host_lengths[i] for i in src])
        return out


class EagerKV:
    """The eager path's cache: a transformers DynamicCache of left-padded rows, with its attention mask and each
    row's next position. Masked columns get exactly zero attention, so a row's tokens do not depend on its batch
    mates (up to float summation order). Same interface as SlotKV: select / extend / take / width."""

    def __init__(self, cache, mask: torch.Tensor, pos: torch.Tensor):
        self.cache = cache  # layers[i].keys/values: (B, H, L, Dh)
        self.mask = mask  # (B, L) long, 1 = real token
        self.pos = pos  # (B,) next position of each row

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def _index(self, idx: torch.Tensor) -> None:
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, idx.to(layer.keys.device))
            layer.values = layer.values.index_select(0, idx.to(layer.values.device))
        self.mask = self.mask.index_select(0, idx)
        self.pos = self.pos.index_select(0, idx)

    def take(self, src: list[int]) -> EagerKV:
        self._index(torch.tensor(src, dtype=torch.long))
        return self

    def select(self, keep: list[int]) -> list[int]:
        """Keep rows `keep` in their order, then trim all-padding columns; returns `keep` (the new order)."""
        self._index(torch.tensor(keep, dtype=torch.long))
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else self.mask.shape[1]
        if start > 0:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, start:, :]
                layer.values = layer.values[:, :, start:, :]
            self.mask = self.mask[:, start:]
        return list(keep)

    def extend(self, other: EagerKV) -> None:
        """Append other's rows, left-padding whichever side is shorter. Every new tensor is built before any is
        assigned, so a failure part-way (e.g. out of memory) leaves this cache exactly as it was."""
        width = max(self.width, other.width)
        if len(self.cache.layers) != len(other.cache.layers):
            raise ValueError(f"cannot merge caches of {len(self.cache.layers)} and {len(other.cache.layers)} layers")
        kv = [(torch.cat([lpad(la.keys, width), lpad(lb.keys, width)], dim=0),
               torch.cat([lpad(la.values, width), lpad(lb.values, width)], dim=0))
              for la, lb in zip(self.cache.layers, other.cache.layers, strict=True)]
        mask = torch.cat([lpad(self.mask, width), lpad(other.mask, width)], dim=0)
        pos = torch.cat([self.pos, other.pos])
        for la, (k, v) in zip(self.cache.layers, kv, strict=True):  # from here on: assignments only
            la.keys, la.values = k, v
        self.mask, self.pos = mask, pos

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Grow the mask by the column a decode step writes: (mask (B, L+1), positions (B, 1)); then `advance`."""
        self.mask = torch.cat([self.mask, torch.ones((len(self), 1), dtype=torch.long)], dim=1)
        return self.mask, self.pos.unsqueeze(1)

    def advance(self) -> None:
        self.pos = self.pos + 1


def lpad(x: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad the sequence axis (-2 for (B, H, L, Dh) caches, -1 for (B, L) masks) with zeros to `width`."""
    axis = -1 if x.dim() == 2 else -2
    short = width - x.shape[axis]
    if short == 0:
        return x
    shape = list(x.shape)
    shape[axis] = short
    return torch.cat([x.new_zeros(shape), x], dim=axis)
