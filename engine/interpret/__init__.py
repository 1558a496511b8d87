"""Stage 2: one explanation per latent, from an LLM or offline search labels (`python -m engine.interpret`)."""
