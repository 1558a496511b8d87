from engine.core.errors import run_cli
from engine.report.site import main

run_cli(main)
