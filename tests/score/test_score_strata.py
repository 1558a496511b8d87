"""Per-stratum scores (issue 23): an explanation that covers only strong firings scores high on the top
stratum and low on the weakest, the score record carries per-stratum recall and counts, and the test-set
flags (--n-examples-test, --n-non-activating, --n-quantiles) change what is scored and are recorded.

The synthetic run's latent i fires on one word with activation 1 + (previous token id) % 9
(tests/helpers/trigger_run.py), so weak and strong firings differ by context; the scripted judge here
answers as a reader of the explanation would: "only its strong firings" -> 1 for an excerpt whose peak
activation is >= STRONG, otherwise -> 1 for any firing.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter

import numpy as np
import pytest

from clients.testing import FakeLLMServer
from engine.core.examples import strata
from engine.core.jsonl import read_records
from engine.core.rundir import RunDir
from engine.core.schemas import ScoreResult
from engine.interpret.config import InterpretConfig
from engine.interpret.run import run_interpret
from engine.score.config import ScoreRunConfig
from engine.score.run import run_score
from engine.score.scorers.base import ScoreConfig
from tests.helpers.run_files import details_by_latent, scores_by_latent
from tests.helpers.scripted_llm import prompt_text, unescape
from tests.helpers.trigger_run import TRIGGERS, pool_source, write_run

STRONG = 7.0
"Peak activation from which the strong-only explanation says the latent fires (levels are 1..9)."


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = write_run(tmp_path_factory.mktemp("strata") / "run", n_latents=4, n_sequences=200, top_k=10, n_random=60)
    run_interpret(run.dir, InterpretConfig(provider="search", progress=False))  # label: the word, every firing
    return run


def windows_by_id(run) -> dict[tuple[int, str], object]:
    return {(c.latent, w.id): w for c in RunDir(run.dir).iter_components() for w in strata(c, 5)}


def strong_only_explainer(body: dict) -> dict:
    key = re.search(r"Latent (\S+)", prompt_text(body)).group(1)
    word = TRIGGERS[int(key.rsplit("/", 1)[1])].strip()
    return {"reasoning": "r", "label": f"{word}, only its strong firings", "confidence": "high"}


def test_strong_only_explanation_is_high_on_top_and_low_on_the_weakest(run):
    peak = {w.text: max(w.activations) for w in windows_by_id(run).values()}

    def judge(body: dict) -> dict:
        text = prompt_text(body)
        strong = "strong" in re.search(r"Explanation: (.*)", text).group(1)
        excerpts = [unescape(e) for e in re.findall(r"^Excerpt \d+: (.*)$", text, re.MULTILINE)]
        return {"answers": [int(peak.get(e, 0.0) >= (STRONG if strong else 1e-9)) for e in excerpts]}

    server = FakeLLMServer(responder=judge).start_in_thread()
    explainer = FakeLLMServer(responder=strong_only_explainer).start_in_thread()
    try:
        cfg = ScoreRunConfig(scorers=("detection",), provider="openai-compatible", model="judge",
                             base_url=server.base_url, progress=False)
        run_score(run.dir, cfg, negatives=pool_source(run))  # the search label: covers every firing
        run_interpret(run.dir, InterpretConfig(provider="openai-compatible", model="m", base_url=explainer.base_url,
                                               progress=False))
        summary = run_score(run.dir, cfg, negatives=pool_source(run))  # the new label is scored too
    finally:
        server.stop()
        explainer.stop()
    records = read_records(run.dir / "scores" / "detection.jsonl", ScoreResult)
    covering = {r.latent: r for r in records if "strong" not in r.label}
    strong = {r.latent: r for r in records if "strong" in r.label}
    assert sorted(covering) == sorted(strong) == list(range(run.n_latents))
    for r in covering.values():
        assert r.error is None and set(r.per_quantile_recall.values()) == {1.0}
    details = details_by_latent(run.dir, "detection")  # the last details of each latent: the strong label's
    windows = windows_by_id(run)
    for latent, r in strong.items():
        d = details[latent]
        assert d.label == r.label and r.error is None
        assert r.per_stratum_n == dict(Counter(row.stratum for row in d.rows))  # counts in the record
        assert r.n_examples == r.n_planned == len(d.rows)
        for s, recall in r.per_quantile_recall.items():  # brute force: judged windows whose peak is strong
            rows = [row for row in d.rows if row.activating and row.stratum == s]
            want = np.mean([max(windows[(latent, row.id)].activations) >= STRONG for row in rows])
            assert recall == pytest.approx(want), (latent, s)
        assert r.per_quantile_recall["top"] >= 0.9 and r.per_quantile_recall["q1"] <= 0.3, r.per_quantile_recall
        assert r.precision == 1.0  # it never claims a non-activating excerpt
    pooled = summary["detection"]["pooled"]
    assert pooled["per_stratum_n"] == dict(sum((Counter(r.per_stratum_n) for r in strong.values()), Counter()))
    assert pooled["per_quantile_recall"]["top"] >= 0.9 and pooled["per_quantile_recall"]["q1"] <= 0.3


def bag_of_words(texts):
    """A stand-in embedder: one dimension per trigger word."""
    v = np.array([[t.count(w.strip()) for w in TRIGGERS] + [0.01] for t in texts], dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("flags", [{"n_activating": 12}, {"n_activating": 30, "n_negatives": 5},
                                   {"n_activating": 18, "n_quantiles": 3}, {"n_activating": 400}],
                         ids=lambda f: "-".join(f"{k}{v}" for k, v in f.items()))
def test_test_set_flags_change_what_is_scored_and_are_recorded(run, tmp_path, capsys, flags):
    copy = tmp_path / "run"
    shutil.copytree(run.dir / "harvest", copy / "harvest")
    shutil.copytree(run.dir / "interpretations", copy / "interpretations")
    n_q = flags.get("n_quantiles")
    score = ScoreConfig(**{k: v for k, v in flags.items() if k != "n_quantiles"})
    cfg = ScoreRunConfig(scorers=("embedding",), progress=False, n_quantiles=n_q, score=score)
    capsys.readouterr()
    run_score(copy, cfg, negatives=pool_source(run), embedder=bag_of_words)
    err = capsys.readouterr().err
    explanations = RunDir(copy).read_explanations()
    details = details_by_latent(copy, "embedding")
    comps = {c.latent: c for c in RunDir(copy).iter_components()}
    any_short = False
    for latent, r in scores_by_latent(copy, "embedding").items():
        e = explanations[latent][-1]
        assert r.sampler.n_examples_test == score.n_activating and r.sampler.n_non_activating == score.n_negatives
        assert r.sampler.n_quantiles == (n_q or e.sampler.n_quantiles)
        assert (r.sampler.train_type, r.sampler.n_examples_train) == (e.sampler.train_type, e.sampler.n_examples_train)
        rows = details[latent].rows
        held = [w for w in strata(comps[latent], r.sampler.n_quantiles)
                if not any(w.overlaps(s, p - run.window, p + run.window + 1)
                           for s, p in (map(int, i.split(":")) for i in e.example_ids))]
        pos = [row for row in rows if row.activating]
        assert len(pos) == min(score.n_activating, len(held))
        assert sum(not row.activating for row in rows) == min(score.n_negatives, len(pos))
        names = ["top"] + [f"q{q}" for q in range(1, r.sampler.n_quantiles + 1)]
        have = Counter(w.stratum for w in held)
        used = Counter(row.stratum for row in pos)
        assert set(used) <= set(names)
        share = score.n_activating // len(names)
        assert all(used[s] >= min(have[s], share) for s in names), (used, have)  # an even share each
        assert r.per_stratum_n == dict(Counter(row.stratum for row in rows))
        any_short |= any(have[s] < share for s in names) or len(held) < score.n_activating
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == int(any_short)
    if any_short:
        assert f"--n-examples-test {score.n_activating}" in warnings[0]
