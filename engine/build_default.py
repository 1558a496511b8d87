"""Rebuild the embedded default: corpus, tokenizer, language model and sparse dictionary.

Everything the demo needs ships in `engine/assets/default/`; this script is how
it was made, so anyone can reproduce or vary it:

1. corpus: Python standard-library source (library modules and a slice of the
   test suite), one document per file, written to `corpus.jsonl.gz` with a
   `kind` field ("library" / "test") used by the domain-selection example;
2. tokenizer: byte-level BPE trained on the corpus (`tokenizers`), vocab 4096;
3. model: a 4-layer Llama-architecture causal LM (d_model 128) trained from
   scratch, saved in HF format (config.json + model.safetensors + tokenizer.json);
4. dictionary: a TopK SAE (1024 latents, k=16) trained on the residual stream
   after block 2 (`blocks.2.hook_resid_post` = HF `model.layers.2`), saved in
   sae-lens format (cfg.json + sae_weights.safetensors).

Run: `python -m engine.build_default --out engine/assets/default` (about 10 min
on 2 CPU cores with the defaults; `--steps` and `--sae-steps` trade quality for time).
The exact corpus depends on the Python version's standard library, which is
recorded in `build_info.json`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

LAYER = 2


@dataclass
class BuildConfig:
    out: str = "engine/assets/default"
    "Output folder."
    vocab_size: int = 4096
    "BPE vocabulary size (including special tokens)."
    d_model: int = 128
    "Residual stream width."
    n_layers: int = 4
    "Transformer blocks."
    n_heads: int = 4
    "Attention heads."
    d_mlp: int = 384
    "MLP hidden width."
    seq_len: int = 128
    "Training context length."
    batch_size: int = 32
    "Sequences per training step."
    steps: int = 2500
    "LM training steps."
    lr: float = 3e-3
    "Peak learning rate (cosine decay, 100 warm-up steps)."
    d_sae: int = 1024
    "Dictionary latents."
    sae_k: int = 16
    "Active latents per token (TopK)."
    sae_steps: int = 3000
    "SAE training steps."
    sae_batch: int = 2048
    "Activation vectors per SAE step."
    seed: int = 0
    "Seed for everything."
    max_library_bytes: int = 2_400_000
    "Budget of library-module source text."
    max_test_bytes: int = 900_000
    "Budget of test-suite source text."


# ----------------------------------------------------------------------------- corpus


def build_corpus(cfg: BuildConfig, out: Path) -> list[dict]:
    """Library modules (top level of the stdlib) and test files, deterministic order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[dict] = []

    def take(paths, kind, budget):
        used = 0
        for p in sorted(paths):
            text = p.read_text(encoding="utf-8", errors="replace")
            if not (2_000 <= len(text) <= 120_000) or used + len(text) > budget:
                continue
            docs.append({"text": text, "path": str(p.relative_to(stdlib)), "kind": kind})
            used += len(text)

    take(stdlib.glob("*.py"), "library", cfg.max_library_bytes)
    take((stdlib / "test").glob("test_*.py"), "test", cfg.max_test_bytes)
    with gzip.open(out / "corpus.jsonl.gz", "wt", encoding="utf-8", compresslevel=9) as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    return docs


def split_docs(docs: list[dict]) -> tuple[list[dict], list[dict]]:
    """Every 10th document is held out (for the loss check), the rest trains."""
    return [d for i, d in enumerate(docs) if i % 10], [d for i, d in enumerate(docs) if i % 10 == 0]


# ----------------------------------------------------------------------------- tokenizer


def build_tokenizer(cfg: BuildConfig, docs: list[dict], out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((d["text"] for d in docs), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    fast.save_pretrained(out / "model")
    return fast


def token_stream(tokenizer, docs: list[dict]) -> torch.Tensor:
    """Documents joined as BOS doc EOS BOS doc EOS ... -> 1-D int64."""
    ids: list[int] = []
    for d in docs:
        ids += [tokenizer.bos_token_id, *tokenizer(d["text"])["input_ids"], tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.int64)


# ----------------------------------------------------------------------------- model


def build_model(cfg: BuildConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(conf)


def lr_at(step: int, total: int, peak: float) -> float:
    if step < 100:
        return peak * (step + 1) / 100
    return peak * 0.5 * (1 + math.cos(math.pi * (step - 100) / max(1, total - 100)))


def random_windows(stream: torch.Tensor, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - length, (n,), generator=gen)
    return torch.stack([stream[s : s + length] for s in starts.tolist()])  # [n, length]


@torch.no_grad()
def eval_loss(model, stream: torch.Tensor, seq_len: int, n_windows: int = 64) -> float:
    gen = torch.Generator().manual_seed(1234)
    x = random_windows(stream, n_windows, seq_len, gen)
    return float(model(input_ids=x, labels=x).loss)


def train_model(cfg: BuildConfig, model, train: torch.Tensor, held: torch.Tensor) -> dict:
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    model.train()
    t0 = time.time()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.steps, cfg.lr)
        x = random_windows(train, cfg.batch_size, cfg.seq_len, gen)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 250 == 0 or step == cfg.steps - 1:
            print(f"lm step {step:5d} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    return {"train_loss": float(loss), "heldout_loss": eval_loss(model, held, cfg.seq_len)}


# ----------------------------------------------------------------------------- SAE


@torch.no_grad()
def collect_activations(model, stream: torch.Tensor, cfg: BuildConfig, n_vectors: int) -> torch.Tensor:
    """Residual stream after block LAYER for random windows, BOS positions dropped."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    acts = []
    got = 0
    while got < n_vectors:
        x = random_windows(stream, 64, cfg.seq_len, gen)
        out = model(input_ids=x, output_hidden_states=True)
        h = out.hidden_states[LAYER + 1]  # [64, S, d]: hidden_states[0] is the embedding
        keep = x != model.config.bos_token_id
        acts.append(h[keep])
        got += int(keep.sum())
    return torch.cat(acts)[:n_vectors]


def train_sae(cfg: BuildConfig, acts: torch.Tensor) -> dict[str, torch.Tensor]:
    """TopK SAE: z = topk(relu((x - b_dec) W_enc + b_enc)); x_hat = z W_dec + b_dec."""
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    d, L = acts.shape[1], cfg.d_sae
    W_dec = torch.randn(L, d, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    params = {
        "W_enc": torch.nn.Parameter(W_dec.T.clone()),
        "b_enc": torch.nn.Parameter(torch.zeros(L)),
        "W_dec": torch.nn.Parameter(W_dec),
        "b_dec": torch.nn.Parameter(acts.median(dim=0).values.clone()),
    }
    opt = torch.optim.Adam(params.values(), lr=2e-3)
    last_fired = torch.zeros(L, dtype=torch.int64)
    var = acts.var(dim=0).sum()
    for step in range(cfg.sae_steps):
        x = acts[torch.randint(0, len(acts), (cfg.sae_batch,), generator=gen)]
        pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
        val, idx = pre.topk(cfg.sae_k, dim=1)
        z = torch.zeros_like(pre).scatter(1, idx, val.relu())
        x_hat = z @ params["W_dec"] + params["b_dec"]
        fvu = (x - x_hat).pow(2).sum(dim=1).mean() / var
        # AuxK-style revival: dead latents reconstruct the residual error.
        fired = (z > 0).any(dim=0)
        last_fired = torch.where(fired, 0, last_fired + 1)
        dead = last_fired > 200
        loss = fvu
        if dead.any():
            k_aux = min(int(dead.sum()), 64)
            aux_pre = pre.masked_fill(~dead, -torch.inf)
            a_val, a_idx = aux_pre.topk(k_aux, dim=1)
            z_aux = torch.zeros_like(pre).scatter(1, a_idx, a_val.relu())
            err = (x - x_hat).detach()
            loss = loss + (err - z_aux @ params["W_dec"]).pow(2).sum(dim=1).mean() / var / 32
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            params["W_dec"] /= params["W_dec"].norm(dim=1, keepdim=True)
        if step % 500 == 0 or step == cfg.sae_steps - 1:
            print(f"sae step {step:5d} fvu {fvu.item():.3f} dead {int(dead.sum())}", flush=True)
    return {k: v.detach().contiguous() for k, v in params.items()}, float(fvu)


def save_sae(cfg: BuildConfig, weights: dict[str, torch.Tensor], out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, out / "sae_weights.safetensors")
    sae_cfg = {
        "architecture": "topk",
        "d_in": cfg.d_model,
        "d_sae": cfg.d_sae,
        "k": cfg.sae_k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": {
            "model_name": "autointerp-engine/stdlib-llama-4l",
            "hook_name": f"blocks.{LAYER}.hook_resid_post",
            "hook_head_index": None,
            "context_size": cfg.seq_len,
            "prepend_bos": True,
            "dataset_path": "engine/assets/default/corpus.jsonl.gz",
            "model_class_name": "AutoModelForCausalLM",
            "sae_lens_version": "6.0.0",
        },
    }
    (out / "cfg.json").write_text(json.dumps(sae_cfg, indent=2))


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in BuildConfig.__dataclass_fields__.items():
        p.add_argument("--" + name.replace("_", "-"), type=type(field.default), default=field.default)
    cfg = BuildConfig(**vars(p.parse_args(argv)))
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    (out / "model").mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    docs = build_corpus(cfg, out)
    train_docs, held_docs = split_docs(docs)
    tokenizer = build_tokenizer(cfg, train_docs, out)
    train, held = token_stream(tokenizer, train_docs), token_stream(tokenizer, held_docs)
    print(f"corpus: {len(docs)} docs, {len(train)} train / {len(held)} held-out tokens", flush=True)

    model = build_model(cfg, tokenizer)
    lm = train_model(cfg, model, train, held)
    model.save_pretrained(out / "model", safe_serialization=True)

    acts = collect_activations(model, train, cfg, n_vectors=400_000)
    weights, fvu = train_sae(cfg, acts)
    save_sae(cfg, weights, out / "sae")

    info = {
        "config": asdict(cfg),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "n_docs": len(docs),
        "train_tokens": len(train),
        "heldout_tokens": len(held),
        "uniform_loss": math.log(len(tokenizer)),
        **lm,
        "sae_fvu": fvu,
        "seconds": round(time.time() - t0, 1),
    }
    (out / "build_info.json").write_text(json.dumps(info, indent=2))
    print(json.dumps({k: v for k, v in info.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    main()
