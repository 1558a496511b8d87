"""Harvest throughput against baselines measured in the same run.

    python -m bench.harvest [--batches 12] [--batch-size 16] [--context-length 128] [--scaling 1024,4096,16384]

On the same model, dictionary and token batches (the embedded default unless
--model/--dictionary are given), times:

  forward        bare model forward with logits (the floor for a harvest with output stats)
  forward+encode forward to the hookpoint, early stop, dense dictionary encode
  harvest        our full harvest update (all statistics, output stats on)
  naive          delphi-style baseline: forward + encode, cache every nonzero
                 (token, latent, value) to disk, then build top-K and random examples
                 with windows from the cache afterwards

and prints tokens/s, the ratio to `forward`, peak RSS growth, bytes written to disk,
and whether the naive baseline's top-K examples equal ours. `--scaling` repeats the
harvest-update timing with random TopK dictionaries of several widths. The last
stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch

from bench.baselines import bare_forward, forward_encode
from engine.harvest.data import batches, iter_texts, pack
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.dictionaries import Dictionary, load_dictionary
from engine.harvest.harvester import Harvester
from engine.harvest.model import load_model
from engine.harvest.sources import HookedModel
from engine.harvest.state import StateConfig


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, reps=1):
    t = time.perf_counter()
    for _ in range(reps):
        out = fn()
    return (time.perf_counter() - t) / reps, out


def naive_baseline(hooked, d: Dictionary, data, hook: str, K: int, W: int, tmp: Path):
    """Cache all nonzeros to disk, then build per-latent top-K with windows (delphi-style)."""
    from safetensors.torch import load_file, save_file

    parts = []
    for i, ids in enumerate(data):
        acts, _ = hooked.run(ids, need_logits=False)
        x = acts[hook].reshape(-1, d.d_in)
        f = d.encode(x)
        B, S = ids.shape
        parts.append(torch.stack([f.tok + i * B * S, f.lat]).T)  # [M, 2] global token, latent
        save_file({"locs": parts[-1].contiguous(), "vals": f.val.contiguous()}, str(tmp / f"cache_{i}.safetensors"))
    locs, vals = [], []
    for i in range(len(data)):
        t = load_file(str(tmp / f"cache_{i}.safetensors"))
        locs.append(t["locs"])
        vals.append(t["vals"])
    locs, vals = torch.cat(locs), torch.cat(vals)
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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--dictionary", default=DEFAULT_SAE)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--scaling", default="1024,4096,16384", help="latent counts for the scaling sweep ('' to skip)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    model, tok = load_model(a.model, device, "float32")
    d = load_dictionary(a.dictionary).to(device)
    hook = d.hookpoint
    seqs = pack(iter_texts(DEFAULT_DATASET), tok, a.context_length)
    data = [ids.to(device) for _, ids in batches(seqs, a.batch_size, a.batches * a.batch_size)]
    n_tok = sum(x.numel() for x in data)
    hooked = HookedModel(model, [hook])
    K, W = 20, 16
    cfg = StateConfig(n_latents=d.n_latents, vocab_size=max(len(tok), model.config.vocab_size), seq_len=a.context_length, top_k=K, n_random=40, window=W)

    forward, encode = bare_forward(model, data), forward_encode(hooked, d, hook, data)

    def harvest():
        h = Harvester([d], cfg, [hook], device)
        for ids in data:
            acts, logits = hooked.run(ids, need_logits=True)
            h.update(acts, ids, valid=ids != tok.bos_token_id, logits=logits)
        return h

    forward()  # warm-up
    rows = {}
    r0 = rss_mb()
    rows["forward"] = (timed(forward)[0], rss_mb() - r0, 0)
    r0 = rss_mb()
    rows["forward+encode"] = (timed(encode)[0], rss_mb() - r0, 0)
    r0 = rss_mb()
    t, h = timed(harvest)
    rows["harvest"] = (t, rss_mb() - r0, 0)
    with tempfile.TemporaryDirectory() as tmp:
        r0 = rss_mb()
        t, (naive_top, disk) = timed(lambda: naive_baseline(hooked, d, data, hook, K, W, Path(tmp)))
        rows["naive (cache all, then build)"] = (t, rss_mb() - r0, disk)

    # Agreement: our top-K locations vs the naive ones (global token index = loc here, seq ids 0..n).
    ours = {lat: [l for l in h.state.top_loc[lat].tolist() if l >= 0] for lat in range(d.n_latents)}
    S = a.context_length
    agree = sum(1 for lat, locs in naive_top.items() if sorted(locs) == sorted(ours.get(lat, []))) / max(1, len(naive_top))

    base = rows["forward"][0]
    print(f"device {device} ({platform.processor() or platform.machine()}), torch {torch.__version__}, {n_tok:,} tokens, "
          f"{d.n_latents} latents, hook {hook}")
    print(f"{'path':32s} {'tok/s':>10s} {'time / forward':>15s} {'peak RSS +MB':>13s} {'disk MB':>8s}")
    for name, (t, rss, disk) in rows.items():
        print(f"{name:32s} {n_tok / t:10,.0f} {t / base:15.2f} {rss:13.1f} {disk / 2**20:8.2f}")
    print(f"top-K examples identical to the naive baseline for {agree:.1%} of latents")

    scaling = []
    for L in [int(x) for x in a.scaling.split(",") if x]:
        g = torch.Generator().manual_seed(0)
        dd = Dictionary("random", "random:topk", hook, torch.randn(d.d_in, L, generator=g) / d.d_in**0.5, torch.zeros(L),
                        None, None, "topk", 16, None, d.d_in, L).to(device)
        c = StateConfig(n_latents=L, vocab_size=cfg.vocab_size, seq_len=S, top_k=K, n_random=40, window=W)
        acts_list = [hooked.run(ids, need_logits=False)[0] for ids in data[:4]]

        def run_updates():
            hh = Harvester([dd], c, [hook], device)
            for ids, acts in zip(data[:4], acts_list):
                hh.update(acts, ids)
        t = timed(run_updates)[0]
        n4 = sum(x.numel() for x in data[:4])
        scaling.append({"latents": L, "tok_per_s": round(n4 / t)})
        print(f"scaling: {L:7d} latents  encode+update {n4 / t:10,.0f} tok/s")
    result = {"device": str(device), "tokens": n_tok, "latents": d.n_latents,
              **{k.split(" ")[0]: {"tok_per_s": round(n_tok / v[0]), "vs_forward": round(v[0] / base, 3), "rss_mb": round(v[1], 1),
                                   "disk_mb": round(v[2] / 2**20, 2)} for k, v in rows.items()},
              "topk_agreement": agree, "scaling": scaling}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
