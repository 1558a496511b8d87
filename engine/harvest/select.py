"""Rank latents by how specific they are to a domain.

    python -m engine.select MODEL DICTIONARY --domain DATA --reference DATA [--top 200] --out features.json

For the embedded default, with no arguments: domain = the corpus's test files,
reference = its library modules (`--domain-where kind=test --reference-where kind=library`).
Those two filters apply only to the embedded corpus: a dataset you name is used
whole unless you pass its `--domain-where` / `--reference-where`.

One light pass per dataset counts, for every latent, firings n and activation
sum a over N tokens. The score is a smoothed log-ratio of firing rates,

    lr = log((n_d + 1) / (N_d + 2)) - log((n_r + 1) / (N_r + 2)),

and a two-proportion z statistic tests whether the rates differ (|z| > 3.3 is
p < 0.001 two-sided). Latents are ranked by lr among those with z > z_min and at
least `min_count` domain firings; mean activations on each side are reported.
Output: `{"feature_indices": [...], "scores": [...], "details": [...]}`, the
file `--latents` and `engine.label` read.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from engine.core.cli import cli, parse_config
from engine.core.errors import UserError
from engine.core.rundir import write_atomic
from engine.harvest.data import batches, counted_positions, iter_texts, pack
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.dictionaries import load_dictionary
from engine.harvest.firings import FIRINGS_PER_TOKEN
from engine.harvest.model import load_model, pick_device
from engine.harvest.sources import HookedModel


@torch.no_grad()
def firing_counts(hooked, dictionary, tokenizer, dataset, where, n_tokens, context_length, batch_size, device, column="text", skip_tokens=0):
    """-> (count [L] int64, act_sum [L] float64, tokens counted) over n_tokens after the first skip_tokens.

    Positions counted are those harvest counts with --filter-bos: all but the start token the sequence
    builder inserts (engine.harvest.data.counted_positions)."""
    L = dictionary.n_latents
    count = torch.zeros(L, dtype=torch.int64, device=device)
    act_sum = torch.zeros(L, dtype=torch.float64, device=device)
    over = torch.zeros((), dtype=torch.int64, device=device)
    skip = math.ceil(skip_tokens / context_length)
    n_seq = skip + math.ceil(n_tokens / context_length)
    N = 0
    for _, ids in tqdm(batches(pack(iter_texts(dataset, column, where=where), tokenizer, context_length), batch_size, n_seq, skip=skip),
                       total=math.ceil((n_seq - skip) / batch_size), desc=f"select {dataset if not where else where}", unit="batch"):
        ids = ids.to(device)
        acts, _ = hooked.run(ids, need_logits=False)
        x = next(iter(acts.values()))
        f = dictionary.encode(x.reshape(-1, x.shape[-1]))
        keep = f.lat >= 0  # the rest are padding slots
        counted = counted_positions(ids, tokenizer)
        if counted is not None:
            keep &= counted.reshape(-1)[f.tok]
        N += ids.numel() if counted is None else int(counted.sum())
        lat = f.lat[keep]
        count.index_add_(0, lat, torch.ones_like(lat))
        act_sum.index_add_(0, lat, f.val[keep].double())
        if f.overflow is not None:
            over += f.overflow
    if N == 0:
        raise UserError(f"dataset {dataset} {where or ''} gave no tokens -- check the path and filter")
    if int(over):
        print(f"select: {int(over):,} firings past --firings-per-token {dictionary.firings_per_token} did not fit the "
              "spill and were not counted "
              "-- rerun with a higher --firings-per-token", file=sys.stderr)
    return count.cpu(), act_sum.cpu(), N


def rank(cd, ad, Nd, cr, ar, Nr, top: int, z_min: float = 3.3, min_count: int = 5) -> list[dict]:
    pd, pr = (cd + 1) / (Nd + 2), (cr + 1) / (Nr + 2)
    lr = torch.log(pd) - torch.log(pr)
    p = (cd + cr) / (Nd + Nr)
    z = (cd / Nd - cr / Nr) / torch.sqrt((p * (1 - p) * (1 / Nd + 1 / Nr)).clamp(min=1e-30))
    ok = (z > z_min) & (cd >= min_count)
    order = [i for i in torch.argsort(lr, descending=True, stable=True).tolist() if ok[i]][:top]
    return [{"index": i, "log_ratio": round(float(lr[i]), 4), "z": round(float(z[i]), 2),
             "domain_rate": float(cd[i] / Nd), "reference_rate": float(cr[i] / Nr),
             "domain_mean_act": float(ad[i] / max(1, cd[i])), "reference_mean_act": float(ar[i] / max(1, cr[i]))} for i in order]


def _where_spec(spec: str | None, dataset: str, embedded_default: str) -> str:
    """The filter actually used: the one given, else the embedded corpus's split, else none ('')."""
    if spec is not None:
        return spec
    return embedded_default if Path(dataset).resolve() == Path(DEFAULT_DATASET).resolve() else ""


def _where(spec: str | None) -> dict[str, str] | None:
    if not spec:
        return None
    if "=" not in spec:
        raise UserError(f"filter {spec!r} must look like column=value")
    k, v = spec.split("=", 1)
    return {k: v}


@dataclass(frozen=True)
class SelectConfig:
    """`engine.select`: compare firing rates on a domain dataset and a reference dataset."""

    model: str = cli(DEFAULT_MODEL, positional="?")
    "HF causal LM: local folder or hub name."
    dictionary: str = cli(DEFAULT_SAE, positional="?")
    "The dictionary whose latents are ranked."
    hookpoint: str | None = None
    "Hookpoint (default: from the dictionary's config)."
    domain: str = DEFAULT_DATASET
    "Domain dataset (any harvest dataset form)."
    domain_where: str | None = None
    "column=value filter of the domain's JSON records (default: kind=test for the embedded corpus, none otherwise)."
    reference: str = DEFAULT_DATASET
    "Reference dataset."
    reference_where: str | None = None
    "column=value filter of the reference's JSON records (default: kind=library for the embedded corpus, none otherwise)."
    dataset_column: str = cli("text", aliases=("--dataset_column",))
    "Column holding the text."
    n_tokens: int = cli(100_000, aliases=("--n_tokens",))
    "Tokens per side."
    context_length: int = cli(128, aliases=("--cache_ctx_len",))
    "Tokens per sequence."
    batch_size: int = cli(16, aliases=("--batch_size",))
    "Sequences per forward pass."
    top: int = 200
    "Most latents kept."
    z_min: float = 3.3
    "Two-proportion z statistic a latent must exceed."
    firings_per_token: int = cli(FIRINGS_PER_TOKEN, aliases=("--firings_per_token",))
    "Most firings counted per token for non-TopK dictionaries (the strongest); a warning says when more were dropped."
    device: str = "auto"
    "cpu, cuda, cuda:1 or auto."
    out: str = "runs/select/features.json"
    "Where the features JSON goes."


def main(argv: list[str] | None = None) -> Path:
    _, a = parse_config(SelectConfig, argv, prog="python -m engine.select", doc=__doc__)
    for name, least in (("n_tokens", 1), ("context_length", 2), ("batch_size", 1), ("top", 1), ("firings_per_token", 1)):
        if getattr(a, name) < least:
            raise UserError(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(a, name)}")
    device = pick_device(a.device)
    d = load_dictionary(a.dictionary, hookpoint=a.hookpoint).to(device)
    d.firings_per_token = a.firings_per_token
    hook = a.hookpoint or d.hookpoint
    if hook is None:
        raise UserError(f"dictionary {a.dictionary} names no hookpoint -- pass --hookpoint")
    model, tok, _ = load_model(a.model, device, "float32")
    hooked = HookedModel(model, [hook], read_input=[d.transcoder])
    args = (a.n_tokens, a.context_length, a.batch_size, device, a.dataset_column)
    dw, rw = _where_spec(a.domain_where, a.domain, "kind=test"), _where_spec(a.reference_where, a.reference, "kind=library")
    cd, ad, Nd = firing_counts(hooked, d, tok, a.domain, _where(dw), *args)
    cr, ar, Nr = firing_counts(hooked, d, tok, a.reference, _where(rw), *args)
    details = rank(cd.double(), ad, Nd, cr.double(), ar, Nr, a.top, a.z_min)
    out = Path(a.out)
    doc = {"feature_indices": [r["index"] for r in details], "scores": [r["log_ratio"] for r in details],
           "hookpoint": hook, "domain": [a.domain, dw], "reference": [a.reference, rw],
           "tokens": [Nd, Nr], "details": details}
    write_atomic(out, json.dumps(doc, indent=1), fsync=False)
    print(f"select: {len(details)} latents fire significantly more on the domain ({Nd:,} vs {Nr:,} tokens) -> {out}")
    for r in details[:10]:
        print(f"  latent {r['index']:5d}  log-ratio {r['log_ratio']:+.2f}  z {r['z']:6.1f}  rate {r['domain_rate']:.4f} vs {r['reference_rate']:.4f}")
    return out
