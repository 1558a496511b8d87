"""engine.label: harvest chosen latents, label them, write the seed's two files."""

import json
import re

import numpy as np
import pytest
from transformers import AutoTokenizer

from clients.errors import ClientConfigError
from clients.testing import FakeLLMServer
from engine.core.errors import UserError, run_cli
from engine.core.rundir import RunDir
from engine.harvest.defaults import DEFAULT_MODEL
from engine.interpret.label import main as label_main
from engine.interpret.label import run_labeling

SMALL = {"n_samples": 40, "max_examples_per_feature": 6, "max_examples_for_labeling": 4, "context_length": 64}


def _distinct_firings(c):
    """Brute force: every (sequence, position) of the harvest's two lists once, with its activation."""
    acts = {}
    for e in c.top_examples + c.random_examples:
        acts.setdefault((e.sequence, e.position), e.activation)
    return acts


def _check_examples(lines, run: RunDir, max_examples=None):
    comps = {c.component_idx: c for c in run.iter_components()}
    rc = run.load_config()
    store = np.fromfile(run.root / "harvest" / "tokens.bin", dtype=np.int32).reshape(-1, rc.context_length)
    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    for line in lines:
        exs, acts = line["examples"], _distinct_firings(comps[line["feature_id"]])
        keys = [(e["sequence_index"], e["token_position"]) for e in exs]
        assert len(set(keys)) == len(keys), keys  # each firing listed once
        if max_examples is None:
            assert set(keys) == set(acts)
        else:  # the max_examples highest distinct activations, highest first
            want = sorted(acts.values(), reverse=True)[:max_examples]
            assert [e["activation"] for e in exs] == want
        for e, (s, p) in zip(exs, keys):
            assert e["activation"] == acts[(s, p)]
            assert e["text"][e["char_start"]:e["char_end"]] == tok.decode([int(store[s, p])])
    return {line["feature_id"]: len(line["examples"]) for line in lines}


def _check(out, indices, scores=None, llm_label=None):
    labels = json.loads((out / "feature_labels.json").read_text())
    feats = {f["feature_index"]: f for f in labels["features"]}
    assert labels["num_features"] == len(feats) and set(feats) == set(indices)
    for i, f in feats.items():
        assert f["label_search"] and f["num_examples"] > 0
        assert f["label"] == (llm_label or f["label_search"])
        assert f["label_llm"] == (llm_label or "")
        if scores:
            assert f["score"] == scores[i]
    lines = [json.loads(l) for l in (out / "feature_examples.jsonl").read_text().splitlines()]
    assert {l["feature_id"] for l in lines} == set(feats)
    for l in lines:
        assert 0 < len(l["examples"]) <= 6
        e = l["examples"][0]
        assert set(e) >= {"activation", "sequence_index", "token_position", "text", "char_start", "char_end"}
    run = RunDir(out / "run")
    listed = _check_examples(lines, run, max_examples=6)
    assert {i: f["num_examples"] for i, f in feats.items()} == listed
    # the run's own exports list every distinct firing once, and say how many
    run_lines = [json.loads(l) for l in run.feature_examples.read_text().splitlines()]
    run_feats = json.loads(run.feature_labels.read_text())["features"]
    assert {f["feature_index"]: f["num_examples"] for f in run_feats} == _check_examples(run_lines, run)


def test_offline_search_labels_from_features_json(tmp_path, capsys):
    feats = tmp_path / "features.json"  # 102 never fires in these 40 x 64 tokens (checked on a full harvest)
    feats.write_text(json.dumps({"feature_indices": [522, 920, 241, 102], "scores": [0.5, 0.25, 0.125, 1.0]}))
    out = label_main([str(feats), "--output-dir", str(tmp_path / "res"), "--n-samples", "40", "--max-examples", "6",
                      "--max-examples-for-labeling", "4", "--context-length", "64", "--minibatch_size_tokens", "8"])
    _check(out, [522, 920, 241], scores={522: 0.5, 920: 0.25, 241: 0.125})
    assert "features 102 never fired in 2,520 tokens" in capsys.readouterr().err
    assert RunDir(out / "run").load_config().batch_size == 8


def test_llm_labels_with_scripted_local_server(tmp_path):
    def responder(body):
        return {"reasoning": "scripted", "label": "Python decorator syntax", "confidence": "high"}

    srv = FakeLLMServer(responder=responder).start_in_thread()
    try:
        out = run_labeling([522, 129], output_dir=str(tmp_path / "res"), label_provider="openai-compatible",
                           label_model="scripted", label_base_url=srv.base_url + "/v1", **SMALL)
    finally:
        srv.stop()
    _check(out, [522, 129], llm_label="Python decorator syntax")


@pytest.mark.parametrize("flags, error, says", [
    (["--provider", "anthropic"], UserError, "--label-model"),
    (["--provider", "anthropic", "--label-model", "claude-haiku-4-5"], ClientConfigError, "ANTHROPIC_API_KEY"),
    (["--provider", "openai-compatible", "--label-model", "m"], ClientConfigError, "base_url"),
])
def test_llm_settings_checked_before_any_work(tmp_path, monkeypatch, capsys, flags, error, says):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    argv = ["522", "--output-dir", str(tmp_path / "res"), "--n-samples", "2", "--context-length", "16", *flags]
    with pytest.raises(error, match=says):
        label_main(argv)
    assert not (tmp_path / "res").exists()  # nothing harvested, nothing written
    with pytest.raises(SystemExit) as exit_:
        run_cli(label_main, argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and says in err and "Traceback" not in err


def test_second_call_into_same_folder_labels_its_own_features(tmp_path):
    """Latent 0 of a one-feature run is a different feature each call: labels must follow the feature;
    the identical call again resumes (sends nothing)."""
    def responder(body):
        key = re.search(r"hook_resid_post/(\d+)", json.dumps(body)).group(1)
        return {"reasoning": "scripted", "label": f"feature {key}", "confidence": "high"}

    srv = FakeLLMServer(responder=responder).start_in_thread()
    kw = dict(output_dir=str(tmp_path / "res"), label_provider="openai-compatible", label_model="scripted",
              label_base_url=srv.base_url + "/v1", **{**SMALL, "n_samples": 16})
    try:
        for feature in (241, 129, 129):
            out = run_labeling([feature], **kw)
            f, = json.loads((out / "feature_labels.json").read_text())["features"]
            assert (f["feature_index"], f["label_llm"], f["label"]) == (feature, f"feature {feature}", f"feature {feature}")
        sent = len(srv.requests_seen)
    finally:
        srv.stop()
    assert sent == 2


def test_a_firing_on_a_continuation_byte_spans_the_character_it_continues():
    from types import SimpleNamespace

    from engine.core.schemas import ActivationExample
    from engine.interpret.exports import seed_examples

    def ex(pos, fi):  # "a世b" as 4 tokens: 世's three bytes split over tokens 1 and 2 (piece "" for the second)
        return ActivationExample(sequence=0, position=pos, activation=1.0, token_ids=[1, 2, 3, 4],
                                 tokens=["a", "世", "", "b"], activations=[0.0] * 4, firing_index=fi, source="top")

    c = SimpleNamespace(top_examples=[ex(2, 2), ex(3, 3), ex(1, 1)], random_examples=[])
    spans = [e["text"][e["char_start"]:e["char_end"]] for e in seed_examples(c)]
    assert spans == ["世", "b", "世"]
