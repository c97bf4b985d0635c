"""Transformer text VAEs from Hugging Face models (the optional extra: `pip install 'fastvae[hf]'`).

`HFTextVAE(encoder, decoder, latent_dim=32, inject="both")` builds a VAE from any encoder (`AutoModel`) and any
causal language model (`AutoModelForCausalLM`), by name, local path, config or instance, with z injected into the
decoder as a key/value memory position in every layer, as an embedding offset, or both (Optimus). Its `vocab` (a
`TokenizerVocab` over the decoder tokenizer) reads corpora: `load_corpus(data_dir_or_builtin_name, model.vocab)`.
Every recipe (fastvae.training.Trainer), metric (fastvae.evaluate) and decoding strategy (fastvae.generation) takes
the model; checkpoints record its source, so `load_model` and `fastvae eval/generate` rebuild it without files.
"""
from __future__ import annotations

try:
    import tokenizers  # noqa: F401
    import transformers  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"fastvae.hf needs transformers and tokenizers ({exc}): pip install 'fastvae[hf]'") from None
if not transformers.utils.is_torch_available():
    import torch

    raise ImportError(f"transformers {transformers.__version__} does not support torch {torch.__version__} (it "
                      f"disables its PyTorch models): install a transformers release that supports this torch, or a "
                      f"newer torch")

from ..data.subword import TokenizerVocab, retokenize_corpus
from .injection import INJECT_MODES
from .model import HFTextVAE


def load_corpus(source: str, vocab, **options):
    """A corpus encoded with `vocab` (an HFTextVAE's `vocab`): `source` is a directory with train/valid/test.txt or
    the name of a built-in corpus (`grammar`, `synthetic`). `options` go to fastvae.data.load_corpus (max_len...),
    or to the built-in corpus's generator (seed, n_train...)."""
    import os

    from ..data import BUILTIN_CORPORA
    from ..data import load_corpus as load_files

    if source in BUILTIN_CORPORA and not os.path.isdir(source):
        return retokenize_corpus(BUILTIN_CORPORA[source](**options), vocab)
    return load_files(source, vocab=vocab, **options)


__all__ = ["HFTextVAE", "INJECT_MODES", "TokenizerVocab", "load_corpus", "retokenize_corpus"]
