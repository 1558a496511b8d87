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

Both update from flat triples (rows [M], cols [M], weights [M]) on the device
with no host synchronisation in the dense path.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
        """Add weight (default 1) to each (rows[i], cols[i]); rows < 0 are ignored."""
        if weights is None:
            weights = torch.ones(rows.shape, dtype=self.dtype, device=rows.device)
        weights = weights.to(self.dtype)
        if self.mode == "dense":
            keep = rows >= 0
            flat = torch.where(keep, rows * self.cols + cols, 0)  # int64 index into [R*V]
            self.table.view(-1).index_add_(0, flat, torch.where(keep, weights, 0))
            return
        keep = rows >= 0
        self._absorb(rows[keep], cols[keep], weights[keep])

    def merge(self, other: PairCounter) -> None:
        if (other.rows, other.cols, other.mode) != (self.rows, self.cols, self.mode):
            raise ValueError("cannot merge pair counters of different shapes or modes")
        if self.mode == "dense":
            self.table += other.table
            return
        r, s = torch.nonzero(other.keys >= 0, as_tuple=True)
        self.err += other.err
        self._absorb(r, other.keys[r, s], other.weights[r, s])

    def _absorb(self, rows: Tensor, cols: Tensor, weights: Tensor) -> None:
        """Merge triples into the touched rows of the sketch (Misra-Gries merge)."""
        if rows.numel() == 0:
            return
        C = self.slots
        touched = torch.unique(rows)  # [U]
        # Existing entries of the touched rows join the new triples.
        old_r = touched.repeat_interleave(C)  # [U*C]
        old_c = self.keys[touched].reshape(-1)
        old_w = self.weights[touched].reshape(-1)
        live = old_c >= 0
        r = torch.cat([rows, old_r[live]])
        c = torch.cat([cols, old_c[live]])
        w = torch.cat([weights, old_w[live]])
        # Sum duplicates: key = row * cols + col.
        key, inv = torch.unique(r * self.cols + c, return_inverse=True)
        wsum = torch.zeros(len(key), dtype=self.dtype, device=w.device).index_add_(0, inv, w)
        r, c = key // self.cols, key % self.cols
        # Rank within row by weight (desc), ties by column (asc): stable sorts.
        order = torch.argsort(wsum, descending=True, stable=True)
        order = order[torch.argsort(r[order], stable=True)]
        r, c, wsum = r[order], c[order], wsum[order]
        starts = torch.searchsorted(r, r, side="left")
        rank = torch.arange(len(r), device=r.device) - starts
        # Threshold: (C+1)-th largest weight of rows that overflow.
        thresh = torch.zeros(self.rows, dtype=self.dtype, device=w.device)
        over = rank == C
        thresh[r[over]] = wsum[over]
        self.err += thresh
        kept_w = wsum - thresh[r]
        keep = (rank < C) & (kept_w > 0)
        self.keys[touched] = -1
        self.weights[touched] = 0
        self.keys[r[keep], rank[keep]] = c[keep]
        self.weights[r[keep], rank[keep]] = kept_w[keep]

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
