"""`engine.score --best-of N`: N explanations per latent, the best on a selection half of the held-out set.

Candidates are drawn at --best-of-temperature through the explainer's own prompt and
request path (engine.interpret.explain), their examples drawn by this run's sampler flags
(--train-type, --n-examples-train, --ratio-top, --n-quantiles). The first LLM scorer of the run judges each on
half of the held-out activating windows and half of the negatives; the winner is
appended to results.jsonl with those selection examples added to its `example_ids`, so
the scores reported afterwards use only the other half. A candidate whose selection
judgements are incomplete (below --min-judged) or failed cannot win.
"""

from __future__ import annotations

from dataclasses import replace

import msgspec
import numpy as np

from clients.usage import Usage
from engine.core.examples import latent_rng, overlap_reach
from engine.core.jsonl import JsonlAppender
from engine.core.latents import selection
from engine.core.rundir import RunDir
from engine.core.schemas import ComponentData, Explanation
from engine.core.shards import Shard
from engine.interpret.explain import (
    Pending,
    explain_inputs,
    explain_prompt,
    explain_request,
    llm_explanation,
    prepare_labels,
)
from engine.score.config import ScoreRunConfig
from engine.score.items import add_usage, score_item, to_result
from engine.score.scorers import registry
from engine.score.scorers.base import ScoreItem

CANDIDATE_MAX_TOKENS = 1024
"Output ceiling of each candidate explanation."


async def best_of_n(run: RunDir, rc, cfg: ScoreRunConfig, scorers: dict, negatives, client, owned) -> None:
    """Generate cfg.best_of explanations per latent, keep the best on a selection half of the held-out set."""
    from clients import run_requests, until_stopped

    judge_name = next((n for n, s in scorers.items() if s.llm), "detection")
    judge = registry(cfg.score)[judge_name]
    tag = f"{cfg.explainer}+best-of-{cfg.best_of}"
    existing = run.read_explanations()
    todo = {c.latent for c in run.iter_components(selection(cfg.latents))
            if owned(c.latent) and not any(e.explainer == tag and e.model == cfg.model and e.error is None
                                           for e in existing.get(c.latent, []))}
    if not todo:
        return
    labels, background = prepare_labels(run, existing)
    contexts: dict[int, tuple[ComponentData, list[str]]] = {}
    candidates: dict[str, tuple[int, Pending]] = {}
    got: dict[int, list[Explanation]] = {}

    def explain_requests():
        for c, split, search, _ in explain_inputs(run, rc, todo, background, cfg.candidate_config(rc.seed), warn=False):
            prompt = explain_prompt(rc, c, split, cfg.explainer, labels)
            contexts[c.latent] = (c, split.explain_ids)
            for j in range(cfg.best_of):
                cid = f"explain:{c.component_key}:cand{j}"
                candidates[cid] = (c.latent, Pending(c.latent, c.component_key, search, split.explain_ids, prompt.hash,
                                                     split.sampler))
                yield explain_request(prompt, cid, CANDIDATE_MAX_TOKENS, cfg.best_of_temperature)

    def on_explanation(response) -> None:
        latent, p = candidates.pop(response.custom_id)
        e = llm_explanation(p, cfg.model, tag, response)
        if e.error is None:
            got.setdefault(latent, []).append(e)

    await run_requests(client, until_stopped(client, explain_requests()), on_explanation, progress=cfg.progress,
                       desc="best-of explain")

    # selection: half of the held-out activating windows and of the negatives, per latent
    chosen_sets: dict[int, tuple[ScoreItem, list[str]]] = {}
    for latent, cands in got.items():
        c, explain_ids = contexts[latent]
        probe = Explanation(**{**msgspec.structs.asdict(cands[0]), "example_ids": explain_ids})
        full = score_item(c, probe, negatives, cfg.score, overlap_reach(rc.window, rc.center_examples), cfg.scoring_config(probe, rc.seed).n_quantiles,
                          n_negatives=2 * cfg.score.n_negatives)
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
                    yield call.request(cid)

    def on_judgement(response) -> None:
        latent, k, j = waits.pop(response.custom_id)
        answers[(latent, k)][j] = response
        add_usage(got[latent][k].usage, response.usage)

    await run_requests(client, until_stopped(client, select_requests()), on_judgement, progress=cfg.progress,
                       desc="best-of select")
    with JsonlAppender(run.explanations(Shard.parse(cfg.shard)), Explanation) as log:
        for latent, cands in got.items():
            item, selection_ids = chosen_sets[latent]
            scores = []
            for k, e in enumerate(cands):
                d = judge.outcome(replace(item, label=e.label), answers[(latent, k)])
                r = to_result(d, cfg.model, Usage(), n_boot=10, min_judged=cfg.score.min_judged)
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
