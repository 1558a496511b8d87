"""Surprisal scorer: batched losses equal one-at-a-time forwards; the AUC ranks by loss drop; CLI end to end."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from engine.core.jsonl import read_records
from engine.core.rundir import RunDir, primary
from engine.core.schemas import ScoreResult
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.run import main as harvest_main
from engine.interpret.config import InterpretConfig
from engine.interpret.run import run_interpret
from engine.score.config import ScoreRunConfig
from engine.score.items import score_item
from engine.score.metrics import auc
from engine.score.run import main as score_main
from engine.score.run import run_score
from engine.score.scorers import registry
from engine.score.scorers.base import Details, ScoreConfig
from engine.score.scorers.surprisal import CausalLMLosses, Surprisal
from tests.helpers.trigger_run import TRIGGERS, pool_source, trigger_of, write_run


@pytest.fixture(scope="module")
def lm():
    return CausalLMLosses(DEFAULT_MODEL, batch_size=3)  # small batches: padding and several chunks


def test_batched_losses_equal_single_forwards(lm):
    texts = ["def f(x):\n    return x", "import os", "class A:\n    pass\n\n\nclass B(A):"]
    pairs = [(lm.encode_prefix(p), lm.encode_text(t)) for p in ("Text containing decorators:\n", "#") for t in texts]
    got = lm.losses(pairs)
    for (prefix, cont), value in zip(pairs, got):
        ids = torch.tensor([prefix + cont])
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0]
        nll = torch.nn.functional.cross_entropy(logits[len(prefix) - 1 : -1], ids[0, len(prefix):])  # brute force
        assert value == pytest.approx(float(nll), rel=1e-4, abs=1e-5)


class RuleLM:
    """A loss model that knows the fixture's rule: text is easier after an explanation naming its trigger word."""

    def encode_prefix(self, text):
        return [ord(ch) for ch in text]

    encode_text = encode_prefix

    def losses(self, pairs):
        out = []
        for prefix, cont in pairs:
            trig = trigger_of("".join(map(chr, prefix)))
            out.append(2.0 - (trig is not None and trig in "".join(map(chr, cont))))
        return torch.tensor(out).numpy()


def test_auc_follows_the_loss_drop(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run", n_sequences=100)
    run_interpret(run.dir, InterpretConfig(provider="search", progress=False))  # labels: the trigger word itself
    scorer = Surprisal(ScoreConfig(), lm=RuleLM())
    real = registry
    monkeypatch.setattr("engine.score.run.registry", lambda cfg, embedder=None: {**real(cfg, embedder), "surprisal": scorer})
    summary = run_score(run.dir, ScoreRunConfig(scorers=("surprisal",), progress=False), negatives=pool_source(run))
    results = read_records(run.dir / "scores" / "surprisal.jsonl", ScoreResult)
    assert sorted(r.latent for r in results) == list(range(run.n_latents))
    assert all(r.auc == 1.0 and r.balanced_accuracy == 1.0 for r in results)
    assert summary["surprisal"]["pooled"]["auc"] == 1.0
    details = read_records(run.dir / "scores" / "details" / "surprisal.jsonl", Details)
    assert all(d.extra["mean_gain_activating"] == 1.0 and d.extra["mean_gain_other"] < 1.0 for d in details)
    c = next(RunDir(run.dir).iter_components())
    item = score_item(c, primary(RunDir(run.dir).read_explanations()[c.latent]), pool_source(run), ScoreConfig(), 6)
    other = TRIGGERS[(c.latent + 1) % run.n_latents].strip()
    d = scorer.outcome(dataclasses.replace(item, label=f"the word {other}"))  # a wrong explanation
    wrong = auc([r.activating for r in d.rows], [r.probability for r in d.rows])
    assert wrong < 0.8  # it helps only where the other word happens to occur, in both classes


def test_cli_scores_the_embedded_default_offline(tmp_path, capsys):
    out = tmp_path / "run"
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", DEFAULT_DATASET, "--out", str(out), "--n-tokens", "8192",
                  "--batch-size", "16", "--context-length", "128"])
    run_interpret(out, InterpretConfig(provider="search", latents="0-5", progress=False))
    summary = score_main([str(out), "--scorers", "surprisal", "--latents", "0-5", "--n-activating", "10",
                          "--n-negatives", "10", "--no-progress"])
    results = read_records(out / "scores" / "surprisal.jsonl", ScoreResult)
    assert 0 < len(results) <= 6 and len({r.latent for r in results}) == len(results)
    for r in results:
        assert r.model == DEFAULT_MODEL and r.error is None
        assert r.auc is None or 0.0 <= r.auc <= 1.0
        assert r.n_examples % 2 == 0  # as many non-activating excerpts as activating ones
    assert summary["surprisal"]["latents"] == len(results)
    assert "surprisal" in capsys.readouterr().out
    assert not math.isnan(summary["surprisal"]["mean_balanced_accuracy"])


@pytest.mark.parametrize("bos, eos, head", [(7, 9, [7]), (None, 9, [9]), (None, None, [])],
                         ids=["BOS", "EOS for BOS", "neither"])
def test_surprisal_prefix_starts_as_the_harvest_starts_a_sequence(bos, eos, head):
    from engine.score.scorers.surprisal import CausalLMLosses

    lm = object.__new__(CausalLMLosses)  # the tokenizer alone: no model is loaded
    lm.tokenizer = type("Tok", (), {"bos_token_id": bos, "eos_token_id": eos,
                                    "__call__": lambda self, text, add_special_tokens=False: {"input_ids": [4, 5]}})()
    assert lm.encode_prefix("text") == [*head, 4, 5]
