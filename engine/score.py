"""Score explanations on held-out examples: detection, fuzz, simulation, embedding, intruder, surprisal.

    python -m engine.score RUN --scorers embedding                          # offline
    python -m engine.score RUN --scorers detection fuzz --provider anthropic --model claude-haiku-4-5
    python -m engine.score RUN --scorers detection --provider openai-compatible --base-url URL --model M \\
        --logprobs 5 --best-of 4

Each latent's scored explanation is its primary one (last error-free LLM
explanation, else the last). Activating examples are the harvest's examples
minus every window overlapping one the explainer saw (`example_ids`);
non-activating ones come from the run's replayed negative pool
(`engine.negatives`), also minus anything shown. Output, append-only and
resumable like interpret (a latent is done for a scorer when the log holds an
error-free result for its current label):

  RUN/scores/<scorer>.jsonl          one ScoreResult per latent
  RUN/scores/details/<scorer>.jsonl  what was judged: one Row per example (+ simulations)
  RUN/scores/summary.json            per-scorer means, pooled metrics with latent-bootstrap CIs

Pooled metrics treat every judged example of every latent as one set
(micro-average) and their 95% intervals resample whole latents. A latent is a
"good feature" when F1 > 0.7, precision > 0.8 and recall > 0.6.

--best-of N: N explanations per latent (temperature --best-of-temperature) are
each scored by the first LLM scorer on half of the held-out examples; the best
is appended to results.jsonl with those selection examples added to its
`example_ids`, so the reported scores use only the other half.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import msgspec
import numpy as np

from engine.errors import UserError, run_cli
from engine.examples import exclude_shown, latent_rng, strata
from engine.interpret import (
    NOT_SENT, InterpretConfig, Pending as ExplainPending, explain_prompt, iter_components, llm_explanation, load_run_config,
    prepare_labels, primary, read_explanations, selection,
)
from engine.metrics import bootstrap_ci, classification_report, pearson
from engine.resultsio import JsonlAppender, iter_records
from engine.shards import Shard, iter_family, log_path
from engine.schemas import ComponentData, Explanation, ExplanationOutput, ScoreResult, Usage, provider_schema
from engine.scorers import SCORERS, Details, ScoreConfig, ScoreItem, registry

GOOD = {"f1": 0.7, "precision": 0.8, "recall": 0.6}
"The seed's thresholds for a good feature (strictly greater)."
NO_GOOD = {"intruder"}
"Scorers whose precision/recall are not about the explanation (no good-feature count)."


@dataclass(frozen=True)
class ScoreRunConfig:
    """One `engine.score` run."""

    scorers: tuple[str, ...] = ("detection", "fuzz")
    provider: str | None = None
    "Judge provider: anthropic | openrouter | openai-compatible (not needed for embedding alone)."
    model: str = ""
    base_url: str | None = None
    api_key_env: str | None = None
    max_concurrent: int = 16
    max_cost: float | None = None
    non_activating: str = "random"
    "random | neighbours | faiss (see engine.negatives)."
    latents: str = ""
    "Dictionary indices to score ('' = all with an explanation)."
    best_of: int = 1
    "Explanations generated per latent; the best on a selection half is kept (1 = off)."
    best_of_temperature: float = 1.0
    explainer: str = "default"
    "Explainer variant for --best-of candidates."
    max_examples: int = 20
    "Examples shown to --best-of candidates' explainer."
    score: ScoreConfig = field(default_factory=ScoreConfig)
    shard: str = ""
    "'k/N': score only latent range k of N, into its own logs (engine.shards); '' = all."
    progress: bool = True


# --------------------------------------------------------------------------- results


def to_result(d: Details, model: str, usage: Usage, n_boot: int = 1000, seed: int = 0) -> ScoreResult:
    """A ScoreResult from one latent's judged rows (errors when nothing could be judged)."""
    ok = [r for r in d.rows if r.prediction is not None]
    if not ok:
        error = ",".join(sorted(d.errors)) if d.errors else "no_examples"
        return ScoreResult(component_key=d.component_key, latent=d.latent, scorer=d.scorer, label=d.label,
                           n_examples=0, accuracy=0.0, balanced_accuracy=0.0, precision=0.0, recall=0.0, f1=0.0,
                           auc=None, ci={}, per_quantile_recall={}, model=model, usage=usage, error=error)
    y = np.array([r.activating for r in ok])
    pred = np.array([r.prediction for r in ok])
    probs = [r.probability for r in ok]
    score = np.array(probs, dtype=np.float64) if all(p is not None for p in probs) else None
    rep = classification_report(y, pred, score, strata=np.array([r.stratum for r in ok]), n_boot=n_boot, seed=seed)
    ci = dict(rep.ci)
    sims = [w for w in d.windows if w.predicted is not None]
    if sims:  # interval of the pooled Pearson r, resampling whole windows
        t = np.concatenate([w.true for w in sims])
        p = np.concatenate([w.predicted for w in sims])
        win = np.repeat(np.arange(len(sims)), [len(w.true) for w in sims])
        iv = bootstrap_ci(lambda i: pearson(t[i], p[i]), len(t), n_boot=n_boot, seed=seed, clusters=win)
        if iv is not None:
            ci["pearson"] = list(iv)
    return ScoreResult(component_key=d.component_key, latent=d.latent, scorer=d.scorer, label=d.label,
                       n_examples=rep.n, accuracy=rep.accuracy, balanced_accuracy=rep.balanced_accuracy,
                       precision=rep.precision, recall=rep.recall, f1=rep.f1, auc=rep.auc, ci=ci,
                       per_quantile_recall=rep.per_quantile_recall, model=model, usage=usage)


def add_usage(total: Usage, u: Usage) -> None:
    total.input_tokens += u.input_tokens
    total.output_tokens += u.output_tokens
    total.cache_read_input_tokens += u.cache_read_input_tokens
    total.cache_creation_input_tokens += u.cache_creation_input_tokens
    total.cost_usd += u.cost_usd


# --------------------------------------------------------------------------- items


def score_item(c: ComponentData, e: Explanation, negatives, cfg: ScoreConfig, half_width: int,
               n_quantiles: int = 5, n_negatives: int | None = None) -> ScoreItem:
    """Held-out activating windows (nothing overlapping what the explainer saw) and verified negatives."""
    windows = strata(c, n_quantiles)
    shown = set(e.example_ids)
    queries = [w for w in windows if w.id in shown]
    held = exclude_shown(windows, e.example_ids, half_width)
    negs = negatives.negatives(c, n_negatives or cfg.n_negatives, queries=queries, exclude_ids=e.example_ids)
    return ScoreItem(key=c.component_key, latent=c.latent, label=e.label, max_act=c.max_activation, activating=held,
                     negatives=negs, seed=cfg.seed)


@dataclass
class Waiting:
    """An LLM scorer's requests for one latent, while their responses arrive."""

    scorer: str
    item: ScoreItem
    responses: list
    left: int
    usage: Usage = field(default_factory=Usage)


def _done(run_dir: Path, scorer: str) -> set[tuple[int, str]]:
    return {(r.latent, r.label) for r in iter_family(run_dir / "scores" / f"{scorer}.jsonl", ScoreResult)
            if r.error is None}


def _owned(rc, cfg: ScoreRunConfig):
    """latent -> whether this process scores it (its --shard range)."""
    shard = Shard.parse(cfg.shard)
    return (lambda latent: shard.owns(latent, rc.n_latents)) if shard else (lambda latent: True)


def _make_client(cfg: ScoreRunConfig):
    from clients import make_client

    return make_client(cfg.provider, cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env,
                       max_concurrent=cfg.max_concurrent, max_cost=cfg.max_cost)


def run_score(run_dir: str | Path, cfg: ScoreRunConfig, negatives=None, client=None, embedder=None) -> dict:
    """Score the selected latents with `cfg.scorers`; returns the summary (also written to scores/summary.json).

    negatives: a NegativeSource (the run's replayed pool when None); client: LLM client (made from cfg
    when None); embedder: texts -> unit vectors (MiniLM when None). The last three are for tests.
    """
    run_dir = Path(run_dir)
    unknown = [s for s in cfg.scorers if s not in SCORERS]
    if unknown or not cfg.scorers:
        raise UserError(f"--scorers {' '.join(unknown) or '(none)'}: choose from {' '.join(SCORERS)}")
    rc = load_run_config(run_dir)
    all_scorers = registry(cfg.score, embedder)
    scorers = {name: all_scorers[name] for name in dict.fromkeys(cfg.scorers)}
    for s in scorers.values():
        if hasattr(s, "bind_run"):  # scorers that use the run's own model (surprisal)
            s.bind_run(rc)
    llm_needed = any(s.llm for s in scorers.values()) or cfg.best_of > 1
    if llm_needed and cfg.provider in (None, "", "search"):
        names = [n for n, s in scorers.items() if s.llm] or ["--best-of"]
        raise UserError(f"{', '.join(names)} need an LLM judge: pass --provider (anthropic | openrouter | "
                        "openai-compatible) and --model; only the embedding and surprisal scorers run offline")
    if llm_needed and not cfg.model:
        raise UserError(f"--provider {cfg.provider} needs --model")
    if not read_explanations(run_dir):
        raise UserError(f"{run_dir}/interpretations/results.jsonl holds no explanation -- run "
                        f"python -m engine.interpret {run_dir} first")
    if negatives is None:
        from engine.negatives import open_source

        negatives = open_source(run_dir, rc, cfg.non_activating)
    own_client = client is None and llm_needed
    if own_client:
        client = _make_client(cfg)
    asyncio.run(_score_all(run_dir, rc, cfg, scorers, negatives, client, own_client))
    summary = summarize(run_dir, list(scorers), selection(cfg.latents), cfg.score.n_boot, Shard.parse(cfg.shard))
    print(format_summary(summary))
    from engine.exports import write_exports

    write_exports(run_dir)
    return summary


async def _score_all(run_dir: Path, rc, cfg: ScoreRunConfig, scorers: dict, negatives, client, own_client: bool) -> None:
    try:
        if cfg.best_of > 1:
            await best_of_n(run_dir, rc, cfg, scorers, negatives, client)
        await _score_pass(run_dir, rc, cfg, scorers, negatives, client)
    finally:
        if own_client:
            await client.aclose()


async def _score_pass(run_dir: Path, rc, cfg: ScoreRunConfig, scorers: dict, negatives, client) -> None:
    from clients.base import CompletionRequest

    keep = selection(cfg.latents)
    explanations = read_explanations(run_dir)
    done = {name: _done(run_dir, name) for name in scorers}
    shard, owned = Shard.parse(cfg.shard), _owned(rc, cfg)
    writers = {name: (JsonlAppender(log_path(run_dir / "scores" / f"{name}.jsonl", shard), ScoreResult),
                      JsonlAppender(log_path(run_dir / "scores" / "details" / f"{name}.jsonl", shard), Details))
               for name in scorers}
    for res, det in writers.values():
        res.open()
        det.open()
    waiting: dict[str, tuple[Waiting, int]] = {}
    counts = Counter()

    def write(name: str, d: Details, model: str, usage: Usage) -> None:
        res, det = writers[name]
        det.append(d)  # details first: a result line always has its details
        res.append(to_result(d, model, usage, cfg.score.n_boot, cfg.score.seed))
        counts[name] += 1

    def items():
        for c in iter_components(run_dir, keep):
            if not owned(c.latent):
                continue
            e = primary(explanations.get(c.latent, []))
            names = [n for n in scorers if e is not None and (c.latent, e.label) not in done[n]]
            if not names:
                continue
            item = score_item(c, e, negatives, cfg.score, rc.window)
            for name in names:
                s = scorers[name]
                if not s.llm:
                    write(name, s.outcome(item, []), getattr(s, "model_name", "") or "all-MiniLM-L6-v2", Usage())
                    continue
                calls = s.calls(item)
                if not calls:
                    write(name, s.outcome(item, []), cfg.model, Usage())
                    continue
                w = Waiting(name, item, [None] * len(calls), len(calls))
                for j, call in enumerate(calls):
                    cid = f"{name}:{c.component_key}:{j}"
                    waiting[cid] = (w, j)
                    p = call.prompt
                    yield CompletionRequest(custom_id=cid, system=p.system, prefix=p.prefix, prompt=p.prompt,
                                            max_tokens=call.max_tokens, schema=call.schema,
                                            schema_name=call.schema_name, logprobs=call.logprobs)

    def on_result(response) -> None:
        w, j = waiting.pop(response.custom_id)
        w.responses[j] = response
        add_usage(w.usage, response.usage)
        w.left -= 1
        if w.left:
            return
        refused = [r.error for r in w.responses if r.error in NOT_SENT]
        if refused:  # budget reached, breaker open, bad key: not a verdict on the latent; a rerun retries it
            counts["not sent"] += 1
            return
        write(w.scorer, scorers[w.scorer].outcome(w.item, w.responses), cfg.model, w.usage)

    try:
        if client is None:  # offline scorers only: drain the generator
            for _ in items():
                raise AssertionError("an LLM scorer ran without a client")
        else:
            from clients import run_requests

            await run_requests(client, items(), on_result, progress=cfg.progress, desc="score")
    finally:
        for res, det in writers.values():
            res.close()
            det.close()
    if counts:
        msg = "score: " + ", ".join(f"{n}: {k} latents" for n, k in counts.items() if n != "not sent")
        if counts["not sent"]:
            msg += f"; {counts['not sent']} (latent, scorer) pairs not sent -- rerun the same command to continue"
        print(msg, file=sys.stderr)


# --------------------------------------------------------------------------- best of n


async def best_of_n(run_dir: Path, rc, cfg: ScoreRunConfig, scorers: dict, negatives, client) -> None:
    """Generate cfg.best_of explanations per latent, keep the best on a selection half of the held-out set."""
    from clients import run_requests
    from clients.base import CompletionRequest

    from engine.examples import SplitConfig, split_examples
    from engine.scorers import registry as make_registry

    judge_name = next((n for n, s in scorers.items() if s.llm), "detection")
    judge = make_registry(cfg.score)[judge_name]
    tag = f"{cfg.explainer}+best-of-{cfg.best_of}"
    existing = read_explanations(run_dir)
    keep = selection(cfg.latents)
    owned = _owned(rc, cfg)
    todo = {c.latent for c in iter_components(run_dir, keep)
            if owned(c.latent) and not any(e.explainer == tag and e.model == cfg.model and e.error is None for e in existing.get(c.latent, []))}
    if not todo:
        return
    labels, background = prepare_labels(run_dir, existing)
    icfg = InterpretConfig(provider=cfg.provider, model=cfg.model, explainer=cfg.explainer, max_examples=cfg.max_examples)
    split_cfg = SplitConfig.with_budget(cfg.max_examples, seed=rc.seed)
    schema = provider_schema(ExplanationOutput)
    contexts: dict[int, tuple[ComponentData, list[str], str]] = {}
    candidates: dict[str, tuple[int, ExplainPending]] = {}
    got: dict[int, list[Explanation]] = {}

    def explain_requests():
        from engine.labels_search import search_label

        for c in iter_components(run_dir):
            if c.latent not in todo:
                continue
            split = split_examples(c, split_cfg)
            ids = set(split.explain_ids)
            shown = msgspec.structs.replace(c, top_examples=[e for e in c.top_examples if f"{e.sequence}:{e.position}" in ids],
                                            random_examples=[e for e in c.random_examples if f"{e.sequence}:{e.position}" in ids])
            search = search_label(shown, background=background)
            prompt = explain_prompt(rc, c, split, cfg.explainer, labels)
            contexts[c.latent] = (c, split.explain_ids, search)
            for j in range(cfg.best_of):
                cid = f"explain:{c.component_key}:cand{j}"
                candidates[cid] = (c.latent, ExplainPending(c.latent, c.component_key, search, split.explain_ids, prompt.hash))
                yield CompletionRequest(custom_id=cid, system=prompt.system, prefix=prompt.prefix, prompt=prompt.prompt,
                                        max_tokens=1024, temperature=cfg.best_of_temperature, schema=schema,
                                        schema_name="explanation")

    def on_explanation(response) -> None:
        latent, p = candidates.pop(response.custom_id)
        e = llm_explanation(p, replace(icfg, explainer=tag), response)
        if e.error is None:
            got.setdefault(latent, []).append(e)

    await run_requests(client, explain_requests(), on_explanation, progress=cfg.progress, desc="best-of explain")

    # selection: half of the held-out activating windows and of the negatives, per latent
    chosen_sets: dict[int, tuple[ScoreItem, list[str]]] = {}
    for latent, cands in got.items():
        c, explain_ids, _ = contexts[latent]
        probe = Explanation(**{**msgspec.structs.asdict(cands[0]), "example_ids": explain_ids})
        full = score_item(c, probe, negatives, cfg.score, rc.window, n_negatives=2 * cfg.score.n_negatives)
        rng = latent_rng(c.component_key, cfg.score.seed, "best-of")
        act = [full.activating[i] for i in rng.permutation(len(full.activating))][: len(full.activating) // 2]
        neg = full.negatives[: len(full.negatives) // 2]
        item = replace(full, activating=act, negatives=neg)
        chosen_sets[latent] = (item, [w.id for w in act] + [w.id for w in neg])

    waits: dict[str, tuple[int, int, int]] = {}
    answers: dict[tuple[int, int], list] = {}

    def select_requests():
        for latent, cands in got.items():
            item, _ = chosen_sets[latent]
            for k, e in enumerate(cands):
                calls = judge.calls(replace(item, label=e.label))
                answers[(latent, k)] = [None] * len(calls)
                for j, call in enumerate(calls):
                    cid = f"select:{item.key}:{k}:{j}"
                    waits[cid] = (latent, k, j)
                    p = call.prompt
                    yield CompletionRequest(custom_id=cid, system=p.system, prefix=p.prefix, prompt=p.prompt,
                                            max_tokens=call.max_tokens, schema=call.schema,
                                            schema_name=call.schema_name, logprobs=call.logprobs)

    def on_judgement(response) -> None:
        latent, k, j = waits.pop(response.custom_id)
        answers[(latent, k)][j] = response
        add_usage(got[latent][k].usage, response.usage)

    await run_requests(client, select_requests(), on_judgement, progress=cfg.progress, desc="best-of select")
    with JsonlAppender(log_path(run_dir / "interpretations" / "results.jsonl", Shard.parse(cfg.shard)), Explanation) as log:
        for latent, cands in got.items():
            item, selection_ids = chosen_sets[latent]
            scores = []
            for k, e in enumerate(cands):
                d = judge.outcome(replace(item, label=e.label), answers[(latent, k)])
                r = to_result(d, cfg.model, Usage(), n_boot=10)
                scores.append(r.balanced_accuracy if r.error is None else -1.0)
            if max(scores) < 0:
                continue  # no candidate could be judged: nothing chosen, a rerun tries again
            best = int(np.argmax(scores))
            total = Usage()
            for e in cands:
                add_usage(total, e.usage)
            e = cands[best]
            note = (f" [best of {len(cands)} by {judge_name} balanced accuracy on {len(item.activating)}+"
                    f"{len(item.negatives)} selection examples: {', '.join(f'{s:.2f}' for s in scores)}]")
            log.append(msgspec.structs.replace(e, reasoning=e.reasoning + note, usage=total,
                                               example_ids=e.example_ids + selection_ids))


# --------------------------------------------------------------------------- summary


def _last(path: Path, type_, keep: set[int] | None):
    out = {}
    for r in iter_family(path, type_):
        out[r.latent] = r
    return {k: v for k, v in out.items() if keep is None or k in keep}


def summarize(run_dir: Path, names: list[str], keep_idx: set[int] | None, n_boot: int = 1000,
              shard: Shard | None = None) -> dict:
    """Per scorer: latents scored, per-latent means, good features, pooled metrics with latent-bootstrap CIs.
    Reads the main logs and every shard log; with `shard`, only its latents, into summary.shard-k-of-N.json."""
    keep = None
    if keep_idx is not None or shard is not None:
        n = load_run_config(run_dir).n_latents
        keep = {c.latent for c in iter_components(run_dir, keep_idx) if shard is None or shard.owns(c.latent, n)}
    out = {}
    for name in names:
        results = {k: r for k, r in _last(run_dir / "scores" / f"{name}.jsonl", ScoreResult, keep).items()}
        details = _last(run_dir / "scores" / "details" / f"{name}.jsonl", Details, keep)
        ok = [r for r in results.values() if r.error is None]
        s: dict = {"latents": len(ok), "errors": len(results) - len(ok)}
        if ok:
            for m in ("balanced_accuracy", "f1", "precision", "recall"):
                s[f"mean_{m}"] = float(np.mean([getattr(r, m) for r in ok]))
            aucs = [r.auc for r in ok if r.auc is not None]
            s["mean_auc"] = float(np.mean(aucs)) if aucs else None
            if name not in NO_GOOD:
                s["good"] = sum(all(getattr(r, m) > t for m, t in GOOD.items()) for r in ok)
        rows, lat, sims = [], [], []
        failed = 0
        for d in details.values():
            r = results.get(d.latent)
            if r is None or r.error is not None or r.label != d.label:
                continue
            failed += d.n_failed
            for row in d.rows:
                if row.prediction is not None:
                    rows.append(row)
                    lat.append(d.latent)
            sims += [(d.latent, w) for w in d.windows if w.predicted is not None]
            if "group_accuracy" in d.extra:
                s.setdefault("_group", []).append(d.extra["group_accuracy"])
        s["failed_examples"] = failed
        if rows:
            y = np.array([r.activating for r in rows])
            pred = np.array([r.prediction for r in rows])
            probs = [r.probability for r in rows]
            score = np.array(probs, dtype=np.float64) if all(p is not None for p in probs) else None
            rep = classification_report(y, pred, score, np.array([r.stratum for r in rows]), clusters=np.array(lat),
                                        n_boot=n_boot)
            s["pooled"] = {"n": rep.n, "accuracy": rep.accuracy, "balanced_accuracy": rep.balanced_accuracy,
                           "precision": rep.precision, "recall": rep.recall, "f1": rep.f1, "auc": rep.auc,
                           "ci": rep.ci, "per_quantile_recall": rep.per_quantile_recall}
        if sims:
            t = np.concatenate([w.true for _, w in sims])
            p = np.concatenate([w.predicted for _, w in sims])
            owner = np.repeat([k for k, _ in sims], [len(w.true) for _, w in sims])
            r = pearson(t, p)
            s["pooled_pearson"] = r if np.isfinite(r) else None
            iv = bootstrap_ci(lambda i, t=t, p=p: pearson(t[i], p[i]), len(t), n_boot=min(n_boot, 200), clusters=owner)
            s["pooled_pearson_ci"] = list(iv) if iv else None
        if "_group" in s:
            s["mean_group_accuracy"] = float(np.mean(s.pop("_group")))
        out[name] = s
    path = log_path(run_dir / "scores" / "summary.json", shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # whole file or nothing, even beside other shards
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, path)
    return out


def _fmt(v, ci=None) -> str:
    if v is None:
        return "-"
    text = f"{v:.3f}"
    return f"{text} [{ci[0]:.2f},{ci[1]:.2f}]" if ci else text


def format_summary(summary: dict) -> str:
    head = (f"{'scorer':<11} {'latents':>7}  {'pooled bal.acc [95% CI]':<24} {'F1':<20} {'precision':<20} "
            f"{'recall':<20} {'AUC':<20} good*")
    lines = [head]
    for name, s in summary.items():
        p = s.get("pooled")
        if not p:
            lines.append(f"{name:<11} {s['latents']:>7}  (nothing scored{'; ' + str(s['errors']) + ' errors' if s['errors'] else ''})")
            continue
        ci = p["ci"]
        cells = [_fmt(p[m], ci.get(m)) for m in ("balanced_accuracy", "f1", "precision", "recall", "auc")]
        line = f"{name:<11} {s['latents']:>7}  {cells[0]:<24} {cells[1]:<20} {cells[2]:<20} {cells[3]:<20} {cells[4]:<20} {s.get('good', '-')}"
        extras = []
        if s.get("pooled_pearson") is not None:
            extras.append(f"pooled Pearson r {_fmt(s['pooled_pearson'], s.get('pooled_pearson_ci'))}")
        if "mean_group_accuracy" in s:
            extras.append(f"intruders found {s['mean_group_accuracy']:.3f}")
        if s["failed_examples"] or s["errors"]:
            extras.append(f"{s['failed_examples']} examples unjudged, {s['errors']} latents failed")
        if p["per_quantile_recall"]:
            extras.append("recall by stratum " + " ".join(f"{k}={v:.2f}" for k, v in p["per_quantile_recall"].items()))
        lines.append(line + ("\n" + " " * 21 + "; ".join(extras) if extras else ""))
    lines.append("* good features: F1 > 0.7, precision > 0.8 and recall > 0.6 (per latent). "
                 "Pooled = all judged examples; CIs resample latents.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> tuple[Path, ScoreRunConfig]:
    p = argparse.ArgumentParser(prog="python -m engine.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--scorers", nargs="+", default=["detection", "fuzz"], help=" ".join(SCORERS))
    p.add_argument("--provider", default=None, choices=("anthropic", "openrouter", "openai-compatible"))
    p.add_argument("--model", default="")
    p.add_argument("--base-url", default=None)
    p.add_argument("--api-key-env", default=None)
    p.add_argument("--max-concurrent", type=int, default=16)
    p.add_argument("--max-cost", type=float, default=None, help="dollar cap for this run")
    p.add_argument("--non-activating", default="random", choices=("random", "neighbours", "faiss"))
    p.add_argument("--latents", default="", help="dictionary indices: 1,5,9-20 or a features JSON file")
    p.add_argument("--best-of", type=int, default=1, help="explanations generated per latent; keep the best")
    p.add_argument("--best-of-temperature", type=float, default=1.0)
    p.add_argument("--explainer", default="default", choices=("default", "contrastive", "cot"))
    d = ScoreConfig()
    p.add_argument("--n-activating", type=int, default=d.n_activating)
    p.add_argument("--n-negatives", type=int, default=d.n_negatives)
    p.add_argument("--per-prompt", type=int, default=d.per_prompt)
    p.add_argument("--n-simulated", type=int, default=d.n_simulated)
    p.add_argument("--logprobs", type=int, default=0, help="top logprobs per output token (openai-compatible)")
    p.add_argument("--surprisal-model", default="", help="local HF causal LM for the surprisal scorer (default: the run's model)")
    p.add_argument("--shard", default="", help="k/N: only latent range k of N, into its own logs; merge with python -m engine.merge")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.best_of < 1:
        raise UserError(f"--best-of must be >= 1, got {a.best_of}")
    sc = ScoreConfig(n_activating=a.n_activating, n_negatives=a.n_negatives, per_prompt=a.per_prompt,
                     n_simulated=a.n_simulated, logprobs=a.logprobs, surprisal_model=a.surprisal_model)
    return a.run_dir, ScoreRunConfig(scorers=tuple(a.scorers), provider=a.provider, model=a.model, base_url=a.base_url,
                                     api_key_env=a.api_key_env, max_concurrent=a.max_concurrent, max_cost=a.max_cost,
                                     non_activating=a.non_activating, latents=a.latents, best_of=a.best_of,
                                     best_of_temperature=a.best_of_temperature, explainer=a.explainer, score=sc,
                                     shard=a.shard, progress=not a.no_progress)


def main(argv: list[str] | None = None) -> dict:
    run_dir, cfg = parse_args(argv)
    return run_score(run_dir, cfg)


if __name__ == "__main__":
    run_cli(main)
