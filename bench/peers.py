"""Top-activation extraction the way sae-lens and delphi users do it, against our harvest, on the same tokens.

    python -m bench.peers [--batches 12] [--batch-size 16] [--context-length 128] [--top-k 20] [--repeats 2] [--threads 1]

delphi (PyPI `eai-delphi`) is optional: its requirements pull vllm and a CUDA torch, so install it with
`pip install --no-deps eai-delphi==0.1.3` plus `pip install -e .[peers]`; without it its row is skipped.

Same model (the embedded default), dictionary (its SAE, loaded by sae-lens itself with
`SAE.load_from_disk`) and token batches for every path. The sae-lens paths read the
residual stream the way sae-lens reads a non-TransformerLens model: `sae_lens.load_model(
"AutoModelForCausalLM", ...)` wraps the HF model in its `HookedProxyLM`, and
`run_with_cache(tokens, names_filter=["model.layers.2"], stop_at_layer=3)` is the call its
ActivationsStore makes (HookedSAETransformer cannot load a local HF model: TransformerLens
accepts only its registry names, checked and printed below). Then `sae.encode` and:

  running topk    a per-latent top-K kept across batches with torch.topk on [kept; batch]
  concat + topk   every batch's dense [tokens, latents] activations kept, one torch.topk at the end
                  (the notebook way; memory grows with tokens x latents)
  SAEDashboard    model activations cached to disk per minibatch (torch.save, as its
                  FeatureDataGenerator does), then per group of 128 latents (its
                  n_features_at_a_time) every cached minibatch is reloaded, encoded and the
                  group's activations concatenated before torch.topk
  ours            engine.harvest's Harvester on the same batches, output-token stats off (the
                  peers compute none), forward stopped after the hookpoint: the same top-K with
                  windows and per-token activations, plus the random sample, histograms,
                  input-token and co-occurrence statistics
  ours, CLI       `python -m engine.harvest ... --no-output-stats` on the same tokens, model load,
                  tokenization and the written run (components.jsonl, tokens.bin, stats) included; it
                  writes no checkpoint unless asked (--checkpoint-every / --final-checkpoint)
  delphi          delphi's own library on CPU, the way its `python -m delphi` populates its cache and
                  builds latent records: the HF model and tokenizer loaded, the corpus tokenized (our
                  packing: delphi's own `load_tokenized_data` reads a hub dataset), `LatentCache.run`
                  with the SAE's dense `encode` (sae-lens, as delphi loads only sparsify / Gemma Scope
                  coders), `save_splits` + `save_config`, then `LatentDataset` with delphi's
                  `constructor` (32-token windows, 50 random non-activating examples) and `sampler`
                  (40 train / 50 test quantile examples, decoded) for every latent (`min_examples=1`,
                  as we keep every latent that fires; its default 200 drops the rarer ones). BOS is
                  kept in its cache (its --filter_bos would drop BOS tokens and re-chunk the stream:
                  other tokens). Compared: each latent's max activation against ours (delphi stores
                  activations as float16)

Every position counts on all in-memory paths (BOS too), so their top-K are comparable; the
CLI filters BOS (its default) and is timed, not compared. Times: the paths run round robin
`--repeats` times (`--threads` torch threads) and each shows its best round. Peak memory:
the resident-set high-water mark above the level at the start of each path, sampled every
2 ms by a thread, in a first round run with a low fixed glibc mmap threshold (so resident
memory follows live tensors). Disk: bytes of the files each path writes. Agreement: share
of firing latents whose top-K token set equals ours, and whose sorted top-K values equal
ours to 1e-4 (a different set with equal values is a tie broken the other way). The last
line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import json
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

from engine.harvest.config import HarvestArgs
from engine.harvest.data import batches, iter_texts, pack
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.dictionaries import load_dictionary
from engine.harvest.harvester import Harvester
from engine.harvest.model import load_model
from engine.harvest.sources import HookedModel

HF_HOOK = "model.layers.2"
"HF module path of blocks.2.hook_resid_post, where the shipped SAE was trained."
FEATURES_AT_A_TIME = 128
"SAEDashboard's NeuronpediaRunnerConfig.n_features_at_a_time default."


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def mmap_threshold(nbytes: int) -> None:
    """Fix glibc's mmap threshold (the default one rises after frees, parking freed tensors in the heap).

    128 KiB: every tensor is its own mapping, returned to the OS when freed, so resident memory follows
    live tensors (for the memory round; each allocation then page-faults). 32 MiB: the default's ceiling,
    where it settles once warm (for the timing rounds)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except OSError:
        pass


class PeakRSS:
    """Resident-memory high-water mark above the level at entry (ru_maxrss cannot be reset between paths)."""

    def __enter__(self):
        gc.collect()
        try:  # hand freed heap pages back so the previous path's leftovers do not hide this one's growth
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
        self.growth = self.peak - self.base


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- the sae-lens user's paths


def residuals(proxy, ids: torch.Tensor) -> torch.Tensor:
    """[B*S, d] residual stream at HF_HOOK, read through sae-lens's HookedProxyLM as its ActivationsStore does."""
    cache = proxy.run_with_cache(ids, names_filter=[HF_HOOK], stop_at_layer=3, prepend_bos=False)[1]
    x = cache[HF_HOOK]
    return x.reshape(-1, x.shape[-1])


def running_topk(proxy, sae, data, K: int):
    """(values [L, K], token index [L, K]): top-K kept across batches."""
    L = sae.cfg.d_sae
    best_v = torch.full((L, K), -float("inf"))
    best_i = torch.full((L, K), -1, dtype=torch.int64)
    offset = 0
    for ids in data:
        acts = sae.encode(residuals(proxy, ids))  # [N, L] dense
        n = acts.shape[0]
        v = torch.cat([best_v, acts.T], dim=1)  # [L, K + N]
        i = torch.cat([best_i, torch.arange(offset, offset + n).expand(L, n)], dim=1)
        top = v.topk(K, dim=1)
        best_v, best_i = top.values, i.gather(1, top.indices)
        offset += n
    return best_v, best_i


def concat_topk(proxy, sae, data, K: int):
    """Keep every dense activation, then one topk over all tokens."""
    acts = torch.cat([sae.encode(residuals(proxy, ids)) for ids in data])  # [N_total, L]
    top = acts.topk(K, dim=0)  # [K, L]
    return top.values.T.contiguous(), top.indices.T.contiguous()


def saedashboard_topk(proxy, sae, data, K: int, cache_dir: Path):
    """Model activations cached to disk, then latents in groups: reload, encode, concatenate, topk."""
    for i, ids in enumerate(data):
        torch.save({HF_HOOK: residuals(proxy, ids)}, cache_dir / f"model_activations_{i}.pt")
    vals, idx = [], []
    for lo in range(0, sae.cfg.d_sae, FEATURES_AT_A_TIME):
        group = []
        for i in range(len(data)):
            x = torch.load(cache_dir / f"model_activations_{i}.pt")[HF_HOOK]
            # SAEDashboard slices W_enc to the group (FeatureMaskingContext), which it refuses for TopK SAEs
            # (and which would change which latents win the top k): encode in full and slice instead.
            group.append(sae.encode(x)[:, lo : lo + FEATURES_AT_A_TIME].contiguous())  # a view would pin all L
        top = torch.cat(group).topk(K, dim=0)
        vals.append(top.values.T)
        idx.append(top.indices.T)
    return torch.cat(vals), torch.cat(idx)


def hooked_sae_transformer_check(model, tok) -> str:
    """Whether HookedSAETransformer takes the local HF model (TransformerLens wants a registry name)."""
    from sae_lens import HookedSAETransformer

    try:
        HookedSAETransformer.from_pretrained_no_processing(DEFAULT_MODEL, hf_model=model, tokenizer=tok, device="cpu")
        return "loads"
    except Exception as e:  # noqa: BLE001 -- any failure is the finding
        why = str(e).split("Valid official model names")[0].strip().replace(str(Path.cwd()) + "/", "")
        return f"refused ({type(e).__name__}: {why[:100]})"


# ----------------------------------------------------------------------------- ours


def ours_state(model, tok, d, data, S: int, K: int):
    hooked = HookedModel(model, [d.hookpoint])
    cfg = HarvestArgs(context_length=S, batch_size=len(data[0]), top_k=K, output_stats=False,  # every firing
                      one_top_per_window=False).state_config([d], max(len(tok), model.config.vocab_size))  # eligible
    h = Harvester([d], cfg, [d.hookpoint], "cpu")
    for ids in data:
        acts, _ = hooked.run(ids, need_logits=False)
        h.update(acts, ids)  # every position counts, as on the sae-lens paths
    hooked.close()
    return h.state


def ours_cli(out: Path, a) -> None:
    from engine.harvest.run import main as harvest

    with contextlib.redirect_stdout(io.StringIO()):  # its summary line would land in the table
        harvest([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", DEFAULT_DATASET, "--out", str(out), "--n-batches",
                 str(a.batches), "--batch-size", str(a.batch_size), "--context-length", str(a.context_length),
                 "--top-k", str(a.top_k), "--no-output-stats", "--no-one-top-per-window", "--device", "cpu"])


DELPHI_VERSION = "0.1.3"
"The eai-delphi release this bench drives (its cache/constructor/sampler API)."


def delphi_missing() -> str | None:
    """None when delphi's cache, constructor and sampler import here, else one line saying why not."""
    try:
        from delphi.config import CacheConfig, ConstructorConfig, SamplerConfig  # noqa: F401
        from delphi.latents import LatentCache, LatentDataset  # noqa: F401
    except Exception as e:  # noqa: BLE001 -- ImportError, or a dependency failing at import: the reason is the finding
        return (f"{type(e).__name__}: {str(e).splitlines()[0][:120]} -- pip install --no-deps eai-delphi=={DELPHI_VERSION} "
                f"&& pip install -e .[peers]")
    return None


def delphi_records(sae, tokens_of, a, out: Path):
    """delphi's pipeline on CPU: model load, tokens, LatentCache.run, save_splits/config, LatentDataset records."""
    import logging

    from delphi.config import CacheConfig, ConstructorConfig, SamplerConfig
    from delphi.latents import LatentCache, LatentDataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.getLogger("delphi").setLevel(logging.ERROR)  # per-latent "few examples" notices
    model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    tokens = torch.cat(tokens_of(tok))  # [N, S]: the sequences every other path reads
    cache = LatentCache(model, {HF_HOOK: sae.encode}, batch_size=a.batch_size)
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        cache.run(tokens.numel(), tokens)
    latents = out / "latents"
    cache.save_splits(n_splits=5, save_dir=latents)
    cache.save_config(save_dir=latents, cfg=CacheConfig(dataset_repo=DEFAULT_DATASET, batch_size=a.batch_size,
                                                        cache_ctx_len=tokens.shape[1], n_tokens=tokens.numel()),
                      model_name=DEFAULT_MODEL)
    dataset = LatentDataset(raw_dir=latents, sampler_cfg=SamplerConfig(), constructor_cfg=ConstructorConfig(min_examples=1),
                            modules=[HF_HOOK], tokenizer=tok)
    return list(dataset)


def delphi_agreement(state, records) -> tuple[float, int]:
    """(share of latents whose max activation equals ours to float16 precision, latents with a record)."""
    same = 0
    for r in records:
        lat = r.latent.latent_index
        ours = float(state.top_val[lat, 0])
        same += abs(r.max_activation - ours) <= 2e-3 * max(1.0, abs(ours))
    return same / max(len(records), 1), len(records)


def agreement(state, vals: torch.Tensor, idx: torch.Tensor) -> tuple[float, float, float, int]:
    """(same token set, same sorted values, mean shared fraction) over latents that fired on either side."""
    same_set = same_vals = shared = fired = 0
    for lat in range(vals.shape[0]):
        ours_locs = [x for x in state.top_loc[lat].tolist() if x >= 0]
        theirs = [(i, v) for i, v in zip(idx[lat].tolist(), vals[lat].tolist()) if v > 0]
        if not ours_locs and not theirs:
            continue
        fired += 1
        a, b = set(ours_locs), {i for i, _ in theirs}
        same_set += a == b
        shared += len(a & b) / max(len(a | b), 1)
        ov = sorted(state.top_val[lat, : len(ours_locs)].tolist())
        tv = sorted(v for _, v in theirs)
        same_vals += len(ov) == len(tv) and all(abs(x - y) <= 1e-4 * max(1.0, abs(y)) for x, y in zip(ov, tv))
    n = max(fired, 1)
    return same_set / n, same_vals / n, shared / n, fired


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2, help="rounds over all paths; each path's best round is shown")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine, two spinning OpenMP threads make timings swing 10x)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    mmap_threshold(128 << 10)  # before anything large is allocated
    import sae_lens
    from sae_lens import SAE
    from sae_lens.load_model import load_model as sae_lens_load_model

    model, tok, _ = load_model(DEFAULT_MODEL, "cpu", "float32")
    d = load_dictionary(DEFAULT_SAE)
    sae = SAE.load_from_disk(DEFAULT_SAE, device="cpu")
    proxy = sae_lens_load_model("AutoModelForCausalLM", DEFAULT_MODEL, device="cpu",
                                model_from_pretrained_kwargs={"dtype": torch.float32}, hook_names=[HF_HOOK])
    proxy.eval()
    S, K = a.context_length, a.top_k
    data = [ids for _, ids in batches(pack(iter_texts(DEFAULT_DATASET), tok, S), a.batch_size, a.batches * a.batch_size)]
    n_tok = sum(x.numel() for x in data)
    hst = hooked_sae_transformer_check(model, tok)
    no_delphi = delphi_missing()  # also imports it, outside the timings, as sae-lens is

    def tokens_of(tokenizer):  # the same sequences, tokenized again inside the timed delphi path
        return [ids for _, ids in batches(pack(iter_texts(DEFAULT_DATASET), tokenizer, S), a.batch_size, a.batches * a.batch_size)]

    rows, results, checkpoint = {}, {}, 0
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        tmp = Path(tmp)
        residuals(proxy, data[0]), ours_state(model, tok, d, data[:1], S, K)  # warm-up both forward paths
        paths = {
            "sae-lens: running topk": lambda out: running_topk(proxy, sae, data, K),
            "sae-lens: concat + topk": lambda out: concat_topk(proxy, sae, data, K),
            "sae-lens: SAEDashboard-style": lambda out: saedashboard_topk(proxy, sae, data, K, out),
            "ours: Harvester (in memory)": lambda out: ours_state(model, tok, d, data, S, K),
            "ours: engine.harvest CLI": lambda out: ours_cli(out, a),
        }
        if no_delphi is None:
            paths["delphi: cache + records"] = lambda out: delphi_records(sae, tokens_of, a, out)
        for r in range(a.repeats + 1):  # a memory round, then timing rounds (round robin, best kept: other work comes and goes)
            memory_round = r == 0
            if r == 1:
                mmap_threshold(32 << 20)
            for i, (name, fn) in enumerate(paths.items()):
                out = tmp / f"{r}-{i}"
                out.mkdir()
                with PeakRSS() if memory_round else contextlib.nullcontext() as mem:
                    t = time.perf_counter()
                    results[name] = fn(out)
                    elapsed = time.perf_counter() - t
                if memory_round:
                    rows[name] = (float("inf"), mem.growth, disk_bytes(out))
                else:
                    rows[name] = (min(rows[name][0], elapsed), *rows[name][1:])
                if (out / "harvest" / "checkpoint").exists():
                    checkpoint = disk_bytes(out / "harvest" / "checkpoint")
                shutil.rmtree(out)
    state = results["ours: Harvester (in memory)"]
    base_t, base_m, _ = rows["ours: Harvester (in memory)"]

    print(f"embedded default, {n_tok:,} tokens ({len(data)} batches of {a.batch_size} x {S}), {d.n_latents} latents, "
          f"top-K {K}; sae-lens {sae_lens.__version__}, torch {torch.__version__}, {a.threads} thread(s)")
    print(f"HookedSAETransformer.from_pretrained_no_processing(local HF model): {hst}; residuals read through "
          f"sae-lens's HookedProxyLM instead")
    print(f"delphi: {'eai-delphi ' + _version('eai-delphi') if no_delphi is None else 'skipped (' + no_delphi + ')'}")
    print(f"{'path':30s} {'time s':>7s} {'tok/s':>8s} {'time/ours':>9s} {'peak +MB':>9s} {'mem/ours':>8s} {'disk MB':>8s}"
          f"  top-K vs ours: same set / same values / shared")
    out = {"tokens": n_tok, "latents": d.n_latents, "top_k": K, "sae_lens": sae_lens.__version__, "paths": {}}
    for name, (t, m, disk) in rows.items():
        agree = ""
        rec = {"s": round(t, 2), "time_vs_ours": round(t / base_t, 2), "peak_mb": round(m, 1),
               "mem_vs_ours": round(m / base_m, 2) if base_m > 0 else None, "disk_mb": round(disk / 2**20, 2)}
        if name.startswith("sae-lens"):
            s, v, sh, fired = agreement(state, *results[name])
            agree = f"  {s:6.1%} / {v:6.1%} / {sh:6.1%} of {fired}"
            rec.update(same_sets=round(s, 4), same_values=round(v, 4), shared=round(sh, 4))
        if name.startswith("delphi"):
            same, n_rec = delphi_agreement(state, results[name])
            agree = f"  max activation = ours: {same:6.1%} of {n_rec} latent records"
            rec.update(same_max=round(same, 4), records=n_rec)
        print(f"{name:30s} {t:7.2f} {n_tok / t:8,.0f} {t / base_t:9.2f} {m:9.1f} {m / base_m if base_m > 0 else 0:8.2f} "
              f"{disk / 2**20:8.2f}{agree}")
        out["paths"][name] = rec
    cli_disk = rows["ours: engine.harvest CLI"][2]
    ckpt_note = f"+ {checkpoint / 2**20:.1f} MB checkpoint (the accumulator state)" if checkpoint else "and no checkpoint (none asked for)"
    print(f"the CLI's disk: {(cli_disk - checkpoint) / 2**20:.1f} MB of results (components.jsonl with every latent's "
          f"examples and statistics, stats, tokens.bin) {ckpt_note}")
    out["cli_checkpoint_mb"] = round(checkpoint / 2**20, 2)
    if no_delphi is None:
        ratio = rows["delphi: cache + records"][0] / rows["ours: engine.harvest CLI"][0]
        print(f"delphi / our CLI: {ratio:.2f}x the time (its cache and latent records vs our whole harvest command)")
        out["delphi_vs_cli"] = round(ratio, 2)
    else:
        out["delphi"] = {"skipped": no_delphi}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
