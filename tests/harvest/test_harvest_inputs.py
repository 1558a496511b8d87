"""Bad harvest settings are refused before any work, in one line; a short dataset leaves a trimmed token store."""

from pathlib import Path

import msgspec
import numpy as np
import pytest
from transformers import AutoTokenizer

from engine.core.errors import UserError
from engine.core.latents import parse_latents
from engine.core.rundir import RunDir
from engine.core.schemas import RunConfig
from engine.core.token_text import TokenText
from engine.harvest.config import HarvestArgs
from engine.harvest.defaults import DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.memory import describe, state_bytes
from engine.harvest.run import main as harvest_main
from engine.harvest.run import parse_args
from engine.harvest.state import HarvestState, StateConfig
from tests.helpers.cli_errors import one_line_error

SMALL = ["--batch-size", "2", "--context-length", "32", "--top-k", "3", "--n-random", "2", "--window", "2",
         "--no-output-stats"]


def _one_line_error(capsys, argv) -> str:
    return one_line_error(capsys, harvest_main, argv)


@pytest.mark.parametrize("flags, says", [
    (["--context-length", "1"], "--context-length 1 must be >= 2"),
    (["--batch-size", "0"], "--batch-size 0 must be >= 1"),
    (["--n-tokens", "0"], "--n-tokens 0 must be >= 1"),
    (["--dtype", "fp8"], "--dtype 'fp8' is not a dtype"),
    (["--latents", "3-1"], "range '3-1' is empty"),
    (["--overwrite", "harvest", "--resume"], "--overwrite harvest with --resume"),
    (["--cooc-sample-rate", "1.5"], "--cooc-sample-rate 1.5 must lie in [0, 1]"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, capsys, flags, says):
    out = tmp_path / "o"
    err = _one_line_error(capsys, [DEFAULT_MODEL, DEFAULT_SAE, "--out", str(out), *SMALL, *flags])
    assert says in err
    assert not (out / "harvest" / "components.jsonl").exists()


@pytest.mark.parametrize("spelling, dtype", [("fp16", "float16"), ("half", "float16"), ("BF16", "bfloat16"),
                                             ("bfloat16", "bfloat16"), ("fp32", "float32"), ("float32", "float32")])
def test_dtype_aliases(spelling, dtype):
    assert parse_args(["--dtype", spelling]).dtype == dtype


def test_latent_ranges():
    assert parse_latents("3,5-7,5")[0] == [3, 5, 6, 7]
    assert parse_latents("4-4")[0] == [4]
    assert HarvestArgs().dtype == "float32"


@pytest.mark.parametrize("kw", [dict(), dict(output_stats=False), dict(pair_budget_bytes=0), dict(row_lo=3, row_hi=9),
                                dict(n_random=200, window=32, top_k=50)])
def test_state_memory_formula_is_the_tensor_bytes(kw):
    cfg = StateConfig(n_latents=24, vocab_size=50, seq_len=16, **{"top_k": 5, "n_random": 7, "window": 3, **kw})
    assert sum(state_bytes(cfg).values()) == HarvestState(cfg).nbytes()
    assert f"--n-random {cfg.n_random}" in describe(cfg)


def test_short_dataset_trims_the_token_store_and_windows_decode_whole(tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text("\n".join(f"line {i}: the quick brown fox 世界 jumps over the lazy dog 🙂 café {i * 7}"
                              for i in range(40)), encoding="utf-8")
    out = tmp_path / "run"
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", str(text), "--out", str(out), *SMALL, "--n-batches", "500"])
    err = capsys.readouterr().err
    assert "harvest: state " in err  # the memory cost, printed before the harvest
    bar = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("harvest:") and "tok/s" in line]
    assert "100%" in bar[-1] and "ended after" in err  # the bar ends full at the tokens there were, and says why
    rc = msgspec.json.decode((out / "harvest" / "config.json").read_bytes(), type=RunConfig)
    assert 0 < rc.n_sequences < 1000  # the text ran out long before 500 batches of 2
    tokens = np.fromfile(out / "harvest" / "tokens.bin", dtype=np.int32)
    assert tokens.size == rc.n_sequences * rc.context_length
    rows = tokens.reshape(rc.n_sequences, rc.context_length)
    assert (rows[:, 1:] != rows[:, :1]).any(axis=1).all()  # every kept row holds text, none is an unwritten zero row
    assert Path(out / "harvest" / "components.jsonl").stat().st_size > 0
    # windows are the text's bytes decoded whole: CJK and emoji survive, one piece per token
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    comps = list(RunDir(out).iter_components())
    n_non_ascii = 0
    for c in comps:
        for e in c.top_examples + c.random_examples:
            assert len(e.tokens) == len(e.token_ids) == len(e.activations)
            skip = int(e.token_ids[0] == tokenizer.bos_token_id)  # a sequence may start inside a character
            inner = "".join(e.tokens[skip:]).strip("\ufffd")  # only a character cut by the window's ends is lost
            assert "\ufffd" not in inner
            assert inner == tokenizer.decode(e.token_ids[skip:]).strip("\ufffd")
            n_non_ascii += any(not t.isascii() for t in e.tokens)
        for s in c.input_token_stats.top_recall + (c.logit_lens.top if c.logit_lens else []):
            assert "\ufffd" not in s.key  # a byte token alone reads <0xE4>
    assert n_non_ascii > 0
    assert TokenText.load(RunDir(out).token_bytes) is not None
    # --overwrite harvest: the old harvest moves aside whole, and a fresh one is written
    first = (out / "harvest" / "components.jsonl").read_bytes()
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", str(text), "--out", str(out), *SMALL, "--n-batches", "2",
                  "--overwrite", "harvest"])
    (aside,) = out.glob("replaced-*")
    assert (aside / "harvest" / "components.jsonl").read_bytes() == first
    assert msgspec.json.decode((out / "harvest" / "config.json").read_bytes(), type=RunConfig).n_sequences == 4


def test_resume_refuses_a_checkpoint_of_other_data():
    a = parse_args(["--dataset", "wikitext", "--dataset-name", "wikitext-2-raw-v1", "--dataset-split", "train[:1%]"])
    meta = {"sequences_done": 8, **a.checkpoint_source()}
    assert not a.checkpoint_source_differs(meta)
    assert not a.checkpoint_source_differs({"dataset": "wikitext", "model": a.model})  # an older checkpoint's keys
    for flag, value in (("--dataset-split", "train[1%:2%]"), ("--dataset-name", "wikitext-103-raw-v1"),
                        ("--dataset-column", "body")):
        b = parse_args(["--dataset", "wikitext", "--dataset-name", "wikitext-2-raw-v1", "--dataset-split", "train[:1%]",
                        flag, value])
        assert b.checkpoint_source_differs(meta), flag


def test_the_dtype_is_recorded_in_config_json(tmp_path):
    out = tmp_path / "run"
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--out", str(out), *SMALL, "--n-batches", "1", "--dtype", "bf16"])
    rc = msgspec.json.decode((out / "harvest" / "config.json").read_bytes(), type=RunConfig)
    assert rc.dtype == "bfloat16"


def test_a_new_harvest_never_lands_under_later_stages_built_on_the_last(tmp_path):
    """A folder whose harvest was explained is refused for a new harvest (its explanations would describe other
    data and count as done); --overwrite harvest sets both aside, and a folder with only a harvest is rewritten."""
    from engine.interpret.config import InterpretConfig
    from engine.interpret.run import run_interpret

    out = tmp_path / "run"
    flags = [DEFAULT_MODEL, DEFAULT_SAE, "--out", str(out), *SMALL, "--n-batches", "2"]
    harvest_main(flags)
    harvest_main(flags)  # nothing built on it yet: rewritten
    run_interpret(out, InterpretConfig(provider="search", progress=False))
    labels = RunDir(out).explanations().read_bytes()
    with pytest.raises(UserError, match="holds a harvest and what later stages built on it .*interpretations"):
        harvest_main(flags)
    assert RunDir(out).explanations().read_bytes() == labels  # untouched
    harvest_main([*flags, "--overwrite", "harvest"])
    (aside,) = out.glob("replaced-*")
    assert (aside / "interpretations").is_dir() and not (out / "interpretations").exists()
