"""`engine.harvest`'s settings; the field docstrings are its --help."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.cli import cli
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL
from engine.harvest.firings import FIRINGS_PER_TOKEN


def _half_window(example_ctx_len: str) -> int:
    """delphi's --example_ctx_len counts the whole example; --window counts one side of the firing."""
    return int(example_ctx_len) // 2


@dataclass
class HarvestArgs:
    """One `engine.harvest` run (delphi's spellings, e.g. --n_tokens, are accepted where they mean the same)."""

    model: str = cli(DEFAULT_MODEL, positional="?")
    "HF causal LM: local folder or hub name."
    dictionaries: list[str] = cli(default_factory=list, positional="*")
    "Dictionary per hookpoint (sae-lens / sparsify folder, params.npz, neurons:<d>, SPD run folder: one for all its modules). Default: the embedded SAE."
    hookpoints: list[str] | None = None
    "Hookpoints (TransformerLens names or HF module paths); default: from the dictionaries' configs."
    dataset: str = cli(DEFAULT_DATASET, aliases=("--dataset_repo",))
    "jsonl/json/txt(.gz), parquet, arrow, datasets folder or hub name."
    dataset_column: str = cli("text", aliases=("--dataset_column",))
    "Column holding the text."
    dataset_split: str = cli("train", aliases=("--dataset_split",))
    "Split for hub/datasets-folder sources."
    n_tokens: int = cli(200_000, aliases=("--n_tokens",))
    "Token positions to process (rounded up to whole sequences)."
    n_batches: int = 0
    "If > 0, process exactly this many batches instead of --n-tokens."
    batch_size: int = cli(16, aliases=("--batch_size",))
    "Sequences per forward pass."
    context_length: int = cli(128, aliases=("--cache_ctx_len",))
    "Tokens per sequence."
    out: str = cli("runs/default", aliases=("--name",))
    "Run directory; results go to OUT/harvest."
    top_k: int = 20
    "Max-activating examples per latent."
    n_random: int = 40
    "Uniformly sampled examples per latent."
    window: int = cli(16, convert={"--example_ctx_len": _half_window})
    "Tokens kept each side of a firing (delphi's --example_ctx_len L means --window L/2)."
    filter_bos: bool = cli(True, aliases=("--filter_bos",))
    "Exclude BOS positions from all statistics."
    output_stats: bool = True
    "Run the full forward pass for next-token statistics (off: stop after the last hookpoint)."
    checkpoint_every: int = 0
    "Checkpoint every N batches, and at the end (0: none; a run stopped by Ctrl-C or bad data still saves one)."
    final_checkpoint: bool | None = None
    "Checkpoint the end state (the whole accumulator, e.g. 85 MB for the default) so a later --resume reloads it instead of recomputing. Default (None): only with --checkpoint-every N > 0. A finished run without one removes its stale checkpoint."
    resume: bool = False
    "Continue from OUT/harvest/checkpoint."
    device: str = "auto"
    "cpu, cuda, cuda:1 or auto."
    dtype: str = "float32"
    "Model dtype: float32, bfloat16, float16."
    seed: int = 0
    "Seed of the reservoir sampling hash."
    latents: str = ""
    "Only these latents of the first dictionary: 1,5,9-20 or a JSON file with feature_indices (and scores)."
    max_latents: int = cli(0, aliases=("--max_latents",))
    "If > 0 and --latents is not given, only the first N latents of the first dictionary (delphi's --max_latents)."
    spd_ci_threshold: float = 0.0
    "SPD runs: a component fires where its causal importance exceeds this."
    latent_parallel: bool = False
    "Under torchrun: every rank reads every batch and keeps latents [r L/N, (r+1) L/N) (state memory / N, forward x N)."
    firings_per_token: int = FIRINGS_PER_TOKEN
    "Non-TopK dictionaries: firings kept per token (the strongest); any excess is counted and reported at the end."
    pair_budget_mb: int = 1024
    "Above this size the token and co-occurrence tables switch from dense to bounded sketches."


