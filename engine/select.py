"""python -m engine.select: rank latents by how much more often they fire on a domain dataset (engine/harvest/select.py)."""

from engine.core.errors import run_cli
from engine.harvest.select import main

if __name__ == "__main__":
    run_cli(main)
