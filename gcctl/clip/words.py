"""A word-level tokenizer for the small CLIPs gcctl pretrains itself.

open_clip's byte-pair vocabulary has 49,408 entries: in a 128-wide tiny CLIP its token embedding alone would be
most of the model, and the synthetic world's captions use a few hundred words. A packaged architecture names a
word list instead (`text_cfg.tokenizer_kwargs.vocabulary`, a file beside its config, one word per line); ids
follow open_clip's conventions, so the text tower and the prompt learners need nothing else: 0 pads, the start
token is `vocab_size - 2` and the end token `vocab_size - 1`, the largest id (open_clip pools the text at the
argmax id). A word the list lacks is id 1: text is lowercased and cut into words (hyphenated ones whole),
numbers and single punctuation marks.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Sequence

import torch

from gcctl.errors import GcctlError

PAD, UNKNOWN = 0, 1
_FIRST_WORD = 2
_PIECES = re.compile(r"[a-z]+(?:[-'][a-z]+)*|[0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """The pieces a text is tokenized into."""
    return _PIECES.findall(text.lower())


class WordTokenizer:
    """list[str] -> LongTensor [n, context_length], like open_clip's tokenizers."""

    def __init__(self, words: Sequence[str], context_length: int, vocab_size: int):
        words = list(words)
        repeated = sorted({word for word in words if words.count(word) > 1})
        if repeated:
            raise GcctlError(f"the word list repeats {', '.join(repeated[:5])}; list each word once")
        if len(words) + _FIRST_WORD + 2 > vocab_size:
            raise GcctlError(f"the word list has {len(words)} words but the model embeds {vocab_size} tokens "
                             f"(with pad, unknown, start and end); raise vocab_size to {len(words) + _FIRST_WORD + 2}")
        self.ids = {word: index for index, word in enumerate(words, start=_FIRST_WORD)}
        # The word list's identity: weights trained with one list mean nothing read with another.
        self.digest = hashlib.sha256("\n".join(words).encode()).hexdigest()
        self.context_length = context_length
        self.start, self.end = vocab_size - 2, vocab_size - 1

    @classmethod
    def from_file(cls, path: Path, context_length: int, vocab_size: int) -> "WordTokenizer":
        words = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return cls([word for word in words if word and not word.startswith("#")], context_length, vocab_size)

    def unknown(self, text: str) -> list[str]:
        """The words of `text` this tokenizer reads as unknown."""
        return [word for word in split_words(text) if word not in self.ids]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        tokens = torch.full((len(texts), length), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.ids.get(word, UNKNOWN) for word in split_words(text)][: length - 2]
            tokens[row, : len(ids) + 2] = torch.tensor([self.start, *ids, self.end])
        return tokens
