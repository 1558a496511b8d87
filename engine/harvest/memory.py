"""What a harvest state costs in memory, in closed form (equal to `HarvestState(cfg).nbytes()`).

Printed before a harvest starts, so the per-latent sample sizes (--top-k, --n-random, --window)
are chosen knowing their price; `python -m bench.memory` checks the formula against real
tensors at sizes up to 131k latents.

    top-K       L K (4 + 8 + 4 (2W+1))        value, location, window
    reservoir   L R (4 + 8 + 4 + 4 (2W+1))    key, location, value, window
    pair table  rows cols 8 (dense) or rows (16 slots + 8) (sketch)
"""

from __future__ import annotations

from engine.harvest.pair_counts import choose_mode
from engine.harvest.state import StateConfig


def state_bytes(cfg: StateConfig) -> dict[str, int]:
    """Bytes of each part of the state (a latent-parallel state: its own rows)."""
    lo, hi = cfg.rows
    L, V, K, R, W2 = hi - lo, cfg.vocab_size, cfg.top_k, cfg.n_random, 2 * cfg.window + 1

    def pairs(rows, cols, slots):
        return rows * cols * 8 if choose_mode(rows, cols, cfg.pair_budget_bytes) == "dense" else rows * slots * 16 + rows * 8

    return {
        "per-latent scalars (count, sum, max)": L * (8 + 8 + 4),
        "histogram": L * cfg.n_bins * 8,
        "top-K (val, loc, window)": L * K * (4 + 8 + 4 * W2),
        "reservoir (key, loc, val, window)": L * R * (4 + 8 + 4 + 4 * W2),
        "token totals": V * 8 + (V * 8 if cfg.output_stats else 0) + 24,  # + n_tokens, overflow, cooc_excess
        "input-token pairs": pairs(L, V, cfg.token_slots),
        "output-token pairs": pairs(L, V, cfg.token_slots) if cfg.output_stats else 0,
        "co-occurrence pairs": pairs(L, cfg.n_latents, cfg.cooc_slots),
    }


def describe(cfg: StateConfig) -> str:
    """One line: the total and what the per-latent samples cost."""
    b = state_bytes(cfg)
    mib = lambda n: f"{n / 2**20:,.1f} MiB"  # noqa: E731
    W2 = 2 * cfg.window + 1
    return (f"state {mib(sum(b.values()))}: uniform sample --n-random {cfg.n_random} x {W2}-token windows "
            f"{mib(b['reservoir (key, loc, val, window)'])} (L R (16 + 4 (2W+1)) bytes), top-K --top-k {cfg.top_k} "
            f"{mib(b['top-K (val, loc, window)'])}, token/co-occurrence tables "
            f"{mib(b['input-token pairs'] + b['output-token pairs'] + b['co-occurrence pairs'])}")
