"""`python -m bench.harvest --backend jax`: the JAX harvest step against the JAX bare forward.

Times, on the embedded default (or --model/--dictionary), after one compile-and-run warm-up:

* forward: the jitted model forward alone, through the logits (what any JAX harvest must pay);
* harvest: the full sharded step (forward, encode, every statistic incl. output-token stats) per batch;

and prints harvest / forward, the overhead ratio the torch bench reports for its path. Times are the
minimum over --reps of the whole batch list, each ending in block_until_ready (no sync inside).
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np

from engine.harvest.config import HarvestArgs
from engine.harvest.data import batches, iter_texts, pack
from engine.harvest.defaults import DEFAULT_DATASET
from engine.harvest.jax.forward import forward
from engine.harvest.jax.mesh import MATMUL_PRECISION, pick_devices
from engine.harvest.jax.run import setup


def run(model: str, dictionary: str, n_batches: int, batch_size: int, context_length: int, reps: int = 3) -> dict:
    a = HarvestArgs(model=model, dictionaries=[dictionary], batch_size=batch_size, context_length=context_length,
                    n_batches=n_batches, backend="jax")
    devices = pick_devices("auto")
    h, _, _, _, tok, cfg, _ = setup(a, devices)
    data = [ids.numpy() for _, ids in batches(pack(iter_texts(DEFAULT_DATASET), tok, context_length), batch_size,
                                                  n_batches * batch_size)]
    valid = np.ones((batch_size, context_length), bool)
    valid[:, 0] = False
    seq = np.arange(batch_size, dtype=np.int64)
    spec, points = h._step_spec  # the forward's static parts, as the step was built

    @jax.jit
    def fwd(p, inv, t):
        with jax.default_matmul_precision(MATMUL_PRECISION):  # as the step multiplies
            return forward(p, (inv, h.rope_scale), t, spec, points, True)[1]

    def bare():
        out = [fwd(h.params, h.inv_freq, ids) for ids in data]
        jax.block_until_ready(out)

    def harvest():
        for ids in data:
            h.state = h.step(ids, seq, valid)
        jax.block_until_ready(h.state)

    times = {}
    for name, fn in (("forward", bare), ("harvest", harvest)):
        fn()  # compile + warm-up
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    n_tok = n_batches * batch_size * context_length
    out = {"backend": "jax", "device": str(devices[0].platform), "n_devices": len(devices), "jax": jax.__version__,
           "tokens": n_tok, "latents": cfg.n_latents, "forward_s": times["forward"], "harvest_s": times["harvest"],
           "ratio": times["harvest"] / times["forward"], "tok_per_s": n_tok / times["harvest"]}
    print(f"{'jax path':<12} {'s':>8} {'tok/s':>10} {'x forward':>10}")
    for name in ("forward", "harvest"):
        print(f"{name:<12} {times[name]:>8.3f} {n_tok / times[name]:>10.0f} {times[name] / times['forward']:>10.2f}")
    print(json.dumps(out))
    return out
