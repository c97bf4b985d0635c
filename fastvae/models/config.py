"""Named model sizes (recipes.md) plus `tiny` for tests and the demo.

`family` names the model the size is built as: "he2019", He et al.'s (and Li et al.'s) LSTM VAE, or "fu2019",
Fu et al.'s PTB model (their `models_text.py`, from Kim et al.'s SA-VAE code): biases on the mean/log-variance
and output layers, h0 = Linear(z) + b with c0 = 0 and no tanh, every parameter U(-0.1, 0.1)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


MODEL_FAMILIES = ("he2019", "fu2019")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    emb_dim: int
    enc_hidden: int
    dec_hidden: int
    latent_dim: int
    batch_size: int
    dropout_in: float = 0.5
    dropout_out: float = 0.5
    family: str = "he2019"

    def __post_init__(self):
        if self.family not in MODEL_FAMILIES:
            raise ValueError(f"ModelConfig {self.name!r}: family must be one of {', '.join(MODEL_FAMILIES)}, "
                             f"got {self.family!r}")
        for f in ("emb_dim", "enc_hidden", "dec_hidden", "latent_dim", "batch_size"):
            value = getattr(self, f)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig {self.name!r}: {f} must be a positive int, got {value!r}")
        for f in ("dropout_in", "dropout_out"):
            if not 0.0 <= getattr(self, f) < 1.0:
                raise ValueError(f"ModelConfig {self.name!r}: {f} must be in [0, 1), got {getattr(self, f)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"ModelConfig.from_dict: unknown fields {sorted(unknown)}")
        return cls(**d)


CONFIGS = {
    "ptb": ModelConfig("ptb", 256, 256, 256, 32, 32),
    # Fu et al.'s train_text_cyc_ptb.py: 256/256/256, 32 latent dimensions, dropout 0.5, batches of 32
    "ptb-fu2019": ModelConfig("ptb-fu2019", 256, 256, 256, 32, 32, family="fu2019"),
    "yelp": ModelConfig("yelp", 128, 512, 512, 32, 32),
    "yahoo": ModelConfig("yahoo", 512, 1024, 1024, 32, 32),
    "synthetic": ModelConfig("synthetic", 50, 50, 50, 2, 16),
    "tiny": ModelConfig("tiny", 32, 64, 64, 8, 32),
}


def get_config(name: str | ModelConfig) -> ModelConfig:
    if isinstance(name, ModelConfig):
        return name
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; choose one of {', '.join(CONFIGS)}") from None
