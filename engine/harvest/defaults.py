"""The embedded default (engine/assets/default): model, SAE and corpus every command falls back to."""

from pathlib import Path

ASSETS = Path(__file__).parents[1] / "assets" / "default"
DEFAULT_MODEL = str(ASSETS / "model")
DEFAULT_SAE = str(ASSETS / "sae")
DEFAULT_DATASET = str(ASSETS / "corpus.jsonl.gz")
VERSION = "0.1.0"
"Engine version written into every RunConfig."
