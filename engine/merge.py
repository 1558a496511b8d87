"""python -m engine.merge RUN: fold the shard logs of sharded interpret/score runs into the main logs
(engine/score/merge.py)."""

from engine.core.errors import run_cli
from engine.score.merge import main

if __name__ == "__main__":
    run_cli(main)
