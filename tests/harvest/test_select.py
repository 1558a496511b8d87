"""Domain selection on the embedded default: test files (domain) vs library modules (reference).

The ranking is computed on one slice of each side and checked on the *next*,
unseen slice: the top latents must still fire mostly on the domain there.
"""

import json
import math

import pytest
import torch
from transformers import AutoTokenizer

from engine.core.errors import run_cli
from engine.harvest.data import iter_texts, pack
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.dictionaries import load_dictionary
from engine.harvest.model import load_model
from engine.harvest.select import firing_counts, rank
from engine.harvest.select import main as select_main
from engine.harvest.sources import HookedModel


def test_top_domain_latents_fire_mostly_on_domain_in_unseen_text(tmp_path):
    out = select_main(["--n-tokens", "16000", "--top", "20", "--out", str(tmp_path / "f.json")])
    doc = json.loads(out.read_text())
    top = doc["feature_indices"][:10]
    assert len(top) == 10 and len(doc["scores"]) == len(doc["feature_indices"])
    model, tok, _ = load_model(DEFAULT_MODEL, "cpu", "float32")
    d = load_dictionary(DEFAULT_SAE)
    hooked = HookedModel(model, [d.hookpoint])
    args = (16000, 128, 16, torch.device("cpu"), "text", 16000)  # the next 16k tokens, not used for ranking
    cd, _, Nd = firing_counts(hooked, d, tok, DEFAULT_DATASET, {"kind": "test"}, *args)
    cr, _, Nr = firing_counts(hooked, d, tok, DEFAULT_DATASET, {"kind": "library"}, *args)
    rate_d, rate_r = cd[top].double() / Nd, cr[top].double() / Nr
    share = rate_d / (rate_d + rate_r)  # 0.5 = no preference
    assert float(share.mean()) > 0.75, share
    assert int((share > 0.5).sum()) >= 8, share


def _packed_tokens(docs, ctx, n_tokens):
    """Brute force: non-start tokens in the full sequences of BOS + (doc EOS)* that select reads."""
    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    stream = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
    return min(stream // (ctx - 1), math.ceil(n_tokens / ctx)) * (ctx - 1)


def test_own_files_are_not_filtered_unless_asked(tmp_path):
    docs = [{"text": f"def f{i}(x):\n    return x + {i}\n", "kind": "a" if i % 3 else "b"} for i in range(60)]
    ref = [{"text": f"class C{i}:\n    '''doc {i}'''\n    pass\n"} for i in range(40)]  # no `kind` field at all
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "ref.jsonl").write_text("".join(json.dumps(d) + "\n" for d in ref))
    base = ["--domain", str(tmp_path / "mine.jsonl"), "--reference", str(tmp_path / "ref.jsonl"),
            "--n-tokens", "4000", "--context-length", "32", "--batch-size", "8", "--top", "5"]
    doc = json.loads(select_main([*base, "--out", str(tmp_path / "all.json")]).read_text())
    want_ref = _packed_tokens([d["text"] for d in ref], 32, 4000)
    assert doc["domain"][1] == doc["reference"][1] == ""
    assert doc["tokens"] == [_packed_tokens([d["text"] for d in docs], 32, 4000), want_ref]
    doc = json.loads(select_main([*base, "--domain-where", "kind=a", "--out", str(tmp_path / "a.json")]).read_text())
    assert doc["domain"][1] == "kind=a"
    assert doc["tokens"] == [_packed_tokens([d["text"] for d in docs if d["kind"] == "a"], 32, 4000), want_ref]


def test_counts_equal_brute_force_for_relu_style_dictionary_with_bos_equal_eos(tmp_path):
    """Raw neurons (padding slots, not TopK) and a tokenizer whose BOS is its EOS: only the inserted
    position 0 is left out; every end-of-document EOS counts."""
    model, tok, _ = load_model(DEFAULT_MODEL, "cpu", "float32")
    tok.bos_token = tok.eos_token
    data = tmp_path / "short.jsonl"
    data.write_text("".join(json.dumps({"text": f"x = {i} * y\nprint(x)"}) + "\n" for i in range(80)))
    d = load_dictionary("neurons:128", hookpoint="blocks.2.hook_resid_post")
    hooked = HookedModel(model, [d.hookpoint])
    count, act_sum, N = firing_counts(hooked, d, tok, str(data), None, 600, 32, 4, torch.device("cpu"))
    seqs = torch.tensor([s for _, s in zip(range(math.ceil(600 / 32)), pack(iter_texts(str(data)), tok, 32))])
    assert len(seqs) == 19 and int((seqs[:, 1:] == tok.eos_token_id).sum()) > 19  # end-of-document EOS tokens
    want_count, want_sum = torch.zeros(128, dtype=torch.int64), torch.zeros(128, dtype=torch.float64)
    for s in seqs:  # one sequence at a time, dense activations, positions 1..S-1
        x = hooked.run(s[None], need_logits=False)[0][d.hookpoint][0, 1:]
        want_count += (x > 0).sum(0)
        want_sum += x.clamp(min=0).double().sum(0)
    assert N == seqs[:, 1:].numel()
    assert torch.equal(count, want_count)
    torch.testing.assert_close(act_sum, want_sum, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("flag, value", [("--n-tokens", "0"), ("--context-length", "1"), ("--batch-size", "0"),
                                         ("--top", "0"), ("--firings-per-token", "0")])
def test_bad_sizes_are_one_line_exit_2(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        run_cli(select_main, [flag, value, "--out", str(tmp_path / "f.json")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and flag in err and not (tmp_path / "f.json").exists()


def test_rank_matches_scalar_formulas():
    g = torch.Generator().manual_seed(0)
    Nd, Nr = 5000, 8000
    cd = torch.randint(0, 60, (300,), generator=g).double()
    cr = torch.randint(0, 60, (300,), generator=g).double()
    ad, ar = cd * 1.5, cr * 0.5
    got = rank(cd, ad, Nd, cr, ar, Nr, top=25)
    want = []
    for i in range(300):
        n_d, n_r = float(cd[i]), float(cr[i])
        lr = math.log((n_d + 1) / (Nd + 2)) - math.log((n_r + 1) / (Nr + 2))
        p = (n_d + n_r) / (Nd + Nr)
        z = (n_d / Nd - n_r / Nr) / math.sqrt(p * (1 - p) * (1 / Nd + 1 / Nr)) if 0 < p < 1 else 0.0
        if z > 3.3 and n_d >= 5:
            want.append((lr, i, z))
    want.sort(key=lambda t: (-t[0], t[1]))  # ties: lower index first
    assert 0 < len(got) <= 25 and len(got) == min(25, len(want))
    assert [r["index"] for r in got] == [i for _, i, _ in want[:25]]
    for r, (lr, i, z) in zip(got, want):
        assert r["log_ratio"] == pytest.approx(lr, abs=1e-4) and r["z"] == pytest.approx(z, abs=0.01)
        assert r["domain_rate"] == pytest.approx(float(cd[i]) / Nd) and r["domain_mean_act"] == pytest.approx(1.5)
