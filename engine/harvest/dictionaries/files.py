"""Reading a dictionary's files, each failure one line naming the file and the fix."""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from engine.core.errors import UserError


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing -- a dictionary folder needs its cfg.json") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}) -- restore the file") from None


def read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.exists():
        raise UserError(f"{path} is missing -- the dictionary folder is incomplete")
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 -- any read failure of a user file becomes one line
        raise UserError(f"{path} is corrupt or not safetensors ({type(e).__name__}: {str(e)[:80]}) -- re-download or re-save it") from None


def need(t: dict, name: str, path: Path) -> Tensor:
    if name not in t:
        raise UserError(f"{path} has no tensor {name!r} (has {', '.join(sorted(t))}) -- the file does not match its cfg.json architecture")
    return t[name].float()
