"""A command's bad-input error as the user sees it: exit status 2, no traceback, one `error: ... -- fix` line."""

import pytest

from engine.core.errors import run_cli


def one_line_error(capsys, main, argv) -> str:
    """Run `main` through run_cli and return its error line (progress bars may come before it)."""
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and " -- " in last, err
    return last
