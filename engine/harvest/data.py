"""Text in, packed token sequences out, and the memory-mapped token store.

Sources (`--dataset`):
* local `.jsonl` / `.json` / `.jsonl.gz` / `.txt` / `.txt.gz` files, read line by
  line with no copy into a cache (one JSON object or one text line per line);
* local `.parquet` / `.arrow` files or a `save_to_disk` folder, and hub names
  (`owner/name`, needs network), through Hugging Face `datasets`.

Packing: every sequence starts with BOS, then `context_length - 1` tokens of the
stream of documents, each document followed by EOS. With `filter_bos` the BOS
positions do not count in any statistic. The order is deterministic, so a
resumed run skips exactly the sequences it already folded in.

The token store `tokens.bin` is an int32 memmap [n_sequences, context_length];
examples are rebuilt from it by location (loc = sequence * context_length + pos).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from engine.core.errors import UserError

DEFAULT_CORPUS = Path(__file__).parents[1] / "assets" / "default" / "corpus.jsonl.gz"


def iter_texts(dataset: str, column: str = "text", split: str = "train", where: dict[str, str] | None = None) -> Iterator[str]:
    """Yield document texts; `where` keeps JSON records whose fields equal the given values.
    Errors name the file/line/column and the fix."""
    p = Path(dataset)
    name = p.name
    if p.is_file() and (name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".txt", ".txt.gz"))):
        opener = gzip.open if name.endswith(".gz") else open
        is_json = ".json" in name
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
    yield from _iter_hf(dataset, column, split)


def _iter_hf(dataset: str, column: str, split: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise UserError(f"dataset {dataset}: install the 'datasets' package to read parquet/arrow/hub datasets") from None
    p = Path(dataset)
    try:
        if p.is_dir():
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        elif p.is_file() and p.suffix in (".parquet", ".arrow"):
            ds = datasets.load_dataset("parquet" if p.suffix == ".parquet" else "arrow", data_files=str(p), split="train")
        elif p.exists():
            raise UserError(f"dataset {dataset}: unsupported file type -- use jsonl, json, txt, parquet, arrow or a datasets folder")
        else:
            ds = datasets.load_dataset(dataset, split=split, streaming=True)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"dataset {dataset} could not be loaded ({type(e).__name__}: {str(e)[:120]}) -- check the path or hub name") from None
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


def pack(texts: Iterator[str], tokenizer, context_length: int) -> Iterator[list[int]]:
    """Yield sequences of exactly context_length ids: BOS + stream of (doc EOS)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    body = context_length - 1
    buf: list[int] = []
    for text in texts:
        buf.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            buf.append(eos)
        while len(buf) >= body:
            yield [bos] + buf[:body]
            buf = buf[body:]


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
