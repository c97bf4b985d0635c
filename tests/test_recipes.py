"""Recipe building blocks without data: the aggressive loop's stop rules (scripted losses), the
references' decay-on-plateau, KL objectives, and recipe option resolution/errors."""
import math
import random

import pytest
import torch

from fastvae import functional as F
from fastvae.training import (AggressiveUpdate, JointUpdate, KLObjective, PlateauDecay, build_recipe,
                              resolve_options)
from fastvae.training.step import StepResult
from fastvae.training.schedules import ConstantSchedule, CyclicalSchedule, LinearAnnealing


class ScriptedTrainer:
    """Stands in for the Trainer: each compute_loss returns the next scripted per-word loss."""

    def __init__(self, per_word_losses, words=10):
        self.script = list(per_word_losses)
        self.words = words
        self.encoder = torch.nn.Linear(2, 2)
        self.decoder = torch.nn.Linear(2, 2)
        self.calls = []  # (kind, step_encoder, step_decoder, decoder requires_grad, clip names)
        self.random_draws = 0
        self.epoch = 0

    def encoder_parameters(self):
        return list(self.encoder.parameters())

    def decoder_parameters(self):
        return list(self.decoder.parameters())

    def compute_loss(self, batch, kl_weight):
        value = self.script.pop(0) if self.script else 1.0
        x = torch.ones(1, 2)
        loss = self.decoder(self.encoder(x)).sum() * 0 + value * self.words
        stats = {"loss_sum": torch.tensor(value * self.words), "words": torch.tensor(self.words),
                 "rec_sum": torch.tensor(0.0), "kl_sum": torch.tensor(0.0), "sentences": 1}
        return StepResult(loss, stats, 1, 1)

    def backward_and_step(self, result, *, step_encoder, step_decoder, clip_params=None):
        dec_flags = [p.requires_grad for p in self.decoder.parameters()]
        result.loss.backward()
        dec_grads = [p.grad is not None for p in self.decoder.parameters()]
        for p in list(self.encoder.parameters()) + list(self.decoder.parameters()):
            p.grad = None
        clip = None if clip_params is None else {id(p) for p in clip_params}
        self.calls.append({"encoder": step_encoder, "decoder": step_decoder, "dec_requires_grad": all(dec_flags),
                           "dec_grads": any(dec_grads),
                           "clip_encoder_only": clip == {id(p) for p in self.encoder.parameters()}})

    def random_train_batch(self):
        self.random_draws += 1
        return "random-batch"


def window_script(window_means, window=15):
    return [m for m in window_means for _ in range(window)]


def test_inner_loop_stops_when_window_loss_goes_up():
    trainer = ScriptedTrainer(window_script([5.0, 4.0, 4.5, 1.0]))
    policy = AggressiveUpdate()
    policy.step(trainer, "outer-batch", kl_weight=0.3)
    inner = [c for c in trainer.calls if c["encoder"]]
    assert len(inner) == 45  # the third window (mean 4.5 > 4.0) stops the loop after its last step
    assert policy.last_inner_steps == 45
    assert trainer.random_draws == 44  # the outer batch first, then random batches
    assert all(not c["decoder"] for c in inner)
    assert all(not c["dec_requires_grad"] and not c["dec_grads"] for c in inner)
    assert all(c["clip_encoder_only"] for c in inner)
    final = trainer.calls[-1]
    assert final["decoder"] and not final["encoder"] and final["dec_requires_grad"] and final["dec_grads"]
    assert all(p.requires_grad for p in trainer.decoder.parameters())  # restored


def test_inner_loop_caps_at_max_steps_and_first_window_compares_with_1e4():
    trainer = ScriptedTrainer([100.0 - 0.5 * i for i in range(200)])
    policy = AggressiveUpdate()
    policy.step(trainer, "b", 1.0)
    assert policy.last_inner_steps == 100
    trainer = ScriptedTrainer(window_script([2e4]))
    policy.step(trainer, "b", 1.0)
    assert policy.last_inner_steps == 15
    trainer = ScriptedTrainer(window_script([3.0, 3.0, 2.0]), words=7)
    policy = AggressiveUpdate(max_inner_steps=40, window=10)
    policy.step(trainer, "b", 1.0)  # equal windows are not an increase; cap 40
    assert policy.last_inner_steps == 40


def test_inner_loop_uses_per_word_mean_within_window():
    # the window mean is sum(loss) / sum(words): one big step outweighs 14 small ones
    script = [1.0] * 15 + [0.5] * 14 + [20.0] + [0.1] * 15
    trainer = ScriptedTrainer(script)
    policy = AggressiveUpdate()
    policy.step(trainer, "b", 1.0)
    assert policy.last_inner_steps == 30


def test_mi_stop_switches_off_for_good():
    class T:
        epoch = 3

    policy = AggressiveUpdate()
    assert policy.end_of_epoch(T, {"mi_batch": 0.5}) is None and policy.active
    assert policy.end_of_epoch(T, {"mi_batch": 0.9}) is None and policy.active
    message = policy.end_of_epoch(T, {"mi_batch": 0.85})
    assert not policy.active and "switched off" in message and policy.switched_off_epoch == 3
    assert policy.end_of_epoch(T, {"mi_batch": 2.0}) is None and not policy.active
    # initially 0: a negative first estimate switches it off at once
    policy = AggressiveUpdate()
    policy.end_of_epoch(T, {"mi_batch": -0.01})
    assert not policy.active
    # when off, a step is the joint update
    trainer = ScriptedTrainer([1.0])
    policy.step(trainer, "b", 1.0)
    assert trainer.calls == [{"encoder": True, "decoder": True, "dec_requires_grad": True, "dec_grads": True,
                              "clip_encoder_only": False}]
    state = policy.state_dict()
    fresh = AggressiveUpdate()
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state


def test_aggressive_epochs_cap_switches_off_when_mi_stop_has_not():
    class T:
        epoch = 0

    policy = AggressiveUpdate(max_epochs=2)
    assert policy.end_of_epoch(T, {"mi_batch": 0.5}) is None and policy.active
    T.epoch = 1
    message = policy.end_of_epoch(T, {"mi_batch": 0.9})  # MI still rising: the cap decides
    assert not policy.active and "aggressive_epochs cap" in message and policy.switched_off_epoch == 1
    assert policy.end_of_epoch(T, {"mi_batch": 0.1}) is None  # off for good, no second message
    # the MI stop firing first wins, and its message is the one reported
    policy = AggressiveUpdate(max_epochs=3)
    policy.end_of_epoch(T, {"mi_batch": 0.5})
    message = policy.end_of_epoch(T, {"mi_batch": 0.4})
    assert not policy.active and "MI fell" in message
    # the count survives a checkpoint; checkpoints written before the cap existed load with 0
    policy = AggressiveUpdate(max_epochs=2)
    policy.end_of_epoch(T, {"mi_batch": 0.5})
    fresh = AggressiveUpdate(max_epochs=2)
    fresh.load_state_dict(policy.state_dict())
    assert fresh.epochs_on == 1 and fresh.end_of_epoch(T, {"mi_batch": 0.7}) is not None and not fresh.active
    old = {k: v for k, v in policy.state_dict().items() if k != "epochs_on"}
    fresh = AggressiveUpdate()
    fresh.load_state_dict(old)
    assert fresh.epochs_on == 0
    assert build_recipe("aggressive", {"aggressive_epochs": 2}).phases[0].policy.max_epochs == 2
    assert build_recipe("aggressive").phases[0].policy.max_epochs is None


def test_joint_update_steps_both():
    trainer = ScriptedTrainer([1.0])
    JointUpdate().step(trainer, "b", 0.5)
    assert trainer.calls[0]["encoder"] and trainer.calls[0]["decoder"]


def reference_decay(losses, lr, patience, min_epoch=15, factor=0.5, max_decay=5):
    """He et al.'s opt_dict bookkeeping, written out."""
    opt = {"not_improved": 0, "lr": lr, "best_loss": 1e4}
    decays, events = 0, []
    for epoch, loss in enumerate(losses):
        decayed = False
        if loss > opt["best_loss"]:
            opt["not_improved"] += 1
            if opt["not_improved"] >= patience and epoch >= min_epoch:
                opt["best_loss"] = loss
                opt["not_improved"] = 0
                opt["lr"] *= factor
                decays += 1
                decayed = True
        else:
            opt["not_improved"] = 0
            opt["best_loss"] = loss
        events.append((decayed, opt["lr"]))
        if decays == max_decay:
            break
    return events


@pytest.mark.parametrize("patience", [2, 5])
def test_plateau_decay_matches_reference_bookkeeping(patience):
    losses = [100 - e + random.choice([0, 0, 3, 6]) * (e > 10) for e in range(100)]
    ref = reference_decay(losses, 1.0, patience)
    decay = PlateauDecay(1.0, patience=patience)
    got = []
    for epoch, loss in enumerate(losses):
        got.append((decay.update(loss, epoch), decay.lr))
        if decay.finished:
            break
    assert got == ref
    restored = PlateauDecay(1.0, patience=patience)
    restored.load_state_dict(decay.state_dict())
    assert restored.state_dict() == decay.state_dict()


def test_plateau_decay_waits_for_min_epoch_and_stops_after_max():
    decay = PlateauDecay(1.0, patience=1, min_epoch=3, max_decays=2)
    assert not decay.update(5.0, 0)
    assert not decay.update(6.0, 1)  # worse, but epoch < 3
    assert decay.update(7.0, 3) and decay.lr == 0.5
    assert decay.update(8.0, 4) and decay.lr == 0.25 and decay.finished


def test_plateau_decay_disabled_never_decays():
    decay = PlateauDecay(1.0, patience=1, min_epoch=0, max_decays=1, enabled=False)
    assert not any(decay.update(float(v), epoch) for epoch, v in enumerate(range(10, 30)))
    assert decay.lr == 1.0 and decay.decays == 0 and not decay.finished
    with pytest.raises(ValueError, match="learning rate"):
        PlateauDecay(0.0)
    with pytest.raises(ValueError, match="patience"):
        PlateauDecay(1.0, patience=0)


def test_kl_objective_values():
    mu, logvar = torch.randn(9, 5), torch.randn(9, 5) * 0.3
    z, term, kl_dim = KLObjective().sample(mu, logvar)
    assert z.shape == mu.shape
    assert torch.allclose(term, F.kl_per_dim(mu, logvar).sum(1).mean(), atol=1e-5)
    assert torch.allclose(kl_dim.sum(), term, atol=1e-5)
    _, scaled, _ = KLObjective(scale=0.4).sample(mu, logvar)
    assert torch.allclose(scaled, 0.4 * term, atol=1e-5)
    _, fb, kl_dim_fb = KLObjective("dim", 3.0).sample(mu, logvar)
    assert torch.allclose(fb, F.free_bits_kl(mu, logvar, 3.0, "dim"), atol=1e-5)
    assert torch.allclose(kl_dim_fb, kl_dim, atol=1e-5)  # logged KL stays unmasked
    for bad, match in [(dict(mode="max"), "free-bits mode"), (dict(mode="dim", target=0.0), "target > 0"),
                       (dict(target=2.0), "needs a free-bits mode"), (dict(scale=-1.0), "scale")]:
        with pytest.raises(ValueError, match=match):
            KLObjective(**bad)


def test_recipe_structure():
    r = build_recipe("vae")
    assert r.model_kind == "vae" and len(r.phases) == 1
    assert isinstance(r.phases[0].schedule, LinearAnnealing) and r.phases[0].schedule.warm_up == 0
    r = build_recipe("vae", {"warm_up": 5})
    assert r.phases[0].schedule.start == 0.1 and r.phases[0].schedule.warm_up == 5
    r = build_recipe("beta")
    assert r.phases[0].objective.scale == 0.4
    # Li et al.'s text_beta.py: selected and decayed on rec + beta x KL, patience 5
    assert r.phases[0].select_by == "beta-loss" and r.train_defaults["patience"] == 5
    assert build_recipe("vae").phases[0].select_by == "elbo" and build_recipe("vae").train_defaults["patience"] == 2
    r = build_recipe("aggressive")
    assert isinstance(r.phases[0].policy, AggressiveUpdate)
    assert (r.phases[0].schedule.start, r.phases[0].schedule.warm_up) == (0.1, 10.0)
    r = build_recipe("cyclical", {"fb_mode": "dim", "target_kl": 4.0, "aggressive": True})
    assert isinstance(r.phases[0].schedule, CyclicalSchedule) and r.phases[0].objective.mode == "dim"
    assert isinstance(r.phases[0].policy, AggressiveUpdate)
    r = build_recipe("cyclical", {"variant": "ptb-script"})
    # Fu et al.'s script: 40 epochs, the cosine factor set once per epoch
    assert r.phases[0].lr_restart == "cosine-epoch" and r.train_defaults["optimizer"] == "adam"
    assert r.train_defaults["epochs"] == 40 and "epochs" not in build_recipe("cyclical").train_defaults
    assert r.train_defaults["plateau_decay"] is False  # the script's schedule is the cosine restart alone
    assert "plateau_decay" not in build_recipe("cyclical").train_defaults
    assert r.phases[0].schedule.cycle_epochs == 10.0 and r.phases[0].schedule.start == 0.1
    r = build_recipe("cyclical", {"variant": "ptb-script", "cycles": 3})
    assert r.phases[0].schedule.cycle_epochs is None and r.phases[0].schedule.cycles == 3
    r = build_recipe("pretrain-fb", {"pretrain_epochs": 2})
    pre, fb = r.phases
    assert isinstance(pre.schedule, ConstantSchedule) and pre.schedule.value == 0.0
    assert pre.select_by == "rec" and not pre.reset_decoder and pre.epochs == 2
    # the reset follows the model unless the option says (the Trainer resolves it; test_model_protocol.py)
    assert fb.reset_decoder is None and fb.select_by == "elbo" and fb.objective.mode == "dim"
    assert build_recipe("pretrain-fb", {"reset_decoder": False}).phases[1].reset_decoder is False
    assert (fb.schedule.start, fb.schedule.warm_up) == (0.0, 10.0)
    assert r.train_defaults["lr"] == 0.5 and r.train_defaults["patience"] == 5
    r = build_recipe("lm")
    assert r.model_kind == "lm" and r.phases[0].objective is None


@pytest.mark.parametrize("name,options,match", [
    ("nope", {}, "unknown recipe"),
    ("vae", {"cycles": 2}, "do not apply to recipe 'vae'"),
    ("lm", {"fb_mode": "dim"}, "do not apply to recipe 'lm'"),
    ("vae", {"target_kl": 3.0}, "conflicting"),
    ("vae", {"fb_mode": "dim"}, "needs target_kl"),
    ("vae", {"fb_mode": "half"}, "free-bits mode"),
    ("cyclical", {"cycles": 2, "cycle_epochs": 3.0}, "conflicting"),
    ("cyclical", {"variant": "blog"}, "variant"),
    ("cyclical", {"ramp": "tanh"}, "ramp"),
    ("vae", {"max_inner_steps": 5}, "aggressive"),
    ("vae", {"aggressive_epochs": 2}, "aggressive=True"),
    ("aggressive", {"aggressive_epochs": 0}, "aggressive_epochs"),
    ("aggressive", {"aggressive_epochs": 1.5}, "aggressive_epochs"),
    ("aggressive", {"aggressive": False}, "cannot run"),
    ("pretrain-fb", {"pretrain_epochs": 0}, "pretrain_epochs"),
    ("vae", {"kl_start": -1.0}, "kl_start"),
])
def test_recipe_errors(name, options, match):
    with pytest.raises(ValueError, match=match):
        build_recipe(name, options)


def test_resolved_options_are_complete():
    opts = resolve_options("pretrain-fb")
    assert opts["fb_mode"] == "dim" and opts["target_kl"] == 8.0 and not opts["aggressive"]
    assert math.isclose(resolve_options("aggressive")["kl_start"], 0.1)
