"""python -m engine.label: the seed's one-shot flow: harvest chosen latents, label them, write its two files (engine/interpret/label.py)."""

from engine.core.errors import run_cli
from engine.interpret.label import main, run_labeling  # noqa: F401  (engine.label.run_labeling)

if __name__ == "__main__":
    run_cli(main)
