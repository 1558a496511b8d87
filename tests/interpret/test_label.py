"""engine.label: harvest chosen latents, label them, write the seed's two files."""

import json

from clients.testing import FakeLLMServer
from engine.interpret.label import main as label_main
from engine.interpret.label import run_labeling

SMALL = dict(n_samples=40, max_examples_per_feature=6, max_examples_for_labeling=4, context_length=64)


def _check(out, indices, scores=None, llm_label=None):
    labels = json.loads((out / "feature_labels.json").read_text())
    feats = {f["feature_index"]: f for f in labels["features"]}
    assert labels["num_features"] == len(feats) and set(feats) <= set(indices) and len(feats) >= len(indices) - 1
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
        assert set(e) >= {"activation", "sequence_index", "token_position", "text"} and e["text"]


def test_offline_search_labels_from_features_json(tmp_path):
    feats = tmp_path / "features.json"
    feats.write_text(json.dumps({"feature_indices": [522, 920, 241], "scores": [0.5, 0.25, 0.125]}))
    out = label_main([str(feats), "--output-dir", str(tmp_path / "res"), "--n-samples", "40", "--max-examples", "6",
                      "--max-examples-for-labeling", "4", "--context-length", "64"])
    _check(out, [522, 920, 241], scores={522: 0.5, 920: 0.25, 241: 0.125})


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
