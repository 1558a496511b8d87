"""`python -m engine.harvest merge`: harvests over different data combine into the single pass over all of it.

The single pass is recomputed here with the library (`Harvester`) over run A's sequences followed by
run B's, with the same model, dictionary and settings; the merged run must equal it.
"""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.core.errors import run_cli
from engine.core.rundir import RunDir
from engine.harvest.data import TokenStore, counted_positions
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.dictionaries import load_dictionary
from engine.harvest.harvester import Harvester
from engine.harvest.merge_runs import main as merge_main
from engine.harvest.model import load_model
from engine.harvest.results import build_results
from engine.harvest.run import main as harvest_main
from engine.harvest.sources import HookedModel
from engine.harvest.state import HarvestState

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--batch-size", "4", "--n-batches", "2", "--context-length", "48", "--top-k", "4", "--n-random", "3",
         "--window", "3", "--final-checkpoint"]


def _texts(path: Path, docs: list[str]) -> Path:
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merge")
    with gzip.open(DEFAULT_DATASET, "rt") as f:
        docs = [json.loads(line)["text"] for line in f]
    a_data, b_data = _texts(tmp / "a.jsonl", docs[:6]), _texts(tmp / "b.jsonl", docs[20:26])
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", str(a_data), "--out", str(tmp / "A"), *FLAGS])
    n_a = RunDir(tmp / "A").load_config().n_sequences
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", str(b_data), "--out", str(tmp / "B"), *FLAGS,
                  "--sequence-offset", str(n_a)])
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", str(b_data), "--out", str(tmp / "B0"), *FLAGS])
    return tmp


def _single_pass(runs_: list[Path], out: Path) -> HarvestState:
    """One Harvester over the runs' sequences in order (the concatenated data), results written to `out`."""
    rds = [RunDir(r) for r in runs_]
    rc = rds[0].load_config()
    state0, _ = HarvestState.load(rds[0].checkpoint(), "cpu")
    tokens = np.concatenate([np.fromfile(r.tokens, dtype=np.int32).reshape(-1, rc.context_length) for r in rds])
    model, tok, _ = load_model(DEFAULT_MODEL, "cpu", "float32")
    d = load_dictionary(DEFAULT_SAE)
    hooked = HookedModel(model, [rc.hookpoints[0].name])
    h = Harvester([d], state0.cfg.__class__(**{**state0.cfg.__dict__, "seq_offset": 0}), [rc.hookpoints[0].name])
    ids = torch.from_numpy(tokens.astype(np.int64))
    for i in range(0, len(ids), 4):
        acts, logits = hooked.run(ids[i : i + 4], need_logits=True)
        h.update(acts, ids[i : i + 4], seq_ids=torch.arange(i, i + len(ids[i : i + 4])),
                 valid=counted_positions(ids[i : i + 4], tok), logits=logits)
    dest = RunDir(out)
    dest.harvest.mkdir(parents=True)
    tokens.tofile(dest.tokens)
    import msgspec

    rc2 = msgspec.structs.replace(rc, n_sequences=len(tokens), n_tokens=int(h.state.n_tokens))
    build_results(h.state, rc2, [d], tok, TokenStore(dest.tokens, len(tokens), rc.context_length), model, dest)
    hooked.close()
    return h.state


def test_merge_equals_one_pass_over_the_concatenated_data(runs, tmp_path):
    merge_main([str(runs / "A"), str(runs / "B"), "--out", str(tmp_path / "M")])
    ref = _single_pass([runs / "A", runs / "B"], tmp_path / "ref")
    merged, meta = HarvestState.load(RunDir(tmp_path / "M").checkpoint(), "cpu")
    assert meta["sequences_done"] == RunDir(runs / "A").load_config().n_sequences + RunDir(runs / "B").load_config().n_sequences
    for k, v in ref.tensors().items():
        got = merged.tensors()[k]
        if v.dtype.is_floating_point and k in ("act_sum", "out_total", "out_tok.table", "in_tok.table"):
            torch.testing.assert_close(got, v, rtol=1e-9, atol=1e-9, msg=k)
        else:
            assert torch.equal(got, v), k
    m, r = RunDir(tmp_path / "M"), RunDir(tmp_path / "ref")
    assert m.components.read_bytes() == r.components.read_bytes()
    assert m.tokens.read_bytes() == r.tokens.read_bytes()
    rc = m.load_config()
    assert rc.extra["reservoir_exact"] is True and len(rc.extra["merged_from"]) == 2
    locs = [e.sequence for c in m.iter_components() for e in c.top_examples]
    assert max(locs) >= RunDir(runs / "A").load_config().n_sequences  # B's examples moved past A's sequences


def test_merge_without_offsets_is_exact_but_for_the_sample(runs, tmp_path, capsys):
    merge_main([str(runs / "A"), str(runs / "B0"), "--out", str(tmp_path / "M0")])
    assert "uniform sample" in capsys.readouterr().err
    ref = _single_pass([runs / "A", runs / "B0"], tmp_path / "ref0")
    merged, _ = HarvestState.load(RunDir(tmp_path / "M0").checkpoint(), "cpu")
    for k in ("count", "hist", "top_val", "top_loc", "top_win", "tok_total", "cooc.table"):
        assert torch.equal(merged.tensors()[k], ref.tensors()[k]), k
    assert RunDir(tmp_path / "M0").load_config().extra["reservoir_exact"] is False
    counts = merged.count.clamp(max=merged.cfg.n_random)
    assert torch.equal((merged.res_loc >= 0).sum(1), counts)  # still a full sample of each latent's firings


def _refused(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        run_cli(merge_main, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and " -- " in err and "Traceback" not in err
    return err


def test_merge_refuses_what_is_not_different_data_with_the_same_settings(runs, tmp_path, capsys):
    a, b = runs / "A", runs / "B"
    copy = tmp_path / "A-copy"
    shutil.copytree(a, copy)
    assert "same data" in _refused(capsys, [str(a), str(copy), "--out", str(tmp_path / "x1")])
    assert "listed twice" in _refused(capsys, [str(a), str(a), "--out", str(tmp_path / "x2")])
    other = tmp_path / "B-topk"
    shutil.copytree(b, other)
    cfg = json.loads(RunDir(other).config.read_text())
    cfg["top_k"] = 7
    RunDir(other).config.write_text(json.dumps(cfg))
    assert "differ in top_k" in _refused(capsys, [str(a), str(other), "--out", str(tmp_path / "x3")])
    cfg["top_k"], cfg["model_revision"] = json.loads(RunDir(a).config.read_text())["top_k"], "c" * 40
    RunDir(other).config.write_text(json.dumps(cfg))  # the same hub name read at another commit: other weights
    assert "differ in model_revision" in _refused(capsys, [str(a), str(other), "--out", str(tmp_path / "x3")])
    bare = tmp_path / "B-bare"
    shutil.copytree(b, bare)
    shutil.rmtree(RunDir(bare).checkpoint())
    assert "--final-checkpoint" in _refused(capsys, [str(a), str(bare), "--out", str(tmp_path / "x4")])
    assert not (tmp_path / "x1").exists() and not (tmp_path / "x3").exists()


def test_merge_command_line(runs, tmp_path):
    r = subprocess.run([sys.executable, "-m", "engine.harvest", "merge", str(runs / "A"), str(runs / "B"), "--out",
                        str(tmp_path / "cli")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert RunDir(tmp_path / "cli").components.stat().st_size > 0


def test_merges_keep_the_random_control_and_an_earlier_merge_s_verdict(runs, tmp_path, capsys):
    """A merge of --random-dictionary runs describes the random weights (logit lens, directions), not the
    trained ones; a merge of a merge whose sample was not exact stays not exact."""
    with gzip.open(DEFAULT_DATASET, "rt") as f:
        docs = [json.loads(line)["text"] for line in f]
    a_data, c_data = _texts(tmp_path / "a.jsonl", docs[:6]), _texts(tmp_path / "c.jsonl", docs[40:44])
    ra = tmp_path / "RA"
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", str(a_data), "--out", str(ra), *FLAGS, "--random-dictionary"])
    rb = tmp_path / "RB"
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", str(c_data), "--out", str(rb), *FLAGS, "--random-dictionary",
                  "--sequence-offset", str(RunDir(ra).load_config().n_sequences)])
    merge_main([str(ra), str(rb), "--out", str(tmp_path / "RM")])
    lens = {c.latent: c.logit_lens for c in RunDir(ra).iter_components()}
    merged = {c.latent: c.logit_lens for c in RunDir(tmp_path / "RM").iter_components()}
    assert merged and all(merged[k] == lens[k] for k in merged.keys() & lens.keys())
    assert (tmp_path / "RM" / "harvest" / "directions.safetensors").read_bytes() == (
        ra / "harvest" / "directions.safetensors").read_bytes()
    trained = {c.latent: c.logit_lens for c in RunDir(runs / "A").iter_components()}
    assert any(trained[k] != merged[k] for k in merged.keys() & trained.keys())
    # a merge of a merge: A + B0 (no offsets: not exact), then + a run at the right offset -> still not exact
    merge_main([str(runs / "A"), str(runs / "B0"), "--out", str(tmp_path / "M0")])
    c = tmp_path / "C"
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", str(c_data), "--out", str(c), *FLAGS,
                  "--sequence-offset", str(RunDir(tmp_path / "M0").load_config().n_sequences)])
    merge_main([str(tmp_path / "M0"), str(c), "--out", str(tmp_path / "M2")])
    assert RunDir(tmp_path / "M2").load_config().extra["reservoir_exact"] is False


def test_merge_takes_the_same_model_spelled_as_another_path(runs, tmp_path, monkeypatch):
    """./model, model/ and /abs/model are one model: merging refuses other settings, not other spellings."""
    monkeypatch.chdir(ROOT)
    other = tmp_path / "B-relative"
    shutil.copytree(runs / "B", other)
    cfg = json.loads(RunDir(other).config.read_text())
    cfg["model"] = "./" + os.path.relpath(DEFAULT_MODEL, ROOT) + "/"
    cfg["hookpoints"][0]["dictionary"] = os.path.relpath(DEFAULT_SAE, ROOT)
    RunDir(other).config.write_text(json.dumps(cfg))
    merge_main([str(runs / "A"), str(other), "--out", str(tmp_path / "merged")])
    assert RunDir(tmp_path / "merged").components.stat().st_size > 0
