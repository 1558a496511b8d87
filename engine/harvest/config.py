"""`engine.harvest`'s settings; the field docstrings are its --help."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.cli import cli
from engine.core.errors import UserError
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL
from engine.harvest.firings import FIRINGS_PER_TOKEN
from engine.harvest.pair_counts import choose_mode
from engine.harvest.state import StateConfig
from engine.harvest.subsample import choose_rate

DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "f32": "float32",
          "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "half": "float16", "f16": "float16"}
"--dtype spellings -> the torch dtype name."


def firings_per_token(d) -> int:
    """The most firings one token can have in dictionary d (TopK: k; others: its --firings-per-token cap)."""
    if getattr(d, "activation", "") == "topk":
        return min(d.k, d.n_latents)
    return min(getattr(d, "firings_per_token", FIRINGS_PER_TOKEN), d.n_latents)


def _half_window(example_ctx_len: str) -> int:
    """delphi's --example_ctx_len counts the whole example; --window counts one side of the firing."""
    return int(example_ctx_len) // 2


@dataclass
class HarvestArgs:
    """One `engine.harvest` run (delphi's spellings, e.g. --n_tokens, are accepted where they mean the same)."""

    model: str = cli(DEFAULT_MODEL, positional="?")
    "HF causal LM: local folder or hub name."
    dictionaries: list[str] = cli(default_factory=list, positional="*")
    "Dictionary per hookpoint (sae-lens / sparsify folder, params.npz, neurons:<d>, SPD run folder: one for all its modules; or by name: sae-lens:RELEASE/SAE_ID, gemma-scope:RELEASE/layer_L/width_W/average_l0_N, OWNER/REPO[@REV][:HOOKPOINT]). Default: the embedded SAE."
    hookpoints: list[str] | None = None
    "Hookpoints (TransformerLens names or HF module paths); default: from the dictionaries' configs."
    dataset: str = cli(DEFAULT_DATASET, aliases=("--dataset_repo",))
    "jsonl/json/txt(.gz), parquet, arrow, datasets folder or hub name."
    dataset_column: str = cli("text", aliases=("--dataset_column",))
    "Column holding the text."
    dataset_split: str = cli("train", aliases=("--dataset_split",))
    "Split for hub/datasets-folder sources; a slice works too: train[:1%], test[100:200]."
    dataset_name: str = cli("", aliases=("--dataset_name",))
    "Config of an HF dataset (e.g. wikitext-103-raw-v1 for --dataset wikitext)."
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
    "Uniformly sampled examples per latent (the pool explainer and held-out examples are drawn from; its memory cost is printed before the harvest starts)."
    center_examples: bool = True
    "Example windows centred on the firing (--center-examples), or the fixed chunk of 2*window+1 tokens holding it, as delphi cuts its examples (--no-center-examples; a sequence's last chunk is shorter when 2*window+1 does not divide it)."
    one_top_per_window: bool = True
    "Top-K keeps at most one firing per latent in each chunk of 2*window+1 tokens of a sequence (delphi's rule: chunks at positions 0, 2W+1, ...), so the top examples are distinct contexts."
    window: int = cli(16, convert={"--example_ctx_len": _half_window})
    "Tokens kept each side of a firing (delphi's --example_ctx_len L means --window L/2)."
    filter_bos: bool = cli(True, aliases=("--filter_bos",))
    "Exclude the start token each sequence begins with (BOS, or EOS without a BOS) from all statistics; document-end EOS tokens still count."
    random_dictionary: bool = cli(False, aliases=("--random",))
    "Control run: every dictionary with random weights of the same shapes and norms (seeded by --seed); recorded in config.json."
    output_stats: bool = True
    "Run the full forward pass for next-token statistics (off: stop after the last hookpoint)."
    checkpoint_every: int = 0
    "Checkpoint every N batches, and at the end (0: none; a run stopped by Ctrl-C or bad data still saves one)."
    final_checkpoint: bool | None = None
    "Checkpoint the end state (the whole accumulator, e.g. 85 MB for the default) so a later --resume reloads it instead of recomputing. Default (None): only with --checkpoint-every N > 0. A finished run without one removes its stale checkpoint."
    overwrite: tuple[str, ...] = cli((), choices=("harvest",), metavar="STAGE")
    "Start afresh: move RUN's harvest (and what was built on it: explanations, scores) aside into RUN/replaced-<time>/ first (never deleted)."
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
    "Non-TopK dictionaries: firings kept in each token's row (the strongest; co-occurrence pairs come from these). The rest go to a batch-wide spill of N*P/4 slots; only what the spill cannot hold is dropped, counted and reported."
    pair_budget_mb: int = 1024
    "Above this size the token and co-occurrence tables switch from dense to bounded sketches."
    cooc_sample_rate: float = 0.0
    "Share of token positions whose co-firing pairs a sketched co-occurrence table counts (a hash of the location decides, so every split samples the same positions; counts are scaled by 1/rate with their standard error). 0 (auto): sample only when a batch would build more pairs than the device's budget (1M on a CPU, 16M on an accelerator: e.g. 131k latents, k=64); 1: every position. Dense tables are always exact."
    sequence_offset: int = 0
    "This run's data starts at this sequence of a larger dataset split over machines (run i: the sequences before it), so that `engine.harvest merge` of the runs equals one harvest of all the data, reservoir samples included."
    backend: str = cli("torch", choices=("torch", "jax"))
    "torch, or jax: the whole harvest in JAX on every device of the default JAX backend (TPU chips), batches sharded over a mesh (pip install 'autointerp-engine[jax]')."

    def state_config(self, dicts, vocab_size: int, rows: tuple[int, int] = (0, 0), device: str = "cpu") -> StateConfig:
        """The accumulator's settings for these dictionaries (every backend builds its state from this);
        device: the kind it runs on (cpu, cuda, tpu, ...), for the co-occurrence sampling budget."""
        n_latents = sum(d.n_latents for d in dicts)
        lo, hi = rows
        sketched = choose_mode((hi or n_latents) - lo, n_latents, self.pair_budget_mb << 20) == "sketch"
        return StateConfig(
            n_latents=n_latents, vocab_size=vocab_size, seq_len=self.context_length, top_k=self.top_k,
            n_random=self.n_random, window=self.window, output_stats=self.output_stats, seed=self.seed,
            pair_budget_bytes=self.pair_budget_mb << 20, row_lo=lo, row_hi=hi, seq_offset=self.sequence_offset,
            top_chunk=2 * self.window + 1 if self.one_top_per_window else 0, center_examples=self.center_examples,
            cooc_rate=choose_rate(self.cooc_sample_rate, self.batch_size * self.context_length,
                                  sum(map(firings_per_token, dicts)), sketched, device))

    def checkpoint_source(self) -> dict:
        """What a checkpoint's data came from; --resume refuses a checkpoint of other data."""
        return {"dataset": self.dataset, "model": self.model, "dataset_name": self.dataset_name,
                "dataset_split": self.dataset_split, "dataset_column": self.dataset_column}

    def checkpoint_source_differs(self, meta: dict) -> bool:
        """Whether a checkpoint's meta names other data (keys older checkpoints lack are taken as this run's)."""
        return any(meta.get(k, v) != v for k, v in self.checkpoint_source().items())

    def __post_init__(self):
        """Refuse settings that would run and produce nothing (or garbage), one line naming the flag."""
        dtype = DTYPES.get(str(self.dtype).lower())
        if dtype is None:
            raise UserError(f"--dtype {self.dtype!r} is not a dtype -- use float32, bfloat16 or float16 (fp32, bf16, fp16)")
        self.dtype = dtype
        minimum = {"context_length": 2, "batch_size": 1, "top_k": 1, "n_random": 0, "window": 0, "n_batches": 0,
                   "firings_per_token": 1, "pair_budget_mb": 0, "checkpoint_every": 0, "max_latents": 0,
                   "sequence_offset": 0}
        for name, lo in minimum.items():
            v = getattr(self, name)
            if v < lo:
                why = " (BOS plus at least one token)" if name == "context_length" else ""
                raise UserError(f"--{name.replace('_', '-')} {v} must be >= {lo}{why} -- raise it")
        if not 0 <= self.cooc_sample_rate <= 1:
            raise UserError(f"--cooc-sample-rate {self.cooc_sample_rate} must lie in [0, 1] (0: auto) -- fix it")
        if self.overwrite and self.resume:
            raise UserError("--overwrite harvest with --resume -- choose one: start afresh, or continue the checkpoint")
        if self.n_batches == 0 and self.n_tokens < 1:
            raise UserError(f"--n-tokens {self.n_tokens} must be >= 1 (or give --n-batches) -- raise it")
