"""The documented training-loop example (examples/train_and_watch.py): a Harvester watching an SAE while a plain
torch loop trains it. Checked against a brute force that re-encodes each watched step's activations with a
snapshot of that step's weights, and against the same training run without watching."""

import pytest
import torch

from examples.train_and_watch import main, train

SMALL = {"steps": 6, "n_latents": 48, "k": 4, "batch_size": 2, "context_length": 24, "lr": 1e-2}


def _encode(w: dict, x: torch.Tensor, k: int) -> torch.Tensor:
    """The TopK SAE's encode from a weight snapshot, in plain torch."""
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    val, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, val.clamp(min=0))


@pytest.mark.parametrize("every", [1, 4])
def test_watch_equals_each_step_encoded_with_that_steps_weights(every):
    seen = []
    r = train(every=every, on_watch=lambda step, ids, x, sae: seen.append(
        (step, x.clone(), {n: p.detach().clone() for n, p in sae.named_parameters()})), **SMALL)
    assert [s for s, _, _ in seen] == list(range(0, SMALL["steps"], every))
    st, k = r["harvester"].state, SMALL["k"]
    acts = torch.stack([_encode(w, x.reshape(-1, x.shape[-1]), k).reshape(*x.shape[:2], -1)[:, 1:] for _, x, w in seen])
    torch.testing.assert_close(st.count.cpu().long(), (acts > 0).sum((0, 1, 2)))  # position 0 (BOS) is not counted
    torch.testing.assert_close(st.act_max.cpu().float(), acts.amax((0, 1, 2)), rtol=1e-5, atol=1e-6)
    assert int(st.n_tokens) == acts.shape[0] * acts.shape[1] * acts.shape[2]
    if every == 1:  # the dictionary changed under the harvest: the final weights alone give other counts
        final = {n: p.detach() for n, p in r["sae"].named_parameters()}
        again = torch.stack([_encode(final, x.reshape(-1, x.shape[-1]), k).reshape(*x.shape[:2], -1)[:, 1:] for _, x, _ in seen])
        assert not torch.equal((again > 0).sum((0, 1, 2)), (acts > 0).sum((0, 1, 2)))
        assert r["losses"][-1] < r["losses"][0]  # it did train


def test_watching_does_not_change_training():
    watched, plain = train(every=1, **SMALL), train(watch=False, **SMALL)
    assert plain["harvester"] is None and watched["losses"] == plain["losses"]
    for (n, a), (_, b) in zip(watched["sae"].named_parameters(), plain["sae"].named_parameters()):
        assert torch.equal(a, b), n


def test_example_script_runs_and_saves_state(tmp_path, capsys):
    main(["--steps", "3", "--every", "2", "--latents", "32", "--k", "4", "--out", str(tmp_path / "state")])
    line = capsys.readouterr().out
    assert "watched 2 steps" in line and (tmp_path / "state" / "state.json").exists()
