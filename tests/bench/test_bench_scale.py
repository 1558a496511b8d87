"""bench/scale.py runs end to end at toy size, so the GPU preset's code path cannot rot unnoticed."""

from bench.scale import PRESETS, main


def test_tiny_preset_runs_every_row():
    out = main(["--preset", "tiny", "--batches", "1", "--latents", "256"])
    assert set(out["rows"]) == {"forward", "forward+encode", "harvest (no out)", "harvest", "latents 256",
                                *(f"hookpoints {h}" for h in PRESETS["tiny"]["sweep_hooks"])}
    assert out["rows"]["forward"]["vs_forward"] == 1.0
    assert all(r["tok_per_s"] > 0 for r in out["rows"].values())
