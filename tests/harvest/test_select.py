"""Domain selection on the embedded default: test files (domain) vs library modules (reference).

The ranking is computed on one slice of each side and checked on the *next*,
unseen slice: the top latents must still fire mostly on the domain there.
"""

import json

import torch

from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.dictionaries import load_dictionary
from engine.harvest.model import load_model
from engine.harvest.select import firing_counts
from engine.harvest.select import main as select_main
from engine.harvest.sources import HookedModel


def test_top_domain_latents_fire_mostly_on_domain_in_unseen_text(tmp_path):
    out = select_main(["--n-tokens", "16000", "--top", "20", "--out", str(tmp_path / "f.json")])
    doc = json.loads(out.read_text())
    top = doc["feature_indices"][:10]
    assert len(top) == 10 and len(doc["scores"]) == len(doc["feature_indices"])
    model, tok = load_model(DEFAULT_MODEL, "cpu", "float32")
    d = load_dictionary(DEFAULT_SAE)
    hooked = HookedModel(model, [d.hookpoint])
    args = (16000, 128, 16, torch.device("cpu"), "text", 16000)  # the next 16k tokens, not used for ranking
    cd, _, Nd = firing_counts(hooked, d, tok, DEFAULT_DATASET, {"kind": "test"}, *args)
    cr, _, Nr = firing_counts(hooked, d, tok, DEFAULT_DATASET, {"kind": "library"}, *args)
    rate_d, rate_r = cd[top].double() / Nd, cr[top].double() / Nr
    share = rate_d / (rate_d + rate_r)  # 0.5 = no preference
    assert float(share.mean()) > 0.75, share
    assert int((share > 0.5).sum()) >= 8, share
