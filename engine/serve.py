"""python -m engine.serve: the live viewer of a run directory (engine/report/serve.py).

This command module is where the viewer meets the harvest: try-your-own-text runs
the run's model and dictionaries through the harvest's own loaders
(`engine.harvest.replay.Replayer`); the report package itself reads the core only.
"""

from pathlib import Path

from engine.core.errors import run_cli
from engine.report.serve import main


def load_model_and_dictionaries(run_dir: Path, device: str):
    """The run's model and dictionaries as the harvest loads them (for POST /api/live)."""
    from engine.harvest.replay import Replayer

    return Replayer.from_run(run_dir, device)


def serve_main(argv: list[str] | None = None) -> None:
    main(argv, model_loader=load_model_and_dictionaries)


if __name__ == "__main__":
    run_cli(serve_main)
