"""One JSONL file written by several forked processes, each a contiguous part, joined in order.

    write_parts(path, items, write, workers, advance)

`write(chunk, f, advance)` writes the lines of a chunk of items to the open binary file f.
With workers > 1 the items are cut into `workers` contiguous chunks: workers - 1 forked
children write chunks 1.. to part files while this process writes chunk 0, then the parts
are appended in order, so the file is byte-identical to a serial write. Writing a latent's
line is Python-bound (its example windows decoded to text, its ranked lists), so a results
phase of 1,024 latents takes 1.1-1.3 s on one core; at 131k latents it would take minutes.

Children follow the rule PyTorch's DataLoader workers follow after a fork: torch on one
thread, CPU tensors only (the caller hands them nothing on a GPU). A child that fails or is
killed has its chunk rewritten here: a failure costs time, never a line. Forking is chosen on
Linux only, and never in a process that has imported JAX (the JAX backend: its runtime
threads can deadlock a forked child); `AUTOINTERP_RESULT_WORKERS=N` overrides the choice
(1 = one process).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from engine.core.errors import UserError

PER_WORKER = 256
"Fewest items a worker is started for: below it a fork costs more than it saves."
MAX_WORKERS = 8


def choose_workers(n_items: int) -> int:
    """Processes for n_items: the cores this process may use, at most MAX_WORKERS and one per PER_WORKER."""
    env = os.environ.get("AUTOINTERP_RESULT_WORKERS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise UserError(f"AUTOINTERP_RESULT_WORKERS={env!r} is not a count -- set it to 1 or more, or unset it")
        return int(env)
    if not sys.platform.startswith("linux") or "jax" in sys.modules:  # JAX runs threads a fork can deadlock
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS, n_items // PER_WORKER))


def write_parts(path: Path, items: list, write: Callable, workers: int,
                advance: Callable[[int], None] | None = None) -> None:
    """Write `items` to `path` through `write(chunk, f, advance)`, in `workers` processes (see the module)."""
    workers = min(workers, len(items))
    if workers <= 1:
        with open(path, "wb") as f:
            write(items, f, advance)
        return
    cuts = [len(items) * i // workers for i in range(workers + 1)]
    chunks = [items[cuts[i] : cuts[i + 1]] for i in range(workers)]
    parts = [Path(f"{path}.part{i}") for i in range(workers)]
    pids: dict[int, int] = {}
    try:
        for i in range(1, workers):
            pid = os.fork()
            if pid == 0:  # the child: write its part, never return into the caller's code
                code = 1
                try:
                    torch.set_num_threads(1)
                    with open(parts[i], "wb") as f:
                        write(chunks[i], f, None)
                    code = 0
                finally:
                    os._exit(code)
            pids[i] = pid
        with open(path, "wb") as f:
            write(chunks[0], f, advance)
            for i in range(1, workers):
                _, status = os.waitpid(pids.pop(i), 0)
                if status != 0:  # failed or killed: write that chunk here (its error, if any, surfaces here)
                    write(chunks[i], f, advance)
                    continue
                with open(parts[i], "rb") as part:
                    shutil.copyfileobj(part, f, 1 << 20)
                if advance is not None:
                    advance(len(chunks[i]))
    finally:
        for pid in pids.values():  # interrupted here: stop the children still writing
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
        for p in parts:
            p.unlink(missing_ok=True)
