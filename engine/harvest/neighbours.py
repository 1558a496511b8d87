"""Latents near each other by direction, and each latent's logit effects over the vocabulary.

Computed once at harvest end, on the dictionary's device, in row chunks: the
L x L cosine matrix (131k x 131k = 69 GB in float32) and the L x V logit table
are never materialised; one chunk holds at most `chunk_bytes` of either.

    idx, cos = cosine_neighbours(directions(d, "decoder"), n=10)   # [L, n] each
    counts, ranges = logit_histograms(d.W_dec, gamma, W_U, bins=40)  # [L, bins], [L, 2]

RUN/harvest/directions.safetensors (`write_directions`; runs harvested before it
have none and the report leaves these sections out):

  decoder_neighbours  int64 [L, N]    global latent ids of the N latents of the same
                                      dictionary whose decoder rows have the largest cosine
                                      with latent i's (i excluded), largest first; -1 pads
  decoder_cosine      float32 [L, N]  those cosines
  logit_hist          int32 [L, B]    latent i's logit-lens values (decoder row times the
                                      final-norm weight, through the unembedding) over the
                                      vocabulary, counted in B equal bins over [lo, hi]
  logit_range         float32 [L, 2]  [lo, hi] = [min, max] of those values
  encoder_neighbours, encoder_cosine  the same by encoder columns (`--neighbours encoder`)

L is the run's latent count (every hookpoint, global order); rows of latents whose
dictionary has no decoder into the residual stream are -1 / 0. `kind="encoder"`
uses encoder columns instead of decoder rows (same function, same layout).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from engine.core.rundir import replacing
from engine.core.schemas import DIRECTIONS_FILE, RunConfig

N_NEIGHBOURS = 10
LOGIT_BINS = 40
CHUNK_BYTES = 256 << 20
"Largest [chunk, L] cosine block or [chunk, V] logit block, in bytes."


def directions(d, kind: str = "decoder") -> Tensor | None:
    """[L, d] direction of every harvested latent of dictionary `d`: decoder rows or encoder columns."""
    if kind == "decoder":
        return d.W_dec
    if kind == "encoder":
        if d.W_enc is None:
            return None
        W = d.W_enc.T
        return W[d._select.to(W.device)] if d._select is not None else W
    raise ValueError(f"direction kind {kind!r}: decoder or encoder")


def _rows_per_chunk(width: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // (4 * max(width, 1)))


@torch.no_grad()
def cosine_neighbours(W: Tensor, n: int = N_NEIGHBOURS, chunk_bytes: int = CHUNK_BYTES) -> tuple[Tensor, Tensor]:
    """W [L, d] -> (idx int64 [L, n], cos float32 [L, n]): for every row the n other rows with the
    largest cosine, largest first (row indices; -1 / 0 where L - 1 < n). Zero rows have cosine 0
    with everything. Runs on W's device, `chunk_bytes` of cosines at a time."""
    L = W.shape[0]
    Wn = W.float()
    Wn = Wn / Wn.norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = min(n, L - 1)
    idx = torch.full((L, n), -1, dtype=torch.int64, device=W.device)
    cos = torch.zeros((L, n), dtype=torch.float32, device=W.device)
    if k <= 0:
        return idx.cpu(), cos.cpu()
    step = _rows_per_chunk(L, chunk_bytes)
    for lo in range(0, L, step):
        hi = min(L, lo + step)
        sim = Wn[lo:hi] @ Wn.T  # [c, L]
        rows = torch.arange(hi - lo, device=W.device)
        sim[rows, rows + lo] = -float("inf")  # never its own neighbour
        v, i = sim.topk(k, dim=1)
        idx[lo:hi, :k], cos[lo:hi, :k] = i, v
    return idx.cpu(), cos.cpu()


@torch.no_grad()
def logit_histograms(W_dec: Tensor, gamma: Tensor, W_U: Tensor, bins: int = LOGIT_BINS,
                     chunk_bytes: int = CHUNK_BYTES) -> tuple[Tensor, Tensor]:
    """Per latent, the histogram of (W_dec[i] * gamma) @ W_U.T over the vocabulary.

    W_dec [L, d], gamma [d], W_U [V, d] -> (counts int32 [L, bins], ranges float32 [L, 2]).
    Bin b holds the values v with floor((v - lo) * bins / (hi - lo)) = b (the maximum in the
    last bin; lo = hi puts everything in bin 0). Runs on W_dec's device in row chunks."""
    dev = W_dec.device
    WU = W_U.to(dev).float()
    g = gamma.to(dev).float()
    L, V = W_dec.shape[0], WU.shape[0]
    counts = torch.zeros((L, bins), dtype=torch.int32, device=dev)
    ranges = torch.zeros((L, 2), dtype=torch.float32, device=dev)
    step = _rows_per_chunk(V, chunk_bytes)
    for lo in range(0, L, step):
        hi = min(L, lo + step)
        x = (W_dec[lo:hi].float() * g) @ WU.T  # [c, V]
        mn, mx = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
        width = torch.where(mx > mn, mx - mn, torch.ones_like(mx))
        b = torch.floor((x - mn) * bins / width).clamp_(0, bins - 1).long()
        c = torch.zeros((hi - lo, bins), dtype=torch.int32, device=dev)
        c.scatter_add_(1, b, torch.ones_like(b, dtype=torch.int32))
        counts[lo:hi] = c
        ranges[lo:hi, 0], ranges[lo:hi, 1] = mn[:, 0], mx[:, 0]
    return counts.cpu(), ranges.cpu()


def unembedding(model) -> tuple[Tensor, Tensor] | None:
    """(W_U [V, d], final-norm weight [d]) of an HF causal LM, as the logit lens uses them; None without one."""
    if model is None or not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        return None
    W_U = model.get_output_embeddings().weight.detach()
    norm = getattr(getattr(model, "model", None), "norm", None)
    gamma = norm.weight.detach() if norm is not None and getattr(norm, "weight", None) is not None else torch.ones(W_U.shape[1])
    return W_U, gamma


def compute_directions(dicts, model, rc: RunConfig, kind: str = "decoder", n: int = N_NEIGHBOURS,
                       bins: int = LOGIT_BINS, chunk_bytes: int = CHUNK_BYTES) -> dict[str, Tensor]:
    """The tensors of directions.safetensors for every dictionary of a run (global latent order)."""
    L = rc.n_latents
    out = {f"{kind}_neighbours": torch.full((L, n), -1, dtype=torch.int64),
           f"{kind}_cosine": torch.zeros((L, n), dtype=torch.float32)}
    lens = unembedding(model) if kind == "decoder" else None
    if lens is not None:
        out["logit_hist"] = torch.zeros((L, bins), dtype=torch.int32)
        out["logit_range"] = torch.zeros((L, 2), dtype=torch.float32)
    for h, d in zip(rc.hookpoints, dicts):
        W = directions(d, kind)
        if W is None:
            continue
        sl = slice(h.offset, h.offset + h.n_latents)
        idx, cos = cosine_neighbours(W, n, chunk_bytes)
        out[f"{kind}_neighbours"][sl] = torch.where(idx >= 0, idx + h.offset, idx)
        out[f"{kind}_cosine"][sl] = cos
        if lens is not None and W.shape[1] == lens[0].shape[1]:
            out["logit_hist"][sl], out["logit_range"][sl] = logit_histograms(W, lens[1], lens[0], bins, chunk_bytes)
    return out


def write_directions(dicts, model, rc: RunConfig, harvest_dir: Path, kind: str = "decoder") -> Path:
    """Compute and write RUN/harvest/directions.safetensors (atomically); returns its path."""
    path = Path(harvest_dir) / DIRECTIONS_FILE
    tensors = compute_directions(dicts, model, rc, kind)
    if kind == "decoder":  # encoder-direction neighbours too (--neighbours encoder; the report lists both)
        tensors.update(compute_directions(dicts, None, rc, "encoder"))
    with replacing(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    return path
