"""The baselines every harvest bench divides by, measured on the same batches: a bare forward, and
forward + encode (the forward stopped after the hookpoint, or run to the logits, then the dictionary's
encode); the delphi-style naive harvest bench.harvest compares against; and the wall-clock timer they
are all measured with."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def bare_forward(model, data: list[torch.Tensor]):
    """A callable running the model (no hooks, no cache) over every batch of `data` once."""

    def forward():
        with torch.no_grad():
            for ids in data:
                model(input_ids=ids, use_cache=False)

    return forward


def forward_encode(hooked, dictionary, hook: str, data: list[torch.Tensor], need_logits: bool = False):
    """A callable running the hooked model up to `hook` (to the logits with need_logits: what a harvest
    with output-token stats runs) and the dictionary's encode over every batch once."""

    def run():
        for ids in data:
            acts, _ = hooked.run(ids, need_logits=need_logits)
            dictionary.encode(acts[hook].reshape(-1, dictionary.d_in))

    return run


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA), so a wall-clock interval covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def wall(fn, device: torch.device | str = "cpu") -> tuple[float, object]:
    """Seconds of one fn() call, device work included, and its result."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def naive_baseline(hooked, d, data, hook: str, K: int, W: int, tmp: Path, chunk: int = 0):
    """Cache all nonzeros to disk, then build per-latent top-K with windows (delphi-style); chunk > 0: at most
    one firing per latent in each chunk of that many tokens of a sequence, as the harvest's default."""
    from safetensors.torch import load_file, save_file

    parts = []
    for i, ids in enumerate(data):
        acts, _ = hooked.run(ids, need_logits=False)
        x = acts[hook].reshape(-1, d.d_in)
        f = d.encode(x)
        keep = (f.lat >= 0) & (f.val > 0)  # fixed-slot firings carry padding slots
        tok, lat, val = f.tok[keep], f.lat[keep], f.val[keep]
        B, S = ids.shape
        parts.append(torch.stack([tok + i * B * S, lat]).T)  # [M, 2] global token, latent
        save_file({"locs": parts[-1].contiguous(), "vals": val.contiguous()}, str(tmp / f"cache_{i}.safetensors"))
    locs, vals = [], []
    for i in range(len(data)):
        t = load_file(str(tmp / f"cache_{i}.safetensors"))
        locs.append(t["locs"])
        vals.append(t["vals"])
    locs, vals = torch.cat(locs), torch.cat(vals)
    if chunk:  # the strongest firing of each (latent, sequence, chunk), earliest on ties
        S = data[0].shape[1]
        n_ch = -(-S // chunk)
        key = locs[:, 1] * (len(data) * data[0].shape[0] * n_ch) + locs[:, 0] // S * n_ch + locs[:, 0] % S // chunk
        o = torch.argsort(vals, descending=True, stable=True)
        o = o[torch.argsort(key[o], stable=True)]
        first = torch.ones(len(o), dtype=torch.bool)
        first[1:] = key[o][1:] != key[o][:-1]
        locs, vals = locs[o[first]], vals[o[first]]
    top = {}
    order = torch.argsort(vals, descending=True, stable=True)
    order = order[torch.argsort(locs[order, 1], stable=True)]
    lat_sorted = locs[order, 1]
    starts = torch.searchsorted(lat_sorted, lat_sorted, side="left")
    rank = torch.arange(len(order)) - starts
    keep = order[rank < K]
    for tok, lat in locs[keep].tolist():
        top.setdefault(lat, []).append(tok)
    disk = sum(p.stat().st_size for p in tmp.glob("cache_*"))
    return top, disk
