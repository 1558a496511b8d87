"""The harvest CLI on the embedded default model against a brute-force recomputation.

The brute force reruns the model on the stored token sequences (same batches),
encodes densely, and recomputes counts, maxima, top examples, token and
co-occurrence statistics with plain tensor ops over everything.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.core.rundir import RunDir
from engine.core.schemas import RunConfig
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.dictionaries import load_dictionary
from engine.harvest.model import load_model
from engine.harvest.run import main as harvest_main
from engine.harvest.sources import HookedModel
from tests.helpers.cli_errors import one_line_error
from tests.helpers.run_files import components_by_latent as read_components

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--n-batches", "3", "--batch-size", "4", "--context-length", "64", "--top-k", "5", "--n-random", "4", "--window", "3"]


def run(out, *extra):
    return harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", DEFAULT_DATASET, "--out", str(out), *SMALL, *extra])


@pytest.fixture(scope="module")
def harvested(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run(out)
    return out


@pytest.fixture(scope="module")
def brute(harvested):
    rc = msgspec.json.decode((harvested / "harvest" / "config.json").read_bytes(), type=RunConfig)
    tokens = torch.from_numpy(np.fromfile(harvested / "harvest" / "tokens.bin", dtype=np.int32).reshape(rc.n_sequences, rc.context_length).astype(np.int64))
    model, tok, _ = load_model(DEFAULT_MODEL, "cpu", "float32")
    d = load_dictionary(DEFAULT_SAE)
    hm = HookedModel(model, ["blocks.2.hook_resid_post"])
    dense, probs = [], []
    for i in range(0, len(tokens), rc.batch_size):  # same batches as the harvest
        acts, logits = hm.run(tokens[i : i + rc.batch_size], need_logits=True)
        x = acts["blocks.2.hook_resid_post"]
        dense.append(d.encode_dense(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:2], -1))
        probs.append(torch.softmax(logits.float(), -1))
    hm.close()
    A = torch.cat(dense)  # [n_seq, S, L]
    valid = tokens != tok.bos_token_id
    A = A * valid[..., None]
    P = torch.cat(probs).reshape(-1, probs[0].shape[-1]) * valid.reshape(-1, 1)  # [N, V], BOS rows zero
    top_p, top_i = P.topk(8, dim=-1)
    top_only = torch.zeros_like(P).scatter_(1, top_i, top_p).double()  # each position's top-8 mass, rest 0
    fires = (A > 0).reshape(-1, A.shape[-1]).double()
    top_mass = (fires.T @ top_only, top_only.sum(0))  # ([L, V] at firings, [V] at every counted position)
    return dict(rc=rc, tokens=tokens, A=A, valid=valid, probs=torch.cat(probs), tok=tok, top_mass=top_mass)


def test_counts_and_maxima_exact(harvested, brute):
    A, rc = brute["A"], brute["rc"]
    stats = load_file(str(harvested / "harvest" / "stats.safetensors"))
    fires = A > 0
    assert torch.equal(stats["count"], fires.sum((0, 1)))
    torch.testing.assert_close(stats["act_max"], A.amax((0, 1)))
    torch.testing.assert_close(stats["act_sum"], A.sum((0, 1)).double(), rtol=1e-5, atol=1e-5)
    assert rc.n_tokens == int(brute["valid"].sum())
    assert torch.equal(stats["tok_total"][: brute["tok"].vocab_size], torch.bincount(brute["tokens"][brute["valid"]], minlength=brute["tok"].vocab_size)[: brute["tok"].vocab_size])


def test_top_examples_and_windows(harvested, brute):
    A, rc, tokens = brute["A"], brute["rc"], brute["tokens"]
    S, W = rc.context_length, rc.window
    comps = read_components(harvested)
    flat = A.reshape(-1, A.shape[-1])
    for lat in list(comps)[::25]:
        c = comps[lat]
        vals, locs = flat[:, lat].sort(descending=True, stable=True)  # by activation, then location
        want, taken = [], set()  # the sequential definition: greedy, at most one firing per chunk of a sequence
        for v, loc in zip(vals.tolist(), locs.tolist()):
            chunk = (loc // S, (loc % S) // rc.top_chunk)
            if v > 0 and chunk not in taken and len(want) < rc.top_k:
                taken.add(chunk)
                want.append((loc // S, loc % S))
        assert rc.top_chunk == 2 * W + 1
        assert [(e.sequence, e.position) for e in c.top_examples] == want
        for e in c.top_examples:
            assert A[e.sequence, e.position, lat] == pytest.approx(e.activation, rel=1e-5)
            lo = max(0, e.position - W)
            assert e.token_ids == tokens[e.sequence, lo : e.position + W + 1].tolist()
            assert e.activations == pytest.approx(A[e.sequence, lo : e.position + W + 1, lat].tolist(), abs=1e-4)
            assert e.token_ids[e.firing_index] == tokens[e.sequence, e.position]
        for e in c.random_examples:  # reservoir members are real firings with their true windows
            assert A[e.sequence, e.position, lat] == pytest.approx(e.activation, rel=1e-5)
        assert len(c.random_examples) == min(rc.n_random, c.firing_count)


def test_token_and_cooccurrence_stats(harvested, brute):
    A, tokens = brute["A"], brute["tokens"]
    comps = read_components(harvested)
    fires = (A > 0).reshape(-1, A.shape[-1]).float()
    N = float(brute["valid"].sum())
    tok_flat = tokens.reshape(-1)
    V = brute["probs"].shape[-1]
    onehot = torch.nn.functional.one_hot(tok_flat, V).float() * brute["valid"].reshape(-1, 1)
    joint_tok = fires.T @ onehot  # [L, V]
    m_t = onehot.sum(0)
    co = fires.T @ fires
    n = fires.sum(0)
    busiest = sorted(comps, key=lambda l: -comps[l].firing_count)[:5]
    for lat in busiest:
        c = comps[lat]
        for s in c.input_token_stats.top_recall:
            assert s.count == joint_tok[lat, s.index]
            assert s.value == pytest.approx(float(joint_tok[lat, s.index] / n[lat]), rel=1e-5)
        rec = joint_tok[lat].clone()
        rec[joint_tok[lat] < 2] = 0
        assert c.input_token_stats.top_recall[0].count == rec.max()
        for s in c.input_token_stats.top_pmi:
            want = np.log(float(joint_tok[lat, s.index]) * N / (float(n[lat]) * float(m_t[s.index])))
            assert s.value == pytest.approx(want, rel=1e-4)
        for s in c.correlations.precision:
            assert s.count == co[lat, s.index]
            assert s.value == pytest.approx(float(co[lat, s.index] / n[lat]), rel=1e-5)
        for s in c.correlations.jaccard:
            j = co[lat, s.index] / (n[lat] + n[s.index] - co[lat, s.index])
            assert s.value == pytest.approx(float(j), rel=1e-5)
        # Output stats: the top-8 next-token mass, at firing positions (joint) and at every counted position
        # (marginal): one distribution on both sides of precision and PMI.
        joint_out, m_out = brute["top_mass"]
        assert c.output_token_stats.top_recall, lat
        for s in c.output_token_stats.top_recall:
            assert s.count == pytest.approx(float(joint_out[lat, s.index]), rel=1e-5)
            assert s.value == pytest.approx(float(joint_out[lat, s.index] / n[lat]), rel=1e-5)
        for s in c.output_token_stats.top_precision:
            assert s.value == pytest.approx(float(joint_out[lat, s.index] / m_out[s.index]), rel=1e-5)
            assert s.value <= 1 + 1e-6
        for s in c.output_token_stats.top_pmi:
            want = np.log(float(joint_out[lat, s.index]) * N / (float(n[lat]) * float(m_out[s.index])))
            assert s.value == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    args = [sys.executable, "-m", "engine.harvest", DEFAULT_MODEL, DEFAULT_SAE, "--dataset", DEFAULT_DATASET,
            "--n-batches", "8", "--batch-size", "4", "--context-length", "64", "--top-k", "5", "--n-random", "4",
            "--window", "3", "--checkpoint-every", "1"]
    ref = tmp_path / "ref"
    subprocess.run(args + ["--out", str(ref)], check=True, cwd=ROOT, capture_output=True)
    out = tmp_path / "killed"
    ck = out / "harvest" / "checkpoint" / "state.json"
    for attempt in range(3):  # kill at a few different points, resuming each time
        p = subprocess.Popen(args + ["--out", str(out), "--resume"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        target = attempt + 2
        while time.time() < deadline and p.poll() is None:
            if ck.exists() and json.loads(ck.read_text())["meta"]["sequences_done"] >= 4 * target:
                break
            time.sleep(0.05)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
    subprocess.run(args + ["--out", str(out), "--resume"], check=True, cwd=ROOT, capture_output=True)
    a = load_file(str(ref / "harvest" / "stats.safetensors"))
    b = load_file(str(out / "harvest" / "stats.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (ref / "harvest" / "components.jsonl").read_bytes() == (out / "harvest" / "components.jsonl").read_bytes()


def _cli_error(capsys, argv) -> str:
    return one_line_error(capsys, harvest_main, argv)


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    base = [DEFAULT_MODEL, DEFAULT_SAE, "--out", str(tmp_path / "o"), *SMALL]
    data = ["--dataset", DEFAULT_DATASET]
    assert "unknown hookpoint" in _cli_error(capsys, base + data + ["--hookpoints", "layers.99.banana"])
    _write_small_sae(tmp_path / "sae-small")
    err = _cli_error(capsys, [DEFAULT_MODEL, str(tmp_path / "sae-small"), "--out", str(tmp_path / "o"), *SMALL, *data, "--hookpoints", "blocks.1.hook_resid_post"])
    assert "width 128" in err and "expects d_in=8" in err
    assert "does not exist" in _cli_error(capsys, [str(tmp_path / "nope"), DEFAULT_SAE, *data])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "x"}\n')
    assert "no column 'text'" in _cli_error(capsys, base + ["--dataset", str(bad)])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "holds no text" in _cli_error(capsys, base + ["--dataset", str(empty)])
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in _cli_error(capsys, base + ["--dataset", str(latin)])
    assert "max_position_embeddings" in _cli_error(capsys, base + data + ["--context-length", "4096"])
    ck = tmp_path / "o" / "harvest" / "checkpoint"
    ck.mkdir(parents=True)
    (ck / "state.json").write_text("{}")
    (ck / "tensors.safetensors").write_bytes(b"\x00garbage")
    assert "unreadable" in _cli_error(capsys, base + data + ["--resume"])


def _write_small_sae(path: Path) -> None:
    from safetensors.torch import save_file

    path.mkdir()
    save_file({"W_enc": torch.zeros(8, 4), "b_enc": torch.zeros(4), "W_dec": torch.zeros(4, 8), "b_dec": torch.zeros(8)}, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 8, "d_sae": 4}))


def test_two_hookpoints_in_one_pass(tmp_path, harvested):
    """SAE at block 2 plus raw neurons at block 1: the SAE part equals the single-hookpoint run."""
    out = tmp_path / "two"
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "neurons:128", "--hookpoints", "blocks.2.hook_resid_post",
                  "blocks.1.hook_resid_post", "--dataset", DEFAULT_DATASET, "--out", str(out), *SMALL])
    rc = msgspec.json.decode((out / "harvest" / "config.json").read_bytes(), type=RunConfig)
    assert [(h.name, h.offset, h.n_latents) for h in rc.hookpoints] == [("blocks.2.hook_resid_post", 0, 1024), ("blocks.1.hook_resid_post", 1024, 128)]
    both = load_file(str(out / "harvest" / "stats.safetensors"))["count"]
    single = load_file(str(harvested / "harvest" / "stats.safetensors"))["count"]
    assert torch.equal(both[:1024], single)
    comps = read_components(out)
    neuron = next(c for c in comps.values() if c.latent >= 1024)
    assert neuron.component_key == f"blocks.1.hook_resid_post/{neuron.latent - 1024}"
    # Cross-hookpoint co-firing neighbours exist (SAE latents co-fire with raw neurons).
    assert any(s.index >= 1024 for c in list(comps.values())[:50] for s in c.correlations.precision)


def test_latent_subset(tmp_path, harvested):
    out = tmp_path / "subset"
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", DEFAULT_DATASET, "--out", str(out), *SMALL, "--latents", "3,10-12,500"])
    comps = read_components(out)
    full = read_components(harvested)
    assert sorted(c.component_idx for c in comps.values()) == [i for i in (3, 10, 11, 12, 500) if i in full]
    for c in comps.values():
        f = full[c.component_idx]
        assert c.firing_count == f.firing_count and c.top_examples == f.top_examples


def test_sketched_lists_keep_their_stated_bounds(tmp_path, brute):
    """--pair-budget-mb 0: every table is a sketch. Each list's error_bound is the true bound of that list:
    listed counts lie in [true - error_bound, true], every entry above it is listed, and error_bound <= W / 65
    with W the row's total weight (n_i for input tokens; the co-firing pairs, self included, for co-firing)."""
    run(tmp_path / "sk", "--pair-budget-mb", "0", "--no-output-stats")
    A, tokens = brute["A"], brute["tokens"]
    fires = (A > 0).reshape(-1, A.shape[-1]).double()
    V = brute["probs"].shape[-1]
    onehot = torch.nn.functional.one_hot(tokens.reshape(-1), V).double() * brute["valid"].reshape(-1, 1)
    joint_tok, co = fires.T @ onehot, fires.T @ fires
    n_over = 0
    for lat, c in read_components(tmp_path / "sk").items():
        n_i = float(fires[:, lat].sum())
        for stats, truth, total in ((c.input_token_stats, joint_tok[lat], n_i), (c.correlations, co[lat], float(co[lat].sum()))):
            err = stats.error_bound
            assert not stats.exact and err <= total / 65 + 1e-9
            lists = [stats.top_recall if hasattr(stats, "top_recall") else stats.precision]
            for s in lists[0]:
                assert truth[s.index] - err - 1e-9 <= s.count <= truth[s.index] + 1e-9
            n_over += err > n_i / 65  # co-firing bounds are relative to W, not n_i (the README's old claim)
    assert n_over > 0


def test_fixed_chunk_windows(tmp_path, brute):
    """--no-center-examples: every example's window is the chunk of 2W+1 tokens holding its firing (the last
    chunk of a sequence shorter when 2W+1 does not divide it), with the latent's true activation on each token;
    with one top example per chunk, no two top windows of a latent overlap."""
    run(tmp_path / "chunks", "--no-center-examples", "--no-output-stats")
    A, tokens, rc = brute["A"], brute["tokens"], brute["rc"]
    S, c = rc.context_length, 2 * rc.window + 1
    n_checked = 0
    for lat, comp in read_components(tmp_path / "chunks").items():
        for e in comp.top_examples + comp.random_examples:
            start = e.position // c * c
            assert e.token_ids == tokens[e.sequence, start : start + c].tolist()  # (slicing stops at S)
            assert e.firing_index == e.position - start
            assert e.activations == pytest.approx(A[e.sequence, start : start + c, lat].tolist(), abs=1e-4)
            n_checked += 1
        spans = sorted((e.sequence, e.position // c) for e in comp.top_examples)
        assert len(set(spans)) == len(spans)
    assert n_checked > 1000 and S % c  # the data has a short last chunk
    assert RunDir(tmp_path / "chunks").load_config().center_examples is False
