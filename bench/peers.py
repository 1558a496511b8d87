"""Top-activation extraction the way a sae-lens user does it, against our harvest, on the same tokens.

    python -m bench.peers [--batches 12] [--batch-size 16] [--context-length 128] [--top-k 20]

Both sides see the embedded default model, its SAE and the same token batches.

  sae-lens   the SAE loaded with `sae_lens.SAE.load_from_disk`, a forward hook on the HF
             block (the way sae-lens users read non-TransformerLens models), `sae.encode`
             on every token, and a running per-latent top-K over (activation, token)
             kept with torch.topk on [buffer; batch] -- what SAEDashboard's feature-data
             pass does for max-activating examples. Windows are cut from the stored
             tokens afterwards. Nothing else (no reservoir, histograms, token or
             co-occurrence statistics).
  ours       engine.harvest's Harvester: the same top-K (with windows and per-token
             activations) plus every other statistic, output-token stats off (the
             sae-lens side computes none), forward stopped after the hookpoint.

Prints wall time, resident-memory growth, disk written, the ratio of our time to
theirs, and whether the top-K sets agree per latent (ties at equal activation can pick
different tokens; the agreement line counts latents whose top-K activation values are
identical too). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from engine.data import batches, iter_texts, pack
from engine.dictionaries import load_dictionary
from engine.harvest import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE, Harvester, load_model
from engine.sources import HookedModel
from engine.state import StateConfig


def rss_now_mb() -> float:
    import resource

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def sae_lens_topk(model, data, sae_path: str, layer_module, K: int):
    """Running top-K per latent with sae-lens's own encode. Returns (values [L, K], token index [L, K])."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(sae_path, device="cpu")
    captured = {}

    def hook(module, args, output):
        captured["x"] = output[0] if isinstance(output, tuple) else output

    handle = layer_module.register_forward_hook(hook)
    L = sae.cfg.d_sae
    best_v = torch.full((L, K), -float("inf"))
    best_i = torch.full((L, K), -1, dtype=torch.int64)
    offset = 0
    try:
        with torch.no_grad():
            for ids in data:
                model(input_ids=ids, use_cache=False)
                x = captured.pop("x").reshape(-1, sae.cfg.d_in)
                acts = sae.encode(x)  # [N, L] dense
                n = acts.shape[0]
                idx = torch.arange(offset, offset + n).expand(L, n)
                v = torch.cat([best_v, acts.T], dim=1)  # [L, K + N]
                i = torch.cat([best_i, idx], dim=1)
                top = v.topk(K, dim=1)
                best_v, best_i = top.values, i.gather(1, top.indices)
                offset += n
    finally:
        handle.remove()
    return best_v, best_i


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--top-k", type=int, default=20)
    a = p.parse_args(argv)
    model, tok = load_model(DEFAULT_MODEL, "cpu", "float32")
    d = load_dictionary(DEFAULT_SAE)
    S, K = a.context_length, a.top_k
    data = [ids for _, ids in batches(pack(iter_texts(DEFAULT_DATASET), tok, S), a.batch_size, a.batches * a.batch_size)]
    n_tok = sum(x.numel() for x in data)
    layer = model.model.layers[2]  # blocks.2.hook_resid_post, where the shipped SAE was trained

    def ours():
        hooked = HookedModel(model, [d.hookpoint])
        cfg = StateConfig(n_latents=d.n_latents, vocab_size=max(len(tok), model.config.vocab_size), seq_len=S, top_k=K,
                          n_random=40, window=16, output_stats=False)
        h = Harvester([d], cfg, [d.hookpoint], "cpu")
        for ids in data:
            acts, _ = hooked.run(ids, need_logits=False)
            h.update(acts, ids)  # every position counts, as on the sae-lens side
        hooked.close()
        return h.state

    rows = {}
    with torch.no_grad():
        model(input_ids=data[0], use_cache=False)  # warm-up
    for name, fn in (("sae-lens (encode + running topk)", lambda: sae_lens_topk(model, data, DEFAULT_SAE, layer, K)),
                     ("ours (all statistics)", ours)):
        before = rss_now_mb()
        t = time.perf_counter()
        out = fn()
        rows[name] = (time.perf_counter() - t, rss_now_mb() - before, out)
    (t_sl, m_sl, (sl_v, sl_i)), (t_us, m_us, state) = rows.values()

    same_set = same_vals = 0
    fired = 0
    for lat in range(d.n_latents):
        ours_locs = [x for x in state.top_loc[lat].tolist() if x >= 0]
        theirs = [(i, v) for i, v in zip(sl_i[lat].tolist(), sl_v[lat].tolist()) if v > 0]
        if not ours_locs and not theirs:
            continue
        fired += 1
        same_set += sorted(ours_locs) == sorted(i for i, _ in theirs)
        ov = sorted(state.top_val[lat, : len(ours_locs)].tolist())
        same_vals += len(ov) == len(theirs) and all(abs(x - y) <= 1e-4 * max(1.0, abs(y)) for x, y in zip(ov, sorted(v for _, v in theirs)))
    print(f"embedded default, {n_tok:,} tokens, {d.n_latents} latents, top-K {K}; sae-lens {__import__('sae_lens').__version__}")
    print(f"{'path':36s} {'time s':>8s} {'tok/s':>10s} {'RSS growth MB':>14s} {'disk MB':>8s}")
    for name, (t, m, _) in rows.items():
        print(f"{name:36s} {t:8.2f} {n_tok / t:10,.0f} {m:14.1f} {0.0:8.2f}")
    print(f"ours / sae-lens time: {t_us / t_sl:.2f}x (ours also keeps windows with per-token activations, a uniform "
          f"sample, histograms, input-token and co-occurrence statistics)")
    print(f"top-K agreement over {fired} firing latents: same token sets {same_set / fired:.1%}, "
          f"same activation values {same_vals / fired:.1%}")
    result = {"tokens": n_tok, "sae_lens_s": round(t_sl, 2), "ours_s": round(t_us, 2), "ratio": round(t_us / t_sl, 2),
              "sae_lens_rss_mb": round(m_sl, 1), "ours_rss_mb": round(m_us, 1),
              "same_sets": round(same_set / fired, 4), "same_values": round(same_vals / fired, 4)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
