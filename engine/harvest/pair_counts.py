"""Bounded counters of (row, column) pairs: latent x token and latent x latent.

Two representations behind one interface, chosen once by a cost model:

* `dense`: a [rows, cols] table, exact. Used when rows * cols * 8 bytes fits the
  budget (e.g. 1k latents x 4k vocabulary, or co-occurrence up to ~10k latents).
* `sketch`: for every row, a bounded summary of `slots` (column, weight) pairs
  kept with the mergeable Misra-Gries rule (Agarwal et al. 2012, "Mergeable
  summaries"): after adding a batch, a row holding more than `slots` distinct
  columns subtracts its (slots+1)-th largest weight from every entry and drops
  the non-positive ones. Every kept weight is an under-estimate by at most
  `err[row]`, and `err[row] <= total_weight[row] / (slots + 1)`; any column whose
  true weight exceeds that bound is guaranteed to be present. Merging two sketches
  is the same operation, so shards merge with the same guarantee. Memory is
  rows * slots * 16 bytes whatever the vocabulary (128k tokens x 131k latents
  with 64 slots: 134 MB instead of 137 GB dense).

Both update from flat triples (rows [M], cols [M], weights [M]; rows < 0 are
padding) on the device, in shapes fixed by M and the table size, with no host
synchronisation: the dense table through `kernels.token_stats.pair_count_update`,
the sketch by one sort of its R * slots entries and the M triples.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.sorting import stable_argsort
from kernels.token_stats import pair_count_update


def on_cpu(counter: PairCounter) -> PairCounter:
    """The counter itself when its tensors are on the CPU, else a CPU copy (for readers that cannot use a GPU)."""
    tensors = counter.tensors("c")  # the mode's tensors, as checkpoints list them
    if all(t.device.type == "cpu" for t in tensors.values()):
        return counter
    copy = object.__new__(PairCounter)
    copy.__dict__.update(counter.__dict__)
    for name, t in tensors.items():
        setattr(copy, name.rsplit(".", 1)[1], t.cpu())
    return copy


def choose_mode(rows: int, cols: int, budget_bytes: int) -> str:
    """Cost model: dense when the exact table fits the budget."""
    return "dense" if rows * cols * 8 <= budget_bytes else "sketch"


class PairCounter:
    def __init__(self, rows: int, cols: int, *, mode: str, slots: int = 64, dtype=torch.float64, device="cpu"):
        if mode not in ("dense", "sketch"):
            raise ValueError(f"mode must be dense or sketch, got {mode!r}")
        self.rows, self.cols, self.mode, self.slots = rows, cols, mode, slots
        self.dtype = dtype
        if mode == "dense":
            self.table = torch.zeros(rows, cols, dtype=dtype, device=device)  # [R, V]
        else:
            self.keys = torch.full((rows, slots), -1, dtype=torch.int64, device=device)  # [R, C] column or -1
            self.weights = torch.zeros(rows, slots, dtype=dtype, device=device)  # [R, C]
            self.err = torch.zeros(rows, dtype=dtype, device=device)  # [R] max under-estimate

    # ------------------------------------------------------------------ update / merge

    def add(self, rows: Tensor, cols: Tensor, weights: Tensor | None = None) -> None:
        """Add weight (default 1) to each (rows[i], cols[i]); rows < 0 are ignored. Fixed shapes, no host sync."""
        if weights is None:
            weights = torch.ones(rows.shape, dtype=self.dtype, device=rows.device)
        weights = torch.where(rows >= 0, weights.to(self.dtype), 0)
        if self.mode == "dense":
            pair_count_update(self.table, rows, cols.clamp(0, self.cols - 1), weights)
            return
        self._absorb(rows, cols, weights)

    def merge(self, other: PairCounter) -> None:
        if (other.rows, other.cols, other.mode) != (self.rows, self.cols, self.mode):
            raise ValueError("cannot merge pair counters of different shapes or modes")
        if self.mode == "dense":
            self.table += other.table
            return
        rows = torch.arange(self.rows, device=self.keys.device)[:, None].expand_as(other.keys)
        self.err += other.err
        self._absorb(torch.where(other.keys >= 0, rows, -1).reshape(-1), other.keys.reshape(-1),
                     other.weights.reshape(-1))

    def _absorb(self, rows: Tensor, cols: Tensor, weights: Tensor) -> None:
        """Misra-Gries merge of triples (rows < 0: padding) into every row of the sketch, in fixed shapes:
        the R * slots kept entries and the M new triples are summed per (row, column), ranked per row
        by weight (ties by column), and each row keeps its top `slots` minus its (slots+1)-th weight."""
        R, S, V = self.rows, self.slots, self.cols
        dev = self.keys.device
        old_r = torch.arange(R, device=dev)[:, None].expand(R, S).reshape(-1)
        live = self.keys.reshape(-1) >= 0
        r = torch.cat([rows, torch.where(live, old_r, -1)])  # [M + R*S]
        c = torch.cat([cols, self.keys.reshape(-1).clamp(min=0)])
        w = torch.cat([weights.to(self.dtype), self.weights.reshape(-1)])
        n = r.numel()
        # sum duplicates: sort by key = row * V + col (padding last), one segment per distinct key
        key = torch.where(r >= 0, r * V + c, torch.iinfo(torch.int64).max)
        order = stable_argsort(key)
        key = key[order]
        first = torch.ones(n, dtype=torch.bool, device=dev)
        first[1:] = key[1:] != key[:-1]
        seg = first.cumsum(0) - 1  # [n] segment of each entry
        wsum = torch.zeros(n, dtype=self.dtype, device=dev).index_add_(0, seg, w[order])
        skey = torch.full((n,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=dev).scatter_(0, seg, key)
        valid = skey != torch.iinfo(torch.int64).max
        sr = torch.where(valid, skey // V, R)  # [n] row of each segment (R: unused segment)
        sc = torch.where(valid, skey % V, 0)
        # rank within row by weight (desc), ties by column (asc): the keys are column-ordered already
        o = stable_argsort(wsum, descending=True)
        o = o[stable_argsort(sr[o])]
        sr, sc, wsum = sr[o], sc[o], wsum[o]
        rank = torch.arange(n, device=dev) - torch.searchsorted(sr, sr)
        # threshold: the (S+1)-th largest weight of rows that overflow
        thresh = torch.zeros(R + 1, dtype=self.dtype, device=dev)
        thresh.scatter_(0, torch.where(rank == S, sr, R), torch.where(rank == S, wsum, 0))
        self.err += thresh[:R]
        kept = wsum - thresh[sr]
        keep = (sr < R) & (rank < S) & (kept > 0)
        keys = torch.full((R + 1, S + 1), -1, dtype=torch.int64, device=dev)
        wts = torch.zeros(R + 1, S + 1, dtype=self.dtype, device=dev)
        at_r, at_s = torch.where(keep, sr, R), torch.where(keep, rank, S)
        keys[at_r, at_s] = torch.where(keep, sc, -1)
        wts[at_r, at_s] = torch.where(keep, kept, 0)
        self.keys.copy_(keys[:R, :S])
        self.weights.copy_(wts[:R, :S])

    # ------------------------------------------------------------------ read

    def row_entries(self, row: int) -> tuple[Tensor, Tensor]:
        """(columns, weights) with weight > 0 for one row."""
        if self.mode == "dense":
            w = self.table[row]
            cols = torch.nonzero(w > 0).squeeze(1)
            return cols, w[cols]
        keep = self.keys[row] >= 0
        return self.keys[row][keep], self.weights[row][keep]

    def error_bound(self, row: int) -> float:
        return 0.0 if self.mode == "dense" else float(self.err[row])

    # ------------------------------------------------------------------ persistence

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        if self.mode == "dense":
            return {f"{prefix}.table": self.table}
        return {f"{prefix}.keys": self.keys, f"{prefix}.weights": self.weights, f"{prefix}.err": self.err}

    def load_tensors(self, prefix: str, tensors: dict[str, Tensor]) -> None:
        for name in self.tensors(prefix):
            attr = name.rsplit(".", 1)[1]
            getattr(self, attr).copy_(tensors[name])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors("x").values())
