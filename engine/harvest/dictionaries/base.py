"""`Dictionary`: the one internal form of every sparse dictionary, and its encode.

  W_enc [d_in, L], b_enc [L], b_dec_in [d_in] or None (subtracted from the input),
  threshold [L] or None, activation in {relu, jumprelu, topk, gated, identity, spd_ci},
  k (TopK), an input transform (scale, per-token norm rescale or layer norm),
  and, for the logit lens, W_dec [L, d_out].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.core.errors import UserError
from engine.harvest.firings import FIRINGS_PER_TOKEN, Firings, from_rows, rows_of_sorted, spill_slots, strongest

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
    "SPD causal-importance MLP: (W, b) per layer, GELU between (spd.py)."
    ci_type: str = ""
    "SPD ci_fn_type: shared_mlp | mlp | vector_mlp."
    ci_sigmoid: str = ""
    "SPD CI squashing: clamp | sigmoid."
    latent_ids: Tensor | None = None
    "[L'] original indices when only a subset is harvested (see subset)."
    _select: Tensor | None = None
    "TopK subsets: columns kept after the full selection."
    firings_per_token: int = FIRINGS_PER_TOKEN
    "Non-TopK encodes keep this many of a token's strongest firings (engine.harvest.firings)."
    revision: str | None = None
    "Hub commit the files were resolved at (dictionaries given by name, hub.py); None for local folders."

    @classmethod
    def from_weights(cls, W_enc: Tensor, b_enc: Tensor, *, activation: str = "relu", k: int = 0, b_dec: Tensor | None = None,
                     threshold: Tensor | None = None, W_dec: Tensor | None = None, name: str = "live",
                     hookpoint: str | None = None) -> Dictionary:
        """A Dictionary over existing tensors, not copied: W_enc [d_in, L], b_enc [L], b_dec [d_in] (subtracted from
        the input) or None, threshold [L] (jumprelu), W_dec [L, d_out]. Built on the detached parameters of an SAE
        being trained (`sae.W_enc.detach()`), every encode reads the weights as the optimizer left them, since its
        steps update parameters in place."""
        if activation not in ("relu", "jumprelu", "topk"):
            raise UserError(f"Dictionary.from_weights: activation {activation!r} -- use relu, jumprelu or topk")
        if activation == "topk" and k < 1:
            raise UserError("Dictionary.from_weights: activation topk needs k >= 1 -- pass k=")
        d_in, L = W_enc.shape
        return cls(name, f"weights:{activation}", hookpoint, W_enc, b_enc, b_dec, threshold, activation, k, W_dec, d_in, L)

    def randomized(self, seed: int) -> Dictionary:
        """The same architecture with random weights (delphi's --random control), deterministic in `seed`:
        every latent's encoder column and decoder row point in a random direction (i.i.d. Gaussian) with the
        norm the trained one had, so activation scales, biases, JumpReLU thresholds, k and the input transform
        stay as trained and firing rates stay comparable; SPD's CI MLP weights are redrawn with each tensor's
        own standard deviation. Raw neurons have no weights to randomize."""
        if self.activation == "identity":
            raise UserError(f"--random-dictionary: {self.path} is raw neurons, which have no weights to randomize -- drop the flag")
        if self.latent_ids is not None:
            raise UserError("--random-dictionary applies before --latents selects a subset -- randomize the whole dictionary")
        g = torch.Generator().manual_seed(seed)

        def like(t: Tensor, dim: int | None) -> Tensor:
            r = torch.randn(t.shape, generator=g, dtype=torch.float64)
            if dim is None:
                return (r * t.double().std()).to(t.dtype)
            return (r / r.norm(dim=dim, keepdim=True).clamp(min=1e-12) * t.double().norm(dim=dim, keepdim=True)).to(t.dtype)

        if self.W_enc is not None:
            self.W_enc = like(self.W_enc, 0)  # [d_in, L]: one column per latent
        if self.W_dec is not None:
            self.W_dec = like(self.W_dec, 1)  # [L, d_out]: one row per latent
            if self.decoder_norm_scale is not None:
                self.decoder_norm_scale = self.W_dec.float().norm(dim=1)  # unchanged up to rounding: norms are kept
        if self.ci_layers is not None:
            self.ci_layers = [(like(W, None), b) for W, b in self.ci_layers]
        self.kind += ":random"
        return self

    def subset(self, ids: list[int]) -> Dictionary:
        """Keep only latents `ids`: encode cost and all state memory scale with the subset
        (TopK still ranks against all latents, so only its state shrinks)."""
        if not ids:
            return self
        if max(ids) >= self.n_latents:
            raise UserError(f"--latents: index {max(ids)} is out of range for {self.path} ({self.n_latents} latents)")
        sel = torch.tensor(ids, dtype=torch.int64)
        self.latent_ids = sel
        if self.activation in ("topk", "spd_ci", "identity"):
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
        from kernels.encode_pack import encode_pack, sort_firings

        xp = self.prepare(x).contiguous()  # input transform and b_dec subtraction, as the reference
        N = len(xp)
        P = min(self.k, self.n_latents) if self.activation == "topk" else min(self.firings_per_token, self.n_latents)
        spill = 0 if self.activation == "topk" else spill_slots(N, P, self.n_latents)  # TopK never exceeds k
        C = N * P + spill  # rows + spill
        f = encode_pack(xp, self.W_enc.float().contiguous(), self.b_enc.float().contiguous(), threshold=self.threshold,
                        activation=self.activation, k=self.k, capacity=C)
        dropped = (f.count - C).clamp(min=0)  # on device: the kernel's excess past its C slots
        f = sort_firings(f)
        return rows_of_sorted(f.tok, f.lat, f.val, N, P, spill, dropped)

    def _encode_all(self, x: Tensor) -> Tensor:
        x = self.prepare(x)
        if self.activation == "identity":
            return x.clamp(min=0)
        if self.activation == "spd_ci":
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
        """[N, d_in] -> the batch's firings in fixed slots (engine.harvest.firings): no host sync.

        Fast path (chosen once by kernels.dispatch: CUDA + Triton, or AUTOINTERP_KERNELS=triton):
        the fused Triton encode+pack, which never writes the dense [N, L] activations.
        Otherwise TopK takes its k winners per token straight from the pre-activations; subset-TopK
        and the other activations keep the `firings_per_token` strongest of the dense reference."""
        if self._kernel_ok(x):
            return self._encode_kernel(x)
        if self.activation == "topk" and self._select is None:
            pre = self.prepare(x) @ self.W_enc.float() + self.b_enc.float()  # [N, L]
            if self.decoder_norm_scale is not None:
                pre = pre * self.decoder_norm_scale
            val, idx = pre.topk(self.k, dim=1)  # [N, k]
            return from_rows(idx, val)
        return strongest(self.encode_dense(x), self.firings_per_token)


def causal_importance(d, x: Tensor) -> Tensor:
    """SPD: [N, d_in] module inputs -> [N, C] causal importance in [0, 1] (torch reference)."""
    gelu = torch.nn.functional.gelu
    last = len(d.ci_layers) - 1
    if d.ci_type == "shared_mlp":
        h = x
        for i, (W, b) in enumerate(d.ci_layers):
            h = h @ W + b
            h = gelu(h) if i < last else h
    else:
        for i, (W, b) in enumerate(d.ci_layers):  # W [C, in, out]
            if i == 0 and d.ci_type == "vector_mlp":
                h = torch.einsum("ni,cio->nco", x, W) + b  # every component reads the whole input
            elif i == 0:
                h = torch.einsum("nc,co->nco", x @ d.W_enc, W[:, 0, :]) + b  # scalar x.V_c per component
            else:
                h = torch.einsum("nci,cio->nco", h, W) + b
            h = gelu(h) if i < last else h
        h = h[..., 0]  # [N, C]
    return h.clamp(0, 1) if d.ci_sigmoid == "clamp" else torch.sigmoid(h)
