"""Harvest scaling on a Llama-shaped model with random weights: model size, latents, hookpoints.

    python -m bench.scale --preset llama-8b [--latents 16384,65536,131072]   # a GPU: Llama-3.1-8B shape, TopK SAEs
    python -m bench.scale --preset llama-135m        # CPU: a 135M-class Llama (SmolLM-135M shape), 16k/65k latents
    python -m bench.scale --preset tiny              # CPU: the same code path at toy size (CI runs this)

No download: the model is built from a `LlamaConfig` with random weights and fed random
token ids; the dictionaries are random TopK SAEs. Firing patterns of random weights are
not those of a trained model, so these figures measure the machinery (encode, packing,
accumulators), not a particular dictionary. Every row is timed against the bare forward
with logits measured in the same run:

  forward            model forward with logits (what any harvest must pay)
  forward+encode     forward stopped after the hookpoint + dictionary encode
  harvest (no out)   forward stopped after the hookpoint + encode + every statistic but output tokens
  harvest            full forward + encode + every statistic incl. output-token stats
  latents L          encode + statistics with an L-latent dictionary (activations precomputed)
  hookpoints H       forward + encode + statistics with H hookpoints, one L-latent dictionary each

and the peak device memory (CUDA) or RSS growth (CPU). Then, for every latent count of the sweep
(`--latents`), the full harvest against forward+encode run to the logits (what that harvest must pay
before any statistic): harvest / forward, the statistics overhead over forward+encode, and the
harvest state's size in GB (10^9 bytes), each beside the preset's goal where it has one (llama-8b:
overhead <= 10% at 131,072 latents and state <= 4 GB, on a GPU; llama-135m: harvest <= 1.25x
forward+encode at 16,384 latents, on CPU). The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time

import torch

from bench.baselines import bare_forward, forward_encode
from engine.harvest.dictionaries import Dictionary
from engine.harvest.harvester import Harvester
from engine.harvest.sources import HookedModel
from engine.harvest.state import StateConfig

PRESETS = {
    "llama-8b": dict(  # meta-llama/Llama-3.1-8B config.json
        model=dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
        dtype="bfloat16", layer=16, latents=131072, k=64, batch=8, ctx=1024, batches=8,
        sweep_latents=(4096, 16384, 65536, 131072), sweep_hooks=(1, 2, 4), device="cuda",
        goal=dict(where="GPU", latents=131072, overhead=0.10, state_gb=4.0)),
    "llama-135m": dict(  # HuggingFaceTB/SmolLM-135M config.json (tied embeddings)
        model=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                   num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, rope_theta=10000.0,
                   rms_norm_eps=1e-5, tie_word_embeddings=True),
        dtype="float32", layer=15, latents=16384, k=32, batch=4, ctx=256, batches=1,
        sweep_latents=(16384, 65536), sweep_hooks=(1,), device="cpu",
        goal=dict(where="CPU", latents=16384, overhead=0.25)),
    "tiny": dict(
        model=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=1024, max_position_embeddings=256),
        dtype="float32", layer=2, latents=2048, k=8, batch=4, ctx=64, batches=3,
        sweep_latents=(512, 2048), sweep_hooks=(1, 2), device="cpu"),
}


def build_model(spec: dict, dtype: torch.dtype, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**spec, torch_dtype=dtype)).to(dtype)
    return model.eval()


def random_topk(d_in: int, n_latents: int, k: int, hook: str, device) -> Dictionary:
    g = torch.Generator().manual_seed(n_latents)
    W = (torch.randn(d_in, n_latents, generator=g) / d_in**0.5).to(device)
    return Dictionary("random", "random:topk", hook, W, torch.zeros(n_latents, device=device), None, None, "topk", k,
                      None, d_in, n_latents)


class Meter:
    """Wall time with device synchronisation, and peak memory growth; each measurement is reported to
    stderr as it ends ("[scale] ..."), so a run cut short by a timeout still shows how far it got."""

    def __init__(self, device: torch.device):
        self.device = device
        self.t0 = time.perf_counter()

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn, label: str = ""):
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        out = fn()
        self.sync()
        dt = time.perf_counter() - t
        if self.device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        else:
            peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        print(f"[scale] {label or getattr(fn, '__name__', 'step')} {dt:.3f} s (at {time.perf_counter() - self.t0:.0f} s)", file=sys.stderr, flush=True)
        return dt, peak, out


def parse_counts(text: str | None, default) -> list[int]:
    """'16384,65536' -> [16384, 65536]; None -> the preset's; '' -> none."""
    if text is None:
        return list(default)
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def latent_table(per: list[dict], goal: dict | None) -> list[str]:
    """The per-latent-count rows and the goal lines beside them."""
    gb_goal = (goal or {}).get("state_gb")
    head = f"{'latents':>8s} {'harvest / forward':>18s} {'fwd+enc / forward':>18s} {'stats over fwd+enc':>19s} {'state GB':>9s}"
    lines = [head + (f" {'<= %g GB' % gb_goal:>9s}" if gb_goal else "") + f" {'peak +MB':>10s}"]
    for r in per:
        line = (f"{r['latents']:8d} {r['harvest_vs_forward']:18.2f} {r['forward_encode_vs_forward']:18.2f} "
                f"{r['overhead']:18.1%} {r['state_gb']:9.3f}")
        lines.append(line + (f" {'yes' if r['state_ok'] else 'NO':>9s}" if gb_goal else "") + f" {r['peak_mb']:10.1f}")
    if goal:
        at = next((r for r in per if r["latents"] == goal["latents"]), None)
        want = f"statistics overhead over forward+encode <= {goal['overhead']:.0%} at {goal['latents']} latents"
        if at is None:
            lines.append(f"goal ({goal['where']}): {want}: not measured (add {goal['latents']} to --latents)")
        else:
            lines.append(f"goal ({goal['where']}): {want}: {at['overhead']:.1%} "
                         f"(harvest / forward+encode {1 + at['overhead']:.2f}x) -- {'met' if at['overhead'] <= goal['overhead'] else 'MISSED'}")
        if gb_goal and per:
            big = max(per, key=lambda r: r["state_gb"])
            lines.append(f"goal ({goal['where']}): state <= {gb_goal:g} GB at every latent count: largest {big['state_gb']:.3f} GB "
                         f"at {big['latents']} -- {'met' if all(r['state_ok'] for r in per) else 'MISSED'}")
    return lines


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--device", default=None, help="default: the preset's (cuda for llama-8b)")
    p.add_argument("--batches", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--latents", default=None, help="comma-separated latent counts for the sweep and the per-latent table, "
                                                   "e.g. 16384,65536,131072 (default: the preset's)")
    p.add_argument("--hookpoints", default=None, help="comma-separated hookpoint counts for the hookpoint sweep ('' to skip)")
    a = p.parse_args(argv)
    ps = PRESETS[a.preset]
    device = torch.device(a.device or ps["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --preset {a.preset} --device {device} needs CUDA and none is available here -- "
              f"use --preset tiny or --device cpu", file=sys.stderr)
        raise SystemExit(2)
    try:
        sweep, sweep_hooks = parse_counts(a.latents, ps["sweep_latents"]), parse_counts(a.hookpoints, ps["sweep_hooks"])
    except ValueError:
        print(f"error: --latents {a.latents!r} / --hookpoints {a.hookpoints!r}: give comma-separated integers like 16384,65536",
              file=sys.stderr)
        raise SystemExit(2) from None
    B, S, n_b = a.batch_size or ps["batch"], a.context_length or ps["ctx"], a.batches or ps["batches"]
    dtype = getattr(torch, ps["dtype"])
    model = build_model(ps["model"], dtype, device)
    V, d, n_layers = ps["model"]["vocab_size"], ps["model"]["hidden_size"], ps["model"]["num_hidden_layers"]
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, V, (B, S), generator=g).to(device) for _ in range(n_b)]
    n_tok = n_b * B * S
    meter = Meter(device)
    hook = f"blocks.{ps['layer']}.hook_resid_post"
    L, k = ps["latents"], ps["k"]
    sae = random_topk(d, L, k, hook, device)

    def cfg(n_latents, output_stats=True):
        return StateConfig(n_latents=n_latents, vocab_size=V, seq_len=S, top_k=20, n_random=40, window=16,
                           output_stats=output_stats, pair_budget_bytes=1 << 30)

    forward = bare_forward(model, data)

    def harvest(hm, dicts, hooks, output_stats, batches=data):
        h = Harvester(dicts, cfg(sum(x.n_latents for x in dicts), output_stats), hooks, device)
        for ids in batches:
            acts, logits = hm.run(ids, need_logits=output_stats)
            h.update(acts, ids, logits=logits)
        return h

    forward()  # warm-up (kernels compile, allocator settles)
    rows = {}
    rows["forward"] = meter(forward, "forward")[:2]  # before any hook is registered
    hooked = HookedModel(model, [hook])
    harvest(hooked, [sae], [hook], False)  # warm-up of the harvest path
    rows["forward+encode"] = meter(forward_encode(hooked, sae, hook, data), "forward+encode")[:2]
    rows["harvest (no out)"] = meter(lambda: harvest(hooked, [sae], [hook], False), "harvest (no out)")[:2]
    rows["harvest"] = meter(lambda: harvest(hooked, [sae], [hook], True), "harvest")[:2]

    acts_cache = [hooked.run(ids, need_logits=False)[0] for ids in data]
    for n in sweep:
        dd = random_topk(d, n, k, hook, device)

        def updates(dd=dd, n=n):
            h = Harvester([dd], cfg(n, False), [hook], device)
            for ids, acts in zip(data, acts_cache):
                h.update(acts, ids)
        updates()  # warm-up at this size
        rows[f"latents {n}"] = meter(updates, f"latents {n}")[:2]
    acts_cache.clear()

    base = rows["forward"][0]
    per = []  # per latent count: the full harvest against forward + encode to the logits
    for n in sweep:
        dd = random_topk(d, n, k, hook, device)
        harvest(hooked, [dd], [hook], True, data[:1])  # warm-up at this size (kernels compile per shape)
        t_fe = meter(forward_encode(hooked, dd, hook, data, need_logits=True), f"forward+encode to the logits, {n} latents")[0]
        t_h, peak, h = meter(lambda dd=dd: harvest(hooked, [dd], [hook], True), f"harvest, {n} latents")
        gb = h.state.nbytes() / 1e9
        goal_gb = ps.get("goal", {}).get("state_gb")
        per.append(dict(latents=n, harvest_vs_forward=round(t_h / base, 4), forward_encode_vs_forward=round(t_fe / base, 4),
                        overhead=round(t_h / t_fe - 1, 4), state_gb=round(gb, 4),
                        state_ok=None if goal_gb is None else gb <= goal_gb, peak_mb=round(peak, 1)))
        del h, dd
    hooked.close()
    for H in sweep_hooks:
        layers = [round(n_layers * (i + 1) / (H + 1)) for i in range(H)]
        hooks = [f"blocks.{layer}.hook_resid_post" for layer in layers]
        dicts = [random_topk(d, L, k, hp, device) for hp in hooks]
        hm = HookedModel(model, hooks)
        rows[f"hookpoints {H}"] = meter(lambda hm=hm, dicts=dicts, hooks=hooks: harvest(hm, dicts, hooks, False), f"hookpoints {H}")[:2]
        hm.close()

    mem = "peak CUDA +MB" if device.type == "cuda" else "peak RSS +MB"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"preset {a.preset}: {n_layers} layers, d_model {d}, vocab {V}, {ps['dtype']}; device {device} ({name}); "
          f"torch {torch.__version__}; {n_tok:,} tokens per row ({n_b} x {B} x {S}); SAE {L} latents TopK k={k} at {hook}")
    print(f"{'row':22s} {'tok/s':>12s} {'time / forward':>15s} {mem:>14s}")
    for row, (t, m) in rows.items():
        print(f"{row:22s} {n_tok / t:12,.0f} {t / base:15.2f} {m:14.1f}")
    if per:
        print(f"per latent count (TopK k={k}): full harvest (forward to the logits + encode + every statistic) against "
              f"forward+encode to the logits and the bare forward; state GB = 10^9 bytes")
        print("\n".join(latent_table(per, ps.get("goal"))))
    result = {"preset": a.preset, "device": str(device), "device_name": name, "tokens": n_tok,
              "rows": {row: {"tok_per_s": round(n_tok / t), "vs_forward": round(t / base, 3), "peak_mb": round(m, 1)}
                       for row, (t, m) in rows.items()},
              "latents": per, "goal": ps.get("goal")}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
