"""User-facing errors: one line that names the problem and the fix.

Raise `UserError("what is wrong (file/field) -- how to fix it")` anywhere a user
can cause a failure. Command-line entry points wrap `main` in `run_cli`, which
prints that line (no traceback) and exits with status 2; `--debug` (or
AUTOINTERP_DEBUG=1) re-raises so the traceback is shown. The LLM clients'
own configuration error (`clients.errors.ClientConfigError`: a missing key, a
bad base URL) is shown the same way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from clients.errors import ClientConfigError


class UserError(Exception):
    """A failure the user can fix; its message is shown as is, on one line."""


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("AUTOINTERP_DEBUG") == "1"
    if "--debug" in argv:
        argv.remove("--debug")
    try:
        main(argv)
    except (UserError, ClientConfigError) as e:
        if debug:
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume (engine.harvest: add --resume)", file=sys.stderr)
        sys.exit(130)
