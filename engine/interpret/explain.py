"""One latent's explanation: its prompt, the request, and the record written for the reply.

    labels, background = prepare_labels(run, existing)
    for c, split, search, negs in explain_inputs(run, rc, todo, background, SplitConfig(n_examples_train=20)):
        prompt = explain_prompt(rc, c, split, "default", labels, negs)
        request = explain_request(prompt, c, max_tokens=1024)

The explainer sees the split of `engine.core.examples` (by the sampler settings,
`SplitConfig`: --train-type, --n-examples-train, --ratio-top, --n-quantiles); their
ids go in `example_ids` and scoring never uses them, and the settings go in the
record's `sampler`. The search label, too, is computed from the
explainer's examples only. `engine.score --best-of` builds its candidates
through the same functions.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from clients.structured import provider_schema
from engine.core.examples import FillReport, Split, SplitConfig, Window, split_examples
from engine.core.rundir import RunDir, primary
from engine.core.schemas import ComponentData, Explanation, ExplanationOutput, HookpointInfo, RunConfig
from engine.interpret.prompts import Prompt, render
from engine.interpret.search_labels import Background, search_label

EXPLANATION_SCHEMA = provider_schema(ExplanationOutput)


def describe_hookpoint(name: str, n_layers: int) -> str:
    """'blocks.2.hook_resid_post' -> 'residual stream after layer 2 of 4'."""
    m = re.search(r"(?:^|\.)(?:blocks|layers|h|layer)\.(\d+)", name) or re.search(r"(\d+)", name)
    layer = f" {m.group(1)} of {n_layers}" if m else ""
    low = name.lower()
    if "resid_pre" in low:
        return f"residual stream entering layer{layer}"
    if "mlp" in low:
        return f"MLP of layer{layer}"
    if "attn" in low or "attention" in low:
        return f"attention of layer{layer}"
    return f"residual stream after layer{layer}"


@dataclass
class Labels:
    """Search labels of every latent and the best known label (LLM or search) for the prompts."""

    search: dict[int, str] = field(default_factory=dict)
    known: dict[int, tuple[str, str]] = field(default_factory=dict)
    "latent -> (label, source) from results.jsonl."

    def of(self, latent: int) -> tuple[str, str]:
        if latent in self.known:
            return self.known[latent]
        return self.search.get(latent, ""), "search"


def run_context(rc: RunConfig) -> dict:
    model = Path(rc.model).name if Path(rc.model).exists() else rc.model
    dataset = Path(rc.dataset).name if Path(rc.dataset).exists() else rc.dataset
    hps = [dict(name=h.name, where=describe_hookpoint(h.name, rc.n_layers), kind=h.kind, n_latents=h.n_latents)
           for h in rc.hookpoints]
    return dict(model=model, model_class=rc.model_class, n_layers=rc.n_layers, dataset=dataset, hookpoints=hps,
                window_len=2 * rc.window + 1)


def explain_prompt(rc: RunConfig, c: ComponentData, split: Split, variant: str, labels: Labels,
                   negatives: list[Window] = (), n_stats: int = 8, n_neighbours: int = 5) -> Prompt:
    hp: HookpointInfo = next(h for h in rc.hookpoints if h.name == c.hookpoint)
    examples = sorted([w for w in split.explain if w.stratum == "top"], key=lambda w: -max(w.activations))
    rest = sorted([w for w in split.explain if w.stratum != "top"], key=lambda w: max(w.activations))
    latent = dict(key=c.component_key, where=describe_hookpoint(hp.name, rc.n_layers),
                  density_pct=f"{100 * c.firing_density:.3g}%", firing_count=c.firing_count,
                  mean_activation=c.mean_activation, max_activation=c.max_activation)

    def trim(stats):
        if stats is None:
            return None
        return dict(top_precision=stats.top_precision[:n_stats], top_recall=stats.top_recall[:n_stats],
                    top_pmi=stats.top_pmi[:n_stats])

    neighbours = []
    for s in c.correlations.jaccard[:n_neighbours]:
        label, source = labels.of(s.index)
        neighbours.append(dict(key=s.key, value=s.value, label=label, source=source))
    return render("explain", variant=variant, run=run_context(rc), latent=latent, examples=examples + rest,
                  n_top=len(examples), negatives=list(negatives), input_stats=trim(c.input_token_stats),
                  output_stats=trim(c.output_token_stats), logit_lens=c.logit_lens, neighbours=neighbours)


def parse_explanation(text: str, parsed: dict | None) -> tuple[ExplanationOutput | None, str | None]:
    """The structured reply, from the provider's parsed JSON or the first {...} in the text."""
    candidates = []
    if parsed is not None:
        candidates.append(msgspec.json.encode(parsed))
    if text:
        lo, hi = text.find("{"), text.rfind("}")
        if 0 <= lo < hi:
            candidates.append(text[lo : hi + 1].encode())
    for raw in candidates:
        try:
            out = msgspec.json.decode(raw, type=ExplanationOutput)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        label = " ".join(out.label.split())
        if not label:
            return None, "empty_label"
        return ExplanationOutput(reasoning=out.reasoning.strip(), label=label, confidence=out.confidence), None
    return None, "invalid_json" if text else "empty_response"


def explain_request(prompt: Prompt, custom_id: str, max_tokens: int, temperature: float = 0.0):
    """The CompletionRequest of one explanation (structured output: ExplanationOutput)."""
    return prompt.request(custom_id, max_tokens=max_tokens, temperature=temperature, schema=EXPLANATION_SCHEMA,
                          schema_name="explanation")


@dataclass
class Pending:
    latent: int
    component_key: str
    search_label: str
    example_ids: list[str]
    prompt_hash: str
    sampler: SplitConfig | None = None


def prepare_labels(run: RunDir | Path, existing: dict[int, list[Explanation]]) -> tuple[Labels, Background]:
    """Background statistics and the search label of every latent (two streaming passes), and the best
    known label of every latent for the prompts' neighbour lists."""
    run = RunDir(run)
    labels = Labels()
    for lat, recs in existing.items():
        p = primary(recs)
        if p is not None and p.label:
            labels.known[lat] = (p.label, p.source)
    background = Background.of(run.iter_components())
    for c in run.iter_components():
        labels.search[c.latent] = search_label(c, background=background)
    return labels, background


def explain_inputs(run: RunDir | Path, rc: RunConfig, todo: set[int], background: Background, sampler: SplitConfig,
                   negatives=None, n_negatives: int = 0,
                   warn: bool = True) -> Iterator[tuple[ComponentData, Split, str, list[Window]]]:
    """(component, its split, the search label of the explainer's examples, non-activating windows) of every
    latent in `todo`, in file order. negatives: a NegativeSource (contrastive explainer) or None. When all are
    read and `warn`, prints one line to stderr if the held-out sets cannot fill `sampler.n_examples_test`."""
    run = RunDir(run)
    fill = FillReport(sampler)
    for c in run.iter_components():
        if c.latent not in todo:
            continue
        split = split_examples(c, sampler)
        fill.add(split.held_out)
        ids = set(split.explain_ids)
        shown = msgspec.structs.replace(  # the search label, too, sees only the explainer's examples
            c, top_examples=[e for e in c.top_examples if f"{e.sequence}:{e.position}" in ids],
            random_examples=[e for e in c.random_examples if f"{e.sequence}:{e.position}" in ids])
        label = search_label(shown, background=background)
        negs = []
        if negatives is not None:
            negs = negatives.negatives(c, n_negatives, queries=split.explain, exclude_ids=split.explain_ids)
        yield c, split, label, negs
    if warn and (line := fill.warning(rc.top_k, rc.n_random)):
        print(line, file=sys.stderr)


def search_explanation(c: ComponentData, split: Split, label: str) -> Explanation:
    return Explanation(component_key=c.component_key, latent=c.latent, label=label, confidence="low", reasoning="",
                       search_label=label, source="search", model="", explainer="search", prompt_hash="",
                       raw_response="", example_ids=split.explain_ids,
                       sampler=split.sampler.record() if split.sampler else None)


def llm_explanation(p: Pending, model: str, explainer: str, response) -> Explanation:
    out, err = (None, response.error) if response.error else parse_explanation(response.text, response.parsed)
    return Explanation(
        component_key=p.component_key, latent=p.latent, label=out.label if out else p.search_label,
        confidence=out.confidence if out else "low", reasoning=out.reasoning if out else "",
        search_label=p.search_label, source="llm", model=model, explainer=explainer,
        prompt_hash=p.prompt_hash, raw_response=response.text, example_ids=p.example_ids, usage=response.usage,
        error=err, sampler=p.sampler.record() if p.sampler else None)
