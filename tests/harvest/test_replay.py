"""Replaying a finished run (engine.harvest.replay, used for non-activating windows, scoring and the live
server) recomputes what its harvest saw: the random control's weights, the model's dtype and SPD's CI
threshold come from config.json. Every stored example window is recomputed by replaying its sequence in the
harvest's own batches and compared token by token."""

import pytest
import torch

from engine.core.rundir import RunDir
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.replay import Replayer
from engine.harvest.run import main as harvest_main
from tests.harvest.test_spd import DOWN, UP, write_run

B = 4
FLAGS = ["--dataset", DEFAULT_DATASET, "--n-batches", "2", "--batch-size", str(B), "--context-length", "48",
         "--top-k", "4", "--n-random", "4", "--window", "3", "--no-output-stats"]


def _windows_replay(out) -> int:
    """Replay every stored sequence in the harvest's batches; each example's window must match it."""
    run = RunDir(out)
    rc = run.load_config()
    r = Replayer(rc, out, batch_size=B)
    comps = list(run.iter_components())
    latents = torch.tensor([c.latent for c in comps])
    acts = r.sequence_activations(torch.arange(rc.n_sequences), latents)  # [n, S, m]
    bos = r.tokenizer.bos_token_id
    checked = 0
    for j, c in enumerate(comps):
        for e in c.top_examples + c.random_examples:
            start = e.position - e.firing_index
            got = acts[e.sequence, start : start + len(e.activations), j].tolist()
            counted = [t != bos for t in e.token_ids]  # the harvest counts no firing on the inserted start token
            assert [g for g, k in zip(got, counted) if k] == pytest.approx(
                [a for a, k in zip(e.activations, counted) if k], abs=2e-5), (c.latent, e.sequence, e.position)
            assert float(got[e.firing_index]) == pytest.approx(e.activation, rel=1e-5, abs=1e-6)
            checked += 1
    r.hooked.close()
    return checked


@pytest.mark.parametrize("flags", [["--random-dictionary"], ["--dtype", "bfloat16"]], ids=["random control", "bfloat16"])
def test_replay_recomputes_the_harvest(tmp_path, flags):
    out = tmp_path / "run"
    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--out", str(out), *FLAGS, *flags])
    assert _windows_replay(out) > 100


def test_replay_keeps_the_spd_threshold(tmp_path):
    write_run(tmp_path / "spd", Cs={UP: 24, DOWN: 16})
    out = tmp_path / "run"
    harvest_main([DEFAULT_MODEL, str(tmp_path / "spd"), "--out", str(out), *FLAGS, "--spd-ci-threshold", "0.3"])
    assert RunDir(out).load_config().spd_ci_threshold == 0.3
    assert _windows_replay(out) > 50
