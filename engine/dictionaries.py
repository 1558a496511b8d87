"""Sparse dictionaries: load any supported format into one internal representation.

Every format maps onto `Dictionary`:
  W_enc [d_in, L], b_enc [L], b_dec_in [d_in] or None (subtracted from the input),
  threshold [L] or None, activation in {relu, jumprelu, topk, gated, identity},
  k (TopK), an input transform (scale, per-token norm rescale or layer norm),
  and, for the logit lens, W_dec [L, d_out].

Formats (detected from the files, or forced with `kind=`):
* sae-lens folder: `cfg.json` + `sae_weights.safetensors` (standard, jumprelu, topk,
  gated, transcoder, skip_transcoder, jumprelu_transcoder; pre-6.0 configs too);
* sparsify folder: `cfg.json` + `sae.safetensors` (TopK; transcoders skip the b_dec
  subtraction); a checkpoint root with one sub-folder per hookpoint is accepted with
  the hookpoint name;
* Gemma Scope `params.npz` (JumpReLU, no b_dec subtraction);
* `neurons:<d>`: raw neurons, identity encode; a neuron fires where it is > 0;
* SPD run folder (`final_config.yaml` + `model_<step>.pth`): one dictionary per decomposed
  module, firing = causal importance > threshold (engine/spd.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from engine.errors import UserError
from engine.state import Firings

ACTIVATIONS = ("relu", "jumprelu", "topk", "gated", "identity", "spd_ci")


@dataclass
class Dictionary:
    path: str
    "Where it was loaded from."
    kind: str
    "Format and architecture, e.g. sae_lens:topk."
    hookpoint: str | None
    "Hookpoint named by the file, if any."
    W_enc: Tensor | None
    "[d_in, L] (None for neurons)."
    b_enc: Tensor | None
    "[L]"
    b_dec_in: Tensor | None
    "[d_in] subtracted from the (transformed) input before encoding, or None."
    threshold: Tensor | None
    "[L] JumpReLU thresholds (SPD: the CI firing threshold)."
    activation: str
    "relu | jumprelu | topk | gated | identity | spd_ci."
    k: int
    "TopK k (0 otherwise)."
    W_dec: Tensor | None
    "[L, d_out] decoder, for the logit lens."
    d_in: int
    n_latents: int
    input_scale: float = 1.0
    "Multiplies the input first (sae-lens expected_average_only_in)."
    input_norm: str = "none"
    "none | constant_norm_rescale | layer_norm (per-token, sae-lens)."
    decoder_norm_scale: Tensor | None = None
    "[L] TopK rescale_acts_by_decoder_norm."
    b_gate: Tensor | None = None
    b_mag: Tensor | None = None
    r_mag: Tensor | None = None
    transcoder: bool = False
    "Reads the hooked module's input (sparsify transcoders)."
    ci_layers: list[tuple[Tensor, Tensor]] | None = None
    "SPD causal-importance MLP: (W, b) per layer, GELU between (engine/spd.py)."
    ci_type: str = ""
    "SPD ci_fn_type: shared_mlp | mlp | vector_mlp."
    ci_sigmoid: str = ""
    "SPD CI squashing: clamp | sigmoid."
    latent_ids: Tensor | None = None
    "[L'] original indices when only a subset is harvested (see subset)."
    _select: Tensor | None = None
    "TopK subsets: columns kept after the full selection."

    def subset(self, ids: list[int]) -> Dictionary:
        """Keep only latents `ids`: encode cost and all state memory scale with the subset
        (TopK still ranks against all latents, so only its state shrinks)."""
        if not ids:
            return self
        if max(ids) >= self.n_latents:
            raise UserError(f"--latents: index {max(ids)} is out of range for {self.path} ({self.n_latents} latents)")
        sel = torch.tensor(ids, dtype=torch.int64)
        self.latent_ids = sel
        if self.activation in ("topk", "spd_ci"):
            self._select = sel
        elif self.activation == "identity":
            self._select = sel
        else:
            for name in ("W_enc",):
                setattr(self, name, getattr(self, name)[:, sel].contiguous())
            for name in ("b_enc", "threshold", "b_gate", "b_mag", "r_mag"):
                if getattr(self, name) is not None:
                    setattr(self, name, getattr(self, name)[sel].contiguous())
        if self.W_dec is not None:
            self.W_dec = self.W_dec[sel].contiguous()
        self.n_latents = len(ids)
        return self

    # ------------------------------------------------------------------ encode

    def to(self, device, dtype=None) -> Dictionary:
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(self, name, value.to(device=device, dtype=dtype if value.is_floating_point() and dtype else value.dtype))
        if self.ci_layers is not None:
            self.ci_layers = [(W.to(device), b.to(device)) for W, b in self.ci_layers]
        return self

    def prepare(self, x: Tensor) -> Tensor:
        """[N, d_in] raw hook activations -> encoder input."""
        x = x.float()
        if self.input_norm == "constant_norm_rescale":
            x = x * (self.d_in**0.5 / x.norm(dim=-1, keepdim=True).clamp(min=1e-8))
        elif self.input_norm == "layer_norm":
            x = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5)
        if self.input_scale != 1.0:
            x = x * self.input_scale
        if self.b_dec_in is not None:
            x = x - self.b_dec_in
        return x

    def encode_dense(self, x: Tensor) -> Tensor:
        """[N, d_in] -> [N, L] float32 activations (torch reference)."""
        acts = self._encode_all(x)
        return acts if self._select is None else acts[:, self._select.to(acts.device)]

    def _kernel_ok(self, x: Tensor) -> bool:
        if self.activation not in ("relu", "jumprelu", "topk") or self.decoder_norm_scale is not None or self._select is not None:
            return False
        try:
            from kernels.dispatch import use_triton
        except ImportError:
            return False
        return use_triton(x)

    def _encode_kernel(self, x: Tensor) -> Firings:
        from kernels.encode_pack import default_capacity, encode_pack, sort_firings

        xp = self.prepare(x).contiguous()  # input transform and b_dec subtraction, as the reference
        capacity = default_capacity(len(xp), self.n_latents, self.activation, self.k)
        while True:
            f = encode_pack(xp, self.W_enc.float().contiguous(), self.b_enc.float().contiguous(), threshold=self.threshold,
                            activation=self.activation, k=self.k, capacity=capacity)
            n = int(f.count)  # the one host sync per batch: sizes the firings for the state update
            if n <= capacity:
                break
            capacity = n  # overflow: rerun with room for every firing (never drops any)
        f = sort_firings(f)
        return Firings(f.tok[:n], f.lat[:n], f.val[:n])

    def _encode_all(self, x: Tensor) -> Tensor:
        x = self.prepare(x)
        if self.activation == "identity":
            return x.clamp(min=0)
        if self.activation == "spd_ci":
            from engine.spd import causal_importance

            ci = causal_importance(self, x)
            return torch.where(ci > self.threshold, ci, 0.0)
        if self.activation == "gated":
            gate = (x @ self.W_enc + self.b_gate) > 0
            mag = torch.relu(x @ (self.W_enc * torch.exp(self.r_mag)) + self.b_mag)
            return mag * gate
        pre = x @ self.W_enc.float() + self.b_enc.float()  # [N, L]
        if self.activation == "relu":
            return pre.clamp(min=0)
        if self.activation == "jumprelu":
            return torch.where(pre > self.threshold, pre, 0.0).clamp(min=0)
        if self.decoder_norm_scale is not None:
            pre = pre * self.decoder_norm_scale
        val, idx = pre.topk(self.k, dim=1)  # [N, k]
        return torch.zeros_like(pre).scatter_(1, idx, val.clamp(min=0))

    def encode(self, x: Tensor) -> Firings:
        """[N, d_in] -> firings sorted by (tok, lat).

        Fast path (chosen once by kernels.dispatch: CUDA + Triton, or AUTOINTERP_KERNELS=triton):
        the fused Triton encode+pack, which never writes the dense [N, L] activations.
        Otherwise TopK packs straight from its k winners per token (no dense [N, L] tensor
        after the pre-activations); subset-TopK and the other activations use the dense
        torch reference below."""
        if self._kernel_ok(x):
            return self._encode_kernel(x)
        if self.activation == "topk" and self._select is None:
            pre = self.prepare(x) @ self.W_enc.float() + self.b_enc.float()  # [N, L]
            if self.decoder_norm_scale is not None:
                pre = pre * self.decoder_norm_scale
            val, idx = pre.topk(self.k, dim=1)  # [N, k]
            idx, order = idx.sort(dim=1)  # firings sorted by (tok, lat), as the dense path gives them
            val = val.gather(1, order)
            keep = val > 0
            tok = torch.arange(len(idx), device=idx.device)[:, None].expand_as(idx)
            return Firings(tok[keep], idx[keep], val[keep])
        acts = self.encode_dense(x)
        tok, lat = torch.nonzero(acts > 0, as_tuple=True)
        return Firings(tok, lat, acts[tok, lat])


# ----------------------------------------------------------------------------- loaders


def load_dictionary(path: str, hookpoint: str | None = None, kind: str | None = None, ci_threshold: float = 0.0) -> Dictionary:
    """Load a dictionary from a folder/file; `hookpoint` picks a sub-folder of multi-hookpoint checkpoints
    (or the decomposed module of an SPD run, whose components fire where CI > `ci_threshold`)."""
    if path.startswith("neurons:"):
        try:
            d = int(path.split(":", 1)[1])
        except ValueError:
            raise UserError(f"dictionary {path!r}: write raw neurons as neurons:<width>, e.g. neurons:4096") from None
        return Dictionary(path, "neurons", hookpoint, None, None, None, None, "identity", 0, None, d, d)
    p = Path(path)
    if not p.exists():
        raise UserError(f"dictionary {path} does not exist -- give a sae-lens/sparsify folder, a params.npz, or neurons:<width>")
    from engine.spd import is_spd_run, load_spd

    if kind == "spd" or (kind is None and is_spd_run(p)):
        return load_spd(p, hookpoint, ci_threshold)
    if p.is_dir() and hookpoint and (p / hookpoint).is_dir() and not (p / "cfg.json").exists():
        p = p / hookpoint
    if kind == "sae_lens" or (kind is None and (p / "sae_weights.safetensors").exists()):
        return _load_sae_lens(p)
    if kind == "sparsify" or (kind is None and (p / "sae.safetensors").exists()):
        return _load_sparsify(p)
    if p.suffix == ".npz" or (p / "params.npz").exists():
        return _load_npz(p if p.suffix == ".npz" else p / "params.npz")
    subs = sorted(q.name for q in p.iterdir() if q.is_dir()) if p.is_dir() else []
    hint = f" (it has sub-folders {', '.join(subs[:5])}: pass the hookpoint)" if subs else ""
    raise UserError(f"dictionary {path}: unknown format{hint} -- expected cfg.json + sae_weights.safetensors (sae-lens), cfg.json + sae.safetensors (sparsify), params.npz (Gemma Scope) or final_config.yaml + model_<step>.pth (SPD)")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing -- a dictionary folder needs its cfg.json") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}) -- restore the file") from None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.exists():
        raise UserError(f"{path} is missing -- the dictionary folder is incomplete")
    try:
        return load_file(str(path))
    except Exception as e:
        raise UserError(f"{path} is corrupt or not safetensors ({type(e).__name__}: {str(e)[:80]}) -- re-download or re-save it") from None


def _need(t: dict, name: str, path: Path) -> Tensor:
    if name not in t:
        raise UserError(f"{path} has no tensor {name!r} (has {', '.join(sorted(t))}) -- the file does not match its cfg.json architecture")
    return t[name].float()


def _load_sae_lens(p: Path) -> Dictionary:
    cfg = _read_json(p / "cfg.json")
    t = _read_safetensors(p / "sae_weights.safetensors")
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
    W_enc = _need(t, "W_enc", p)
    d_in, L = W_enc.shape
    if cfg.get("d_in") not in (None, d_in) or cfg.get("d_sae") not in (None, L):
        raise UserError(f"{p}: cfg.json says d_in={cfg.get('d_in')}, d_sae={cfg.get('d_sae')} but W_enc is {tuple(W_enc.shape)} -- the weights do not belong to this config")
    apply_b_dec = bool(cfg.get("apply_b_dec_to_input", not is_transcoder)) and not is_transcoder
    norm = cfg.get("normalize_activations", "none")
    if norm is True:
        norm = "expected_average_only_in"
    scale = 1.0
    if norm == "expected_average_only_in":
        scaler = p / "activation_scaler.json"
        if scaler.exists():
            scale = float(_read_json(scaler)["scaling_factor"])
        norm = "none"
    if norm not in ("none", None, False, "constant_norm_rescale", "layer_norm"):
        raise UserError(f"{p / 'cfg.json'}: normalize_activations={norm!r} is not supported")
    W_dec = t.get("W_dec")
    d = Dictionary(
        path=str(p), kind=f"sae_lens:{arch}", hookpoint=hook, W_enc=W_enc,
        b_enc=_need(t, "b_enc", p) if arch != "gated" else None,
        b_dec_in=_need(t, "b_dec", p) if apply_b_dec else None,
        threshold=_need(t, "threshold", p) if arch in ("jumprelu", "jumprelu_transcoder") else None,
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
        d.b_gate, d.b_mag, d.r_mag = _need(t, "b_gate", p), _need(t, "b_mag", p), _need(t, "r_mag", p)
    return d


def _load_sparsify(p: Path) -> Dictionary:
    cfg = _read_json(p / "cfg.json")
    t = _read_safetensors(p / "sae.safetensors")
    enc = _need(t, "encoder.weight", p)  # [L, d_in]
    L, d_in = enc.shape
    act = cfg.get("activation", "topk")
    if act != "topk":
        raise UserError(f"{p / 'cfg.json'}: sparsify activation {act!r} is not supported -- only topk")
    transcoder = bool(cfg.get("transcode", False))
    return Dictionary(
        path=str(p), kind="sparsify:topk" + (":transcoder" if transcoder else ""), hookpoint=p.name,
        W_enc=enc.T.contiguous(), b_enc=_need(t, "encoder.bias", p),
        b_dec_in=None if transcoder else _need(t, "b_dec", p), threshold=None, activation="topk",
        k=int(cfg["k"]), W_dec=t["W_dec"].float() if "W_dec" in t else None, d_in=d_in, n_latents=L,
        transcoder=transcoder,
    )


def _load_npz(p: Path) -> Dictionary:
    import numpy as np

    try:
        z = np.load(p)
        t = {k.replace("w_", "W_", 1) if k.startswith("w_") else k: torch.from_numpy(z[k]).float() for k in z.files}
    except Exception as e:
        raise UserError(f"{p} is not a readable .npz ({type(e).__name__}) -- re-download it") from None
    W_enc = _need(t, "W_enc", p)
    d_in, L = W_enc.shape
    return Dictionary(
        path=str(p), kind="gemma_scope:jumprelu", hookpoint=None, W_enc=W_enc, b_enc=_need(t, "b_enc", p),
        b_dec_in=None, threshold=_need(t, "threshold", p), activation="jumprelu", k=0,
        W_dec=t.get("W_dec"), d_in=d_in, n_latents=L,
    )
