"""Dollar cost per latent of interpret + score, with and without prompt caching and Message Batches.

    python -m bench.cost [--run RUN] [--latents 40] [--scorers detection,fuzz]

Token counts come from the real prompts: the bench harvests the embedded default (or
reads RUN), labels it offline, and for a sample of latents renders exactly what
`engine.interpret` and `engine.score` would send: the explanation prompt of each
explainer and every call of each LLM scorer, through the same functions. Replies are
sized from a schema-valid example reply per call (what a terse model returns; the
explanation's reasoning is budgeted at `--explain-output` tokens). Tokens are
estimated as characters / 4, the rule the interpret dry run uses (Anthropic's tokenizer
is not public; count real usage with the ledger on a few latents to calibrate).

Each request has a shared part (system + prefix: identical for every latent, marked
`cache_control` by clients/anthropic.py) and a per-latent part. Four ways to pay:

  plain      every input token at the input price
  cache      shared part read from the cache (0.1 x input) after one write per TTL (1.25 x),
             *only if the shared part reaches the model's minimum cacheable length*
  batch      Message Batches: everything at 50%
  both       batch + cache (1 h TTL, written at 2 x input, as the batch runner sends)

Prices are clients/config.Prices (list prices; check the live page). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

MIN_CACHEABLE = {  # tokens; ../shared/reference/llm_clients.md (Anthropic docs as quoted there)
    "claude-haiku-4-5": 4096,
    "claude-sonnet-4-5": 1024,
}
"Models not listed are assumed to cache from 1024 tokens."
CACHE_WRITES_PER_RUN = 1
"A run keeps each shared prefix warm (requests arrive well within the TTL), so it is written about once."


@dataclass
class Part:
    """Tokens of one step (explain, detection, ...) for one latent."""

    shared: int = 0
    "Shared (cacheable) input tokens of one request of this step."
    fresh: int = 0
    "Per-latent input tokens, summed over the step's requests."
    output: int = 0
    "Output tokens, summed over the step's requests."
    requests: int = 0


def tokens(text: str) -> int:
    return (len(text) + 3) // 4


def sample_parts(run_dir: Path, n_latents: int, scorers: list[str], explain_output: int) -> dict[str, Part]:
    """Mean tokens per latent for each explainer and LLM scorer, from the rendered prompts."""
    from clients.fake_server import example_for_schema
    from engine.examples import SplitConfig, split_examples
    from engine.interpret import iter_components, load_run_config, prepare_labels, primary, read_explanations
    from engine.interpret import explain_prompt
    from engine.negatives import open_source
    from engine.score import score_item
    from engine.scorers import ScoreConfig, registry

    rc = load_run_config(run_dir)
    explanations = read_explanations(run_dir)
    labels, _ = prepare_labels(run_dir, explanations)
    negatives = open_source(run_dir, rc, "random")
    cfg = ScoreConfig()
    reg = registry(cfg)
    comps = [c for c in iter_components(run_dir) if c.firing_count >= 40][:n_latents]
    parts: dict[str, Part] = {}

    def add(step: str, system: str, prefix: str, prompt: str, out: int) -> None:
        p = parts.setdefault(step, Part())
        p.shared = tokens(system) + tokens(prefix)
        p.fresh += tokens(prompt)
        p.output += out
        p.requests += 1

    split_cfg = SplitConfig.with_budget(20, seed=rc.seed)
    for c in comps:
        split = split_examples(c, split_cfg)
        negs = negatives.negatives(c, 8, queries=split.explain, exclude_ids=split.explain_ids)
        for variant in ("default", "contrastive", "cot"):
            p = explain_prompt(rc, c, split, variant, labels, negs if variant == "contrastive" else [])
            add(f"explain:{variant}", p.system, p.prefix, p.prompt, explain_output)
        item = score_item(c, primary(explanations[c.latent]), negatives, cfg, rc.window)
        for name in scorers:
            for call in reg[name].calls(item):
                reply = json.dumps(example_for_schema(call.schema)) if call.schema else ""
                add(name, call.prompt.system, call.prompt.prefix, call.prompt.prompt, max(tokens(reply), 1))
    n = max(len(comps), 1)
    return {k: Part(v.shared, v.fresh // n, v.output // n, v.requests // n) for k, v in parts.items()}, len(comps)


def costs(part: Part, price, min_cache: int, n_latents: int) -> dict[str, float]:
    """$ per latent of one step under the four ways to pay, for a run of n_latents."""
    shared_all = part.shared * part.requests  # shared tokens sent per latent
    cacheable = part.shared >= min_cache
    plain = price.cost(input_tokens=shared_all + part.fresh, output_tokens=part.output)
    if cacheable:
        writes = CACHE_WRITES_PER_RUN * part.shared / n_latents  # amortised over the run
        cache = price.cost(input_tokens=part.fresh, output_tokens=part.output, cache_read=shared_all,
                           cache_write_5m=writes)
        both = price.cost(input_tokens=part.fresh, output_tokens=part.output, cache_read=shared_all,
                          cache_write_1h=writes, batch=True)
    else:
        cache, both = plain, price.cost(input_tokens=shared_all + part.fresh, output_tokens=part.output, batch=True)
    batch = price.cost(input_tokens=shared_all + part.fresh, output_tokens=part.output, batch=True)
    return {"plain": plain, "cache": cache, "batch": batch, "both": both, "cacheable": cacheable}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=None, help="an existing run (harvest + explanations); default: make one")
    p.add_argument("--latents", type=int, default=40, help="latents sampled for the token counts")
    p.add_argument("--scorers", default="detection,fuzz,simulation,intruder")
    p.add_argument("--explain-output", type=int, default=200, help="output tokens budgeted per explanation")
    p.add_argument("--dictionary-latents", type=int, default=131072, help="latents priced in the 'whole dictionary' column")
    a = p.parse_args(argv)
    from clients.config import Prices

    with tempfile.TemporaryDirectory() as tmp:
        run = a.run
        if run is None:
            from engine.harvest import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
            from engine.harvest import main as harvest
            from engine.interpret import InterpretConfig, run_interpret

            run = Path(tmp) / "run"
            harvest([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", DEFAULT_DATASET, "--out", str(run), "--n-tokens", "20000",
                     "--batch-size", "16", "--context-length", "128"])
            run_interpret(run, InterpretConfig(provider="search", progress=False))
        parts, n = sample_parts(run, a.latents, [s for s in a.scorers.split(",") if s], a.explain_output)

    print(f"tokens per latent (characters / 4), mean over {n} latents of the embedded default:")
    print(f"{'step':20s} {'requests':>8s} {'shared/req':>10s} {'per-latent in':>13s} {'out':>6s}")
    for step, part in parts.items():
        print(f"{step:20s} {part.requests:8d} {part.shared:10d} {part.fresh:13d} {part.output:6d}")
    pipeline = ["explain:default", *[s for s in a.scorers.split(",") if s in parts]]
    print(f"\n$ per latent for explain (default explainer) + {', '.join(pipeline[1:])}; ratio to plain in brackets;"
          f" last column: the whole pipeline for {a.dictionary_latents:,} latents")
    prices = Prices()
    result = {"latents_sampled": n, "tokens": {k: vars(v) for k, v in parts.items()}, "models": {}}
    print(f"{'model':20s} {'plain':>10s} {'cache':>17s} {'batch':>17s} {'cache+batch':>17s} {'whole dict (both)':>18s}  cached steps")
    for model, price in prices.models.items():
        min_cache = MIN_CACHEABLE.get(model, 1024)
        per = {k: 0.0 for k in ("plain", "cache", "batch", "both")}
        cached_steps, if_cacheable = [], 0.0
        for step in pipeline:
            c = costs(parts[step], price, min_cache, a.dictionary_latents)
            for k in per:
                per[k] += c[k]
            if c["cacheable"]:
                cached_steps.append(step)
            if_cacheable += costs(parts[step], price, 0, a.dictionary_latents)["cache"]
        cells = [f"{per[k]:.5f} [{per[k] / per['plain']:.2f}]" for k in ("cache", "batch", "both")]
        print(f"{model:20s} {per['plain']:10.5f} {cells[0]:>17s} {cells[1]:>17s} {cells[2]:>17s} "
              f"{per['both'] * a.dictionary_latents:17,.0f}$  {', '.join(cached_steps) or f'none (shared < {min_cache})'}"
              f"; if all were cacheable: cache [{if_cacheable / per['plain']:.2f}]")
        result["models"][model] = {**{k: round(v, 6) for k, v in per.items()}, "min_cacheable": min_cache,
                                   "cached_steps": cached_steps, "cache_if_cacheable": round(if_cacheable, 6)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
