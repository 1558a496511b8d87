"""The README's main job: harvest -> offline labels -> report on the embedded default, no network."""

import json

import msgspec

from engine.core.schemas import ComponentData, Explanation
from engine.demo import heldout_loss
from engine.demo import main as demo_main


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    demo_main(["--out", str(out), "--n-tokens", "6000"])
    printed = capsys.readouterr().out
    assert "held-out loss" in printed and str(out / "report") in printed
    comps = [msgspec.json.decode(line, type=ComponentData) for line in (out / "harvest" / "components.jsonl").read_bytes().splitlines()]
    labels = [msgspec.json.decode(line, type=Explanation) for line in (out / "interpretations" / "results.jsonl").read_bytes().splitlines()]
    assert len(comps) > 500
    assert sorted(e.latent for e in labels) == sorted(c.latent for c in comps)  # one label per harvested latent
    assert all(e.source == "search" and e.label for e in labels)
    exported = json.loads((out / "interpretations" / "feature_labels.json").read_text())
    assert exported["num_features"] == len(comps)
    index = (out / "report" / "index.html").read_text()
    assert "<html" in index.lower()


def test_demo_model_is_far_better_than_uniform():
    loss, uniform = heldout_loss(n_windows=8)
    assert loss < 0.6 * uniform, (loss, uniform)
