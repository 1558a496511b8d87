"""python -m engine.serve: the live viewer of a run directory (engine/report/serve.py)."""

from engine.core.errors import run_cli
from engine.report.serve import main

if __name__ == "__main__":
    run_cli(main)
