"""Training: recipes as small composable pieces, and the Trainer that runs them.

- `schedules`: KL-weight schedules (constant, linear annealing, cyclical) and the cosine lr restart
- `objectives`: the KL term (plain, beta-scaled, free-bits modes)
- `policies`: encoder-update policies (joint, aggressive)
- `recipes`: phases and the named recipes (lm, vae, beta, cyclical, aggressive, pretrain-fb)
- `optim`: optimisers and the references' decay-on-plateau
- `trainer`: `Trainer`, its options (`TrainConfig`), the run directory (`run_dir`), checkpoints (`checkpoint`), the run
  state (`run_state`), plots (`plots`)
(Reconstructions, prior samples and interpolations: `fastvae.generation`.)
"""
from .objectives import FREE_BITS_MODES, KLObjective
from .optim import PlateauDecay, make_optimizer
from .policies import AggressiveUpdate, JointUpdate
from .recipes import RECIPE_NAMES, RECIPE_OPTIONS, Phase, Recipe, build_recipe, resolve_options
from .schedules import ConstantSchedule, CosineRestartLR, CyclicalSchedule, LinearAnnealing
from .trainer import TrainConfig, Trainer, TrainingDiverged, TrainingInterrupted, format_metrics_table

__all__ = ["FREE_BITS_MODES", "KLObjective", "PlateauDecay", "make_optimizer", "AggressiveUpdate", "JointUpdate",
           "RECIPE_NAMES", "RECIPE_OPTIONS", "Phase", "Recipe", "build_recipe", "resolve_options",
           "ConstantSchedule", "CosineRestartLR", "CyclicalSchedule", "LinearAnnealing", "TrainConfig", "Trainer",
           "TrainingDiverged", "TrainingInterrupted", "format_metrics_table"]
