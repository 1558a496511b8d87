"""engine.core.cli: every command's flags from its config dataclass, delphi's spellings, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.core.cli import RUN_DIR, parse_config
from engine.harvest.config import HarvestArgs
from engine.interpret.config import InterpretConfig
from engine.score.config import ScoreRunConfig

ROOT = Path(__file__).resolve().parents[2]


def test_delphi_spellings_set_the_same_fields():
    _, h = parse_config(HarvestArgs, ["--n_tokens", "5000", "--batch_size", "4", "--cache_ctx_len", "64",
                                      "--dataset_repo", "d.jsonl", "--dataset_split", "test", "--dataset_column", "body",
                                      "--no-filter_bos", "--max_latents", "7", "--example_ctx_len", "32",
                                      "--name", "runs/x"], prog="p", doc=None)
    assert (h.n_tokens, h.batch_size, h.context_length, h.dataset, h.dataset_split, h.dataset_column) == \
        (5000, 4, 64, "d.jsonl", "test", "body")
    assert (h.filter_bos, h.max_latents, h.window, h.out) == (False, 7, 16, "runs/x")  # 32-token examples = +-16
    _, i = parse_config(InterpretConfig, ["--explainer_provider", "anthropic", "--explainer_model", "m",
                                          "--n_examples_train", "12", "--n_non_activating", "3",
                                          "--non_activating_source", "FAISS"], prog="p", doc=None)
    assert (i.provider, i.model, i.max_examples, i.n_non_activating, i.non_activating) == \
        ("anthropic", "m", 12, 3, "faiss")
    pos, s = parse_config(ScoreRunConfig, ["RUN", "--n_examples_test", "9", "--n_non_activating", "8",
                                           "--num_examples_per_scorer_prompt", "3", "--scorers", "fuzz", "embedding"],
                          prog="p", doc=None, positionals=[RUN_DIR])
    assert pos.run_dir == Path("RUN")
    assert (s.score.n_activating, s.score.n_negatives, s.score.per_prompt, s.scorers) == (9, 8, 3, ("fuzz", "embedding"))


def test_defaults_equal_the_dataclass_defaults():
    _, s = parse_config(ScoreRunConfig, ["RUN"], prog="p", doc=None, positionals=[RUN_DIR])
    assert s == ScoreRunConfig()
    _, h = parse_config(HarvestArgs, [], prog="p", doc=None)
    assert h == HarvestArgs()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("argv, expect", [
    (["engine.interpret", "RUN", "--provdier", "anthropic"], "unknown flag --provdier -- did you mean --provider?"),
    (["engine.score", "RUN", "--n_examples_tst", "5"], "unknown flag --n_examples_tst -- did you mean --n_examples_test?"),
    (["engine.harvest", "--context_length", "64"], "unknown flag --context_length -- did you mean --context-length?"),
])
def test_unknown_flag_is_one_line_with_the_closest_spelling(argv, expect):
    p = _cli(*argv)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"error: {expect}"]


def test_bad_value_is_one_line():
    p = _cli("engine.interpret", "RUN", "--provider", "nope")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--provider" in lines[0] and "openai-compatible" in lines[0], lines


def test_help_shows_field_docstrings_and_defaults():
    p = _cli("engine.score", "--help")
    assert p.returncode == 0
    text = " ".join(p.stdout.split())
    assert "Held-out activating windows per latent" in text  # a nested ScoreConfig field's docstring
    assert "(default: 40)" in text and "(default: search)" in text
