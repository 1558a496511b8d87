"""Harvest state memory: formula vs measured, and proof that it does not grow with tokens.

    python -m bench.memory [--latents 131072] [--vocab 128256] [--top-k 20] [--n-random 40] [--window 32]

Allocates a real HarvestState at the given size on the CPU, prints the bytes
of every accumulator next to the closed-form count, measures the process RSS
growth of the allocation, then folds in batches of random firings and shows
that the state's bytes stay constant while tokens grow.

`--subsets` then harvests latent subsets (`--latents` in engine.harvest) of a random
ReLU dictionary of `--subset-of` latents, each through the real Harvester on random
activations, and prints state bytes (closed-form count and tensor bytes) and the
measured resident-memory growth per subset size, each as a ratio to the full
dictionary's: memory is proportional to the subset. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from engine.harvest.firings import Firings
from engine.harvest.memory import state_bytes
from engine.harvest.state import HarvestState, StateConfig


def formula(cfg: StateConfig) -> dict[str, int]:
    return state_bytes(cfg)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb() -> float:
    """Current resident set (not the peak), so successive allocations can be measured in one process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure_subset(n: int, full: int, a) -> dict:
    """Harvest an n-latent subset of one `full`-latent dictionary (engine.harvest --latents) on random activations;
    state bytes and resident-memory growth. Run in a fresh process per size (see subset_sweep)."""
    from engine.harvest.dictionaries import Dictionary
    from engine.harvest.harvester import Harvester

    d_in, S, B = 128, 128, 4
    g = torch.Generator().manual_seed(0)
    W = torch.randn(d_in, full, generator=g) / d_in**0.5
    acts = [torch.randn(B, S, d_in, generator=g) for _ in range(2)]
    tokens = torch.randint(0, a.vocab, (B, S), generator=g)

    def harvest(ids):
        # bias -3: each latent fires on ~0.13% of tokens (about 85 of 65,536 per token)
        d = Dictionary("random", "random:relu", "h", W, torch.full((full,), -3.0), None, None, "relu", 0, None, d_in, full)
        if len(ids) < full:
            d.subset(ids)
        cfg = StateConfig(n_latents=d.n_latents, vocab_size=a.vocab, seq_len=S, top_k=a.top_k, n_random=a.n_random,
                          window=a.window, output_stats=False, pair_budget_bytes=a.subset_budget_mb << 20)
        h = Harvester([d], cfg, ["h"], "cpu")
        for t in h.state.tensors().values():  # touch every page
            t.view(-1)[:: max(1, 4096 // t.element_size())] = t.view(-1)[:: max(1, 4096 // t.element_size())]
        for x in acts:
            h.update({"h": x}, tokens)
        return h

    harvest([0, 1])  # warm-up: allocator, thread pools
    before = rss_now_mb()
    h = harvest(torch.linspace(0, full - 1, n).round().long().unique().tolist())
    return {"latents": h.state.cfg.n_latents, "formula_mb": round(sum(formula(h.state.cfg).values()) / 2**20, 2),
            "state_mb": round(h.state.nbytes() / 2**20, 2),
            "rss_growth_mb": round(rss_now_mb() - before, 1), "token_tables": h.state.in_tok.mode,
            "firings": int(h.state.count.sum())}


def subset_sweep(sizes: list[int], full: int, a) -> list[dict]:
    """measure_subset for each size, each in its own process (resident memory is not returned between sizes)."""
    import subprocess
    import sys

    rows = []
    for n in sizes:
        cmd = [sys.executable, "-m", "bench.memory", "--measure-subset", str(n), "--subset-of", str(full),
               "--vocab", str(a.vocab), "--top-k", str(a.top_k), "--n-random", str(a.n_random), "--window", str(a.window),
               "--subset-budget-mb", str(a.subset_budget_mb)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return rows


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
    p.add_argument("--subsets", default="128,1024,8192,65536", help="latent subset sizes to harvest ('' to skip)")
    p.add_argument("--subset-of", type=int, default=65536, help="latents of the dictionary the subsets come from")
    p.add_argument("--subset-budget-mb", type=int, default=0,
                   help="pair budget of the subset harvests (0: token and co-occurrence tables are sketches at every size, "
                        "so all of the state scales with the subset; dense exact tables cost rows x cols up to the budget)")
    p.add_argument("--measure-subset", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.measure_subset:
        print(json.dumps(measure_subset(a.measure_subset, a.subset_of, a)))
        return
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
    state_mb = state.nbytes() / 2**20
    del state
    subsets = subset_sweep([int(x) for x in a.subsets.split(",") if x], a.subset_of, a) if a.subsets else []
    if subsets:
        full = subsets[-1]
        print(f"latent subsets of a {a.subset_of}-latent ReLU dictionary (V={a.vocab}, K={a.top_k}, R={a.n_random}, "
              f"W={a.window}, no output stats, token tables {full['token_tables']}), harvested through Harvester, "
              "one process per size:")
        print(f"{'subset latents':>15s} {'formula MB':>11s} {'state MB':>10s} {'RSS growth MB':>14s} "
              f"{'state / full':>13s} {'RSS / full':>11s} {'latents / full':>15s}")
        for r in subsets:
            print(f"{r['latents']:15,d} {r['formula_mb']:11.2f} {r['state_mb']:10.2f} {r['rss_growth_mb']:14.1f} "
                  f"{r['state_mb'] / full['state_mb']:13.4f} {r['rss_growth_mb'] / full['rss_growth_mb']:11.4f} "
                  f"{r['latents'] / full['latents']:15.4f}")
    print(json.dumps({"subsets": subsets, "latents": a.latents, "vocab": a.vocab, "top_k": a.top_k, "n_random": a.n_random, "window": a.window,
                      "formula_mb": round(total_formula / 2**20, 1), "tensor_mb": round(state_mb, 1),
                      "rss_growth_mb": round(measured_rss, 1), "constant": not grows}))


if __name__ == "__main__":
    main()
