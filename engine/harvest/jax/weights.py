"""HF decoder checkpoints for the JAX forward: config -> ModelSpec, safetensors -> parameters, hookpoints.

Reads the same folder the torch path loads (config.json + model.safetensors or a sharded
model.safetensors.index.json), no conversion step. Supported `model_type`s: llama, mistral,
qwen2, gemma, gemma2 (the families sae-lens and Gemma Scope dictionaries target); anything else
is refused with a message naming the torch backend.

Hookpoints are resolved by the torch path's own resolver (engine.harvest.sources.resolve) on the
HF module tree built on the meta device (no weights), so every name means the same module in both
backends; each (module, input/output) is then mapped to a capture point of the JAX forward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch

from engine.core.errors import UserError
from engine.harvest.sources import Site, resolve

FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2")
ACTS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_tanh", "gelu_new": "gelu_tanh"}
# gelu: transformers maps Gemma's legacy "gelu" to the tanh approximation too


@dataclass(frozen=True)
class ModelSpec:
    """Everything the forward needs that is not an array (static under jit)."""

    family: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv: int
    head_dim: int
    eps: float
    act: str
    "silu | gelu_tanh (gated MLP: act(gate) * up)."
    attn_scale: float
    windows: tuple[int, ...]
    "Per-layer sliding window (0: full causal attention)."
    embed_scale: float = 0.0
    "Gemma: embeddings times sqrt(d_model) (0: none)."
    norm_offset: float = 0.0
    "Gemma RMSNorm multiplies by (offset + weight)."
    post_norms: bool = False
    "Gemma-2: norms after attention and MLP outputs."
    attn_softcap: float = 0.0
    final_softcap: float = 0.0


def model_spec(cfg) -> ModelSpec:
    """An HF PretrainedConfig (AutoConfig) -> ModelSpec; unsupported models raise UserError."""
    fam = cfg.model_type
    if fam not in FAMILIES:
        raise UserError(f"--backend jax supports {', '.join(FAMILIES)} models, not {fam!r} -- use --backend torch")
    act = ACTS.get(getattr(cfg, "hidden_activation", None) or cfg.hidden_act)
    if act is None:
        raise UserError(f"--backend jax: activation {cfg.hidden_act!r} is not supported -- use --backend torch")
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") == "dynamic":
        raise UserError("--backend jax: dynamic RoPE scaling is not supported -- use --backend torch")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n = cfg.num_hidden_layers
    if fam == "mistral":
        windows = (cfg.sliding_window or 0,) * n
    else:
        types = getattr(cfg, "layer_types", None) or ["full_attention"] * n
        windows = tuple((cfg.sliding_window or 0) if t == "sliding_attention" else 0 for t in types)
    gemma = fam.startswith("gemma")
    return ModelSpec(
        family=fam, n_layers=n, d_model=cfg.hidden_size, n_heads=cfg.num_attention_heads,
        n_kv=cfg.num_key_value_heads, head_dim=head_dim, eps=cfg.rms_norm_eps, act=act,
        attn_scale=(cfg.query_pre_attn_scalar if fam == "gemma2" else head_dim) ** -0.5, windows=windows,
        embed_scale=cfg.hidden_size**0.5 if gemma else 0.0, norm_offset=1.0 if gemma else 0.0,
        post_norms=fam == "gemma2", attn_softcap=float(getattr(cfg, "attn_logit_softcapping", 0) or 0),
        final_softcap=float(getattr(cfg, "final_logit_softcapping", 0) or 0),
    )


def rope_tables(cfg, spec: ModelSpec) -> tuple[np.ndarray, float]:
    """(inv_freq [head_dim / 2] float32, attention scaling) as transformers computes them."""
    rope = dict(getattr(cfg, "rope_parameters", None) or {"rope_theta": getattr(cfg, "rope_theta", 10000.0)})
    kind = rope.get("rope_type", "default")
    if kind == "default":
        dim = spec.head_dim
        inv = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        return inv.numpy(), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv, scale = ROPE_INIT_FUNCTIONS[kind](cfg, "cpu")
    return inv.float().numpy(), float(scale)


def _safetensor_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        return [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (path / "model.safetensors").exists():
        return [path / "model.safetensors"]
    raise UserError(f"model {path}: --backend jax reads safetensors (model.safetensors or its index) -- "
                    "re-save the model with save_pretrained(safe_serialization=True) or use --backend torch")


def load_params(path: str, spec: ModelSpec, n_layers: int, dtype: str, head: bool) -> dict:
    """Parameters of layers [0, n_layers) (+ final norm and unembedding when `head`) as jnp arrays.

    Tree: {embed [V, d], layers: [{q, k, v, o, gate, up, down: [out, in], ln1, ln2 (, ln_post_attn,
    ln_post_mlp) [d], optional q_b, k_b, v_b, o_b}], norm [d], lm_head [V, d]} (HF layouts, x @ W.T)."""
    from safetensors import safe_open

    want = {"model.embed_tokens.weight": ("embed",)}
    names = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
             "mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down", "input_layernorm": "ln1"}
    names.update({"post_attention_layernorm": "ln_post_attn", "pre_feedforward_layernorm": "ln2",
                  "post_feedforward_layernorm": "ln_post_mlp"} if spec.post_norms else {"post_attention_layernorm": "ln2"})
    for i in range(n_layers):
        for hf, ours in names.items():
            want[f"model.layers.{i}.{hf}.weight"] = ("layers", i, ours)
            if hf.startswith(("self_attn", "mlp")):
                want[f"model.layers.{i}.{hf}.bias"] = ("layers", i, ours + "_b")
    if head:
        want["model.norm.weight"] = ("norm",)
        want["lm_head.weight"] = ("lm_head",)
    dt = jnp.dtype(dtype)
    params: dict = {"layers": [{} for _ in range(n_layers)]}
    for f in _safetensor_files(Path(path)):
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():  # noqa: SIM118 -- safe_open is not iterable
                if key in want:
                    arr = jnp.asarray(sf.get_tensor(key).float().numpy(), dt)
                    where = want[key]
                    (params if len(where) == 1 else params["layers"][where[1]])[where[-1]] = arr
    if head and "lm_head" not in params:  # tied embeddings
        params["lm_head"] = params["embed"]
    missing = [k for k, w in want.items() if not k.endswith(".bias") and k != "lm_head.weight"
               and w[-1] not in (params if len(w) == 1 else params["layers"][w[1]])]
    if missing:
        raise UserError(f"model {path}: weights {missing[:3]} are missing from its safetensors -- is it a "
                        f"{spec.family} checkpoint saved by transformers?")
    return params


def meta_model(path: str):
    """(HF config, the model's module tree on the meta device: names and config, no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"model {path} has no readable config.json ({str(e).splitlines()[0][:150]}) -- give a local HF model folder") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return cfg, model


def capture_point(site: Site, spec: ModelSpec) -> tuple[int, str]:
    """A resolved torch Site -> (layer, point) of the JAX forward; layer -1 is the embedding."""
    m = site.module
    if m == "model.embed_tokens" and site.capture == "output":
        return -1, "embed"
    parts = m.split(".")
    if len(parts) < 3 or parts[:2] != ["model", "layers"] or not parts[2].isdigit():
        raise UserError(f"hookpoint {site.name} (module {m}) is not a decoder-layer site the JAX forward captures -- use --backend torch")
    i, sub = int(parts[2]), ".".join(parts[3:])
    table = {
        ("", "output"): "resid_post", ("", "input"): "resid_pre",
        ("input_layernorm", "input"): "resid_pre", ("input_layernorm", "output"): "attn_in",
        ("self_attn", "output"): "attn_out", ("self_attn", "input"): "attn_in",
        ("mlp", "input"): "mlp_in", ("mlp", "output"): "mlp_out",
        ("mlp.down_proj", "input"): "mlp_post", ("mlp.down_proj", "output"): "mlp_out",
    }
    if spec.post_norms:  # Gemma-2: post_attention_layernorm normalises the attention output
        table.update({("post_attention_layernorm", "input"): "attn_out", ("post_attention_layernorm", "output"): "attn_normed",
                      ("pre_feedforward_layernorm", "input"): "resid_mid", ("pre_feedforward_layernorm", "output"): "mlp_in",
                      ("post_feedforward_layernorm", "input"): "mlp_out", ("post_feedforward_layernorm", "output"): "mlp_normed"})
    else:
        table.update({("post_attention_layernorm", "input"): "resid_mid", ("post_attention_layernorm", "output"): "mlp_in"})
    point = table.get((sub, site.capture))
    if point is None:
        raise UserError(f"hookpoint {site.name} ({m} {site.capture}) is not captured by the JAX forward -- use --backend torch")
    return i, point


def sites(model, hookpoints: list[str], read_input: list[bool]) -> list[Site]:
    """Resolve hookpoints exactly as engine.harvest.sources.HookedModel does (transcoders read inputs)."""
    out = []
    for h, inp in zip(hookpoints, read_input):
        s = resolve(model, h)
        out.append(Site(s.name, s.module, "input") if inp else s)
    return out


class LensView:
    """The two weights engine.harvest.results.logit_lens reads from a torch model: the unembedding
    (`get_output_embeddings().weight`, [V, d]) and the final norm weight (`model.norm.weight`)."""

    def __init__(self, path: str):
        from types import SimpleNamespace

        from safetensors import safe_open

        got = {}
        for f in _safetensor_files(Path(path)):
            with safe_open(str(f), framework="pt") as sf:
                for key in ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"):
                    if key in sf.keys():  # noqa: SIM118 -- safe_open has no __contains__
                        got[key] = sf.get_tensor(key).float()
        self._unembed = SimpleNamespace(weight=got.get("lm_head.weight", got.get("model.embed_tokens.weight")))
        self.model = SimpleNamespace(norm=SimpleNamespace(weight=got["model.norm.weight"]))

    def get_output_embeddings(self):
        return self._unembed
