"""Activations from a Hugging Face causal LM: hookpoint names, hooks, early stop.

A hookpoint is either a TransformerLens name or an HF module path:

| TransformerLens                         | module hooked (Llama / GPT-2 / NeoX naming)  | captures |
|-----------------------------------------|----------------------------------------------|----------|
| blocks.i.hook_resid_post                | layers.i / h.i                               | output   |
| blocks.i.hook_resid_pre                 | layers.i                                     | input    |
| blocks.i.hook_resid_mid                 | layers.i.post_attention_layernorm / ln_2     | input    |
| blocks.i.hook_attn_out                  | layers.i.self_attn / attn / attention        | output   |
| blocks.i.hook_mlp_out                   | layers.i.mlp                                 | output   |
| Gemma 2/3 (norms after each sublayer):  |                                              |          |
|   blocks.i.hook_resid_mid               | layers.i.pre_feedforward_layernorm           | input    |
|   blocks.i.hook_attn_out                | layers.i.post_attention_layernorm            | output   |
|   blocks.i.hook_mlp_out                 | layers.i.post_feedforward_layernorm          | output   |
| blocks.i.ln2.hook_normalized, mlp.hook_in | layers.i.mlp                               | input    |
| blocks.i.mlp.hook_post                  | layers.i.mlp.down_proj / c_proj / dense_4h_to_h | input |
| hook_embed                              | embed_tokens / wte / embed_in                | output   |

HF paths may be relative to the base model (`layers.16`, sparsify style) or to
the full model (`model.layers.16.mlp`); append `@in` to capture a module's input
(transcoders). Tuple outputs contribute their first element.

When no logits are needed, the forward pass stops (StopForward) as soon as
every hooked module has run, so layers after the last hookpoint cost nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.core.errors import UserError

_TL = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_resid_pre|hook_resid_mid|hook_attn_out|hook_mlp_out|ln2\.hook_normalized|mlp\.hook_in|mlp\.hook_post)$")


class StopForward(Exception):
    """Raised from a hook once every requested activation is captured."""


@dataclass
class Site:
    name: str
    "The hookpoint as given."
    module: str
    "Full module path in the model."
    capture: str
    "'output' or 'input'."


def _layers_path(model: nn.Module) -> str:
    n = getattr(model.config, "num_hidden_layers", None)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return name
    raise UserError(f"cannot find the layer list of {type(model).__name__} -- give HF module paths as hookpoints")


def _first_child(modules: dict, prefix: str, options: tuple[str, ...]) -> str | None:
    for o in options:
        if f"{prefix}.{o}" in modules:
            return f"{prefix}.{o}"
    return None


def resolve(model: nn.Module, hookpoint: str) -> Site:
    modules = dict(model.named_modules())
    m = _TL.match(hookpoint)
    if m:
        i, hook = int(m.group(1)), m.group(2)
        layers = _layers_path(model)
        n = len(modules[layers])
        if i >= n:
            raise UserError(f"hookpoint {hookpoint}: the model has {n} layers (0..{n - 1}) -- pick an existing layer")
        block = f"{layers}.{i}"
        sandwich = f"{block}.pre_feedforward_layernorm" in modules and f"{block}.post_feedforward_layernorm" in modules
        if sandwich:  # Gemma 2/3: each sublayer's output is normed before it joins the residual stream, so the
            # writes are the post-norms' outputs and resid_mid is the pre-feedforward norm's input
            mid = (f"{block}.pre_feedforward_layernorm", "input")
            attn = (f"{block}.post_attention_layernorm", "output")
            mlp = (f"{block}.post_feedforward_layernorm", "output")
        else:
            mid = (_first_child(modules, block, ("post_attention_layernorm", "ln_2")), "input")
            attn = (_first_child(modules, block, ("self_attn", "attn", "attention")), "output")
            mlp = (_first_child(modules, block, ("mlp",)), "output")
        table = {
            "hook_resid_post": (block, "output"),
            "hook_resid_pre": (block, "input"),
            "hook_resid_mid": mid,
            "hook_attn_out": attn,
            "hook_mlp_out": mlp,
            "ln2.hook_normalized": (_first_child(modules, block, ("mlp",)), "input"),
            "mlp.hook_in": (_first_child(modules, block, ("mlp",)), "input"),
            "mlp.hook_post": (_first_child(modules, block + ".mlp", ("down_proj", "c_proj", "dense_4h_to_h")), "input"),
        }
        path, capture = table[hook]
        if path is None:
            raise UserError(f"hookpoint {hookpoint}: no matching module in {type(model).__name__} -- use an HF module path instead")
        return Site(hookpoint, path, capture)
    if hookpoint == "hook_embed":
        for cand in ("model.embed_tokens", "transformer.wte", "gpt_neox.embed_in"):
            if cand in modules:
                return Site(hookpoint, cand, "output")
    path, capture = hookpoint, "output"
    if path.endswith("@in"):
        path, capture = path[:-3], "input"
    if path in modules and path:
        return Site(hookpoint, path, capture)
    base = getattr(model, "base_model_prefix", "model")
    for cand in (f"{base}.{path}", f"model.{path}", f"transformer.{path}"):
        if cand in modules:
            return Site(hookpoint, cand, capture)
    layers = _layers_path(model)
    raise UserError(
        f"unknown hookpoint {hookpoint!r} -- use a TransformerLens name like blocks.0.hook_resid_post "
        f"or an HF module path like {layers.split('.')[-1]}.0 / {layers}.0.mlp"
    )


class HookedModel:
    """Runs the model and returns the activations at the requested sites."""

    def __init__(self, model: nn.Module, hookpoints: list[str], read_input: list[bool] | None = None):
        """read_input[i]: capture hookpoint i's module input (transcoders read the MLP input)."""
        self.model = model
        self.sites = [resolve(model, h) for h in hookpoints]
        for site, flag in zip(self.sites, read_input or []):
            if flag:
                site.capture = "input"
        self._captured: dict[str, Tensor] = {}
        self._stop = False
        modules = dict(model.named_modules())
        self._handles = []
        for site in self.sites:
            mod = modules[site.module]
            if site.capture == "output":
                self._handles.append(mod.register_forward_hook(self._out_hook(site.name)))
            else:
                self._handles.append(mod.register_forward_pre_hook(self._in_hook(site.name), with_kwargs=True))

    def _store(self, name: str, value: Tensor) -> None:
        self._captured[name] = value
        if self._stop and len(self._captured) == len(self.sites):
            raise StopForward

    def _out_hook(self, name):
        def hook(module, args, output):
            self._store(name, output[0] if isinstance(output, (tuple, list)) else output)
        return hook

    def _in_hook(self, name):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
            self._store(name, x)
        return hook

    @torch.no_grad()
    def run(self, input_ids: Tensor, need_logits: bool) -> tuple[dict[str, Tensor], Tensor | None]:
        """input_ids [B, S] -> ({hookpoint: [B, S, d]}, logits [B, S, V] or None)."""
        self._captured = {}
        self._stop = not need_logits
        logits = None
        try:
            out = self.model(input_ids=input_ids, use_cache=False)
            logits = out.logits
        except StopForward:
            pass
        missing = [s.name for s in self.sites if s.name not in self._captured]
        if missing:
            raise UserError(f"hookpoints {missing} never ran in the forward pass -- check the names")
        acts, self._captured = self._captured, {}
        return acts, logits

    def close(self) -> None:
        for h in self._handles:
            h.remove()
