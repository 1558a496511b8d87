"""bench/scale.py runs end to end at toy size, so the GPU preset's code path cannot rot unnoticed."""

from bench.scale import PRESETS, main


def test_tiny_preset_runs_every_row():
    out = main(["--preset", "tiny", "--batches", "1", "--latents", "256"])
    assert set(out["rows"]) == {"forward", "forward+encode", "harvest (no out)", "harvest", "latents 256",
                                *(f"hookpoints {h}" for h in PRESETS["tiny"]["sweep_hooks"])}
    assert out["rows"]["forward"]["vs_forward"] == 1.0
    assert all(r["tok_per_s"] > 0 for r in out["rows"].values())


def test_tiny_preset_per_latent_table():
    """Each --latents width gets harvest / forward, the overhead over forward+encode and the state size."""
    out = main(["--preset", "tiny", "--batches", "1", "--latents", "128,256", "--hookpoints", ""])
    assert [r["latents"] for r in out["latents"]] == [128, 256]
    assert not any(k.startswith("hookpoints") for k in out["rows"])
    for r in out["latents"]:
        assert r["harvest_vs_forward"] > 0 and r["forward_encode_vs_forward"] > 0 and r["state_gb"] > 0
        assert r["overhead"] == round(r["harvest_vs_forward"] / r["forward_encode_vs_forward"] - 1, 2) or abs(
            (1 + r["overhead"]) * r["forward_encode_vs_forward"] - r["harvest_vs_forward"]) < 1e-3
        assert r["state_ok"] is None  # tiny has no goal
    assert out["latents"][1]["state_gb"] > out["latents"][0]["state_gb"]
