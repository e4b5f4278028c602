"""A local instruction tokenizer: built from the instructions themselves, never downloaded.

The tiny VLA's vocabulary is the set of words in its training instructions (lower-cased, split on
whitespace and punctuation) plus ``[PAD]``, ``[UNK]`` and ``[CLS]``. It is a ``tokenizers`` WordLevel
model wrapped in transformers' ``PreTrainedTokenizerFast`` and saved with ``save_pretrained``, so a
checkpoint directory loads with ``AutoTokenizer.from_pretrained(dir)`` exactly like a real backbone's
tokenizer would; swapping in a pretrained tokenizer changes no calling code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of ``text`` (how the vocabulary is split)."""
    return _WORD.findall(text.lower())


def build_vocab(texts: Iterable[str]) -> dict[str, int]:
    """Word -> id over ``texts``: special tokens first (PAD=0, UNK=1, CLS=2), then words sorted."""
    vocab = {PAD: 0, UNK: 1, CLS: 2}
    for w in sorted({w for t in texts for w in words(t)}):
        vocab.setdefault(w, len(vocab))
    return vocab


def build_tokenizer(texts: Iterable[str], max_length: int = 16) -> Any:
    """A ``PreTrainedTokenizerFast`` over the words of ``texts``; encodings start with ``[CLS]``.

    Args:
        texts: the instructions the model will see (unknown words map to ``[UNK]``).
        max_length: the longest encoding in tokens, ``[CLS]`` included (longer ones are truncated).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = build_vocab(texts)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=f"{CLS} $A", special_tokens=[(CLS, vocab[CLS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK, cls_token=CLS, model_max_length=max_length
    )


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved in the local directory ``path`` (no hub access)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def encode(tokenizer: Any, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids int64[B, max_length] and attention mask int64[B, max_length] for ``texts``."""
    enc = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="np"
    )
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
