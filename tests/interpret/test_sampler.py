"""delphi's sampler controls (issue 23): each flag changes which examples are shown and held out as
engine/core/examples.py documents, no held-out window ever overlaps an explainer window, the settings
reach every Explanation, and an unfillable test set is one warning line.

Run on the synthetic trigger run (tests/helpers/trigger_run.py) with a larger uniform sample than the
other tests (n_random 60), so every stratum can hold what the flags ask for.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from engine.core.cli import RUN_DIR, parse_config
from engine.core.errors import run_cli
from engine.core.examples import SplitConfig, Window, split_examples, strata
from engine.core.rundir import RunDir
from engine.interpret import run as interpret
from engine.interpret.config import InterpretConfig
from engine.interpret.run import run_interpret
from engine.score.config import ScoreRunConfig
from tests.helpers.run_files import logged_explanations
from tests.helpers.trigger_run import write_run


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    run = write_run(tmp_path_factory.mktemp("sampler") / "run", n_latents=6, n_sequences=160, top_k=16, n_random=60)
    return run, list(RunDir(run.dir).iter_components())


def overlap(a: Window, b: Window) -> bool:
    return a.sequence == b.sequence and a.start < b.end and b.start < a.end


def alternating_top(tops: list[Window], n: int, fill: bool) -> list[str]:
    """Brute force of the documented top rule: even turns over the windows not overlapping one already
    chosen, then (fill, train_type top) the rest in rank order."""
    chosen: list[Window] = []
    turn = 0
    for w in tops:
        if any(overlap(w, c) for c in chosen):
            continue
        if turn % 2 == 0 and len(chosen) < n:
            chosen.append(w)
        turn += 1
    for w in tops if fill else ():
        if len(chosen) < n and w not in chosen and not any(overlap(w, c) for c in chosen):
            chosen.append(w)
    return [w.id for w in chosen]


def check_disjoint(c, split) -> None:
    """Explainer windows never overlap each other or a held-out one, and every other window is held out."""
    ex = split.explain
    assert len({w.id for w in ex}) == len(ex)
    assert not any(overlap(a, b) for i, a in enumerate(ex) for b in ex[i + 1:])
    assert not any(overlap(h, e) for h in split.held_out for e in ex)
    windows = strata(c, split.sampler.n_quantiles)
    assert [w.id for w in split.held_out] == [w.id for w in windows if not any(overlap(w, e) for e in ex)]


CONFIGS = [SplitConfig(), SplitConfig(train_type="top", n_examples_train=5),
           SplitConfig(train_type="top", n_examples_train=14), SplitConfig(train_type="random", n_examples_train=12),
           SplitConfig(train_type="quantiles", n_examples_train=13), SplitConfig(train_type="quantiles", n_quantiles=3),
           SplitConfig(ratio_top=0.2, n_examples_train=20),
           SplitConfig(ratio_top=1.0, n_examples_train=6, n_quantiles=8)]


@pytest.mark.parametrize("cfg", CONFIGS,
                         ids=lambda c: f"{c.train_type}-n{c.n_examples_train}-r{c.ratio_top}-q{c.n_quantiles}")
def test_each_setting_draws_as_documented_and_held_out_never_overlaps(sampled, cfg):
    _, comps = sampled
    for c in comps:
        split = split_examples(c, cfg)
        check_disjoint(c, split)
        windows = strata(c, cfg.n_quantiles)
        tops = [w for w in windows if w.stratum == "top"]
        got = Counter(w.stratum for w in split.explain)
        # the top list: the documented alternation (train_type top: then the odd ranks), nothing for random/quantiles
        want_top = {"top": cfg.n_examples_train, "mix": int(cfg.ratio_top * cfg.n_examples_train + 0.5)}
        n_top = want_top.get(cfg.train_type, 0)
        if cfg.train_type != "random":
            assert [w.id for w in split.explain if w.stratum == "top"] == \
                alternating_top(tops, n_top, cfg.train_type == "top")
        if cfg.train_type == "random":  # uniform over firings: every shown window is one of the random sample
            sampled_ids = {f"{e.sequence}:{e.position}" for e in c.random_examples}
            assert {w.id for w in split.explain} <= sampled_ids and len(split.explain) == cfg.n_examples_train
        elif cfg.train_type in ("quantiles", "mix"):  # the rest spread evenly, remainder to the strongest bins
            rest = cfg.n_examples_train - n_top
            for q in range(1, cfg.n_quantiles + 1):
                want = rest // cfg.n_quantiles + (q > cfg.n_quantiles - rest % cfg.n_quantiles)
                assert got[f"q{q}"] == want, (c.latent, q, got)
        else:
            assert set(got) == {"top"}
        assert {w.stratum for w in windows} - {"top"} == {f"q{q}" for q in range(1, cfg.n_quantiles + 1)}


def test_each_flag_changes_the_draw(sampled):
    """Every setting, changed alone, changes which examples are shown for some latent (and the seed too)."""
    _, comps = sampled
    base = SplitConfig()
    changes = {"train_type": "random", "ratio_top": 0.8, "n_quantiles": 3, "n_examples_train": 8, "seed": 1}
    for name, value in changes.items():
        other = SplitConfig(**{name: value})
        assert any(split_examples(c, base).explain_ids != split_examples(c, other).explain_ids for c in comps), name
    every_top = SplitConfig(train_type="top", n_examples_train=16)  # all K = 16; mix shows only the even ranks
    for c in comps:
        held = [sum(w.stratum == "top" for w in split_examples(c, cfg).held_out) for cfg in (every_top, base)]
        assert held[0] < held[1], (c.latent, held)


def test_flags_and_delphi_spellings_reach_every_explanation(sampled, tmp_path):
    run, comps = sampled
    dashes = ["--n-quantiles", "3", "--train-type", "quantiles", "--ratio-top", "0.3", "--n-examples-train", "9",
              "--n-examples-test", "12", "--n-non-activating", "2"]
    underscores = ["--" + a[2:].replace("-", "_") if a.startswith("--") else a for a in dashes]
    _, a = parse_config(InterpretConfig, dashes, prog="p", doc=None)
    _, b = parse_config(InterpretConfig, underscores, prog="p", doc=None)
    assert a == b and (a.n_quantiles, a.train_type, a.ratio_top, a.max_examples, a.n_examples_test,
                       a.n_non_activating) == (3, "quantiles", 0.3, 9, 12, 2)
    _, s1 = parse_config(ScoreRunConfig, ["RUN", *dashes], prog="p", doc=None, positionals=[RUN_DIR])
    _, s2 = parse_config(ScoreRunConfig, ["RUN", *underscores], prog="p", doc=None, positionals=[RUN_DIR])
    assert s1 == s2 and (s1.n_quantiles, s1.train_type, s1.ratio_top, s1.max_examples, s1.score.n_activating,
                         s1.score.n_negatives) == (3, "quantiles", 0.3, 9, 12, 2)
    run_interpret(run.dir, a)
    rc = RunDir(run.dir).load_config()
    records = {e.latent: e for e in logged_explanations(run.dir)}
    assert sorted(records) == [c.latent for c in comps]
    for c in comps:
        e = records[c.latent]
        assert e.sampler == a.split_config(rc.seed).record()
        assert e.example_ids == split_examples(c, a.split_config(rc.seed)).explain_ids  # one path for the split
        assert len(e.example_ids) == 9 and e.sampler.train_type == "quantiles"


def test_bad_sampler_values_are_one_line_exit_2(sampled, capsys):
    run, _ = sampled
    for argv, flag in ([["--ratio-top", "1.5"], "--ratio-top"], [["--n-quantiles", "0"], "--n-quantiles"],
                       [["--train-type", "best"], "--train-type"]):
        with pytest.raises(SystemExit) as exit_:
            run_cli(interpret.main, [str(run.dir), *argv])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flag in err and "Traceback" not in err, err
    from engine.score import run as score

    with pytest.raises(SystemExit) as exit_:  # engine.score refuses it too (0 used to mean "the recorded one")
        run_cli(score.main, [str(run.dir), "--scorers", "embedding", "--n-quantiles", "0"])
    assert exit_.value.code == 2 and "--n-quantiles 0" in capsys.readouterr().err


def test_unfillable_test_set_is_one_warning_line(sampled, tmp_path, capsys):
    _, comps = sampled
    run = write_run(tmp_path / "short", n_latents=6, n_sequences=160, top_k=16, n_random=60)  # the same harvest
    cfg = InterpretConfig(provider="search", progress=False, n_examples_test=70)
    run_interpret(run.dir, cfg)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    split_cfg = cfg.split_config(0)
    share = 70 // 6
    short = 0
    for c in comps:  # brute force: any stratum below its share, or fewer than 70 held out
        held = Counter(w.stratum for w in split_examples(c, split_cfg).held_out)
        short += any(held[s] < share for s in ["top", "q1", "q2", "q3", "q4", "q5"]) or sum(held.values()) < 70
    assert short > 0 and len(err) == 1
    assert re.search(rf"for {short} of {len(comps)} latents", err[0]) and "--n-examples-test 70" in err[0]
    fine = write_run(tmp_path / "fine", n_latents=6, n_sequences=160, top_k=16, n_random=60)
    run_interpret(fine.dir, InterpretConfig(provider="search", progress=False, n_examples_test=6))
    assert "warning:" not in capsys.readouterr().err  # 1 per stratum: every latent fills it
