"""Harvest state memory: formula vs measured, and proof that it does not grow with tokens.

    python -m bench.memory [--latents 131072] [--vocab 128256] [--top-k 20] [--n-random 40] [--window 32]

Allocates a real HarvestState at the given size on the CPU, prints the bytes
of every accumulator next to the closed-form count, measures the process RSS
growth of the allocation, then folds in batches of random firings and shows
that the state's bytes stay constant while tokens grow. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from engine.pair_counts import choose_mode
from engine.state import Firings, HarvestState, StateConfig


def formula(cfg: StateConfig) -> dict[str, int]:
    L, V, K, R, W2 = cfg.n_latents, cfg.vocab_size, cfg.top_k, cfg.n_random, 2 * cfg.window + 1

    def pairs(rows, cols, slots):
        return rows * cols * 8 if choose_mode(rows, cols, cfg.pair_budget_bytes) == "dense" else rows * slots * 16 + rows * 8

    return {
        "per-latent scalars (count, sum, max)": L * (8 + 8 + 4),
        "histogram": L * cfg.n_bins * 8,
        "top-K (val, loc, window)": L * K * (4 + 8 + 4 * W2),
        "reservoir (key, loc, val, window)": L * R * (4 + 8 + 4 + 4 * W2),
        "token totals": V * 8 + (V * 8 if cfg.output_stats else 0) + 8,
        "input-token pairs": pairs(L, V, cfg.token_slots),
        "output-token pairs": pairs(L, V, cfg.token_slots) if cfg.output_stats else 0,
        "co-occurrence pairs": pairs(L, L, cfg.cooc_slots),
    }


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", type=int, default=131072)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--n-random", type=int, default=40)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--tokens-per-batch", type=int, default=2048)
    p.add_argument("--k-active", type=int, default=32, help="firings per token in the synthetic batches")
    a = p.parse_args(argv)
    cfg = StateConfig(n_latents=a.latents, vocab_size=a.vocab, seq_len=a.tokens_per_batch, top_k=a.top_k,
                      n_random=a.n_random, window=a.window)
    before = rss_mb()
    t0 = time.time()
    state = HarvestState(cfg)
    for t in state.tensors().values():  # touch every page so RSS shows the real footprint
        t.view(-1)[:: max(1, 4096 // t.element_size())] = t.view(-1)[:: max(1, 4096 // t.element_size())]
    alloc_s = time.time() - t0
    measured_rss = rss_mb() - before
    f = formula(cfg)
    total_formula = sum(f.values())
    print(f"L={a.latents} V={a.vocab} K={a.top_k} R={a.n_random} W={a.window}  "
          f"token tables: {state.in_tok.mode}, co-occurrence: {state.cooc.mode}")
    print(f"{'accumulator':40s} {'formula MB':>12s}")
    for k, v in f.items():
        print(f"{k:40s} {v / 2**20:12.1f}")
    print(f"{'total (formula)':40s} {total_formula / 2**20:12.1f}")
    print(f"{'total (tensor bytes)':40s} {state.nbytes() / 2**20:12.1f}")
    print(f"{'process RSS growth (measured)':40s} {measured_rss:12.1f}   (allocation {alloc_s:.1f}s)")

    g = torch.Generator().manual_seed(0)
    sizes = []
    for b in range(a.batches):
        N = a.tokens_per_batch
        tok = torch.arange(N).repeat_interleave(a.k_active)
        lat = torch.randint(0, a.latents, (N * a.k_active,), generator=g)
        lat = torch.sort(tok * a.latents + lat).values % a.latents
        val = torch.rand(len(lat), generator=g) + 0.01
        tokens = torch.randint(0, a.vocab, (1, N), generator=g)
        state.update(tokens, Firings(tok, lat, val), seq_ids=torch.tensor([b]))
        sizes.append((int(state.n_tokens), state.nbytes()))
    for n, nb in sizes:
        print(f"after {n:>8,} tokens: state {nb / 2**20:.1f} MB")
    grows = len({nb for _, nb in sizes}) > 1
    print("state bytes constant while tokens grow:", not grows)
    print(json.dumps({"latents": a.latents, "vocab": a.vocab, "top_k": a.top_k, "n_random": a.n_random, "window": a.window,
                      "formula_mb": round(total_formula / 2**20, 1), "tensor_mb": round(state.nbytes() / 2**20, 1),
                      "rss_growth_mb": round(measured_rss, 1), "constant": not grows}))


if __name__ == "__main__":
    main()
