"""SPD runs as dictionaries: checkpoints laid out exactly as goodfire-ai/spd saves them.

The `spd` package is not on PyPI, so the test rebuilds SPD's module tree (ParallelLinear /
Linear with parameters W, b; nn.Sequential with GELU between; ModuleDicts `_components`
and `_ci_fns` keyed by the module path with dots as dashes) and saves its state_dict():
key names come from the module structure, as in SPD. The same modules, run the way
SPD's calc_causal_importances runs them, are the reference for our CI encode.
"""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from engine.core.errors import UserError
from engine.core.schemas import ComponentData, RunConfig
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL
from engine.harvest.dictionaries import load_dictionary
from engine.harvest.model import load_model
from engine.harvest.run import main as harvest_main
from engine.harvest.sources import HookedModel
from tests.helpers.firings import fired

UP, DOWN = "model.layers.1.mlp.up_proj", "model.layers.2.mlp.down_proj"
SHAPES = {UP: (128, 384), DOWN: (384, 128)}  # embedded model: d_model 128, d_mlp 384


class ParallelLinear(nn.Module):  # SPD: W [C, in, out], b [C, out]
    def __init__(self, C, i, o):
        super().__init__()
        self.W, self.b = nn.Parameter(torch.randn(C, i, o) / i**0.5), nn.Parameter(torch.randn(C, o) * 0.3)

    def forward(self, x):  # "... C d_in, C d_in d_out -> ... C d_out" (C broadcasts from 1)
        return torch.einsum("...ci,cio->...co", x.expand(*x.shape[:-2], self.W.shape[0], x.shape[-1]), self.W) + self.b


class Linear(nn.Module):  # SPD: W [in, out], b [out]
    def __init__(self, i, o):
        super().__init__()
        self.W, self.b = nn.Parameter(torch.randn(i, o) / i**0.5), nn.Parameter(torch.randn(o) * 0.3)

    def forward(self, x):
        return x @ self.W + self.b


class CiFn(nn.Module):
    def __init__(self, kind, C, d_in, hidden):
        super().__init__()
        self.kind, self.layers = kind, nn.Sequential()
        dims = [1 if kind == "mlp" else d_in, *hidden]
        for a, b in zip(dims, dims[1:]):
            self.layers.append(Linear(a, b) if kind == "shared_mlp" else ParallelLinear(C, a, b))
            self.layers.append(nn.GELU())
        self.layers.append(Linear(dims[-1], C) if kind == "shared_mlp" else ParallelLinear(C, dims[-1], 1))
        with torch.no_grad():  # bias the last layer down: components fire on a minority of tokens
            self.layers[-1].b -= 1.0

    def forward(self, x, V):
        if self.kind == "shared_mlp":
            return self.layers(x)
        inp = (x @ V)[..., None] if self.kind == "mlp" else x[..., None, :]
        return self.layers(inp)[..., 0]


class Components(nn.Module):
    def __init__(self, d_in, d_out, C):
        super().__init__()
        self.V, self.U = nn.Parameter(torch.randn(d_in, C) / d_in**0.5), nn.Parameter(torch.randn(C, d_out) / C**0.5)


class ComponentModel(nn.Module):
    def __init__(self, kind, Cs, hidden):
        super().__init__()
        self._components = nn.ModuleDict({m.replace(".", "-"): Components(*SHAPES[m], C) for m, C in Cs.items()})
        self._ci_fns = nn.ModuleDict({m.replace(".", "-"): CiFn(kind, C, SHAPES[m][0], hidden) for m, C in Cs.items()})

    def ci(self, module, x):
        key = module.replace(".", "-")
        return self._ci_fns[key](x, self._components[key].V).clamp(0, 1)  # lower_leaky_hard forward


def write_run(path, kind="shared_mlp", Cs=None, hidden=(16,), seed=0, sampling="continuous", with_target=True):
    torch.manual_seed(seed)
    Cs = Cs or {UP: 24}
    cm = ComponentModel(kind, Cs, list(hidden))
    sd = dict(cm.state_dict())
    if with_target:  # SPD checkpoints carry the frozen target model too
        from transformers import AutoModelForCausalLM

        sd.update({f"target_model.{k}": v for k, v in AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL).state_dict().items()})
    path.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path / "model_100.pth")
    info = "\n".join(f'  - module_pattern: "{m}"\n    C: {C}' for m, C in Cs.items())
    (path / "final_config.yaml").write_text(
        f"seed: 0\nci_fn_type: {kind}\nci_fn_hidden_dims:\n" + "".join(f"- {h}\n" for h in hidden)
        + f"sampling: {sampling}\nsigmoid_type: leaky_hard\nmodule_info:\n{info}\nidentity_module_info: null\n"
        + "pretrained_model_class: transformers.LlamaForCausalLM\n")
    return cm


def module_inputs(module, n_tokens=96):
    """Real inputs of `module` on the embedded model: [n_tokens, d_in]."""
    model, tok, _ = load_model(DEFAULT_MODEL, "cpu", "float32")
    text = open(__file__).read()[:2000]
    ids = torch.tensor([tok(text)["input_ids"][:n_tokens]])
    hm = HookedModel(model, [module + "@in"])
    acts, _ = hm.run(ids, need_logits=False)
    hm.close()
    return acts[module + "@in"][0]


@pytest.mark.parametrize("kind,hidden", [("shared_mlp", (16,)), ("mlp", (8, 4)), ("vector_mlp", (6,))])
def test_ci_encode_equals_spd_modules(tmp_path, kind, hidden):
    cm = write_run(tmp_path / "run", kind, hidden=hidden, with_target=False)
    d = load_dictionary(str(tmp_path / "run"), UP)
    assert (d.kind, d.d_in, d.n_latents, d.transcoder, d.hookpoint) == (f"spd:{kind}", 128, 24, True, UP)
    x = module_inputs(UP)
    with torch.no_grad():
        ref = cm.ci(UP, x)
    got = d.encode_dense(x)
    torch.testing.assert_close(got, torch.where(ref > 0, ref, 0.0), rtol=1e-5, atol=1e-6)
    fires = (ref > 0).float().mean().item()
    assert 0.02 < fires < 0.9, fires  # a real mix of firing and silent positions
    f = d.encode(x)  # firings = CI > threshold, value = CI
    assert len(fired(f)[0]) == int((ref > 0).sum())
    d5 = load_dictionary(str(tmp_path / "run"), UP, ci_threshold=0.5)
    assert int((d5.encode_dense(x) > 0).sum()) == int((ref > 0.5).sum())


def test_harvest_every_module_of_a_run_in_one_pass(tmp_path):
    """CLI: MODEL SPD_RUN harvests all decomposed modules; counts equal brute force."""
    cm = write_run(tmp_path / "run", Cs={UP: 24, DOWN: 16})
    out = tmp_path / "out"
    harvest_main([DEFAULT_MODEL, str(tmp_path / "run"), "--dataset", DEFAULT_DATASET, "--out", str(out), "--n-batches", "2",
                  "--batch-size", "4", "--context-length", "64", "--top-k", "5", "--n-random", "4", "--window", "3", "--no-output-stats"])
    rc = msgspec.json.decode((out / "harvest" / "config.json").read_bytes(), type=RunConfig)
    assert [(h.name, h.offset, h.n_latents) for h in rc.hookpoints] == [(UP, 0, 24), (DOWN, 24, 16)]  # SPD's sorted module order
    tokens = torch.from_numpy(np.fromfile(out / "harvest" / "tokens.bin", dtype=np.int32).reshape(rc.n_sequences, rc.context_length).astype(np.int64))
    model, tok, _ = load_model(DEFAULT_MODEL, "cpu", "float32")
    hm = HookedModel(model, [UP + "@in", DOWN + "@in"])
    acts, _ = hm.run(tokens, need_logits=False)
    hm.close()
    valid = (tokens != tok.bos_token_id).reshape(-1)
    with torch.no_grad():
        ci = torch.cat([cm.ci(UP, acts[UP + "@in"].reshape(-1, 128)), cm.ci(DOWN, acts[DOWN + "@in"].reshape(-1, 384))], 1)
    ci = ci * valid[:, None]
    stats = load_file(str(out / "harvest" / "stats.safetensors"))
    assert torch.equal(stats["count"], (ci > 0).sum(0))
    torch.testing.assert_close(stats["act_max"], ci.amax(0))
    comps = [msgspec.json.decode(line, type=ComponentData) for line in (out / "harvest" / "components.jsonl").read_bytes().splitlines()]
    assert sorted(c.latent for c in comps) == torch.nonzero(stats["count"]).flatten().tolist()  # one line per latent that fired
    busiest = max(comps, key=lambda c: c.firing_count)
    top = max(busiest.top_examples, key=lambda e: e.activation)
    assert top.activation == pytest.approx(float(ci[:, busiest.latent].max()), rel=1e-5)


def test_named_modules_and_bad_runs(tmp_path):
    write_run(tmp_path / "run", Cs={UP: 24, DOWN: 16}, with_target=False)
    run = str(tmp_path / "run")
    assert load_dictionary(run, "layers.2.mlp.down_proj").hookpoint == DOWN  # HF path without the model. prefix
    assert load_dictionary(run, DOWN + "@in").n_latents == 16
    with pytest.raises(UserError, match="decomposes 2 modules -- pass --hookpoints"):
        load_dictionary(run)
    with pytest.raises(UserError, match="is not one of the SPD run's modules"):
        load_dictionary(run, "model.layers.3.mlp.up_proj")
    cfg = (tmp_path / "run" / "final_config.yaml").read_text()
    (tmp_path / "run" / "final_config.yaml").write_text(cfg.replace("shared_mlp", "global_shared_transformer"))
    with pytest.raises(UserError, match="ci_fn_type 'global_shared_transformer' is not supported"):
        load_dictionary(run, UP)
    (tmp_path / "run" / "final_config.yaml").write_text(cfg.replace("C: 24", "C: 25"))
    with pytest.raises(UserError, match="checkpoint and config differ"):
        load_dictionary(run, UP)
    (tmp_path / "run" / "final_config.yaml").write_text(cfg)
    (tmp_path / "run" / "model_100.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable torch checkpoint"):
        load_dictionary(run, UP)
    (tmp_path / "run" / "model_100.pth").unlink()
    with pytest.raises(UserError, match="no model_<step>.pth"):
        load_dictionary(run, UP)


def test_old_key_names_are_remapped(tmp_path):
    """Checkpoints from before SPD renamed _gates -> _ci_fns and moved components under _components."""
    cm = write_run(tmp_path / "run", with_target=False)
    sd = torch.load(tmp_path / "run" / "model_100.pth", weights_only=True)
    old = {}
    for k, v in sd.items():
        if k.startswith("_components.") and k.endswith((".V", ".U")):
            mod = k[len("_components."):-2].replace("-", ".")
            old[f"patched_model.{mod}.components.{k[-1]}"] = v
        else:
            old[k.replace("_ci_fns.", "_gates.")] = v
    torch.save(old, tmp_path / "run" / "model_200.pth")  # the newest step is the one loaded
    d = load_dictionary(str(tmp_path / "run"), UP)
    x = module_inputs(UP, 32)
    with torch.no_grad():
        ref = cm.ci(UP, x)
    torch.testing.assert_close(d.encode_dense(x), torch.where(ref > 0, ref, 0.0), rtol=1e-5, atol=1e-6)
