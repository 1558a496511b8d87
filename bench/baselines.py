"""The baselines every harvest bench divides by, measured on the same batches: a bare forward, and
forward + encode (the forward stopped after the hookpoint, then the dictionary's encode)."""

from __future__ import annotations

import torch


def bare_forward(model, data: list[torch.Tensor]):
    """A callable running the model (no hooks, no cache) over every batch of `data` once."""

    def forward():
        with torch.no_grad():
            for ids in data:
                model(input_ids=ids, use_cache=False)

    return forward


def forward_encode(hooked, dictionary, hook: str, data: list[torch.Tensor]):
    """A callable running the hooked model up to `hook` and the dictionary's encode over every batch once."""

    def run():
        for ids in data:
            acts, _ = hooked.run(ids, need_logits=False)
            dictionary.encode(acts[hook].reshape(-1, dictionary.d_in))

    return run
