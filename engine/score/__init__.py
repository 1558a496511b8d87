"""Stage 3: how well each explanation predicts its latent on held-out examples (`python -m engine.score`)."""
