"""Harvest throughput against baselines measured in the same run, and where a harvest's time goes.

    python -m bench.harvest [--batches 12] [--batch-size 16] [--context-length 128] [--scaling 1024,4096,16384]
                            [--breakdown all|embedded|none] [--llama-latents 16384,65536] [--reps 3] [--threads N]

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
harvest-update timing with random TopK dictionaries of several widths.

Then a per-batch breakdown of the full harvest (output stats on), every part as a ratio to
the bare forward of the same model measured in the same run, for (a) the embedded model +
SAE and (b) a 135M-class Llama (SmolLM-135M shape, random weights, `bench.scale --preset
llama-135m`, hook blocks.15.hook_resid_post) with random TopK SAEs (k = 32) of each
--llama-latents width:

  forward + encode      forward to the logits + the harvester's encode
  next-token probs      softmax, top-8 and probability mass of the logits (Harvester.update
                        with the state update stubbed, minus the encode)
  update: shared setup  HarvestState.update(steps=()): masks and locations
  + <statistic>         update(steps[:i+1]) - update(steps[:i]), cumulative in the order of
                        engine.harvest.state.STEPS, on the inputs the harvester passed
  sum of parts          forward + encode + probs + update(all steps)
  full harvest          forward to the logits + Harvester.update, measured end to end
  unattributed          full harvest - sum of parts (timer noise, allocator, glue)

and "full harvest / (forward+encode)" per column, with the CPU goal (<= 1.25x for the 135M shape at
16,384 latents) beside it. Each time is the minimum over --reps repetitions (one after the first starts
only inside --breakdown-budget-s); the 135M batches are 1 x 4 x 256 tokens by default (the state's
per-batch fixed costs weigh more in small batches). Without HarvestState.update(steps=...) only the
whole update is timed. The last stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch

from bench.baselines import bare_forward, forward_encode, naive_baseline, wall
from engine.harvest.config import HarvestArgs
from engine.harvest.data import batches, iter_texts, pack
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.dictionaries import Dictionary, load_dictionary
from engine.harvest.harvester import Harvester
from engine.harvest.model import load_model
from engine.harvest.sources import HookedModel
from engine.harvest.state import HarvestState, StateConfig

CPU_GOAL = (16384, 1.25)
"The CPU goal: full harvest <= 1.25x forward+encode for the 135M shape at 16,384 latents."
NO_STEPS = "breakdown needs HarvestState.update(steps=...): only the whole update is timed"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, reps=1):
    t = time.perf_counter()
    for _ in range(reps):
        out = fn()
    return (time.perf_counter() - t) / reps, out


# ----------------------------------------------------------------------------- breakdown


def supported_steps() -> tuple[str, ...] | None:
    """The statistics HarvestState.update(steps=...) can run one by one, in order; None without the keyword."""
    params = inspect.signature(HarvestState.update).parameters
    if "steps" not in params:
        return None
    from engine.harvest import state

    return tuple(getattr(state, "STEPS", params["steps"].default))


def breakdown(model, hook: str, dictionaries: list[Dictionary], data: list[torch.Tensor], make_cfg, *, valid_of=None,
              reps: int = 2, device="cpu", budget_s: float | None = None) -> dict:
    """Per-batch seconds of each part of a full harvest (output stats on) of `data`, for each dictionary at
    `hook`. The bare forward is shared, timed before each dictionary's forwards and after the last (so every
    forward-bound time has one next to it); every quantity is the minimum over the repetitions run."""
    device, t_setup = torch.device(device), time.perf_counter()
    steps = supported_steps()
    B = data[0].shape[0]
    valids = [None if valid_of is None else valid_of(ids) for ids in data]
    counter = iter(range(0, 1 << 62, B))

    def seq():  # fresh rows of the token store for every update: no location is folded in twice
        s = next(counter)
        return torch.arange(s, s + B, device=device)

    hooked = HookedModel(model, [hook])
    cache = [hooked.run(ids, need_logits=True) for ids in data]  # (acts, logits): the same for every dictionary
    hooked.close()
    cols = []
    for d in dictionaries:
        h = Harvester([d], make_cfg(d.n_latents), [hook], device)
        calls, real = [], h.state.update

        def record(*args, **kwargs):
            calls.append((args, kwargs))
            return real(*args, **kwargs)
        h.state.update = record  # the warm-up pass records what the harvester hands the state
        for ids, (acts, logits), v in zip(data, cache, valids):
            h.update(acts, ids, seq_ids=seq(), valid=v, logits=logits)
        del h.state.update
        if len(calls) != len(data):
            raise RuntimeError(f"Harvester.update called HarvestState.update {len(calls)} times for {len(data)} batches: "
                               "the breakdown cannot replay the statistics on their inputs")
        prefixes = [steps[:i] for i in range(len(steps) + 1)] if steps is not None else [None]
        if steps is not None:
            try:
                real(*calls[0][0], **{**calls[0][1], "seq_ids": seq(), "steps": ()})
            except Exception:  # noqa: BLE001 -- an empty step list refused: the first statistic carries the setup
                prefixes = prefixes[1:]
        cols.append(dict(d=d, h=h, calls=calls, prefixes=prefixes, best={}))

    def keep(best, key, seconds):
        best[key] = min(best.get(key, float("inf")), seconds)

    t0, done, shared = time.perf_counter(), 0, {}
    forward = bare_forward(model, data)
    forward()  # warm-up
    for rep in range(max(1, reps)):
        if rep and budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
        for j, c in enumerate(cols):
            h, best = c["h"], c["best"]
            keep(shared, "forward", wall(forward, device)[0])  # no hook registered; next to every forward timed
            hooked = HookedModel(model, [hook])

            def fe():
                for ids in data:
                    h.encode(hooked.run(ids, need_logits=True)[0])

            def full():
                for ids, v in zip(data, valids):
                    acts, logits = hooked.run(ids, need_logits=True)
                    h.update(acts, ids, seq_ids=seq(), valid=v, logits=logits)

            def enc():
                for acts, _ in cache:
                    h.encode(acts)

            def stub():  # the harvester's own work around the state update
                h.state.update = lambda *a, **k: None
                try:
                    for ids, (acts, logits), v in zip(data, cache, valids):
                        h.update(acts, ids, seq_ids=seq(), valid=v, logits=logits)
                finally:
                    del h.state.update

            for key, fn in (("fe", fe), ("full", full)):
                keep(best, key, wall(fn, device)[0])
            hooked.close()
            if j == len(cols) - 1:
                keep(shared, "forward", wall(forward, device)[0])
            for key, fn in (("enc", enc), ("stub", stub)):
                keep(best, key, wall(fn, device)[0])
            for i, pre in enumerate(c["prefixes"]):
                extra = {} if pre is None else {"steps": pre}

                def upd(extra=extra):
                    for args, kwargs in c["calls"]:
                        h.state.update(*args, **{**kwargs, "seq_ids": seq(), **extra})
                keep(best, i, wall(upd, device)[0])
        done += 1

    n = len(data)
    out = dict(forward=shared["forward"] / n, batches=n, tokens_per_batch=data[0].numel(), reps=done, seconds=time.perf_counter() - t_setup,
               steps=list(steps) if steps is not None else None, cols=[])
    for c in cols:
        best = c["best"]
        parts = {"forward + encode": best["fe"] / n, "next-token probs": max(0.0, best["stub"] - best["enc"]) / n}
        if steps is None:
            parts["update (all statistics)"] = best[0] / n
            total = best[0] / n
        else:
            cum, names = [], (["update: shared setup"] if c["prefixes"][0] == () else []) + [f"+ {s}" for s in steps]
            for i in range(len(c["prefixes"])):  # made monotone: a step below timer noise shows 0
                cum.append(max(best[i] / n, cum[-1] if cum else 0.0))
            for i, name in enumerate(names):
                parts[name] = cum[i] - (cum[i - 1] if i else 0.0)
            total = cum[-1]
        s = parts["forward + encode"] + parts["next-token probs"] + total
        cols_full = best["full"] / n
        out["cols"].append(dict(latents=c["d"].n_latents, parts=parts, sum=s, full=cols_full, unattributed=cols_full - s,
                                state_mb=c["h"].state.nbytes() / 2**20))
        del c["h"], c["calls"]
    return out


def breakdown_lines(groups: list[tuple[str, dict, dict]]) -> tuple[list[str], list[dict]]:
    """The transposed table (one column per model and dictionary) and its JSON rows, every part / forward.
    groups: (label, breakdown(...), {latents: goal ratio of full harvest / (forward+encode)})."""
    heads, cols = [], []
    for label, res, goals in groups:
        for c in res["cols"]:
            f = res["forward"]
            goal = goals.get(c["latents"])
            ratio = c["full"] / c["parts"]["forward + encode"]
            cols.append(dict(config=label, latents=c["latents"], tokens_per_batch=res["tokens_per_batch"],
                             batches=res["batches"], reps=res["reps"], forward_ms=round(f * 1e3, 3),
                             parts={k: round(v / f, 4) for k, v in c["parts"].items()}, sum=round(c["sum"] / f, 4),
                             full=round(c["full"] / f, 4), unattributed=round(c["unattributed"] / f, 4),
                             full_over_forward_encode=round(ratio, 4), goal=goal,
                             goal_met=None if goal is None else ratio <= goal, state_mb=round(c["state_mb"], 1)))
            heads.append(f"{label} {c['latents']}")
    if not cols:
        return [], []
    names = list(dict.fromkeys(k for c in cols for k in c["parts"]))
    table = [("part (per batch, time / bare forward)", heads),
             ("  tokens per batch x batches, reps", [f"{c['tokens_per_batch']:,} x {c['batches']}, {c['reps']}" for c in cols]),
             ("  bare forward ms per batch (= 1.00)", [f"{c['forward_ms']:,.1f}" for c in cols]),
             ("forward (bare, to the logits)", ["1.00"] * len(cols))]
    table += [("  " + n if n.startswith(("+", "update", "next")) else n,
               [f"{c['parts'][n]:.3f}" if n in c["parts"] else "-" for c in cols]) for n in names]
    table += [("sum of parts", [f"{c['sum']:.3f}" for c in cols]),
              ("full harvest (measured)", [f"{c['full']:.3f}" for c in cols]),
              ("  unattributed (measured - sum)", [f"{c['unattributed']:+.3f}" for c in cols]),
              ("full harvest / (forward+encode)", [f"{c['full_over_forward_encode']:.2f}x" for c in cols]),
              ("  goal (CPU)", [f"<= {c['goal']:.2f}x {'met' if c['goal_met'] else 'MISSED'}" if c["goal"] else "-" for c in cols]),
              ("  state MB", [f"{c['state_mb']:,.0f}" for c in cols])]
    w = max(len(x) for _, cells in table for x in cells) + 3  # cells are at least 3 spaces apart
    lines = [f"{name:42s}" + "".join(f"{x:>{w}}" for x in cells) for name, cells in table]
    return lines, cols


def main(argv=None) -> dict:
    from bench.scale import PRESETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--dictionary", default=DEFAULT_SAE)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--scaling", default="1024,4096,16384", help="latent counts for the scaling sweep ('' to skip)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 is steadier on a shared machine)")
    p.add_argument("--breakdown", default="all", choices=["all", "embedded", "none"], help="which per-batch breakdowns to run")
    p.add_argument("--breakdown-batches", type=int, default=2, help="embedded breakdown: the first N of the batches above")
    p.add_argument("--llama-preset", default="llama-135m", choices=sorted(PRESETS), help="model shape of breakdown (b) (bench.scale presets)")
    p.add_argument("--llama-latents", default="16384,65536", help="TopK SAE widths of breakdown (b) ('' to skip)")
    p.add_argument("--llama-k", type=int, default=32)
    p.add_argument("--llama-batches", type=int, default=1)
    p.add_argument("--llama-batch-size", type=int, default=4)
    p.add_argument("--llama-context-length", type=int, default=256)
    p.add_argument("--reps", type=int, default=3, help="breakdown repetitions (the minimum of each time is kept)")
    p.add_argument("--breakdown-budget-s", type=float, default=60.0, help="per breakdown: a repetition after the first starts only if less than this has passed")
    p.add_argument("--backend", default="torch", choices=["torch", "jax"], help="jax: the JAX step vs the JAX forward")
    a = p.parse_args(argv)
    if a.backend == "jax":  # the JAX step against the JAX bare forward (imports jax only here)
        return __import__("bench.harvest_jax").harvest_jax.run(a.model, a.dictionary, a.batches, a.batch_size, a.context_length, a.reps)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    model, tok, _ = load_model(a.model, device, "float32")
    d = load_dictionary(a.dictionary).to(device)
    hook = d.hookpoint
    seqs = pack(iter_texts(DEFAULT_DATASET), tok, a.context_length)
    data = [ids.to(device) for _, ids in batches(seqs, a.batch_size, a.batches * a.batch_size)]
    n_tok = sum(x.numel() for x in data)
    hooked = HookedModel(model, [hook])
    K, W = 20, 16
    cfg = HarvestArgs(top_k=K, n_random=40, window=W, batch_size=a.batch_size, context_length=a.context_length).state_config(
        [d], max(len(tok), model.config.vocab_size), device=device.type)  # the CLI's settings (one top per window, ...)

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
        t, (naive_top, disk) = timed(lambda: naive_baseline(hooked, d, data, hook, K, W, Path(tmp), cfg.top_chunk))
        rows["naive (cache all, then build)"] = (t, rss_mb() - r0, disk)

    # Agreement: our top-K locations vs the naive ones (global token index = loc here, seq ids 0..n).
    ours = {lat: [l for l in h.state.top_loc[lat].tolist() if l >= 0] for lat in range(d.n_latents)}
    S = a.context_length
    agree = sum(1 for lat, locs in naive_top.items() if sorted(locs) == sorted(ours.get(lat, []))) / max(1, len(naive_top))
    del h

    base = rows["forward"][0]
    print(f"device {device} ({platform.processor() or platform.machine()}), torch {torch.__version__} ({torch.get_num_threads()} threads), {n_tok:,} tokens, "
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
    hooked.close()  # the breakdown times a bare forward: no hook may stay registered

    groups = []
    if a.breakdown != "none":
        bos = tok.bos_token_id
        res = breakdown(model, hook, [d], data[: max(1, a.breakdown_batches)], lambda n: cfg,
                        valid_of=lambda ids: ids != bos, reps=a.reps, device=device, budget_s=a.breakdown_budget_s)
        res["model"] = f"embedded: {Path(a.model).name} ({model.config.num_hidden_layers} layers) + {d.kind} SAE at {hook}"
        groups.append(("embedded", res, {}))
    if a.breakdown == "all":
        del model
        from bench.harvest_llama import llama_breakdown  # (imports this module: loaded here, not at the top)

        g = llama_breakdown(a, device)
        if g:
            groups.append(g)
    lines, cols = breakdown_lines(groups)
    if lines:
        steps = groups[0][1]["steps"]
        print("per-batch breakdown of the full harvest (output stats on), every part / the bare forward of the same model "
              "in this run, minimum over reps:")
        for _, res, _ in groups:
            print(f"  {res['model']} ({res['seconds']:.0f} s)")
        print("  statistics cumulative: update(steps[:i+1]) - update(steps[:i]) in STEPS order on the inputs the harvester "
              "passed (made monotone: below timer noise shows 0)" if steps else f"  {NO_STEPS}")
        print("\n".join(lines))
    result = {"device": str(device), "tokens": n_tok, "latents": d.n_latents,
              **{k.split(" ")[0]: {"tok_per_s": round(n_tok / v[0]), "vs_forward": round(v[0] / base, 3), "rss_mb": round(v[1], 1),
                                   "disk_mb": round(v[2] / 2**20, 2)} for k, v in rows.items()},
              "topk_agreement": agree, "scaling": scaling,
              "breakdown": {"method": "cumulative" if groups and groups[0][1]["steps"] else ("whole update" if groups else None),
                            "steps": groups[0][1]["steps"] if groups else None, "cpu_goal": {"latents": CPU_GOAL[0], "ratio": CPU_GOAL[1]},
                            "columns": cols}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
