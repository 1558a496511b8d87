"""python -m engine.merge RUN: fold the shard logs of sharded interpret/score runs into the main logs.

See engine/shards.py for the file layout and the no-duplicates rule.
"""

from engine.errors import run_cli
from engine.shards import main

if __name__ == "__main__":
    run_cli(main)
