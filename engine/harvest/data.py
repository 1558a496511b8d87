"""Text in, packed token sequences out, and the memory-mapped token store.

Sources (`--dataset`):
* local `.jsonl` / `.json` / `.jsonl.gz` / `.txt` / `.txt.gz` files, read line by
  line with no copy into a cache (one JSON object or one text line per line);
* local `.parquet` / `.arrow` files, a `save_to_disk` folder, a local dataset folder
  (builder script, or data files with `configs:` in README.md) and hub names (`owner/name`,
  needs network or the HF cache), through Hugging Face `datasets`; `name` picks a config
  (`wikitext-103-raw-v1`) and the split may be sliced (`train[:1%]`, `test[10:200]`).

Packing: every sequence starts with BOS (EOS when the tokenizer has no BOS; nothing when
it has neither), then the stream of documents, each followed by EOS. With `filter_bos`
exactly the inserted position 0 does not count in any statistic (`counted_positions`).
The order is deterministic, so a resumed run skips exactly the sequences it already
folded in.

The token store `tokens.bin` is an int32 memmap [n_sequences, context_length];
examples are rebuilt from it by location (loc = sequence * context_length + pos).
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from engine.core.errors import UserError

DEFAULT_CORPUS = Path(__file__).parents[1] / "assets" / "default" / "corpus.jsonl.gz"


LINE_FILES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".txt", ".txt.gz")


def iter_texts(dataset: str, column: str = "text", split: str = "train", where: dict[str, str] | None = None,
               name: str | None = None) -> Iterator[str]:
    """Yield document texts; `where` keeps JSON records whose fields equal the given values; `name` is an HF
    dataset config and `split` a split spec (`train[:1%]`) for sources read through `datasets`.
    Errors name the file/line/column and the fix."""
    p = Path(dataset)
    fname = p.name
    if p.is_file() and fname.endswith(LINE_FILES):
        if name:
            raise UserError(f"--dataset-name {name}: {dataset} is a plain file, which has no configs -- drop --dataset-name")
        opener = gzip.open if fname.endswith(".gz") else open
        is_json = ".json" in fname
        n = 0
        with opener(p, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(f"{p}:{lineno} is not UTF-8 (byte {e.start}) -- re-encode the file as UTF-8") from None
                if not line.strip():
                    continue
                if is_json:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{p}:{lineno} is not valid JSON ({e.msg}) -- fix or drop that line") from None
                    if column not in rec:
                        raise UserError(f"{p}:{lineno} has no column {column!r} (has {', '.join(sorted(rec))}) -- pass --dataset-column")
                    if where and any(str(rec.get(k)) != v for k, v in where.items()):
                        continue
                    text = rec[column]
                else:
                    text = line.rstrip("\n")
                if isinstance(text, str) and text:
                    n += 1
                    yield text
        if n == 0:
            hint = f" matching {where}" if where else ""
            raise UserError(f"{p} holds no text{hint} -- check the file and --dataset-column")
        return
    yield from _iter_hf(dataset, column, split, name)


def dataset_split_used(dataset: str, split: str) -> str | None:
    """The split (spec) a harvest reads, for config.json: None for line files, which have no splits."""
    p = Path(dataset)
    return None if p.is_file() and p.name.endswith(LINE_FILES) else split


def _select_split(ds, split: str, dataset: str):
    """A split spec (`train`, `train[:1%]`, `test[10:20]`) applied to a `save_to_disk` Dataset or DatasetDict,
    with the slice semantics of `datasets` itself (ReadInstruction)."""
    import datasets
    from datasets.arrow_reader import ReadInstruction

    sizes = {s: len(ds[s]) for s in ds} if isinstance(ds, datasets.DatasetDict) else {"train": len(ds)}
    base = split.split("[", 1)[0].strip()
    if base not in sizes:
        raise UserError(f"dataset {dataset} has no split {base!r} (splits: {', '.join(sizes)}) -- pass --dataset-split")
    try:
        parts = ReadInstruction.from_spec(split).to_absolute(sizes)
    except (ValueError, KeyError, AssertionError):
        raise UserError(f"--dataset-split {split!r} is not a split spec -- write e.g. train, train[:1%] or train[100:200]") from None
    pick = (lambda s: ds[s]) if isinstance(ds, datasets.DatasetDict) else (lambda s: ds)
    chosen = [pick(i.splitname).select(range(i.from_, i.to)) for i in parts]
    return chosen[0] if len(chosen) == 1 else datasets.concatenate_datasets(chosen)


def _hf_error(e: Exception, dataset: str, name: str | None, split: str) -> UserError:
    """datasets' errors for a wrong config or split -> one line listing what there is."""
    msg = " ".join(str(e).split())
    m = re.search(r"Unknown split \"?([^\".]+)\"?\. Should be one of (\[.*?\])", msg)
    if m:
        have = ", ".join(ast.literal_eval(m.group(2)))
        return UserError(f"dataset {dataset} has no split {m.group(1)!r} (splits: {have}) -- pass --dataset-split")
    m = re.search(r"(?:BuilderConfig '?(.*?)'? not found|Config name is missing)\.? .*?(\[.*?\])", msg)
    if m:
        have = ", ".join(ast.literal_eval(m.group(2)))
        what = f"has no config {name!r}" if name else "needs a config"
        return UserError(f"dataset {dataset} {what} (configs: {have}) -- pass --dataset-name")
    return UserError(f"dataset {dataset} could not be loaded ({type(e).__name__}: {msg[:120]}) -- check the path or hub name"
                     + (" (HF_HUB_OFFLINE is set and it is not cached)" if _offline() else ""))


def _offline() -> bool:
    import os

    return any(os.environ.get(k, "").upper() in ("1", "TRUE", "YES", "ON") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _iter_hf(dataset: str, column: str, split: str, name: str | None = None) -> Iterator[str]:
    """parquet/arrow files, `save_to_disk` folders, local dataset folders (builder script or data files with
    configs in README.md) and hub names; `name` is the config (wikitext-103-raw-v1), `split` may slice."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"dataset {dataset}: install the 'datasets' package to read parquet/arrow/hub datasets") from None
    datasets.disable_progress_bars()
    p = Path(dataset)
    try:
        if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
            if name:
                raise UserError(f"--dataset-name {name}: {dataset} is a save_to_disk folder, which has no configs -- drop --dataset-name")
            ds = _select_split(datasets.load_from_disk(str(p)), split, dataset)
        elif p.is_file() and p.suffix in (".parquet", ".arrow"):
            ds = datasets.load_dataset("parquet" if p.suffix == ".parquet" else "arrow", data_files=str(p), split=split)
        elif p.exists() and not p.is_dir():
            raise UserError(f"dataset {dataset}: unsupported file type -- use jsonl, json, txt, parquet, arrow or a datasets folder")
        else:  # a hub name streams, unless the split is sliced (datasets slices only what it has loaded)
            ds = datasets.load_dataset(dataset, name, split=split, streaming=not p.exists() and "[" not in split)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- datasets raises many types; each becomes one line
        raise _hf_error(e, dataset, name, split) from None
    cols = ds.column_names if getattr(ds, "column_names", None) else None
    if cols is not None and column not in cols:
        raise UserError(f"dataset {dataset} has no column {column!r} (has {', '.join(cols)}) -- pass --dataset-column")
    n = 0
    for rec in ds:
        text = rec[column]
        if isinstance(text, str) and text:
            n += 1
            yield text
    if n == 0:
        raise UserError(f"dataset {dataset} is empty -- nothing to harvest")


def start_token(tokenizer) -> int | None:
    """The token the sequence builder puts at position 0: BOS, else EOS, else None (then nothing is inserted)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def pack(texts: Iterator[str], tokenizer, context_length: int) -> Iterator[list[int]]:
    """Yield sequences of exactly context_length ids: start token (see start_token) + stream of (doc EOS);
    without a BOS or EOS token, plain context_length chunks of the stream."""
    start, eos = start_token(tokenizer), tokenizer.eos_token_id
    head = [] if start is None else [start]
    body = context_length - len(head)
    buf: list[int] = []
    for text in texts:
        buf.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            buf.append(eos)
        while len(buf) >= body:
            yield head + buf[:body]
            buf = buf[body:]


def counted_positions(ids: torch.Tensor, tokenizer) -> torch.Tensor | None:
    """[B, S] ids -> bool mask of the positions `--filter-bos` counts: all but the start token `pack` inserted
    at position 0 (whatever the special tokens are: BOS, EOS standing in for BOS, or none). A BOS or EOS id
    that comes from the text stream (e.g. an end-of-document EOS equal to BOS) counts like any token."""
    if start_token(tokenizer) is None:
        return None
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[:, 0] = False
    return valid


def batches(seqs: Iterator[list[int]], batch_size: int, n_sequences: int, skip: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """(first sequence index, [B, S] int64) for sequences skip..n_sequences-1."""
    i, batch = 0, []
    for seq in seqs:
        if i >= n_sequences:
            break
        if i >= skip:
            batch.append(seq)
            if len(batch) == batch_size:
                yield i + 1 - batch_size, torch.tensor(batch, dtype=torch.int64)
                batch = []
        i += 1
    if batch:
        yield i - len(batch), torch.tensor(batch, dtype=torch.int64)


class TokenStore:
    """int32 memmap [n_sequences, context_length] of every harvested sequence."""

    def __init__(self, path: str | Path, n_sequences: int, context_length: int, mode: str = "r"):
        self.path = Path(path)
        self.shape = (n_sequences, context_length)
        if mode == "w+" and self.path.exists() and self.path.stat().st_size == n_sequences * context_length * 4:
            mode = "r+"  # resume: keep what is there
        self.arr = np.memmap(self.path, dtype=np.int32, mode=mode, shape=self.shape)

    def write(self, first: int, tokens: torch.Tensor) -> None:
        self.arr[first : first + len(tokens)] = tokens.cpu().numpy().astype(np.int32)

    def flush(self) -> None:
        self.arr.flush()

    def window(self, loc: int, width: int) -> tuple[list[int], int]:
        """Token ids of the ±width window around loc, clipped to its sequence; and the firing index."""
        S = self.shape[1]
        seq, pos = divmod(int(loc), S)
        lo, hi = max(0, pos - width), min(S, pos + width + 1)
        return self.arr[seq, lo:hi].tolist(), pos - lo
