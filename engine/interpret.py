"""Explain every harvested latent: offline keyword labels always, an LLM label when asked.

    python -m engine.interpret RUN --provider search                       # offline, no server
    python -m engine.interpret RUN --provider anthropic --model claude-haiku-4-5 [--batch]
    python -m engine.interpret RUN --provider openai-compatible --base-url http://127.0.0.1:8000/v1 --model M
    python -m engine.interpret RUN --provider anthropic --model claude-haiku-4-5 --dry-run

Reads RUN/harvest/{config.json,components.jsonl}; appends one Explanation per
latent to RUN/interpretations/results.jsonl and rewrites the seed-format exports
feature_labels.json and feature_examples.jsonl beside it.

* Examples: the explainer sees the split of `engine.examples` (top examples at
  even ranks + quantile strata of the random sample); their ids go in
  `example_ids` and scoring never uses them.
* Prompts: `engine.prompts.render("explain", ...)`; the instructions (system)
  and run context (prefix) are identical for every latent and sent as cacheable.
* Resume: a latent is done when the log holds an error-free explanation from the
  same explainer and model (search: any search explanation). A rerun skips done
  latents, retries failed ones, and repairs a torn last line first. Requests the
  client refused before sending (budget reached, circuit open, bad key) write
  nothing, so a rerun picks them up.
* --latents selects by dictionary index (the feature number, as in harvest and
  the seed), in every hookpoint of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from engine.errors import UserError, run_cli
from engine.examples import SplitConfig, Split, Window, split_examples
from engine.labels_search import Background, search_label
from engine.latent_sets import parse_latents
from engine.prompts import Prompt, render
from engine.resultsio import JsonlAppender, iter_records
from engine.shards import Shard, iter_family, log_path
from engine.schemas import ComponentData, Explanation, ExplanationOutput, HookpointInfo, RunConfig, provider_schema

PROVIDERS = ("search", "anthropic", "openrouter", "openai-compatible")
EXPLAINERS = ("default", "contrastive", "cot")
NOT_SENT = {"budget_exceeded", "circuit_open", "http_401", "http_403", "spend_limit", "http_404"}
"Failures that say nothing about the latent (nothing sent, or the whole client is unusable): not logged."
EXPECTED_OUTPUT_TOKENS = 200
"Output tokens per explanation assumed by --dry-run's expected cost (max_tokens gives the bound)."


@dataclass(frozen=True)
class InterpretConfig:
    """One `engine.interpret` run."""

    provider: str = "search"
    "search (offline keyword labels) | anthropic | openrouter | openai-compatible."
    model: str = ""
    "LLM id (ignored for search)."
    base_url: str | None = None
    "API root (openai-compatible: required, e.g. http://127.0.0.1:8000/v1)."
    api_key_env: str | None = None
    "Environment variable with the key (default per provider)."
    max_concurrent: int = 16
    "Requests in flight."
    batch: bool = False
    "Anthropic Message Batches (half price, results within 24 h)."
    batch_poll_s: float = 30.0
    "Seconds between batch status polls."
    explainer: str = "default"
    "default | contrastive (adds non-activating examples) | cot (step-by-step reasoning)."
    non_activating: str = "random"
    "Source of the contrastive explainer's non-activating examples: random | neighbours | faiss."
    n_non_activating: int = 8
    "Non-activating examples shown to the contrastive explainer."
    latents: str = ""
    "Dictionary indices to explain ('1,5,9-20' or a features JSON file); '' = all."
    max_examples: int = 20
    "Activation examples shown per latent (see SplitConfig.with_budget)."
    max_tokens: int = 1024
    "Output ceiling per explanation."
    temperature: float = 0.0
    max_cost: float | None = None
    "Dollar cap; requests that could pass it are not sent."
    dry_run: bool = False
    "Print one prompt and the token and cost estimate for the whole run; send nothing."
    shard: str = ""
    "'k/N': explain only latent range k of N, into its own log (engine.shards); '' = all."
    progress: bool = True


# --------------------------------------------------------------------------- run directory


def load_run_config(run_dir: Path) -> RunConfig:
    path = run_dir / "harvest" / "config.json"
    try:
        return msgspec.json.decode(path.read_bytes(), type=RunConfig)
    except FileNotFoundError:
        raise UserError(f"{path} not found -- is {run_dir} a run directory? Run python -m engine.harvest first") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:  # as resultsio.UNDECODABLE
        raise UserError(f"{path}: not a RunConfig ({e}) -- re-run the harvest") from None


def iter_components(run_dir: Path, keep: set[int] | None = None) -> Iterator[ComponentData]:
    """Stream harvest/components.jsonl; `keep`: dictionary indices to yield (None = all)."""
    path = run_dir / "harvest" / "components.jsonl"
    if not path.exists():
        raise UserError(f"{path} not found -- the harvest did not finish; rerun python -m engine.harvest")
    for c in iter_records(path, ComponentData):
        if keep is None or c.component_idx in keep:
            yield c


def selection(spec: str) -> set[int] | None:
    idx, _ = parse_latents(spec)
    return set(idx) if spec else None


def describe_hookpoint(name: str, n_layers: int) -> str:
    """'blocks.2.hook_resid_post' -> 'residual stream after layer 2 of 4'."""
    m = re.search(r"(?:^|\.)(?:blocks|layers|h|layer)\.(\d+)", name) or re.search(r"(\d+)", name)
    layer = f" {m.group(1)} of {n_layers}" if m else ""
    low = name.lower()
    if "resid_pre" in low:
        return f"residual stream entering layer{layer}"
    if "mlp" in low:
        return f"MLP of layer{layer}"
    if "attn" in low or "attention" in low:
        return f"attention of layer{layer}"
    return f"residual stream after layer{layer}"


def primary(records: list[Explanation]) -> Explanation | None:
    """The explanation shown and scored for a latent: its last error-free LLM one, else its last."""
    if not records:
        return None
    return next((e for e in reversed(records) if e.source == "llm" and e.error is None), records[-1])


def read_explanations(run_dir: Path) -> dict[int, list[Explanation]]:
    """latent -> its explanations from results.jsonl and any shard logs beside it (engine.shards)."""
    out: dict[int, list[Explanation]] = {}
    for e in iter_family(run_dir / "interpretations" / "results.jsonl", Explanation):
        out.setdefault(e.latent, []).append(e)
    return out


# --------------------------------------------------------------------------- prompt context


@dataclass
class Labels:
    """Search labels of every latent and the best known label (LLM or search) for the prompts."""

    search: dict[int, str] = field(default_factory=dict)
    known: dict[int, tuple[str, str]] = field(default_factory=dict)
    "latent -> (label, source) from results.jsonl."

    def of(self, latent: int) -> tuple[str, str]:
        if latent in self.known:
            return self.known[latent]
        return self.search.get(latent, ""), "search"


def run_context(rc: RunConfig) -> dict:
    model = Path(rc.model).name if Path(rc.model).exists() else rc.model
    dataset = Path(rc.dataset).name if Path(rc.dataset).exists() else rc.dataset
    hps = [dict(name=h.name, where=describe_hookpoint(h.name, rc.n_layers), kind=h.kind, n_latents=h.n_latents)
           for h in rc.hookpoints]
    return dict(model=model, model_class=rc.model_class, n_layers=rc.n_layers, dataset=dataset, hookpoints=hps,
                window_len=2 * rc.window + 1)


def explain_prompt(rc: RunConfig, c: ComponentData, split: Split, variant: str, labels: Labels,
                   negatives: list[Window] = (), n_stats: int = 8, n_neighbours: int = 5) -> Prompt:
    hp: HookpointInfo = next(h for h in rc.hookpoints if h.name == c.hookpoint)
    examples = sorted([w for w in split.explain if w.stratum == "top"], key=lambda w: -max(w.activations))
    rest = sorted([w for w in split.explain if w.stratum != "top"], key=lambda w: max(w.activations))
    latent = dict(key=c.component_key, where=describe_hookpoint(hp.name, rc.n_layers),
                  density_pct=f"{100 * c.firing_density:.3g}%", firing_count=c.firing_count,
                  mean_activation=c.mean_activation, max_activation=c.max_activation)

    def trim(stats):
        if stats is None:
            return None
        return dict(top_precision=stats.top_precision[:n_stats], top_recall=stats.top_recall[:n_stats],
                    top_pmi=stats.top_pmi[:n_stats])

    neighbours = []
    for s in c.correlations.jaccard[:n_neighbours]:
        label, source = labels.of(s.index)
        neighbours.append(dict(key=s.key, value=s.value, label=label, source=source))
    return render("explain", variant=variant, run=run_context(rc), latent=latent, examples=examples + rest,
                  n_top=len(examples), negatives=list(negatives), input_stats=trim(c.input_token_stats),
                  output_stats=trim(c.output_token_stats), logit_lens=c.logit_lens, neighbours=neighbours)


def parse_explanation(text: str, parsed: dict | None) -> tuple[ExplanationOutput | None, str | None]:
    """The structured reply, from the provider's parsed JSON or the first {...} in the text."""
    candidates = []
    if parsed is not None:
        candidates.append(msgspec.json.encode(parsed))
    if text:
        lo, hi = text.find("{"), text.rfind("}")
        if 0 <= lo < hi:
            candidates.append(text[lo : hi + 1].encode())
    for raw in candidates:
        try:
            out = msgspec.json.decode(raw, type=ExplanationOutput)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        label = " ".join(out.label.split())
        if not label:
            return None, "empty_label"
        return ExplanationOutput(reasoning=out.reasoning.strip(), label=label, confidence=out.confidence), None
    return None, "invalid_json" if text else "empty_response"


# --------------------------------------------------------------------------- the run


@dataclass
class Pending:
    latent: int
    component_key: str
    search_label: str
    example_ids: list[str]
    prompt_hash: str


def explainer_name(cfg: InterpretConfig) -> str:
    return "search" if cfg.provider == "search" else cfg.explainer


def is_done(e: Explanation, cfg: InterpretConfig) -> bool:
    if cfg.provider == "search":
        return e.source == "search"
    return e.source == "llm" and e.error is None and e.explainer == cfg.explainer and e.model == cfg.model


def prepare_labels(run_dir: Path, existing: dict[int, list[Explanation]]) -> tuple[Labels, Background]:
    """Background statistics and the search label of every latent (two streaming passes)."""
    labels = Labels()
    for lat, recs in existing.items():
        p = primary(recs)
        if p is not None and p.label:
            labels.known[lat] = (p.label, p.source)
    background = Background.of(iter_components(run_dir))
    for c in iter_components(run_dir):
        labels.search[c.latent] = search_label(c, background=background)
    return labels, background


def _pending_latents(run_dir: Path, cfg: InterpretConfig, keep: set[int] | None,
                     owns=lambda latent: True) -> tuple[list[int], Labels, Background]:
    """Labels for the prompts, and which selected latents (of this shard) are left to explain."""
    existing = read_explanations(run_dir)
    labels, background = prepare_labels(run_dir, existing)
    todo = [c.latent for c in iter_components(run_dir, keep)
            if owns(c.latent) and not any(is_done(e, cfg) for e in existing.get(c.latent, []))]
    return todo, labels, background


def _explain_inputs(run_dir: Path, rc: RunConfig, cfg: InterpretConfig, todo: set[int], background: Background,
                    negatives=None) -> Iterator[tuple[ComponentData, Split, str, list[Window]]]:
    split_cfg = SplitConfig.with_budget(cfg.max_examples, seed=rc.seed)
    for c in iter_components(run_dir):
        if c.latent not in todo:
            continue
        split = split_examples(c, split_cfg)
        ids = set(split.explain_ids)
        shown = msgspec.structs.replace(  # the search label, too, sees only the explainer's examples
            c, top_examples=[e for e in c.top_examples if f"{e.sequence}:{e.position}" in ids],
            random_examples=[e for e in c.random_examples if f"{e.sequence}:{e.position}" in ids])
        label = search_label(shown, background=background)
        negs = []
        if negatives is not None:
            negs = negatives.negatives(c, cfg.n_non_activating, queries=split.explain, exclude_ids=split.explain_ids)
        yield c, split, label, negs


def search_explanation(c: ComponentData, split: Split, label: str) -> Explanation:
    return Explanation(component_key=c.component_key, latent=c.latent, label=label, confidence="low", reasoning="",
                       search_label=label, source="search", model="", explainer="search", prompt_hash="",
                       raw_response="", example_ids=split.explain_ids)


def llm_explanation(p: Pending, cfg: InterpretConfig, response) -> Explanation:
    out, err = (None, response.error) if response.error else parse_explanation(response.text, response.parsed)
    return Explanation(
        component_key=p.component_key, latent=p.latent, label=out.label if out else p.search_label,
        confidence=out.confidence if out else "low", reasoning=out.reasoning if out else "",
        search_label=p.search_label, source="llm", model=cfg.model, explainer=cfg.explainer,
        prompt_hash=p.prompt_hash, raw_response=response.text, example_ids=p.example_ids, usage=response.usage,
        error=err)


def run_interpret(run_dir: str | Path, cfg: InterpretConfig, negatives=None, client=None) -> dict:
    """Explain the selected latents of `run_dir`; returns counts {written, skipped, failed, not_sent}.

    negatives: a NegativeSource for the contrastive explainer (built from the run when None).
    client: an LLM client (made from cfg when None), for tests.
    """
    run_dir = Path(run_dir)
    if cfg.provider not in PROVIDERS:
        raise UserError(f"--provider {cfg.provider!r}: choose one of {', '.join(PROVIDERS)}")
    if cfg.explainer not in EXPLAINERS:
        raise UserError(f"--explainer {cfg.explainer!r}: choose one of {', '.join(EXPLAINERS)}")
    if cfg.provider != "search" and not cfg.model:
        raise UserError(f"--provider {cfg.provider} needs --model (e.g. claude-haiku-4-5)")
    rc = load_run_config(run_dir)
    keep = selection(cfg.latents)
    shard = Shard.parse(cfg.shard)
    todo, labels, background = _pending_latents(run_dir, cfg, keep,
                                                (lambda lat: shard.owns(lat, rc.n_latents)) if shard else (lambda lat: True))
    out = log_path(run_dir / "interpretations" / "results.jsonl", shard)
    counts = Counter(skipped=0, written=0, failed=0, not_sent=0)
    if cfg.explainer == "contrastive" and cfg.provider != "search" and negatives is None and todo:
        from engine.negatives import open_source

        negatives = open_source(run_dir, rc, cfg.non_activating)
    inputs = _explain_inputs(run_dir, rc, cfg, set(todo), background,
                             negatives if cfg.explainer == "contrastive" and cfg.provider != "search" else None)
    if cfg.dry_run:
        dry_run(rc, cfg, inputs, labels, len(todo))
        return dict(counts)
    if not todo:
        print(f"interpret: nothing to do ({explainer_name(cfg)} explanations exist for every selected latent)")
    elif cfg.provider == "search":
        from tqdm import tqdm

        with JsonlAppender(out, Explanation) as log:
            for c, split, label, _ in tqdm(inputs, total=len(todo), desc="search labels", unit="latent",
                                           disable=not cfg.progress):
                log.append(search_explanation(c, split, label))
                counts["written"] += 1
    else:
        asyncio.run(_run_llm(run_dir, rc, cfg, inputs, labels, len(todo), out, counts, client))
    from engine.exports import write_exports

    write_exports(run_dir)
    return dict(counts)


async def _run_llm(run_dir: Path, rc: RunConfig, cfg: InterpretConfig, inputs, labels: Labels, total: int,
                   out: Path, counts: Counter, client) -> None:
    from clients import make_client, run_requests
    from clients.base import CompletionRequest

    own = client is None
    if own:
        client = make_client(cfg.provider, cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env,
                             max_concurrent=cfg.max_concurrent, max_cost=cfg.max_cost,
                             cache_ttl="1h" if cfg.batch else "5m")
    pending: dict[str, Pending] = {}
    schema = provider_schema(ExplanationOutput)
    failures: Counter = Counter()

    def requests():
        for c, split, search, negs in inputs:
            prompt = explain_prompt(rc, c, split, cfg.explainer, labels, negs)
            cid = f"explain:{c.component_key}"
            pending[cid] = Pending(c.latent, c.component_key, search, split.explain_ids + [w.id for w in negs],
                                   prompt.hash)
            yield CompletionRequest(custom_id=cid, system=prompt.system, prefix=prompt.prefix, prompt=prompt.prompt,
                                    max_tokens=cfg.max_tokens, temperature=cfg.temperature, schema=schema,
                                    schema_name="explanation")

    with JsonlAppender(out, Explanation) as log:
        def on_result(response) -> None:
            p = pending.pop(response.custom_id)
            if response.error in NOT_SENT:
                counts["not_sent"] += 1
                failures[response.error] += 1
                return
            e = llm_explanation(p, cfg, response)
            log.append(e)
            counts["written"] += 1
            if e.error:
                counts["failed"] += 1
                failures[e.error] += 1

        try:
            if cfg.batch:
                if cfg.provider != "anthropic":
                    raise UserError("--batch needs --provider anthropic (Message Batches)")
                from clients.anthropic_batches import BatchPolicy, run_batches

                await run_batches(client, list(requests()), on_result,
                                  state_path=log_path(run_dir / "interpretations" / "batches.json", Shard.parse(cfg.shard)),
                                  policy=BatchPolicy(poll_interval_s=cfg.batch_poll_s), progress=cfg.progress)
            else:
                await run_requests(client, requests(), on_result, progress=cfg.progress, total=total, desc="explain")
        finally:
            if own:
                await client.aclose()
    spent = client.ledger.totals().cost_usd
    msg = f"interpret: {counts['written']} explanations written, ${spent:.4f} spent"
    if failures:
        msg += f"; failures {dict(failures)}"
    if counts["not_sent"]:
        msg += f"; {counts['not_sent']} latents not sent -- rerun the same command to continue"
    print(msg, file=sys.stderr)


def dry_run(rc: RunConfig, cfg: InterpretConfig, inputs, labels: Labels, total: int) -> None:
    """Print the first prompt and the estimated tokens and cost of the whole run (chars / 4 per token)."""
    first: Prompt | None = None
    shared = fresh = n = 0
    for c, split, search, negs in inputs:
        if cfg.provider == "search":
            print(f"latent {c.component_key}: search label {search!r}")
            n += 1
            break
        p = explain_prompt(rc, c, split, cfg.explainer, labels, negs)
        if first is None:
            first = p
            print(p.text())
        shared = (len(p.system) + len(p.prefix)) // 4
        fresh += len(p.prompt) // 4
        n += 1
    if cfg.provider == "search":
        print(f"dry run: {total} latents to label offline (no LLM, no cost)")
        return
    print(f"dry run: {n} latents; input ~{shared} shared (cacheable) + ~{fresh // max(n, 1)} per-latent tokens each, "
          f"~{shared * n + fresh:,} input tokens in all; output <= {cfg.max_tokens} tokens per latent")
    from clients.config import Prices

    price = Prices().lookup(cfg.model)
    if price is None:
        print(f"no price known for model {cfg.model!r}; cost not estimated")
        return
    batch = cfg.batch
    cached = price.cost(input_tokens=fresh, output_tokens=EXPECTED_OUTPUT_TOKENS * n, cache_read=shared * max(n - 1, 0),
                        cache_write_5m=shared, batch=batch)
    worst = price.cost(input_tokens=fresh + shared * n, output_tokens=cfg.max_tokens * n, batch=batch)
    print(f"estimated cost: ${cached:.4f} with prompt caching and ~{EXPECTED_OUTPUT_TOKENS} output tokens each; "
          f"at most ${worst:.4f} (no cache hits, every reply at max_tokens){' (batch price)' if batch else ''}")


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> tuple[Path, InterpretConfig]:
    p = argparse.ArgumentParser(prog="python -m engine.interpret", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="run directory (with harvest/)")
    p.add_argument("--provider", default="search", choices=PROVIDERS)
    p.add_argument("--model", default="")
    p.add_argument("--base-url", default=None)
    p.add_argument("--api-key-env", default=None, help="environment variable holding the API key")
    p.add_argument("--max-concurrent", type=int, default=16)
    p.add_argument("--batch", action="store_true", help="Anthropic Message Batches (half price)")
    p.add_argument("--explainer", default="default", choices=EXPLAINERS)
    p.add_argument("--non-activating", default="random", choices=("random", "neighbours", "faiss"),
                   help="non-activating examples for --explainer contrastive")
    p.add_argument("--n-non-activating", type=int, default=8)
    p.add_argument("--latents", default="", help="dictionary indices: 1,5,9-20 or a features JSON file (default all)")
    p.add_argument("--max-examples", type=int, default=20, help="activation examples shown per latent")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-cost", type=float, default=None, help="dollar cap for this run")
    p.add_argument("--dry-run", action="store_true", help="print one prompt and the estimated tokens and cost")
    p.add_argument("--shard", default="", help="k/N: only latent range k of N, into its own log; merge with python -m engine.merge")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = InterpretConfig(provider=a.provider, model=a.model, base_url=a.base_url, api_key_env=a.api_key_env,
                          max_concurrent=a.max_concurrent, batch=a.batch, explainer=a.explainer,
                          non_activating=a.non_activating, n_non_activating=a.n_non_activating, latents=a.latents,
                          max_examples=a.max_examples, max_tokens=a.max_tokens, temperature=a.temperature,
                          max_cost=a.max_cost, dry_run=a.dry_run, shard=a.shard, progress=not a.no_progress)
    return a.run_dir, cfg


def main(argv: list[str] | None = None) -> dict:
    run_dir, cfg = parse_args(argv)
    counts = run_interpret(run_dir, cfg)
    if not cfg.dry_run:
        print(f"interpret: {counts['written']} written -> {log_path(run_dir / 'interpretations' / 'results.jsonl', Shard.parse(cfg.shard))}")
    return counts


if __name__ == "__main__":
    run_cli(main)
