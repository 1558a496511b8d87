"""Data-parallel harvest under torchrun: shard the batches, merge the states.

    torchrun --nproc-per-node 8 -m engine.harvest MODEL DICT --out RUN ...

Each rank takes every world_size-th batch (batch i goes to rank i % world_size),
accumulates its own HarvestState and writes its own rows of the shared token
store (RUN must be on a file system all ranks see). At the end the states are
merged with collectives:

* sums (counts, activation sums, histograms, token totals, dense pair tables)
  with one all_reduce each, maxima with all_reduce(MAX);
* top-K / reservoir buffers and sketches are all-gathered and merged with the
  same `HarvestState.merge` used for checkpoints, so the merged state equals a
  single-process pass exactly (reservoir keys are a hash of the data).

Only rank 0 writes results. Works with NCCL (GPUs) and gloo (CPU, used in tests).

With --latent-parallel the split is by latent instead (engine.harvest
_finish_latent_parallel): every rank reads every batch, keeps rows [r L/N, (r+1) L/N)
of every per-latent table (StateConfig.row_lo/row_hi) and writes their components.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from engine.harvest.state import HarvestState

SUMMED = ("n_tokens", "overflow", "cooc_excess", "count", "act_sum", "hist", "tok_total", "out_total")


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: torch.device) -> tuple[int, int]:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    return world()


def merge_across_ranks(state: HarvestState) -> HarvestState:
    """Every rank returns the merged state of all ranks."""
    rank, size = world()
    if size == 1:
        return state
    for name in SUMMED:
        dist.all_reduce(getattr(state, name), op=dist.ReduceOp.SUM)
    dist.all_reduce(state.act_max, op=dist.ReduceOp.MAX)
    # Everything else (sample buffers, pair tables) merges through HarvestState.merge.
    rest = {k: v for k, v in state.tensors().items() if k not in SUMMED and k != "act_max"}
    dense_tables = [k for k in rest if k.endswith(".table")]  # a list: every rank must reduce in the same order
    for k in dense_tables:
        dist.all_reduce(rest[k], op=dist.ReduceOp.SUM)
    gathered = {k: _all_gather(v) for k, v in rest.items() if k not in dense_tables}
    merged = HarvestState(state.cfg, state.device)
    for name in SUMMED + ("act_max",):
        getattr(merged, name).copy_(getattr(state, name))
    for k in dense_tables:
        prefix = k.split(".")[0]
        getattr(merged, prefix).table.copy_(rest[k])
    for r in range(size):
        part = HarvestState(state.cfg, state.device)
        for k, parts in gathered.items():
            _tensor_of(part, k).copy_(parts[r])
        # Sums are already reduced into `merged`: merge only samples and sketches.
        for name in SUMMED:
            getattr(part, name).zero_()
        part.act_max.zero_()
        for pc in (part.in_tok, part.out_tok, part.cooc):
            if pc is not None and pc.mode == "dense":
                pc.table.zero_()
        merged.merge(part)
    return merged


def _tensor_of(state: HarvestState, name: str) -> torch.Tensor:
    if "." in name:
        prefix, attr = name.split(".", 1)
        return getattr(getattr(state, prefix), attr)
    return getattr(state, name)


def _all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(world()[1])]
    dist.all_gather(out, t.contiguous())
    return out
