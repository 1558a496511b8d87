from engine.core.errors import run_cli
from engine.score.run import main

run_cli(main)
