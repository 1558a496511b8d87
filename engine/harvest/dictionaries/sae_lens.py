"""sae-lens folders: cfg.json + sae_weights.safetensors (standard, jumprelu, topk incl.
rescale_acts_by_decoder_norm, gated, transcoder, skip and jumprelu transcoders; pre-6.0 configs too)."""

from __future__ import annotations

from pathlib import Path

from engine.core.errors import UserError
from engine.harvest.dictionaries.base import Dictionary
from engine.harvest.dictionaries.files import need, read_json, read_safetensors


def load_sae_lens(p: Path) -> Dictionary:
    """A sae-lens folder (cfg.json + sae_weights.safetensors, activation_scaler.json if any)."""
    cfg = read_json(p / "cfg.json")
    t = read_safetensors(p / "sae_weights.safetensors")
    scaler = p / "activation_scaler.json"
    return sae_lens_dictionary(cfg, t, p, float(read_json(scaler)["scaling_factor"]) if scaler.exists() else None)


def sae_lens_dictionary(cfg: dict, t: dict, p: Path, scaling_factor: float | None = None) -> Dictionary:
    """A sae-lens config dict and state dict (as `SAE.save_model` writes them) -> Dictionary; `p` names the
    source in messages and `Dictionary.path`."""
    meta = cfg.get("metadata", {}) or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    arch = cfg.get("architecture", "standard")
    act_fn = cfg.get("activation_fn") or cfg.get("activation_fn_str")
    k = int(cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k") or 0)
    if act_fn == "topk" and k and arch == "standard":
        arch = "topk"
    known = ("standard", "jumprelu", "topk", "gated", "transcoder", "skip_transcoder", "jumprelu_transcoder")
    if arch not in known:
        raise UserError(f"{p / 'cfg.json'}: architecture {arch!r} is not supported -- supported: {', '.join(known)}")
    is_transcoder = "transcoder" in arch
    W_enc = need(t, "W_enc", p)
    d_in, L = W_enc.shape
    if cfg.get("d_in") not in (None, d_in) or cfg.get("d_sae") not in (None, L):
        raise UserError(f"{p}: cfg.json says d_in={cfg.get('d_in')}, d_sae={cfg.get('d_sae')} but W_enc is {tuple(W_enc.shape)} -- the weights do not belong to this config")
    apply_b_dec = bool(cfg.get("apply_b_dec_to_input", not is_transcoder)) and not is_transcoder
    norm = cfg.get("normalize_activations", "none")
    if norm is True:
        norm = "expected_average_only_in"
    scale = 1.0
    if norm == "expected_average_only_in":
        scale = 1.0 if scaling_factor is None else scaling_factor
        norm = "none"
    if norm not in ("none", None, False, "constant_norm_rescale", "layer_norm"):
        raise UserError(f"{p / 'cfg.json'}: normalize_activations={norm!r} is not supported")
    W_dec = t.get("W_dec")
    d = Dictionary(
        path=str(p), kind=f"sae_lens:{arch}", hookpoint=hook, W_enc=W_enc,
        b_enc=need(t, "b_enc", p) if arch != "gated" else None,
        b_dec_in=need(t, "b_dec", p) if apply_b_dec else None,
        threshold=need(t, "threshold", p) if arch in ("jumprelu", "jumprelu_transcoder") else None,
        activation={"standard": "relu", "transcoder": "relu", "skip_transcoder": "relu", "jumprelu": "jumprelu",
                    "jumprelu_transcoder": "jumprelu", "topk": "topk", "gated": "gated"}[arch],
        k=k, W_dec=W_dec.float() if W_dec is not None else None, d_in=d_in, n_latents=L,
        input_scale=scale, input_norm=norm or "none",
    )
    if arch == "topk" and not k:
        raise UserError(f"{p / 'cfg.json'}: architecture topk needs a 'k' -- add it to cfg.json")
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm") and W_dec is not None:
        d.decoder_norm_scale = W_dec.float().norm(dim=1)
    if arch == "gated":
        d.b_gate, d.b_mag, d.r_mag = need(t, "b_gate", p), need(t, "b_mag", p), need(t, "r_mag", p)
    return d
