from engine.core.errors import run_cli
from engine.interpret.run import main

run_cli(main)
