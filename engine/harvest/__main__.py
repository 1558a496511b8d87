import sys

from engine.core.errors import run_cli

if sys.argv[1:2] == ["merge"]:  # python -m engine.harvest merge RUN_A RUN_B --out RUN
    from engine.harvest.merge_runs import main as merge_main

    run_cli(merge_main, sys.argv[2:])
else:
    from engine.harvest.run import main

    run_cli(main)
