"""One CLI builder: a command's flags come from its config dataclass, help from the field docstrings.

    @dataclass(frozen=True)
    class ReportConfig:
        out: str = ""
        "Output folder (default RUN/report)."        <- the --out help text

    run_dir, cfg = parse_config(ReportConfig, argv, prog="python -m engine.report", doc=__doc__,
                                positionals=[RUN_DIR])

* Every field becomes `--field-name` (underscores as dashes), typed from its annotation;
  bool fields take `--x / --no-x`; tuple and list fields take one or more values.
* A field whose default is a dataclass (e.g. `ClientArgs` fields inherited, or a nested
  `ScoreConfig`) contributes its own fields, flattened, and is rebuilt from them.
* A field made with `cli(default, ...)` gets aliases (delphi's spellings such as `--n_tokens`),
  choices, a metavar, or becomes positional.
* `--help` shows every default. A mistake is one line: an unknown flag names the closest
  valid spelling; a bad value names the flag and what it accepts. Exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Positional:
    """A positional argument that is not a config field (e.g. the run directory)."""

    name: str
    help: str
    type: Callable[[str], Any] = str
    nargs: str | None = None
    default: Any = None


RUN_DIR = Positional("run_dir", "run directory (with harvest/)", Path)


def cli(default: Any = dataclasses.MISSING, *, aliases: Sequence[str] = (), choices: Sequence[str] | None = None,
        positional: str | None = None, convert: dict[str, Callable[[str], Any]] | None = None,
        metavar: str | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with options for the builder:

    aliases: extra spellings of the flag (same meaning, same value), e.g. ("--n_tokens",).
    choices: the values accepted (matched case-insensitively).
    convert: alias -> function turning that alias's value into this field's value (for a spelling
      whose unit differs, e.g. delphi's --example_ctx_len is the whole window, ours half of it).
    positional: nargs of a positional argument ("?", "*", "+") instead of a flag.
    """
    meta = {"cli": dict(aliases=tuple(aliases), choices=tuple(choices) if choices else None, positional=positional,
                        convert=convert or {}, metavar=metavar)}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag's default in its help."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) that name the closest valid flag."""

    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("unrecognized arguments:"):
            bad = message.split(":", 1)[1].split()
            flag = next((b for b in bad if b.startswith("-")), bad[0] if bad else "")
            known = {s.replace("_", "-"): s for a in self._actions for s in a.option_strings if s.startswith("--")}
            close = difflib.get_close_matches(flag.split("=")[0].replace("_", "-"), list(known), n=1, cutoff=0.5)
            hint = f"did you mean {known[close[0]]}?" if close else f"see {self.prog} --help"
            message = f"unknown flag {flag} -- {hint}"
        else:
            message = f"{message} -- see {self.prog} --help"
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(2)


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of `cls` and its dataclass bases (nearest class wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            body = ast.parse(inspect.getsource(klass)).body[0].body
        except (OSError, TypeError):
            continue
        for a, b in zip(body, body[1:]):
            if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(element type, takes several values) of an annotation such as `str | None` or `tuple[str, ...]`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else (str, False)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return (args[0] if args else str), True
    return hint, False


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    """Case-insensitive match of a value to one of `choices` (delphi writes FAISS, we faiss)."""
    lower = {c.lower(): c for c in choices}
    return lambda v: lower.get(v.lower(), v)


def _add_fields(p: argparse.ArgumentParser, cls: type, prefix: tuple[str, ...] = ()) -> None:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = _default(f)
        if dataclasses.is_dataclass(default):  # nested config: its fields, flattened
            _add_fields(p, type(default), prefix + (f.name,))
            continue
        meta = f.metadata.get("cli", {})
        kind, many = _base_type(hints[f.name])
        kw: dict[str, Any] = dict(help=docs.get(f.name, " ").replace("%", "%%"), dest="__".join(prefix + (f.name,)))
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
            kw["type"] = _choice(meta["choices"])
        if meta.get("metavar") or not (kind is bool or meta.get("choices") or meta.get("positional")):
            kw["metavar"] = meta.get("metavar") or f.name.upper()
        if meta.get("positional"):
            p.add_argument(kw.pop("dest"), nargs=meta["positional"], default=default, **kw)
            continue
        flags = ["--" + f.name.replace("_", "-"), *meta.get("aliases", ())]
        if kind is bool:
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, default=default, **kw)
        else:
            kw.setdefault("type", kind if kind in (int, float, str) else str)
            p.add_argument(*flags, default=default, nargs="+" if many else None, **kw)
        for alias, convert in meta.get("convert", {}).items():
            p.add_argument(alias, type=convert, dest=kw["dest"], help=f"as {flags[0]}, in delphi's unit")


def _build(cls: type, values: dict[str, Any], prefix: tuple[str, ...] = ()) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        default = _default(f)
        if dataclasses.is_dataclass(default):
            kwargs[f.name] = _build(type(default), values, prefix + (f.name,))
            continue
        v = values["__".join(prefix + (f.name,))]
        if isinstance(v, list) and isinstance(default, tuple):
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def parser_for(cls: type, *, prog: str, doc: str | None, positionals: Sequence[Positional] = ()) -> Parser:
    p = Parser(prog=prog, description=doc, formatter_class=Formatter)
    for a in positionals:
        p.add_argument(a.name, type=a.type, nargs=a.nargs, default=a.default, help=a.help)
    _add_fields(p, cls)
    return p


def parse_config(cls: type[T], argv: Sequence[str] | None, *, prog: str, doc: str | None,
                 positionals: Sequence[Positional] = ()) -> tuple[argparse.Namespace, T]:
    """Parse `argv` into (the positionals, a `cls` instance built from the flags)."""
    ns = vars(parser_for(cls, prog=prog, doc=doc, positionals=positionals).parse_args(argv))
    pos = argparse.Namespace(**{a.name: ns.pop(a.name) for a in positionals})
    return pos, _build(cls, ns)
