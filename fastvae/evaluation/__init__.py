"""Evaluation: the metrics papers report (recipes.md), batched across sentences and samples."""
from .bleu import corpus_bleu, reconstruction_bleu
from .metrics import (LM_METRICS, VAE_METRICS, WHOLE_SET_METRICS, evaluate, iw_log_likelihood_batch, iw_nll,
                      linear_probe_accuracy, per_batch_mutual_information, posterior_stats)

__all__ = ["LM_METRICS", "VAE_METRICS", "WHOLE_SET_METRICS", "corpus_bleu", "evaluate", "iw_log_likelihood_batch",
           "iw_nll", "linear_probe_accuracy", "per_batch_mutual_information", "posterior_stats", "reconstruction_bleu"]
