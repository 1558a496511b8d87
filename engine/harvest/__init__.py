"""Stage 1: one pass over a dataset through the model; every statistic of every latent (`python -m engine.harvest`)."""
