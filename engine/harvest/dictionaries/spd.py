"""SPD (goodfire-ai/spd) runs as dictionaries: one per decomposed module, latents = components.

An SPD run folder holds `final_config.yaml` and checkpoints `model_<step>.pth`, each a
`torch.save` of the whole ComponentModel state dict. What the engine needs from it, per
decomposed module `path` (dots written as dashes in the keys):

    _components.<path>.V    [d_in, C]    component read-in vectors
    _components.<path>.U    [C, d_out]   component write-out vectors (kept for the logit lens)
    _ci_fns.<path>.layers.<2i>.{W,b}     the causal-importance MLP, GELU between layers

and from the config: `ci_fn_type`, `sigmoid_type` and `sampling`. CI functions are layerwise,
so each module's CI depends only on that module's *input*, which the engine captures with a
forward pre-hook (`Dictionary.transcoder = True`), and the forward can stop after the last
decomposed module:

    ci_fn_type   input to the MLP                        layer weights
    shared_mlp   x [N, d_in]                             W [in, out], b [out]
    mlp          x @ V, one scalar per component [N, C]  W [C, in, out], b [C, out]
    vector_mlp   x, one MLP per component                W [C, in, out], b [C, out]

CI = sigmoid_type's lower function of the MLP output (leaky_hard / hard: clamp to [0, 1];
normal: sigmoid). A component fires where CI > `ci_threshold` (default 0, SPD's current
harvester; v1 used 1e-6) and its activation is its CI. `sampling: binomial` runs add
uniform noise before clamping in SPD's own harvest; the engine is deterministic and
skips it. Global CI functions (`global_*` on SPD's dev branch) read every module at once
and, for the transformer variants, later tokens; they are refused with a clear error.
Embedding components (token-id input) are refused as well.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import torch
from torch import Tensor

from engine.core.errors import UserError
from engine.harvest.dictionaries.base import Dictionary

CI_TYPES = ("shared_mlp", "mlp", "vector_mlp")
SIGMOIDS = {"leaky_hard": "clamp", "lower_leaky_hard": "clamp", "hard": "clamp", "normal": "sigmoid"}
_DEPRECATED = (("_gates.", "_ci_fns."),)


def is_spd_run(path: str | Path) -> bool:
    p = Path(path)
    return (p.is_dir() and (p / "final_config.yaml").exists()) or (p.suffix == ".pth" and (p.parent / "final_config.yaml").exists())


def _checkpoint(p: Path) -> Path:
    if p.suffix == ".pth":
        return p
    found = sorted(p.glob("model_*.pth"), key=lambda q: int(re.sub(r"\D", "", q.stem) or 0))
    if not found:
        raise UserError(f"SPD run {p} has final_config.yaml but no model_<step>.pth checkpoint -- copy the checkpoint into the folder")
    return found[-1]


def read_run(path: str | Path) -> tuple[dict, dict[str, Tensor], Path]:
    """-> (config, state dict with deprecated keys renamed, checkpoint path)."""
    import yaml

    p = Path(path)
    folder = p.parent if p.suffix == ".pth" else p
    try:
        cfg = yaml.safe_load((folder / "final_config.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{folder / 'final_config.yaml'} is not valid YAML ({str(e).splitlines()[0]}) -- restore the file") from None
    ckpt = _checkpoint(p)
    try:
        try:  # memory-mapped: the frozen target model in the checkpoint is never read into RAM
            sd = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # pre-zipfile (legacy) format cannot be mapped
            sd = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any read failure of a user file becomes one line
        raise UserError(f"{ckpt} is not a readable torch checkpoint ({type(e).__name__}) -- re-download it") from None
    if not isinstance(sd, dict):
        raise UserError(f"{ckpt} holds a {type(sd).__name__}, not a state dict -- give the ComponentModel checkpoint")
    for key in list(sd):
        new = key
        for old, repl in _DEPRECATED:
            new = new.replace(old, repl)
        if new.endswith((".components.U", ".components.V")):  # old layout: target_model.<path>.components.V
            mod = new.removeprefix("patched_model.").removeprefix("target_model.").rsplit(".components.", 1)[0]
            new = f"_components.{mod.replace('.', '-')}.{new[-1]}"
        if new != key:
            sd[new] = sd.pop(key)
    return cfg, sd, ckpt


def modules(sd: dict[str, Tensor]) -> list[str]:
    """Decomposed module paths (dots restored), sorted as SPD sorts them."""
    return sorted(k[len("_components."):-2].replace("-", ".") for k in sd if k.startswith("_components.") and k.endswith(".V"))


def load_spd_modules(path: str | Path, hookpoints: list[str] | None = None, ci_threshold: float = 0.0) -> list:
    """One Dictionary per named module (all decomposed modules when none are named), reading the run once."""
    cfg, sd, ckpt = read_run(path)
    return [_build(path, cfg, sd, ckpt, h, ci_threshold) for h in (hookpoints or modules(sd))]


def _pick(mods: list[str], hookpoint: str | None, path: Path) -> str:
    if not mods:
        raise UserError(f"SPD checkpoint {path} has no _components.*.V tensors -- is it a ComponentModel state dict?")
    if hookpoint is None:
        if len(mods) == 1:
            return mods[0]
        raise UserError(f"SPD run {path} decomposes {len(mods)} modules -- pass --hookpoints with some of: {', '.join(mods[:8])}")
    h = hookpoint.removesuffix("@in")
    hits = [m for m in mods if m == h] or [m for m in mods if m.endswith("." + h) or h.endswith("." + m)] or [m for m in mods if fnmatch.fnmatch(m, h)]
    if len(hits) != 1:
        what = "matches several" if hits else "is not one"
        raise UserError(f"hookpoint {hookpoint} {what} of the SPD run's modules -- use one of: {', '.join(mods[:8])}")
    return hits[0]


def load_spd(path: str | Path, hookpoint: str | None = None, ci_threshold: float = 0.0):
    """SPD run folder (or its .pth) -> Dictionary over module `hookpoint`'s components."""
    return _build(path, *read_run(path), hookpoint, ci_threshold)


def _build(path, cfg: dict, sd: dict[str, Tensor], ckpt: Path, hookpoint: str | None, ci_threshold: float):
    mod = _pick(modules(sd), hookpoint, Path(path))
    key = mod.replace(".", "-")
    ci_type = cfg.get("ci_fn_type") or cfg.get("gate_type") or "vector_mlp"  # SPD's default and old key
    if ci_type not in CI_TYPES:
        raise UserError(f"{path}: ci_fn_type {ci_type!r} is not supported -- supported (layerwise): {', '.join(CI_TYPES)}")
    sigmoid = cfg.get("sigmoid_type", "leaky_hard")
    if sigmoid not in SIGMOIDS:
        raise UserError(f"{path}: sigmoid_type {sigmoid!r} is not supported -- supported: {', '.join(SIGMOIDS)}")
    if any(s in mod for s in ("wte", "embed")) and ci_type == "mlp":
        raise UserError(f"SPD module {mod} is an embedding (token-id input) -- embedding components are not supported; pick a Linear module")
    V, U = sd[f"_components.{key}.V"].float(), sd[f"_components.{key}.U"].float()
    layers = []
    for i in range(0, 1 << 16, 2):  # Sequential: Linear at even indices, GELU at odd ones
        W = sd.get(f"_ci_fns.{key}.layers.{i}.W")
        if W is None:
            break
        layers.append((W.float(), sd[f"_ci_fns.{key}.layers.{i}.b"].float()))
    if not layers:
        raise UserError(f"{ckpt} has no _ci_fns.{key}.layers.*.W -- the checkpoint lacks this module's causal-importance function")
    d_in, C = V.shape
    declared = {m.get("module_pattern"): m.get("C") for m in cfg.get("module_info") or [] if isinstance(m, dict)}
    for pat, c in declared.items():
        if pat and c and fnmatch.fnmatch(mod, pat) and int(c) != C:
            raise UserError(f"{path}: module_info says C={c} for {pat} but V of {mod} has {C} columns -- checkpoint and config differ")
    sampling = cfg.get("sampling", "continuous")
    return Dictionary(
        path=str(path), kind=f"spd:{ci_type}" + (":binomial-as-continuous" if sampling == "binomial" else ""),
        hookpoint=mod, W_enc=V, b_enc=None, b_dec_in=None, threshold=torch.full((C,), float(ci_threshold)),
        activation="spd_ci", k=0, W_dec=U, d_in=d_in, n_latents=C, transcoder=True,
        ci_layers=layers, ci_type=ci_type, ci_sigmoid=SIGMOIDS[sigmoid],
    )
