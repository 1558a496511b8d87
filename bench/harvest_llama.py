"""`python -m bench.harvest` breakdown (b): the 135M-class Llama shape (random weights, random TopK SAEs)."""

from __future__ import annotations

import torch

from bench.harvest import CPU_GOAL, breakdown
from engine.harvest.config import HarvestArgs


def llama_breakdown(a, device) -> tuple[str, dict, dict] | None:
    """(b): the 135M-class Llama shape with random weights and random TopK SAEs of each --llama-latents width."""
    from bench.scale import PRESETS, build_model, random_topk

    widths = [int(x.replace("_", "")) for x in a.llama_latents.split(",") if x.strip()]
    if not widths:
        return None
    ps = PRESETS[a.llama_preset]
    spec, dtype = ps["model"], getattr(torch, ps["dtype"])
    model = build_model(spec, dtype, device)
    V, d = spec["vocab_size"], spec["hidden_size"]
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, V, (a.llama_batch_size, a.llama_context_length), generator=g).to(device) for _ in range(a.llama_batches)]
    hook = f"blocks.{ps['layer']}.hook_resid_post"
    saes = [random_topk(d, n, a.llama_k, hook, device) for n in widths]

    def make_cfg(n):  # the CLI's settings: one top example per window, the co-occurrence position sample
        sae = next(s for s in saes if s.n_latents == n)
        return HarvestArgs(batch_size=a.llama_batch_size, context_length=a.llama_context_length).state_config([sae], V, device=torch.device(device).type)

    res = breakdown(model, hook, saes, data, make_cfg, reps=a.reps, device=device, budget_s=a.breakdown_budget_s)
    label = "135M" if a.llama_preset == "llama-135m" else a.llama_preset
    res["model"] = (f"{label}: {a.llama_preset} shape ({spec['num_hidden_layers']} layers, d_model {d}, vocab {V}, {ps['dtype']}, "
                    f"random weights), TopK k={a.llama_k} SAEs at {hook}")
    return label, res, ({CPU_GOAL[0]: CPU_GOAL[1]} if a.llama_preset == "llama-135m" else {})
