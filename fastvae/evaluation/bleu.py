"""Reconstruction BLEU: how much of each test sentence the decoder gives back from its latent code.

The references (Li et al.'s `reconstruct` + `scripts/multi-bleu.perl`) encode each sentence, take a posterior
sample, decode it (greedy or beam search) and score the decoded split against the original with corpus BLEU.
fastvae reports the four combinations: z = the posterior mean or one posterior sample, greedy or beam decoding.
BLEU comes from sacreBLEU configured as multi-bleu.perl scores tokenised text (no further tokenisation, 4-grams,
no smoothing, case kept): the optional extra `pip install 'fastvae[bleu]'`. References are the sentences as the
model's vocabulary reads them (out-of-vocabulary words are `<unk>`, which the decoder can produce).
"""
from __future__ import annotations

import torch

from ..data import make_batches
from ..data.corpus import TextDataset

BLEU_SOURCES = ("mean", "sample")
BLEU_STRATEGIES = ("greedy", "beam")


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:  # an optional extra: say how to get it
        raise ImportError("reconstruction BLEU needs sacreBLEU: pip install 'fastvae[bleu]' (or pip install "
                          "sacrebleu)") from None
    return sacrebleu


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU (0-100) of whitespace-tokenised hypotheses against one reference each, scored as
    multi-bleu.perl does: no tokenisation, 4-gram precisions, brevity penalty, no smoothing."""
    if len(hypotheses) != len(references):
        raise ValueError(f"corpus_bleu: {len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        raise ValueError("corpus_bleu: no sentences to score")
    bleu = _sacrebleu().BLEU(tokenize="none", smooth_method="none", force=True)
    return float(bleu.corpus_score(list(hypotheses), [list(references)]).score)


@torch.no_grad()
def reconstruction_bleu(model, dataset: TextDataset, vocab, *, sources=BLEU_SOURCES, strategies=BLEU_STRATEGIES,
                        beam_size: int = 5, max_len: int = 100, batch_size: int = 64,
                        generator: torch.Generator | None = None) -> dict:
    """{"bleu_<strategy>_<source>": corpus BLEU} over `dataset`: each sentence encoded, z its posterior mean
    and/or one posterior sample (drawn once per sentence, shared by the strategies), decoded greedily and/or by
    beam search (`beam_size`, as the references' K=5), at most `max_len` words."""
    from ..data import BOS, EOS

    _sacrebleu()  # fail before any decoding
    from ..models.protocol import check_can_generate, is_vae_model

    if not is_vae_model(model):
        raise ValueError("reconstruction BLEU needs a VAE (an encoder and a decoder); this is a language model")
    check_can_generate(model)
    for name, values, allowed in (("sources", sources, BLEU_SOURCES), ("strategies", strategies, BLEU_STRATEGIES)):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise ValueError(f"reconstruction_bleu: {name} must be a non-empty subset of {', '.join(allowed)}, "
                             f"got {list(values)!r}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"reconstruction_bleu: max_len must be a positive int, got {max_len!r}")
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name!r} has no sentences to reconstruct")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hyps = {(strategy, source): [None] * len(dataset) for strategy in strategies for source in sources}
    try:
        for batch in make_batches(dataset, batch_size, mode="bucket", shuffle=False):
            batch = batch.to(device)
            mu, logvar = model.encode(batch.tokens, batch.lengths)
            codes = {"mean": mu}
            if "sample" in sources:
                noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
                codes["sample"] = mu + noise * (0.5 * logvar).exp()
            for source in sources:
                for strategy in strategies:
                    ids = model.generate(codes[source], BOS, EOS, max_len, strategy=strategy,
                                                 beam_size=beam_size)
                    for row, decoded in zip(batch.indices.tolist(), ids):
                        hyps[(strategy, source)][row] = vocab.decode(decoded)
    finally:
        model.train(was_training)
    refs = [vocab.decode(sentence.tolist()) for sentence in dataset.sentences]
    return {f"bleu_{strategy}_{source}": corpus_bleu(h, refs) for (strategy, source), h in hyps.items()}
