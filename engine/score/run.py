"""Score explanations on held-out examples: detection, fuzz, simulation, embedding, intruder, surprisal.

    python -m engine.score RUN --scorers embedding                          # offline
    python -m engine.score RUN --scorers detection fuzz --provider anthropic --model claude-haiku-4-5
    python -m engine.score RUN --scorers detection --provider openai-compatible --base-url URL --model M \\
        --logprobs 5 --best-of 4

Each latent's scored explanation is its primary one (last error-free LLM
explanation, else the last). Activating examples are the harvest's examples
minus every window overlapping one the explainer saw (`example_ids`);
non-activating ones come from the run's replayed negative pool
(`engine.interpret.negatives`), also minus anything shown. Output, append-only and
resumable like interpret (a latent is done for a scorer when the log holds an
error-free result for its current label; a result with fewer than --min-judged of
its planned excerpts judged is written with error "incomplete", so the next run
scores it again and summaries leave it out until then):

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

import asyncio
import sys
from collections import Counter
from pathlib import Path

from clients.errors import ClientStopped
from clients.usage import Usage
from engine.core.cli import RUN_DIR, parse_config
from engine.core.errors import UserError
from engine.core.examples import FillReport, overlap_reach
from engine.core.jsonl import JsonlAppender
from engine.core.latents import selection
from engine.core.rundir import RunDir, primary
from engine.core.schemas import ScoreResult
from engine.core.shards import Shard
from engine.interpret.exports import write_exports
from engine.interpret.llm import NOT_SENT
from engine.score.best_of import best_of_n
from engine.score.config import ScoreRunConfig
from engine.score.items import Waiting, add_usage, score_item, to_result
from engine.score.scorers import SCORERS, registry
from engine.score.scorers.base import Details, ScoreItem
from engine.score.summary import format_summary, summarize


def _owned(rc, cfg: ScoreRunConfig):
    """latent -> whether this process scores it (its --shard range)."""
    shard = Shard.parse(cfg.shard)
    return (lambda latent: shard.owns(latent, rc.n_latents)) if shard else (lambda latent: True)


def run_score(run_dir: str | Path, cfg: ScoreRunConfig, negatives=None, client=None, embedder=None) -> dict:
    """Score the selected latents with `cfg.scorers`; returns the summary (also written to scores/summary.json).

    negatives: a NegativeSource (the run's replayed pool when None); client: LLM client (made from cfg
    when None); embedder: texts -> unit vectors (MiniLM when None). The last three are for tests.
    """
    run = RunDir(run_dir)
    unknown = [s for s in cfg.scorers if s not in SCORERS]
    if unknown or not cfg.scorers:
        raise UserError(f"--scorers {' '.join(unknown) or '(none)'}: choose from {' '.join(SCORERS)}")
    rc = run.load_config()
    all_scorers = registry(cfg.score, embedder)
    scorers = {name: all_scorers[name] for name in dict.fromkeys(cfg.scorers)}
    for s in scorers.values():
        if hasattr(s, "bind_run"):  # scorers that use the run's own model (surprisal)
            s.bind_run(rc)
    llm_needed = any(s.llm for s in scorers.values()) or cfg.best_of > 1
    if llm_needed and not cfg.uses_llm:
        names = [n for n, s in scorers.items() if s.llm] or ["--best-of"]
        raise UserError(f"{', '.join(names)} need an LLM judge: pass --provider (anthropic | openrouter | "
                        "openai-compatible) and --model; only the embedding and surprisal scorers run offline")
    if llm_needed and not cfg.model:
        raise UserError(f"--provider {cfg.provider} needs --model")
    if not run.read_explanations():
        raise UserError(f"{run.explanations()} holds no explanation -- run "
                        f"python -m engine.interpret {run.root} first")
    if negatives is None:
        from engine.interpret.negatives import open_source

        negatives = open_source(run.root, rc, cfg.non_activating, progress=cfg.progress, neighbours=cfg.neighbours)
    own_client = client is None and llm_needed
    if own_client:
        client = cfg.make_client(state_dir=run.root)
    keep, shard = selection(cfg.latents), Shard.parse(cfg.shard)  # a bad --latents or --shard: refused here
    if cfg.overwrite:  # after every check, the negative pool and the client: a refused command moves nothing
        run.set_aside(cfg.overwrite)
    stopped = None
    try:
        asyncio.run(_score_all(run, rc, cfg, scorers, negatives, client, own_client))
    except ClientStopped as e:  # the client gave up (an outage past the window, a refused key): what was
        stopped = e             # scored is summarised and exported, then run_cli prints the one line, exit 2
    summary = summarize(run.root, list(scorers), keep, cfg.score.n_boot, shard, cfg.min_examples)
    print(format_summary(summary))
    write_exports(run.root)
    if stopped is not None:
        raise stopped
    return summary


async def _score_all(run: RunDir, rc, cfg: ScoreRunConfig, scorers: dict, negatives, client, own_client: bool) -> None:
    try:
        if cfg.best_of > 1:
            await best_of_n(run, rc, cfg, scorers, negatives, client, _owned(rc, cfg))
        await _score_pass(run, rc, cfg, scorers, negatives, client)
    finally:
        if own_client:
            await client.aclose()


async def _score_pass(run: RunDir, rc, cfg: ScoreRunConfig, scorers: dict, negatives, client) -> None:
    keep = selection(cfg.latents)
    explanations = run.read_explanations()
    done = {name: {(r.latent, r.label) for r in run.iter_scores(name) if r.error is None} for name in scorers}
    shard, owned = Shard.parse(cfg.shard), _owned(rc, cfg)
    writers = {name: (JsonlAppender(run.score_log(name, shard), ScoreResult),
                      JsonlAppender(run.score_details(name, shard), Details))
               for name in scorers}
    for res, det in writers.values():
        res.open()
        det.open()
    waiting: dict[str, tuple[Waiting, int]] = {}
    counts = Counter()
    fill: FillReport | None = None

    def write(name: str, d: Details, model: str, usage: Usage, item: ScoreItem) -> None:
        res, det = writers[name]
        det.append(d)  # details first: a result line always has its details
        r = to_result(d, model, usage, cfg.score.n_boot, cfg.score.seed, cfg.score.min_judged, item.sampler)
        res.append(r)
        counts[name] += 1
        counts["incomplete"] += r.error == "incomplete"

    def items():
        nonlocal fill
        for c in run.iter_components(keep):
            if not owned(c.latent) or c.firing_count < cfg.min_examples:  # --min-examples: harvested, not scored
                continue
            e = primary(explanations.get(c.latent, []))
            names = [n for n in scorers if e is not None and (c.latent, e.label) not in done[n]]
            if not names:
                continue
            sampler = cfg.scoring_config(e, rc.seed)
            item = score_item(c, e, negatives, cfg.score, overlap_reach(rc.window, rc.center_examples),
                              sampler.n_quantiles, sampler=sampler.record())
            fill = fill or FillReport(sampler)
            fill.add(item.activating, len(item.negatives))
            for name in names:
                s = scorers[name]
                if not s.llm:
                    write(name, s.outcome(item, []), getattr(s, "model_name", "") or "all-MiniLM-L6-v2", Usage(), item)
                    continue
                calls = s.calls(item)
                if not calls:
                    write(name, s.outcome(item, []), cfg.model, Usage(), item)
                    continue
                w = Waiting(name, item, [None] * len(calls), len(calls))
                for j, call in enumerate(calls):
                    cid = f"{name}:{c.component_key}:{j}"
                    waiting[cid] = (w, j)
                    yield call.request(cid)

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
        write(w.scorer, scorers[w.scorer].outcome(w.item, w.responses), cfg.model, w.usage, w.item)

    try:
        if client is None:  # offline scorers only: drain the generator
            for _ in items():
                raise AssertionError("an LLM scorer ran without a client")
        else:
            from clients import run_requests, until_stopped

            await run_requests(client, until_stopped(client, items()), on_result, progress=cfg.progress, desc="score")
    finally:
        for res, det in writers.values():
            res.close()
            det.close()
    if fill is not None and (line := fill.warning(rc.top_k, rc.n_random)):
        print(line, file=sys.stderr)
    if counts:
        msg = "score: " + ", ".join(f"{n}: {k} latents" for n, k in counts.items()
                                    if n not in ("not sent", "incomplete"))
        if counts["incomplete"]:
            msg += (f"; {counts['incomplete']} (latent, scorer) pairs incomplete (judged below --min-judged), left out "
                    "of the summary -- rerun the same command to retry them")
        if counts["not sent"]:
            msg += f"; {counts['not sent']} (latent, scorer) pairs not sent -- rerun the same command to continue"
        print(msg, file=sys.stderr)


def parse_args(argv: list[str] | None) -> tuple[Path, ScoreRunConfig]:
    pos, cfg = parse_config(ScoreRunConfig, argv, prog="python -m engine.score", doc=__doc__, positionals=[RUN_DIR])
    if cfg.best_of < 1:
        raise UserError(f"--best-of must be >= 1, got {cfg.best_of}")
    return pos.run_dir, cfg


def main(argv: list[str] | None = None) -> dict:
    run_dir, cfg = parse_args(argv)
    return run_score(run_dir, cfg)
