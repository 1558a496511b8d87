"""engine.labels_search: keyword labels without an LLM."""

from __future__ import annotations

from engine.core.rundir import RunDir
from engine.core.schemas import ActivationExample, ComponentCorrelations, ComponentData, Scored, TokenStats
from engine.interpret.search_labels import Background, context_scores, firing_scores, normalize, search_label
from tests.helpers.trigger_run import TRIGGERS, write_run


def component(windows: list[list[tuple[str, float]]], recall: list[Scored] = (), precision: list[Scored] = (),
              density: float = 0.01) -> ComponentData:
    examples = []
    for s, w in enumerate(windows):
        acts = [a for _, a in w]
        fi = max(range(len(w)), key=lambda i: acts[i])
        examples.append(ActivationExample(sequence=s, position=fi, activation=acts[fi], token_ids=list(range(len(w))),
                                          tokens=[t for t, _ in w], activations=acts, firing_index=fi, source="top"))
    empty = ComponentCorrelations(precision=[], recall=[], pmi=[], jaccard=[], exact=True, error_bound=0.0)
    return ComponentData(component_key="h/0", hookpoint="h", component_idx=0, latent=0, firing_count=len(examples),
                         firing_density=density, mean_activation=1.0,
                         max_activation=max((e.activation for e in examples), default=0.0), histogram=[],
                         top_examples=examples, random_examples=[],
                         input_token_stats=TokenStats(top_precision=list(precision), top_recall=list(recall), top_pmi=[],
                                                      exact=True, error_bound=0.0),
                         output_token_stats=None, logit_lens=None, correlations=empty)


def test_label_is_the_firing_word_of_each_synthetic_latent(tmp_path):
    run = write_run(tmp_path / "run")
    comps = list(RunDir(run.dir).iter_components())
    bg = Background.of(comps)
    for c in comps:
        assert search_label(c) == TRIGGERS[c.latent].strip()
        assert search_label(c, background=bg) == TRIGGERS[c.latent].strip()


def test_frequent_and_specific_words_rank_first_and_max_words_holds():
    windows = [[(" the", 0.0), (" import", 5.0), (" os", 0.0)]] * 6 + [[(" from", 2.0), (" x", 0.0)]] * 2 + \
              [[(" a", 0.0), (" the", 0.5)]]
    c = component(windows)
    scores, share = firing_scores(c)
    assert max(scores, key=scores.get) == "import"
    assert abs(sum(share.values()) - 1.0) < 1e-9
    assert search_label(c).split(", ")[0] == "import"
    assert len(search_label(c, max_words=1).split(", ")) == 1
    # corpus precision lifts a rarer but specific token above a frequent unspecific one
    c2 = component(windows, precision=[Scored(" from", 1, 0.95, 40.0)], recall=[Scored(" import", 0, 0.5, 10.0),
                                                                                Scored(" from", 1, 0.5, 40.0)])
    assert search_label(c2).split(", ")[0] == "from"


def test_context_words_fill_in_when_firing_tokens_vary():
    # fires on a different token each time, always two tokens after " numpy"
    windows = [[(" numpy", 0.0), (" as", 0.0), (tok, 3.0)] for tok in ("np", "x", "arr", "m", "k", "q", "z", "w")]
    c = component(windows)
    assert "numpy" in context_scores(c, None)
    assert "numpy" in search_label(c).split(", ")
    bg = Background()
    for _ in range(50):  # " as" is everywhere in the background: its idf is ~0, numpy's is high
        bg.df.update({"as"})
        bg.n_docs += 1
    ctx = context_scores(c, bg)
    assert ctx["numpy"] > 10 * ctx.get("as", 0.0)


def test_display_of_whitespace_and_symbols_and_empty():
    assert normalize("\n    ") == "newline" and normalize("   ") == "space" and normalize(" Import") == "import"
    c = component([[("(", 4.0), ("x", 0.0)]] * 3)
    assert search_label(c) == "`(`"
    assert search_label(component([])) == ""
