"""Word-level tokenizers for zoo models: one token per whitespace-separated word, saved with the
checkpoint so ``AutoTokenizer.from_pretrained`` (and so the bridge) loads it offline."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def word_level_tokenizer(vocab: Sequence[str], bos: str) -> PreTrainedTokenizerFast:
    if len(set(vocab)) != len(vocab):
        raise ValueError("vocabulary has duplicate words")
    if any(" " in w or not w for w in vocab):
        raise ValueError("vocabulary words must be non-empty and contain no spaces")
    ids = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token=bos))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=bos, bos_token=bos, eos_token=bos, pad_token=bos
    )
