"""Models: the LSTM text VAE and the LSTM language-model baseline, with the papers' sizes."""
from .config import CONFIGS, ModelConfig, get_config
from .protocol import TextVAEModel, check_vae_model
from .text_vae import MODEL_KINDS, LSTMLM, LSTMEncoder, TextVAE, build_model

__all__ = ["CONFIGS", "LSTMEncoder", "LSTMLM", "MODEL_KINDS", "ModelConfig", "TextVAE", "TextVAEModel",
           "build_model", "check_vae_model", "get_config"]
