"""`engine.interpret --dry-run`: the first prompt and the token and cost estimate of the whole run."""

from __future__ import annotations

from clients.config import Prices
from engine.core.schemas import RunConfig
from engine.interpret.config import InterpretConfig
from engine.interpret.explain import Labels, explain_prompt
from engine.interpret.prompts import Prompt

EXPECTED_OUTPUT_TOKENS = 200
"Output tokens per explanation assumed by the expected cost (max_tokens gives the bound)."


def dry_run(rc: RunConfig, cfg: InterpretConfig, inputs, labels: Labels, total: int) -> None:
    """Print the first prompt and the estimated tokens and cost of the whole run (chars / 4 per token)."""
    first: Prompt | None = None
    shared = fresh = n = 0
    for c, split, search, negs in inputs:
        if not cfg.uses_llm:
            print(f"latent {c.component_key}: search label {search!r}")
            n += 1
            break
        p = explain_prompt(rc, c, split, cfg.explainer, labels, negs)
        if first is None:
            first = p
            print(p.text())
        shared = (len(p.system) + len(p.prefix)) // 4
        fresh += len(p.prompt) // 4
        n += 1
    if not cfg.uses_llm:
        print(f"dry run: {total} latents to label offline (no LLM, no cost)")
        return
    print(f"dry run: {n} latents; input ~{shared} shared (cacheable) + ~{fresh // max(n, 1)} per-latent tokens each, "
          f"~{shared * n + fresh:,} input tokens in all; output <= {cfg.max_tokens} tokens per latent")
    price = Prices().lookup(cfg.model)
    if price is None:
        print(f"no price known for model {cfg.model!r}; cost not estimated")
        return
    batch = cfg.batch
    cached = price.cost(input_tokens=fresh, output_tokens=EXPECTED_OUTPUT_TOKENS * n, cache_read=shared * max(n - 1, 0),
                        cache_write_5m=shared, batch=batch)
    worst = price.cost(input_tokens=fresh + shared * n, output_tokens=cfg.max_tokens * n, batch=batch)
    print(f"estimated cost: ${cached:.4f} with prompt caching and ~{EXPECTED_OUTPUT_TOKENS} output tokens each; "
          f"at most ${worst:.4f} (no cache hits, every reply at max_tokens){' (batch price)' if batch else ''}")
