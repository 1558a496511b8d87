"""Scripted LLM replies for the fake server: an explainer and a judge that answer from the trigger run's rule.

Both read the request body (either wire format) the way a model would read the
prompt: `explainer` labels a latent by its most often marked token, and `Judge`
answers every scorer's prompt (detection, fuzz, simulation, intruder) from the
rule of tests/helpers/trigger_run.py, perfectly, at random or inverted.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter

from tests.helpers.trigger_run import trigger_of


def prompt_text(body: dict) -> str:
    """Everything a request says (system + user), from either wire format."""
    parts = []
    system = body.get("system")
    if isinstance(system, str):
        parts.append(system)
    elif isinstance(system, list):
        parts += [b.get("text", "") for b in system]
    for m in body.get("messages", []):
        c = m.get("content")
        parts.append(c if isinstance(c, str) else "".join(b.get("text", "") for b in c or []))
    return "\n".join(parts)


def unescape(text: str) -> str:
    """Undo engine.prompts.escape_data."""
    simple = {"n": "\n", "r": "\r", "t": "\t"}

    def one(m: re.Match) -> str:
        g = m.group(1)
        return chr(int(g[1:], 16)) if len(g) == 3 else simple.get(g, g)

    return re.sub(r"\\(x[0-9a-f]{2}|.)", one, text)


def json_reply(obj) -> str:
    return json.dumps(obj)


def explainer(body: dict) -> dict:
    """A scripted explainer: labels the latent by its most often marked token."""
    text = prompt_text(body)
    item = text.split("Latent ", 1)[1]
    marks = Counter(m.strip() for m in re.findall(r"<<(.*?)>>", item.split("Input tokens")[0]))
    return {"reasoning": "The marked tokens agree.", "label": f"the word {marks.most_common(1)[0][0]}",
            "confidence": "high"}


class Judge:
    """Answers every scorer's prompt from the fixture's rule; mode perfect | random | inverted."""

    def __init__(self, vocab: list[str], mode: str = "perfect", seed: int = 0):
        self.vocab, self.mode, self.seed = vocab, mode, seed

    def __call__(self, body: dict) -> dict:
        text = prompt_text(body)
        # random answers depend on the prompt only, so they do not depend on the order requests arrive in
        self.rng = random.Random(hashlib.sha256(f"{self.seed}|{text}".encode()).digest())
        if '"intruder"' in text:
            return self.intruder(text)
        trig = trigger_of(re.search(r"Explanation: (.*)", text).group(1)) or "no such word"
        if '"activations"' in text:
            return self.simulate(text, trig)
        excerpts = re.findall(r"^Excerpt \d+: (.*)$", text, re.M)
        marked = "<<" in text.split("excerpts:", 1)[1] or "marked <<like this>>" in text
        truth = [self.marks_fit(e, trig) if marked else trig in unescape(e) for e in excerpts]
        if self.mode == "random":
            return {"answers": [self.rng.randint(0, 1) for _ in excerpts]}
        return {"answers": [int(t) ^ (self.mode == "inverted") for t in truth]}

    @staticmethod
    def marks_fit(excerpt: str, trig: str) -> bool:
        marks = re.findall(r"<<(.*?)>>", excerpt)
        return bool(marks) and all(re.fullmatch(f"({re.escape(trig)})+", m) for m in marks)

    def simulate(self, text: str, trig: str) -> dict:
        toks = [json.loads(t) for t in re.findall(r"^\d+\t(\".*\")$", text, re.M)]
        pred = []
        for i, t in enumerate(toks):
            if t != trig:
                pred.append(0)
            else:
                pred.append(5 if i == 0 else 1 + self.vocab.index(toks[i - 1]) % 9)
        if self.mode == "random":
            pred = [self.rng.randint(0, 10) for _ in toks]
        elif self.mode == "inverted":
            pred = [10 - p for p in pred]
        return {"activations": pred}

    def intruder(self, text: str) -> dict:
        excerpts = re.findall(r"^Excerpt \d+: (.*)$", text, re.M)
        words = [frozenset(" ".join(re.findall(r"<<(.*?)>>", e)).split()) for e in excerpts]
        common = Counter(w for ws in words for w in ws).most_common(1)[0][0]
        odd = next(i for i, ws in enumerate(words) if ws != {common})
        if self.mode == "random":
            odd = self.rng.randrange(len(excerpts))
        elif self.mode == "inverted":
            odd = (odd + 1) % len(excerpts)
        return {"intruder": odd + 1}
