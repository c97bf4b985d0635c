"""A Transformer pair "trained from scratch": a GPT-2-style causal LM and a BERT-style encoder with random weights,
their tokenizers trained on a text with the tokenizers library, saved with save_pretrained, so `HFTextVAE`, the CLI
(`fastvae train --encoder DIR --decoder DIR`) and checkpoints load them by path exactly as a user's pretrained pair.
Nothing is downloaded.

    python -m fastvae.hf.scratch OUT_DIR [--corpus grammar] [--layers 2 --dim 64 --heads 2]

writes OUT_DIR/encoder and OUT_DIR/decoder from a built-in corpus's training sentences. From Python:
`save_scratch_pair(directory, texts, layers=2, dim=64)` -> (encoder_path, decoder_path).

- decoder: `GPT2LMHeadModel` (tied input/output embeddings, GPT-2's N(0, 0.02) initialisation), a byte-level BPE
  tokenizer whose `<|endoftext|>` begins and ends sentences, as GPT-2's;
- encoder: `BertModel`, a WordPiece tokenizer with `[CLS]`/`[SEP]`/`[PAD]`/`[UNK]`/`[MASK]`, as BERT's.
"""
from __future__ import annotations

import argparse
import os
import sys

# byte-level BPE starts from the 256 byte symbols: a vocabulary below that learns no merges
MIN_DECODER_VOCAB = 257
MIN_ENCODER_VOCAB = 6  # WordPiece's five special tokens and one more


def _check(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _tokenizers(texts, decoder_vocab: int, encoder_vocab: int):
    """(decoder tokenizer: byte-level BPE, encoder tokenizer: WordPiece), both trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=decoder_vocab, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    decoder_tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>")
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer()
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    wordpiece.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=encoder_vocab, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    encoder_tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    return decoder_tokenizer, encoder_tokenizer


def save_scratch_pair(directory: str, texts, *, layers: int = 2, dim: int = 64, heads: int = 2,
                      decoder_vocab: int = 1000, encoder_vocab: int = 1000, seed: int = 0,
                      positions: int = 128) -> tuple:
    """Writes `directory`/encoder (BERT-style, WordPiece) and `directory`/decoder (GPT-2-style, byte-level BPE):
    `layers` layers of width `dim` with `heads` attention heads each (feed-forward 4 x dim), random weights drawn
    from `seed`, tokenizers trained on `texts` (an iterable of sentences) with at most `decoder_vocab` /
    `encoder_vocab` tokens, `positions` positions. Returns (encoder_path, decoder_path)."""
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    layers, dim, heads = _check("layers", layers, 1), _check("dim", dim, 1), _check("heads", heads, 1)
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
    _check("decoder_vocab", decoder_vocab, MIN_DECODER_VOCAB)
    _check("encoder_vocab", encoder_vocab, MIN_ENCODER_VOCAB)
    _check("positions", positions, 2)
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("texts is empty: the tokenizers need sentences to learn from")
    decoder_tokenizer, encoder_tokenizer = _tokenizers(texts, decoder_vocab, encoder_vocab)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        decoder = GPT2LMHeadModel(GPT2Config(
            vocab_size=len(decoder_tokenizer), n_positions=positions, n_embd=dim, n_layer=layers, n_head=heads,
            bos_token_id=decoder_tokenizer.bos_token_id, eos_token_id=decoder_tokenizer.eos_token_id))
        encoder = BertModel(BertConfig(vocab_size=len(encoder_tokenizer), hidden_size=dim, num_hidden_layers=layers,
                                       num_attention_heads=heads, intermediate_size=4 * dim,
                                       max_position_embeddings=positions))
    finally:
        torch.random.set_rng_state(state)  # the caller's random stream is not moved
    paths = []
    for name, model, tokenizer in (("encoder", encoder, encoder_tokenizer), ("decoder", decoder, decoder_tokenizer)):
        path = os.path.join(directory, name)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    return tuple(paths)


def corpus_texts(name: str = "grammar") -> list:
    """The training sentences of a built-in corpus (fastvae.data.BUILTIN_CORPORA), as text."""
    from ..data import BUILTIN_CORPORA

    if name not in BUILTIN_CORPORA:
        raise ValueError(f"unknown built-in corpus {name!r}: expected one of {', '.join(BUILTIN_CORPORA)}")
    corpus = BUILTIN_CORPORA[name]()
    return [corpus.vocab.decode(s.tolist()) for s in corpus.train.sentences]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastvae.hf.scratch",
        description="Write OUT_DIR/encoder (BERT-style) and OUT_DIR/decoder (GPT-2-style): random weights, tokenizers "
                    "trained on a built-in corpus's training text; load them with fastvae train --encoder "
                    "OUT_DIR/encoder --decoder OUT_DIR/decoder.")
    parser.add_argument("out_dir")
    parser.add_argument("--corpus", default="grammar", help="built-in corpus whose training text trains the "
                                                             "tokenizers (default: grammar)")
    parser.add_argument("--layers", type=int, default=2, help="layers of each model (default 2)")
    parser.add_argument("--dim", type=int, default=64, help="hidden size of each model (default 64)")
    parser.add_argument("--heads", type=int, default=2, help="attention heads (default 2)")
    parser.add_argument("--decoder-vocab", type=int, default=1000, help="BPE vocabulary size at most (default 1000)")
    parser.add_argument("--encoder-vocab", type=int, default=1000,
                        help="WordPiece vocabulary size at most (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        encoder, decoder = save_scratch_pair(args.out_dir, corpus_texts(args.corpus), layers=args.layers,
                                             dim=args.dim, heads=args.heads, decoder_vocab=args.decoder_vocab,
                                             encoder_vocab=args.encoder_vocab, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"encoder: {encoder}\ndecoder: {decoder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
