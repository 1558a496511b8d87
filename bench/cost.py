"""Dollar cost per latent of interpret + score, with and without prompt caching and Message Batches.

    python -m bench.cost [--run RUN] [--latents 40] [--scorers detection,fuzz]

Token counts come from the real prompts: the bench harvests the embedded default (or
reads RUN), labels it offline, and for a sample of latents renders exactly what
`engine.interpret` and `engine.score` would send: the explanation prompt of each
explainer and every call of each LLM scorer, through the same functions. Replies are
schema-valid JSON with one entry per item the call asks about (an answer per excerpt, a
value per token); the explanation's reasoning is budgeted at `--explain-output` tokens.
Tokens are estimated as characters / 4, the rule the interpret dry run uses (Anthropic's
tokenizer is not public; count real usage with the ledger on a few latents to calibrate).

Each request has a shared part (system + prefix: identical for every latent, the two
blocks clients/anthropic.py marks with `cache_control`) and a per-latent part. Four ways
to pay:

  plain      every input token at the input price
  cache      shared part read from the cache (0.1 x input) after one write per TTL (1.25 x),
             *only if the shared part reaches the model's minimum cacheable length*
  batch      Message Batches: everything at 50%
  both       batch + cache (1 h TTL, written at 2 x input, as the batch runner sends)

A shared part below the minimum is sent uncached (the API raises no error), so "padded"
also prices the shared part filled up to the minimum (e.g. with few-shot examples) and
cached: worth it when shared > 0.1 x minimum. Prices are clients/config.Prices (list
prices; check the live page). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

MIN_CACHEABLE = {  # tokens; ../shared/reference/llm_clients.md §1.5 (Anthropic docs as quoted there)
    "claude-haiku-4-5": 4096,
    "claude-sonnet-4-5": 1024,
}
DEFAULT_MIN_CACHEABLE = 1024
"Assumed for models the notes give no minimum for (Haiku 5.5, Sonnet 5.5)."
CACHE_WRITES_PER_RUN = 1
"A run keeps each shared prefix warm (requests arrive well within the TTL), so it is written about once."
MODES = ("plain", "cache", "batch", "both")


@dataclass
class Part:
    """Tokens of one step (explain, detection, ...) for one latent (means over the sampled latents)."""

    shared: float = 0
    "Shared (cacheable) input tokens of one request of this step."
    fresh: float = 0
    "Per-latent input tokens, summed over the step's requests."
    output: float = 0
    "Output tokens, summed over the step's requests."
    requests: float = 0


def tokens(text: str) -> int:
    return (len(text) + 3) // 4


def reply(schema: dict | None, n_items: int) -> str:
    """A schema-valid reply whose list fields hold n_items entries (one per excerpt / token asked about)."""
    from clients.testing import example_for_schema

    if schema is None:
        return ""
    value = example_for_schema(schema)
    if isinstance(value, dict):
        value = {k: (v[:1] * n_items if isinstance(v, list) and v else v) for k, v in value.items()}
    return json.dumps(value)


def items_per_call(scorer, item) -> list[int]:
    """How many things each of the scorer's calls asks about, in call order."""
    if hasattr(scorer, "windows"):  # simulation: one value per token of each window
        return [len(w.tokens) for w in scorer.windows(item)]
    if hasattr(scorer, "batches"):  # detection, fuzz: one answer per excerpt
        return [len(b) for b in scorer.batches(item)]
    return [1] * len(scorer.calls(item))  # intruder: one number


def sample_parts(run_dir: Path, n_latents: int, scorers: list[str], explain_output: int) -> tuple[dict[str, Part], int]:
    """Mean tokens per latent for each explainer and LLM scorer, from the rendered prompts; and the latents sampled."""
    from engine.core.examples import SplitConfig, split_examples
    from engine.core.rundir import RunDir, primary
    from engine.interpret.explain import explain_prompt, prepare_labels
    from engine.interpret.negatives import open_source
    from engine.score.items import score_item
    from engine.score.scorers import registry
    from engine.score.scorers.base import ScoreConfig

    rc = RunDir(run_dir).load_config()
    explanations = RunDir(run_dir).read_explanations()
    labels, _ = prepare_labels(run_dir, explanations)
    negatives = open_source(run_dir, rc, "random")
    cfg = ScoreConfig()
    reg = registry(cfg)
    comps = [c for c in RunDir(run_dir).iter_components() if c.firing_count >= 40][:n_latents]
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
            calls = reg[name].calls(item)
            for call, n in zip(calls, items_per_call(reg[name], item)):
                add(name, call.prompt.system, call.prompt.prefix, call.prompt.prompt, max(tokens(reply(call.schema, n)), 1))
    n = max(len(comps), 1)
    return {k: Part(v.shared, v.fresh / n, v.output / n, v.requests / n) for k, v in parts.items()}, len(comps)


def costs(part: Part, price, min_cache: int, n_latents: int, pad: bool = False) -> dict[str, float]:
    """$ per latent of one step under the four ways to pay, for a run of n_latents.

    pad: fill a shared part shorter than min_cache up to min_cache (so it is cached)."""
    shared = max(part.shared, min_cache) if pad else part.shared
    shared_all = shared * part.requests  # shared tokens sent per latent
    cacheable = shared >= min_cache
    plain = price.cost(input_tokens=part.shared * part.requests + part.fresh, output_tokens=part.output)
    batch = price.cost(input_tokens=part.shared * part.requests + part.fresh, output_tokens=part.output, batch=True)
    if cacheable:
        writes = CACHE_WRITES_PER_RUN * shared / n_latents  # amortised over the run
        cache = price.cost(input_tokens=part.fresh, output_tokens=part.output, cache_read=shared_all,
                           cache_write_5m=writes)
        both = price.cost(input_tokens=part.fresh, output_tokens=part.output, cache_read=shared_all,
                          cache_write_1h=writes, batch=True)
    else:
        cache, both = plain, batch
    return {"plain": plain, "cache": cache, "batch": batch, "both": both, "cacheable": cacheable}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=None, help="an existing run (harvest + explanations); default: make one")
    p.add_argument("--latents", type=int, default=40, help="latents sampled for the token counts")
    p.add_argument("--scorers", default="detection,fuzz,simulation,intruder")
    p.add_argument("--explain-output", type=int, default=200, help="output tokens budgeted per explanation")
    p.add_argument("--dictionary-latents", type=int, default=131072, help="latents priced in the 'whole dictionary' columns")
    a = p.parse_args(argv)
    import contextlib
    import io

    from clients.config import Prices

    with tempfile.TemporaryDirectory() as tmp:
        run = a.run
        if run is None:
            from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
            from engine.harvest.run import main as harvest
            from engine.interpret.config import InterpretConfig
            from engine.interpret.run import run_interpret

            run = Path(tmp) / "run"
            with contextlib.redirect_stdout(io.StringIO()):  # keep the harvest's summary line out of the table
                harvest([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", DEFAULT_DATASET, "--out", str(run), "--n-tokens", "20000",
                         "--batch-size", "16", "--context-length", "128"])
            run_interpret(run, InterpretConfig(provider="search", progress=False))
        scorers = [s for s in a.scorers.split(",") if s]
        parts, n = sample_parts(run, a.latents, scorers, a.explain_output)

    N = a.dictionary_latents
    print(f"tokens per latent, characters / 4 (the rule of `engine.interpret --dry-run`; Anthropic's tokenizer is not "
          f"public, and Haiku 5.5's newer one gives ~30% more), mean over {n} latents of a 20k-token harvest of the "
          f"embedded default with offline labels:")
    print(f"{'step':20s} {'requests':>8s} {'shared/req':>10s} {'per-latent in':>13s} {'out':>6s}")
    for step, part in parts.items():
        print(f"{step:20s} {part.requests:8.1f} {part.shared:10.0f} {part.fresh:13.0f} {part.output:6.0f}")
    pipeline = ["explain:default", *[s for s in scorers if s in parts]]
    print(f"\n$ per latent (ratio to plain in brackets) and $ for {N:,} latents; 'cached in' is the shared part once it "
          f"reaches the model's minimum cacheable prefix (min), else 0; pipeline = {' + '.join(pipeline)}")
    print(f"{'model':18s} {'step':16s} {'min':>5s} {'cached in':>9s} {'uncached':>8s} {'out':>5s} {'plain':>9s} "
          f"{'cache':>16s} {'batch':>16s} {'both':>16s} {f'plain x{N:,}':>14s} {f'both x{N:,}':>14s}")
    prices = Prices()
    result = {"latents_sampled": n, "dictionary_latents": N, "tokens": {k: vars(v) for k, v in parts.items()}, "models": {}}
    for model, price in prices.models.items():
        min_cache = MIN_CACHEABLE.get(model, DEFAULT_MIN_CACHEABLE)
        total = {k: 0.0 for k in MODES}
        padded = {k: 0.0 for k in MODES}
        tok = {"cached": 0.0, "uncached": 0.0, "out": 0.0}
        rows = []
        for step in pipeline:
            part = parts[step]
            c = costs(part, price, min_cache, N)
            for k in MODES:
                total[k] += c[k]
                padded[k] += costs(part, price, min_cache, N, pad=True)[k]
            cached = part.shared * part.requests if c["cacheable"] else 0.0
            row = (step, cached, part.shared * part.requests + part.fresh - cached, part.output, c)
            rows.append(row)
            for key, v in zip(tok, row[1:4]):
                tok[key] += v
        rows.append(("pipeline", tok["cached"], tok["uncached"], tok["out"], total))
        for i, (step, cached, uncached, out, c) in enumerate(rows):
            cells = [f"{c[k]:.5f} [{c[k] / c['plain']:.2f}]" for k in ("cache", "batch", "both")]
            print(f"{model if i == 0 else '':18s} {step:16s} {min_cache if i == 0 else '':>5} {cached:9.0f} {uncached:8.0f} "
                  f"{out:5.0f} {c['plain']:9.5f} {cells[0]:>16s} {cells[1]:>16s} {cells[2]:>16s} "
                  f"{c['plain'] * N:13,.0f}$ {c['both'] * N:13,.0f}$")
        print(f"{'':18s} {'padded to min':16s} pipeline with every shared part filled to {min_cache} tokens and cached: "
              f"cache [{padded['cache'] / total['plain']:.2f}], both [{padded['both'] / total['plain']:.2f}]")
        result["models"][model] = {**{k: round(v, 6) for k, v in total.items()}, "min_cacheable": min_cache,
                                   "cached_steps": [r[0] for r in rows[:-1] if r[4]["cacheable"]],
                                   "padded": {k: round(v, 6) for k, v in padded.items()}}
    print("Not priced: thinking tokens (billed as output; clients/anthropic.py sends no `thinking` or `effort`, and "
          "adaptive thinking is on by default on Haiku 5.5 and Sonnet 5.5), retries, the explanation's real length; "
          "batch cache hits are best effort, so 'both' is a floor.")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
