"""--min-examples: latents that fired too rarely are harvested but neither explained nor scored, and counted."""

from engine.interpret.config import InterpretConfig
from engine.interpret.run import run_interpret
from engine.score.config import ScoreRunConfig
from engine.score.run import run_score
from tests.helpers.run_files import components_by_latent, logged_explanations, scores_by_latent
from tests.helpers.trigger_run import pool_source, write_run


def test_min_examples_skips_rare_latents_in_interpret_and_score(tmp_path, capsys):
    run = write_run(tmp_path / "run", n_latents=8)
    comps = components_by_latent(run.dir)
    counts = sorted(c.firing_count for c in comps.values())
    cut = counts[len(counts) // 2]  # about half the latents fire less often than this
    rare = {lat for lat, c in comps.items() if c.firing_count < cut}
    assert 0 < len(rare) < len(comps)
    got = run_interpret(run.dir, InterpretConfig(provider="search", progress=False, min_examples=cut))
    assert got["too_few_firings"] == len(rare)
    assert f"{len(rare)} latents fired fewer than --min-examples {cut}" in capsys.readouterr().err
    explained = {e.latent for e in logged_explanations(run.dir)}
    assert explained == set(comps) - rare
    summary = run_score(run.dir, ScoreRunConfig(scorers=("embedding",), progress=False, min_examples=cut),
                        negatives=pool_source(run))
    scored = set(scores_by_latent(run.dir, "embedding"))
    assert scored == set(comps) - rare
    assert summary["embedding"]["skipped_min_examples"] == len(rare)
    assert "not scored (--min-examples)" in capsys.readouterr().out


def test_overwrite_sets_each_stage_aside_and_starts_afresh(tmp_path, capsys):
    from engine.core.rundir import RunDir

    run = write_run(tmp_path / "run", n_latents=6)
    rd = RunDir(run.dir)
    run_interpret(run.dir, InterpretConfig(provider="search", progress=False))
    run_score(run.dir, ScoreRunConfig(scorers=("embedding",), progress=False), negatives=pool_source(run))
    first_expl, first_scores = rd.explanations().read_bytes(), rd.score_log("embedding").read_bytes()
    run_score(run.dir, ScoreRunConfig(scorers=("embedding",), progress=False, overwrite=("scores",)),
              negatives=pool_source(run))
    aside = sorted(run.dir.glob("replaced-*"))
    assert len(aside) == 1 and (aside[0] / "scores" / "embedding.jsonl").read_bytes() == first_scores
    assert not (aside[0] / "interpretations").exists()  # scores only
    assert rd.score_log("embedding").read_bytes() == first_scores  # scored afresh: the same deterministic result
    assert "moved scores" in capsys.readouterr().err
    got = run_interpret(run.dir, InterpretConfig(provider="search", progress=False, overwrite=("explanations",)))
    assert got["written"] == 6  # everything explained again, nothing counted as already done
    aside = sorted(run.dir.glob("replaced-*"))
    assert len(aside) == 2
    newest = max(aside, key=lambda p: p.stat().st_mtime)
    assert (newest / "interpretations" / "results.jsonl").read_bytes() == first_expl
    assert (newest / "scores").is_dir()  # the scores of the replaced explanations go with them
    assert not rd.scores.exists() and rd.explanations().exists()


def test_a_refused_overwrite_moves_nothing(tmp_path, monkeypatch):
    import pytest

    from clients.errors import ClientConfigError

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    run = write_run(tmp_path / "run", n_latents=4)
    run_interpret(run.dir, InterpretConfig(provider="search", progress=False))
    with pytest.raises(ClientConfigError):  # no key: refused before the old explanations move
        run_interpret(run.dir, InterpretConfig(provider="anthropic", model="claude-haiku-4-5", progress=False,
                                               overwrite=("explanations",)))
    assert not list(run.dir.glob("replaced-*")) and (run.dir / "interpretations" / "results.jsonl").exists()
