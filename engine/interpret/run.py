"""Explain every harvested latent: offline keyword labels always, an LLM label when asked.

    python -m engine.interpret RUN --provider search                       # offline, no server
    python -m engine.interpret RUN --provider anthropic --model claude-haiku-4-5 [--batch]
    python -m engine.interpret RUN --provider openai-compatible --base-url http://127.0.0.1:8000/v1 --model M
    python -m engine.interpret RUN --provider anthropic --model claude-haiku-4-5 --dry-run

Reads RUN/harvest/{config.json,components.jsonl}; appends one Explanation per
latent to RUN/interpretations/results.jsonl and rewrites the seed-format exports
feature_labels.json and feature_examples.jsonl beside it.

* Examples: the explainer sees the split of `engine.core.examples` (top examples
  at even ranks + quantile strata of the random sample); their ids go in
  `example_ids` and scoring never uses them.
* Prompts: `engine.interpret.prompts.render("explain", ...)`; the instructions
  (system) and run context (prefix) are identical for every latent and sent as
  cacheable.
* Resume: a latent is done when the log holds an error-free explanation from the
  same explainer and model (search: any search explanation). A rerun skips done
  latents, retries failed ones, and repairs a torn last line first. Requests the
  client refused before sending (budget reached, circuit open, bad key) write
  nothing, so a rerun picks them up.
* --latents selects by dictionary index (the feature number, as in harvest and
  the seed), in every hookpoint of the run.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path

from clients.errors import ClientStopped
from engine.core.cli import RUN_DIR, parse_config
from engine.core.errors import UserError
from engine.core.jsonl import JsonlAppender
from engine.core.latents import selection
from engine.core.rundir import RunDir
from engine.core.schemas import Explanation, RunConfig
from engine.core.shards import Shard
from engine.interpret.config import EXPLAINERS, InterpretConfig
from engine.interpret.dry_run import dry_run
from engine.interpret.explain import (
    Labels,
    Pending,
    explain_inputs,
    explain_prompt,
    explain_request,
    llm_explanation,
    prepare_labels,
    search_explanation,
)
from engine.interpret.exports import write_exports
from engine.interpret.llm import NOT_SENT, PROVIDERS


def is_done(e: Explanation, cfg: InterpretConfig) -> bool:
    if not cfg.uses_llm:
        return e.source == "search"
    return e.source == "llm" and e.error is None and e.explainer == cfg.explainer and e.model == cfg.model


def run_interpret(run_dir: str | Path, cfg: InterpretConfig, negatives=None, client=None) -> dict:
    """Explain the selected latents of `run_dir`; returns counts {written, skipped, failed, not_sent}.

    negatives: a NegativeSource for the contrastive explainer (built from the run when None).
    client: an LLM client (made from cfg when None), for tests.
    """
    run = RunDir(run_dir)
    if cfg.provider not in PROVIDERS:
        raise UserError(f"--provider {cfg.provider!r}: choose one of {', '.join(PROVIDERS)}")
    if cfg.explainer not in EXPLAINERS:
        raise UserError(f"--explainer {cfg.explainer!r}: choose one of {', '.join(EXPLAINERS)}")
    if cfg.uses_llm and not cfg.model:
        raise UserError(f"--provider {cfg.provider} needs --model (e.g. claude-haiku-4-5)")
    rc = run.load_config()
    keep = selection(cfg.latents)
    shard = Shard.parse(cfg.shard)
    contrastive = cfg.explainer == "contrastive" and cfg.uses_llm

    def negative_pool():
        from engine.interpret.negatives import open_source

        return open_source(run.root, rc, cfg.non_activating, progress=cfg.progress, neighbours=cfg.neighbours)

    if cfg.overwrite and not cfg.dry_run:  # everything that can refuse the command runs before anything moves
        if cfg.uses_llm and client is None:
            cfg.make_client()  # a missing key or base URL (opens no connection)
        if contrastive and negatives is None:
            negatives = negative_pool()
        run.set_aside(cfg.overwrite)
    existing = run.read_explanations()
    labels, background = prepare_labels(run, existing)
    todo, few = [], 0
    for c in run.iter_components(keep):
        if shard is not None and not shard.owns(c.latent, rc.n_latents):
            continue
        if c.firing_count < cfg.min_examples:  # --min-examples: harvested, not explained
            few += 1
        elif not any(is_done(e, cfg) for e in existing.get(c.latent, [])):
            todo.append(c.latent)
    counts = Counter(skipped=0, written=0, failed=0, not_sent=0)
    if few:
        counts["too_few_firings"] = few
        print(f"interpret: {few} latents fired fewer than --min-examples {cfg.min_examples} times: harvested, "
              "not explained", file=sys.stderr)
    if contrastive and negatives is None and todo:
        negatives = negative_pool()
    inputs = explain_inputs(run, rc, set(todo), background, cfg.split_config(rc.seed),
                            negatives if contrastive else None, cfg.n_non_activating)
    if cfg.dry_run:
        dry_run(rc, cfg, inputs, labels, len(todo))
        return dict(counts)
    out = run.explanations(shard)
    if not todo:
        print(f"interpret: nothing to do ({cfg.explainer_name} explanations exist for every selected latent)")
    elif not cfg.uses_llm:
        from tqdm import tqdm

        with JsonlAppender(out, Explanation) as log:
            for c, split, label, _ in tqdm(inputs, total=len(todo), desc="search labels", unit="latent",
                                           disable=not cfg.progress):
                log.append(search_explanation(c, split, label))
                counts["written"] += 1
    else:
        try:
            asyncio.run(_run_llm(run, rc, cfg, inputs, labels, len(todo), out, counts, client))
        except ClientStopped:  # the client gave up (an outage past the window, a refused key): what was
            write_exports(run.root)  # written still reaches the exports; run_cli prints the one line, exit 2
            raise
    write_exports(run.root)
    return dict(counts)


async def _run_llm(run: RunDir, rc: RunConfig, cfg: InterpretConfig, inputs, labels: Labels, total: int,
                   out: Path, counts: Counter, client) -> None:
    from clients import run_requests, until_stopped

    if cfg.batch and cfg.provider != "anthropic":
        raise UserError("--batch needs --provider anthropic (Message Batches)")
    own = client is None
    if own:
        client = cfg.make_client(cache_ttl="1h" if cfg.batch else "5m", state_dir=run.root)
    pending: dict[str, Pending] = {}
    failures: Counter = Counter()

    def requests():
        for c, split, search, negs in inputs:
            prompt = explain_prompt(rc, c, split, cfg.explainer, labels, negs)
            cid = f"explain:{c.component_key}"
            pending[cid] = Pending(c.latent, c.component_key, search, split.explain_ids + [w.id for w in negs],
                                   prompt.hash, split.sampler)
            yield explain_request(prompt, cid, cfg.max_tokens, cfg.temperature)

    with JsonlAppender(out, Explanation) as log:
        def on_result(response) -> None:
            p = pending.pop(response.custom_id)
            if response.error in NOT_SENT:
                counts["not_sent"] += 1
                failures[response.error] += 1
                return
            e = llm_explanation(p, cfg.model, cfg.explainer, response)
            log.append(e)
            counts["written"] += 1
            if e.error:
                counts["failed"] += 1
                failures[e.error] += 1

        stopped = None
        try:
            if cfg.batch:
                from clients.anthropic_batches import BatchPolicy, run_batches

                await run_batches(client, list(requests()), on_result, state_path=run.batches(Shard.parse(cfg.shard)),
                                  policy=BatchPolicy(poll_interval_s=cfg.batch_poll_s), progress=cfg.progress)
            else:
                await run_requests(client, until_stopped(client, requests()), on_result, progress=cfg.progress,
                                   total=total, desc="explain")  # a stopped client: the rest stay unbuilt
        except ClientStopped as e:
            stopped = e
        finally:
            if own:
                await client.aclose()
    spent = client.ledger.totals().cost_usd
    msg = f"interpret: {counts['written']} explanations written, ${spent:.4f} spent"
    if failures:
        msg += f"; failures {dict(failures)}"
        if getattr(client, "last_error", ""):
            msg += f"; last server error: {client.last_error}"
    if counts["not_sent"] and stopped is None:
        msg += f"; {counts['not_sent']} latents not sent -- rerun the same command to continue"
    print(msg, file=sys.stderr)
    if stopped is not None:
        raise stopped


def parse_args(argv: list[str] | None) -> tuple[Path, InterpretConfig]:
    pos, cfg = parse_config(InterpretConfig, argv, prog="python -m engine.interpret", doc=__doc__,
                            positionals=[RUN_DIR])
    return pos.run_dir, cfg


def main(argv: list[str] | None = None) -> dict:
    run_dir, cfg = parse_args(argv)
    counts = run_interpret(run_dir, cfg)
    if not cfg.dry_run:
        print(f"interpret: {counts['written']} written -> {RunDir(run_dir).explanations(Shard.parse(cfg.shard))}")
    return counts
