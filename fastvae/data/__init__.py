"""Corpora, vocabulary and batching (recipes.md: sentence = `<s> w1 .. wn </s>`)."""
from .batching import BATCH_MODES, Batch, collate, make_batches
from .builtin import BUILTIN_CORPORA, grammar_corpus, synthetic_corpus, write_corpus
from .corpus import SPLITS, Corpus, CorpusError, TextDataset, load_corpus, read_dataset, read_split
from .subword import TokenizerVocab
from .vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocab

__all__ = ["BATCH_MODES", "BOS", "BUILTIN_CORPORA", "Batch", "Corpus", "CorpusError", "EOS", "PAD", "SPECIALS",
           "SPLITS", "TextDataset", "TokenizerVocab", "UNK", "Vocab", "collate", "grammar_corpus", "load_corpus",
           "make_batches", "read_dataset", "read_split", "synthetic_corpus", "write_corpus"]
