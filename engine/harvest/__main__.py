from engine.core.errors import run_cli
from engine.harvest.run import main

run_cli(main)
