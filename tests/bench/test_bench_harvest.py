"""bench.harvest's per-batch breakdown at toy size, and the CUDA refusals and goal lines of bench.kernels / bench.scale.

No timing is asserted: the checks are that the printed rows are the ones promised, every ratio is
non-negative (the totals positive), the statistics add up to the whole update, the parts to the printed
sum, the sum and the residual to the measured harvest, and the goal verdicts follow from the figures."""

import json
import re

import pytest
import torch

from bench import harvest as bh
from bench.scale import PRESETS, build_model, latent_table, random_topk
from engine.harvest.state import HarvestState, StateConfig

SPEC = PRESETS["tiny"]["model"]
HOOK = "blocks.2.hook_resid_post"
S = 16


@pytest.fixture(scope="module")
def toy():
    model = build_model(SPEC, torch.float32, torch.device("cpu"))
    saes = [random_topk(SPEC["hidden_size"], n, 4, HOOK, "cpu") for n in (64, 128)]
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, SPEC["vocab_size"], (2, S), generator=g) for _ in range(2)]
    return model, saes, data


def run(toy, reps=2):
    model, saes, data = toy

    def cfg(n):
        return StateConfig(n_latents=n, vocab_size=SPEC["vocab_size"], seq_len=S, top_k=4, n_random=4, window=2)

    return bh.breakdown(model, HOOK, saes, data, cfg, valid_of=lambda ids: ids != 0, reps=reps)


def table(lines):
    """{row name: [cells]} of the printed breakdown: names fill 42 characters, cells are 3+ spaces apart."""
    return {line[:42].strip(): re.split(r"\s{3,}", line[42:].strip()) for line in lines}


def test_breakdown_rows_add_up(toy):
    res = run(toy)
    steps = bh.supported_steps()
    assert res["forward"] > 0 and res["batches"] == 2 and res["tokens_per_batch"] == 2 * S and res["reps"] == 2
    assert len(res["cols"]) == 2
    for c in res["cols"]:
        parts = c["parts"]
        assert all(v >= 0 for v in parts.values()), parts
        assert parts["forward + encode"] > 0 and c["full"] > 0
        stats = [k for k in parts if k not in ("forward + encode", "next-token probs")]
        if steps is None:
            assert stats == ["update (all statistics)"]
        else:
            assert [k.removeprefix("+ ") for k in stats if k.startswith("+ ")] == list(steps)
        assert c["sum"] == pytest.approx(sum(parts.values()), rel=1e-9)
        assert c["sum"] + c["unattributed"] == pytest.approx(c["full"], rel=1e-9)

    lines, cols = bh.breakdown_lines([("toy", res, {128: 1.25})])
    rows = table(lines)
    names = list(res["cols"][0]["parts"])
    for want in ["forward (bare, to the logits)", *names, "sum of parts", "full harvest (measured)",
                 "unattributed (measured - sum)", "full harvest / (forward+encode)", "goal (CPU)"]:
        assert want in rows, (want, list(rows))
    for i, c in enumerate(cols):
        assert rows["forward (bare, to the logits)"][i] == "1.00"
        printed = [float(rows[k][i]) for k in names]
        assert all(x >= 0 for x in printed)
        # each printed part is rounded to 0.001: the printed sum is their sum within the roundings
        assert float(rows["sum of parts"][i]) == pytest.approx(sum(printed), abs=0.0005 * (len(printed) + 1) + 1e-9)
        full, total, rest = (float(rows[k][i]) for k in ("full harvest (measured)", "sum of parts", "unattributed (measured - sum)"))
        assert full > 0 and total > 0
        assert full == pytest.approx(total + rest, abs=0.0016)
        ratio = float(rows["full harvest / (forward+encode)"][i].rstrip("x"))
        assert ratio > 0
        assert ratio == pytest.approx(c["full"] / c["parts"]["forward + encode"], abs=0.006)
        goal = rows["goal (CPU)"][i]
        if c["latents"] == 128:
            assert goal.startswith("<= 1.25x ") and goal.endswith("met" if c["full_over_forward_encode"] <= 1.25 else "MISSED")
        else:
            assert goal == "-" and c["goal"] is None
    json.dumps(cols)  # the JSON rows serialise


def test_breakdown_without_steps_times_the_whole_update(toy, monkeypatch):
    """Before HarvestState.update(steps=...) exists the breakdown still runs, with one update row."""
    real = HarvestState.update

    def old_update(self, tokens, firings, *, seq_ids, valid=None, next_top=None, next_mass=None):
        return real(self, tokens, firings, seq_ids=seq_ids, valid=valid, next_top=next_top, next_mass=next_mass)

    monkeypatch.setattr(HarvestState, "update", old_update)
    assert bh.supported_steps() is None
    res = run(toy, reps=1)
    assert res["steps"] is None
    for c in res["cols"]:
        assert list(c["parts"]) == ["forward + encode", "next-token probs", "update (all statistics)"]
        assert c["sum"] == pytest.approx(sum(c["parts"].values()), rel=1e-9)


def test_main_keeps_run_all_interface_and_adds_the_breakdown(capsys):
    out = bh.main(["--batches", "1", "--batch-size", "2", "--context-length", "32", "--scaling", "", "--breakdown-batches", "1",
                   "--reps", "1", "--llama-preset", "tiny", "--llama-latents", "64", "--llama-batch-size", "1",
                   "--llama-context-length", "32"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == json.loads(json.dumps(out))  # bench.run_all reads the last line as JSON
    for key in ("forward", "forward+encode", "harvest", "naive", "topk_agreement", "scaling"):
        assert key in out
    cols = out["breakdown"]["columns"]
    assert [(c["config"], c["latents"]) for c in cols] == [("embedded", 1024), ("tiny", 64)]
    assert any(line.startswith("full harvest / (forward+encode)") for line in lines)
    assert (bh.NO_STEPS in "\n".join(lines)) == (bh.supported_steps() is None)


def test_scale_goal_lines():
    goal = PRESETS["llama-8b"]["goal"]
    per = [dict(latents=n, harvest_vs_forward=1.1, forward_encode_vs_forward=1.02, overhead=o, state_gb=gb, state_ok=gb <= 4,
                peak_mb=1.0) for n, o, gb in ((16384, 0.03, 0.4), (131072, 0.12, 4.5))]
    text = "\n".join(latent_table(per, goal))
    assert "<= 10% at 131072 latents: 12.0%" in text and "MISSED" in text
    assert "state <= 4 GB at every latent count: largest 4.500 GB at 131072 -- MISSED" in text
    text = "\n".join(latent_table(per[:1], goal))
    assert "not measured (add 131072 to --latents)" in text
    per[1].update(overhead=0.08, state_gb=3.9, state_ok=True)
    assert "-- MISSED" not in "\n".join(latent_table(per, goal))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
@pytest.mark.parametrize("argv", [["-m", "bench.kernels", "--device", "cuda"], ["-m", "bench.scale", "--preset", "llama-8b"]])
def test_cuda_refused_in_one_line(argv):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "CUDA" in r.stderr and "Traceback" not in r.stderr
