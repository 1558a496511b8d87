"""Surprisal: does reading the explanation make a local LM less surprised by the activating text?

For every held-out excerpt (activating, and as many non-activating), a local HF causal
LM scores the excerpt's tokens twice, after two prefixes built from one template:

    explained:   template.format(explanation=<the explanation>)   e.g. "Text containing decorators:\n"
    placeholder: template.format(explanation=<placeholder>)       e.g. "Text containing anything:\n"

The excerpt's score is the mean per-token loss under the placeholder minus under the
explanation (nats/token): how much the explanation helped predict it. A good explanation
helps on the activating excerpts more than on the others, so the score ranks them: the
AUC is the metric; for the 0/1 metrics the k highest-scoring excerpts are called
activating, k = the number of activating ones (as the embedding scorer does). Same
template and placeholder in both conditions: only the explanation's content differs.

The LM is the run's own model unless ScoreConfig.surprisal_model names another local one;
with the run's model the excerpts' harvested token ids are used as they are, otherwise
their text is re-tokenised. Fully offline: no API, no key.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.core.errors import UserError
from engine.score.scorers.base import Details, ScoreConfig, ScoreItem, ranked


class CausalLMLosses:
    """Mean per-token loss of continuations after prefixes, batched with right padding."""

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 32, revision: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        try:
            pin = {"revision": revision} if revision and not Path(path).exists() else {}  # the run's commit
            self.tokenizer = AutoTokenizer.from_pretrained(path, **pin)
            self.model = AutoModelForCausalLM.from_pretrained(path, **pin).to(device).eval()
        except OSError as e:
            raise UserError(f"surprisal model {path} could not be loaded ({str(e).splitlines()[0][:120]}) -- "
                            "pass a local HF causal LM folder with --surprisal-model") from None
        self.path, self.device, self.batch_size = path, device, batch_size
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def encode_prefix(self, text: str) -> list[int]:
        """The prompt's ids after the start token the harvest puts first (BOS, else EOS, else none)."""
        from engine.harvest.data import start_token

        start = start_token(self.tokenizer)
        return ([] if start is None else [start]) + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def losses(self, pairs: list[tuple[list[int], list[int]]]) -> np.ndarray:
        """[(prefix ids, continuation ids)] -> mean loss (nats/token) of each continuation given its prefix."""
        out = np.zeros(len(pairs))
        for lo in range(0, len(pairs), self.batch_size):
            chunk = pairs[lo : lo + self.batch_size]
            seqs = [p + c for p, c in chunk]
            T = max(map(len, seqs))
            ids = torch.full((len(seqs), T), self.pad, dtype=torch.int64)
            mask = torch.zeros(len(seqs), T, dtype=torch.int64)
            target = torch.zeros(len(seqs), T, dtype=torch.bool)  # positions whose token is scored
            for i, ((p, c), s) in enumerate(zip(chunk, seqs)):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
                target[i, len(p) : len(s)] = True
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
            nll = -logp.gather(2, ids[:, 1:, None].to(self.device))[..., 0]  # [n, T-1]
            t = target[:, 1:].to(self.device)
            out[lo : lo + len(chunk)] = ((nll * t).sum(1) / t.sum(1).clamp(min=1)).cpu().numpy()
        return out


class Surprisal:
    name = "surprisal"
    llm = False

    def __init__(self, cfg: ScoreConfig, lm: CausalLMLosses | None = None):
        """lm: the loss model (loaded on first use from cfg.surprisal_model or the run's model when None)."""
        self.cfg = cfg
        self.lm = lm
        self.model_name = cfg.surprisal_model
        self.same_tokenizer = False
        "Excerpts' harvested token ids are the LM's own (else their text is re-tokenised)."
        self.revision: str | None = None
        "The run's recorded model commit, when the LM is the run's own hub model."

    def bind_run(self, rc) -> None:
        """Use the run's own model unless another (or an injected loss model) was given."""
        if self.lm is None:
            self.model_name = self.model_name or rc.model
            self.same_tokenizer = self.model_name == rc.model
            self.revision = rc.model_revision if self.same_tokenizer else None

    def _lm(self) -> CausalLMLosses:
        if self.lm is None:
            if not self.model_name:
                raise UserError("the surprisal scorer needs a local causal LM: pass --surprisal-model PATH")
            self.lm = CausalLMLosses(self.model_name, revision=self.revision)
        return self.lm

    def calls(self, item: ScoreItem):
        return []

    def scores(self, label: str, windows) -> np.ndarray:
        """Loss decrease (nats/token) of each window when the explanation replaces the placeholder."""
        lm = self._lm()
        tpl = self.cfg.surprisal_template
        explained = lm.encode_prefix(tpl.format(explanation=label))
        placeholder = lm.encode_prefix(tpl.format(explanation=self.cfg.surprisal_placeholder))
        texts = [w.token_ids if self.same_tokenizer else lm.encode_text("".join(w.tokens)) for w in windows]
        loss = lm.losses([(placeholder, t) for t in texts] + [(explained, t) for t in texts])
        return loss[: len(texts)] - loss[len(texts) :]

    def outcome(self, item: ScoreItem, responses: list = ()) -> Details:
        d, gain = ranked(item, self.name, self.cfg, lambda windows: self.scores(item.label, windows))
        k = sum(r.activating for r in d.rows)  # activating rows come first
        if d.rows:
            d.extra = {"mean_gain_activating": float(np.mean(gain[:k])),
                       "mean_gain_other": float(np.mean(gain[k:])) if len(gain) > k else 0.0}
        return d
