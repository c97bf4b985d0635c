"""The Trainer end to end on the tiny config and a small built-in corpus: every recipe, the aggressive
loop's stepping on a real model, the pretrain phase, decay-on-plateau, checkpoints, NaN guard, resume."""
import dataclasses
import json
import math
import os

import pytest
import torch

from helpers import fit_until_killed

from fastvae.data import BUILTIN_CORPORA
from fastvae.training import Trainer, TrainingDiverged
from fastvae.training.checkpoint import load_model, read_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus():
    return BUILTIN_CORPORA["grammar"](seed=0, n_train=160, n_valid=40, n_test=24)


FAST = dict(config="tiny", progress=False, verbose=False, iw_samples=4, eval_batch_size=64)


def make(corpus, recipe="vae", **options):
    return Trainer(None, corpus, recipe=recipe, **{**FAST, **options})


def params_of(module):
    return [p.detach().clone() for p in module.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


RECIPE_CASES = [
    ("lm", {}),
    ("vae", {}),
    ("vae", {"kl_start": 0.1, "warm_up": 1.0, "batch_mode": "padded"}),
    ("beta", {"beta": 0.5}),
    ("cyclical", {"cycles": 2}),
    ("cyclical", {"variant": "ptb-script", "cycle_epochs": 0.5}),
    ("aggressive", {"max_inner_steps": 6, "inner_window": 3}),
    ("pretrain-fb", {"target_kl": 2.0}),
    ("cyclical", {"fb_mode": "dim", "target_kl": 2.0, "aggressive": True, "max_inner_steps": 4}),
]


@pytest.mark.parametrize("recipe,options", RECIPE_CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(RECIPE_CASES)])
def test_each_recipe_end_to_end(corpus, tmp_path, recipe, options):
    out = tmp_path / "run"
    trainer = make(corpus, recipe, epochs=1, out_dir=str(out), **options)
    test = trainer.fit()
    files = set(os.listdir(out))
    assert {"config.json", "metrics.jsonl", "best.pt", "last.pt", "training.png"} <= files
    if recipe == "pretrain-fb":
        assert "best_pretrain.pt" in files
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "valid", "test"}
    assert all("epoch" in r for r in records)
    keys = {"nll", "ppl"} if recipe == "lm" else {"rec", "kl", "elbo", "nll", "mi", "mi_batch", "au"}
    assert keys <= set(test)
    assert all(math.isfinite(test[k]) for k in keys)
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["name"] == recipe and config["train"]["epochs"] == 1
    model, vocab, ckpt = load_model(str(out / "best.pt"))
    assert ckpt["kind"] == ("lm" if recipe == "lm" else "vae") and len(vocab) == len(corpus.vocab)


def test_aggressive_steps_encoder_only_then_decoder_only(corpus):
    trainer = make(corpus, "aggressive", epochs=1, max_inner_steps=5, inner_window=2)
    trainer._start_phase(fresh=True)
    model, policy = trainer.model, trainer.phase.policy
    model.train()
    batch = trainer._batches[0].to(trainer.device)
    enc0, dec0 = params_of(model.encoder), params_of(model.decoder)
    seen_dec_grad_flags = []
    original = trainer.backward_and_step

    def spy(result, **kw):
        seen_dec_grad_flags.append(any(p.requires_grad for p in model.decoder_parameters()))
        original(result, **kw)
        seen_dec_grad_flags.append(any(p.grad is not None for p in model.decoder_parameters()))

    trainer.backward_and_step = spy
    steps = policy.encoder_inner_loop(trainer, batch, kl_weight=0.5)
    assert 2 <= steps <= 5
    assert not any(seen_dec_grad_flags)  # frozen: no decoder weight gradients were computed
    assert not same(params_of(model.encoder), enc0)
    assert same(params_of(model.decoder), dec0)
    assert all(p.requires_grad for p in model.decoder_parameters())  # restored afterwards
    enc1 = params_of(model.encoder)
    trainer.backward_and_step = original
    result = trainer.compute_loss(batch, 0.5)
    trainer.backward_and_step(result, step_encoder=False, step_decoder=True)
    assert same(params_of(model.encoder), enc1)
    assert not same(params_of(model.decoder), dec0)


def test_aggressive_switches_off_when_mi_falls(corpus, monkeypatch):
    trainer = make(corpus, "aggressive", epochs=3, max_inner_steps=3, inner_window=3)
    values = iter([0.5, 0.4, 0.9])
    real = trainer._evaluate

    def scripted(dataset, *, final):
        out = real(dataset, final=final)
        if not final:
            out["mi_batch"] = next(values)
        return out

    monkeypatch.setattr(trainer, "_evaluate", scripted)
    trainer.fit()
    train_records = [r for r in trainer.history if r["split"] == "train"]
    assert [r["aggressive"] for r in train_records] == [True, True, False]
    assert train_records[0]["aggressive_inner_steps"] > 0 and train_records[2]["aggressive_inner_steps"] == 0


def test_beta_selects_on_its_own_objective_and_ptb_script_runs_its_40_epochs(corpus):
    trainer = make(corpus, "beta", epochs=2, beta=0.25)
    trainer.fit()
    valid = [r for r in trainer.history if r["split"] == "valid"]
    for record in valid:  # rec + beta x KL (Li et al.'s text_beta.py), not the ELBO
        assert record["selection"] == pytest.approx(record["rec"] + 0.25 * record["kl"], rel=1e-12)
    assert trainer.patience == 5 and make(corpus, "vae").patience == 2
    script = make(corpus, "cyclical", variant="ptb-script")
    assert script._phase_epochs(script.phase) == 40 and make(corpus, "cyclical")._phase_epochs(script.phase) == 100
    assert make(corpus, "cyclical", variant="ptb-script", epochs=3)._phase_epochs(script.phase) == 3  # the user's wins


@pytest.mark.parametrize("options,expected", [({}, 32), ({"mi_batch_size": 7}, 7)])
def test_per_batch_mi_has_its_own_batch_size(corpus, monkeypatch, options, expected):
    # He et al.'s per-batch MI (and so aggressive's MI stop) is formed over batches of 32, not over the
    # trainer's evaluation batches (64 here)
    import fastvae.evaluation

    seen = []
    real = fastvae.evaluation.evaluate

    def spy(*args, **kwargs):
        seen.append((kwargs["batch_size"], kwargs["mi_batch_size"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(fastvae.evaluation, "evaluate", spy)
    make(corpus, "aggressive", epochs=1, max_inner_steps=2, inner_window=2, **options).fit()
    assert seen and all(s == (64, expected) for s in seen)
    with pytest.raises(ValueError, match="mi_batch_size must be an int >= 1"):
        make(corpus, mi_batch_size=0)


def test_pretrain_phase_reinitialises_decoder_and_keeps_encoder(corpus):
    trainer = make(corpus, "pretrain-fb", epochs=1, pretrain_epochs=2, target_kl=2.0)
    seen = {}
    original = trainer._start_phase

    def spy(fresh):
        if trainer.phase_index == 1:
            seen["best"] = {k: v.clone() for k, v in trainer._best_state.items()}
            original(fresh)
            seen["after"] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        else:
            original(fresh)

    trainer._start_phase = spy
    trainer.fit()
    best, after = seen["best"], seen["after"]
    enc_keys = [k for k in best if k.startswith("encoder.")]
    dec_keys = [k for k in best if k.startswith("decoder.")]
    assert enc_keys and dec_keys
    assert all(torch.equal(best[k], after[k]) for k in enc_keys)  # the selected encoder, kept
    for k in dec_keys:  # every decoder parameter re-drawn from the reference init
        assert not torch.equal(best[k], after[k]), k
        bound = 0.1 if "embed" in k else 0.01
        assert after[k].abs().max() <= bound + 1e-7, k
    phases = [r["phase"] for r in trainer.history if r["split"] == "valid"]
    assert phases == ["pretrain", "pretrain", "fb"]
    for r in trainer.history:
        if r["split"] == "valid":  # selection: rec in the AE phase, the true (unmasked) ELBO after
            expected = r["rec"] if r["phase"] == "pretrain" else r["rec"] + r["kl"]
            assert r["selection"] == pytest.approx(expected)


def test_decay_on_plateau_reloads_best_and_stops(corpus, monkeypatch):
    trainer = make(corpus, "vae", epochs=10, patience=1, decay_min_epoch=0, max_decays=2)
    values = iter([5.0, 6.0, 7.0, 8.0, 9.0])
    real = trainer._evaluate
    states = {}

    def scripted(dataset, *, final):
        out = real(dataset, final=final)
        if not final:
            out["rec"], out["kl"] = next(values), 0.0
            states[trainer.epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        return out

    monkeypatch.setattr(trainer, "_evaluate", scripted)
    trainer.fit()
    valid = [r for r in trainer.history if r["split"] == "valid"]
    assert len(valid) == 3  # 5 (best), 6 (decay 1), 7 (decay 2: stop)
    assert trainer.plateau.decays == 2 and trainer.plateau.lr == pytest.approx(0.25)
    assert trainer.stopped_reason and "decays" in trainer.stopped_reason
    final = trainer.model.state_dict()
    assert all(torch.equal(final[k], states[0][k]) for k in final)  # the best (epoch 1) model
    assert trainer.optimizers["encoder"].param_groups[0]["lr"] == pytest.approx(0.25)


@pytest.mark.parametrize("recipe, options, plateau_decay", [
    ("vae", {}, False),  # switched off by the user
    ("cyclical", {"variant": "ptb-script"}, None),  # off by the variant's default
])
def test_no_plateau_decay_keeps_the_rate_and_the_model(corpus, monkeypatch, recipe, options, plateau_decay):
    trainer = make(corpus, recipe, epochs=4, patience=1, decay_min_epoch=0, max_decays=1,
                   plateau_decay=plateau_decay, **options)
    values = iter([5.0, 6.0, 7.0, 8.0])
    real = trainer._evaluate

    def scripted(dataset, *, final):
        out = real(dataset, final=final)
        if not final:
            out["rec"], out["kl"] = next(values), 0.0
        return out

    monkeypatch.setattr(trainer, "_evaluate", scripted)
    trainer.fit()
    assert len([r for r in trainer.history if r["split"] == "valid"]) == 4  # no stop after "max_decays"
    assert trainer.plateau.decays == 0 and trainer.plateau.lr == trainer.base_lr
    assert not trainer.stopped_reason


def test_plateau_decay_option_is_checked(corpus):
    with pytest.raises(ValueError, match="plateau_decay must be True, False or None"):
        make(corpus, "vae", plateau_decay="off")


def test_checkpoint_holds_the_full_training_state(corpus, tmp_path):
    trainer = make(corpus, "aggressive", epochs=1, out_dir=str(tmp_path), max_inner_steps=3, inner_window=3)
    trainer.fit()
    ckpt = read_checkpoint(str(tmp_path / "last.pt"))
    assert set(ckpt["optimizers"]) == {"encoder", "decoder"}
    state = ckpt["trainer"]
    for key in ("phase_index", "epoch", "position", "step", "global_step", "plateau", "best_value", "policy"):
        assert key in state
    assert set(state["policy"]) >= {"active", "previous_mi"}
    assert {"torch", "python", "numpy", "data", "aux"} <= set(ckpt["rng"])
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # atomic writes leave no temp file


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(corpus, tmp_path):
    trainer = make(corpus, "vae", epochs=3, out_dir=str(tmp_path), log_interval=1)
    steps_per_epoch = len(trainer._epoch_batches())
    bad_step = steps_per_epoch + 2  # in the second epoch
    real = trainer.compute_loss

    def poisoned(batch, kl_weight):
        result = real(batch, kl_weight)
        if trainer.global_step >= bad_step:
            result = dataclasses.replace(result, loss=result.loss * float("nan"),
                                         stats={**result.stats, "loss_sum": result.stats["loss_sum"] * float("nan")})
        return result

    trainer.compute_loss = poisoned
    with pytest.raises(TrainingDiverged, match=f"step {bad_step}"):
        trainer.fit()
    ckpt = read_checkpoint(str(tmp_path / "last.pt"))
    assert ckpt["trainer"]["epoch"] == 1 and ckpt["trainer"]["position"] == 0  # the end of epoch 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("recipe,options", [("aggressive", {"max_inner_steps": 4, "inner_window": 2}),
                                            ("pretrain-fb", {"target_kl": 2.0})])
def test_resume_mid_epoch_is_exact(corpus, tmp_path, recipe, options):
    common = dict(epochs=2, checkpoint_every=3, **options)
    reference = make(corpus, recipe, out_dir=str(tmp_path / "a"), **common)
    reference.fit()

    killed = make(corpus, recipe, out_dir=str(tmp_path / "b"), **common)
    stop_at = 2 * len(killed._epoch_batches()) + 4 if recipe == "pretrain-fb" else 17  # fb: in phase 2
    fit_until_killed(killed, stop_at)
    resumed = make(corpus, recipe, out_dir=str(tmp_path / "b"), **common)
    resumed.fit(resume=str(tmp_path / "b"))
    assert same(params_of(reference.model), params_of(resumed.model))
    assert resumed.test_metrics == reference.test_metrics
    lines_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = [("seconds", "tokens_per_s")]
    assert len(lines_a) == len(lines_b)
    for a, b in zip(lines_a, lines_b):
        ra, rb = json.loads(a), json.loads(b)
        for key in strip[0]:
            ra.pop(key, None), rb.pop(key, None)
        assert ra == rb


def test_bf16_autocast_trains_or_says_why(corpus):
    try:
        trainer = make(corpus, "vae", epochs=1, precision="bf16")
    except ValueError as exc:  # an op of the model has no autocast support on this device
        assert "bf16 is not supported" in str(exc) and "fp32" in str(exc)
        return
    test = trainer.fit()
    assert math.isfinite(test["elbo"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(recipe="vae", nonsense=1), "unknown Trainer option"),
    (dict(recipe="vae", cycles=3), "do not apply to recipe 'vae'"),
    (dict(recipe="vae", precision="fp8"), "precision"),
    (dict(recipe="vae", optimizer="rmsprop"), "optimizer"),
    (dict(recipe="vae", epochs=0), "epochs"),
    (dict(recipe="vae", batch_mode="sorted"), "batch mode"),
    (dict(recipe="vae", optimizer="adam", momentum=0.9), "conflicting"),
    (dict(recipe="vae", device="tpu"), "device"),
    (dict(recipe="vae", config="huge"), "huge"),
])
def test_bad_options_are_clear_errors(corpus, kwargs, match):
    recipe = kwargs.pop("recipe")
    with pytest.raises(ValueError, match=match):
        Trainer(None, corpus, recipe=recipe, **{**FAST, **kwargs})


def test_model_kind_must_match_recipe(corpus):
    from fastvae.models import LSTMLM, get_config

    lm = LSTMLM(len(corpus.vocab), get_config("tiny"))
    with pytest.raises(ValueError, match="trains a VAE, but the model given is a LSTMLM"):
        Trainer(lm, corpus, recipe="vae", **FAST)


def test_public_api_exports():
    import fastvae

    assert fastvae.Trainer is Trainer
    from fastvae.evaluation import evaluate

    assert fastvae.evaluate is evaluate
    from fastvae.diagnostics import LatentDiagnostics

    assert fastvae.LatentDiagnostics is LatentDiagnostics and "LatentDiagnostics" in dir(fastvae)


@pytest.mark.slow
def test_vae_collapses_while_pretrain_fb_keeps_active_units():
    # Adam (the trainers' option) so that the tiny model learns within a few epochs of 3,000 sentences
    corpus = BUILTIN_CORPORA["grammar"](seed=1, n_train=3000, n_valid=300, n_test=100)
    opts = dict(config="tiny", progress=False, verbose=False, iw_samples=2, optimizer="adam")
    vae_test = Trainer(None, corpus, recipe="vae", epochs=5, **opts).fit()
    fb_test = Trainer(None, corpus, recipe="pretrain-fb", epochs=5, pretrain_epochs=5, warm_up=2.0, **opts).fit()
    assert vae_test["au"] == 0, vae_test
    assert fb_test["au"] > 0, fb_test
    assert fb_test["kl"] > vae_test["kl"] + 1.0


@pytest.mark.parametrize("recipe", ["vae", "lm", "aggressive"])
def test_bf16_step_tracks_the_fp32_step(corpus, recipe):
    """--precision bf16 (bf16 weight copies, fused loss) against fp32 on one tiny model: the same loss to bf16
    accuracy, and the parameters after a few steps move the same way (cosine of the updates ~1)."""
    options = {"max_inner_steps": 2, "inner_window": 2} if recipe == "aggressive" else {}
    runs = []
    for precision in ("fp32", "bf16"):
        trainer = make(corpus, recipe, epochs=1, seed=5, precision=precision, **options)
        trainer._start_phase(fresh=True)
        trainer.model.train()
        start = [p.detach().clone() for p in trainer.model.parameters()]
        torch.manual_seed(3)
        losses = []
        for position in range(3):
            stats = trainer.phase.policy.step(trainer, trainer._batches[position], 0.5)
            losses.append(float(stats["loss_sum"]))
        update = torch.cat([(p.detach() - s).flatten() for p, s in zip(trainer.model.parameters(), start)])
        runs.append((losses, update))
    (loss32, up32), (loss16, up16) = runs
    for a, b in zip(loss32, loss16):
        assert abs(a - b) <= 0.02 * abs(a) + 0.05, (loss32, loss16)
    cosine = torch.nn.functional.cosine_similarity(up32, up16, dim=0)
    assert cosine > 0.99, float(cosine)


def test_precision_auto_follows_the_hardware(corpus, monkeypatch):
    from fastvae import precision

    expected = "bf16" if precision.cpu_bf16_features() else "fp32"
    assert precision.resolve("auto", "cpu") == expected
    assert make(corpus, "vae", epochs=1, precision="auto").precision == expected
    precision.cpu_bf16_features.cache_clear()
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: ())
    assert precision.resolve("auto", "cpu") == "fp32"  # no bf16 matrix instructions: emulated bf16 is slower
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: ("amx_bf16",))
    assert precision.resolve("auto", "cpu") == "bf16"
    assert precision.resolve("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="unknown precision"):
        make(corpus, "vae", epochs=1, precision="fp8")
    from fastvae.info import collect, format_report

    report = collect()
    assert "auto_on_cpu" in report["precision"] and "--precision auto picks" in format_report(report)


def test_the_reason_a_phase_stopped_is_not_carried_into_the_next(corpus, monkeypatch):
    """pretrain-fb: pretraining ends after its decays; the free-bits phase ("fb") then runs its epochs out."""
    trainer = make(corpus, "pretrain-fb", pretrain_epochs=10, epochs=2, patience=1, decay_min_epoch=0,
                   max_decays=1)
    values = iter([5.0, 6.0, 4.0, 3.0])  # pretrain: best, worse (decay 1 of 1: stop); fb: improving
    real = trainer._evaluate
    reasons = {}

    def scripted(dataset, *, final):
        out = real(dataset, final=final)
        if not final:
            out["rec"], out["kl"] = next(values), 0.0
            reasons[trainer.phase.name] = trainer.stopped_reason  # the reason set so far, as this epoch starts
        return out

    monkeypatch.setattr(trainer, "_evaluate", scripted)
    trainer.fit()
    phases = [r["phase"] for r in trainer.history if r["split"] == "valid"]
    assert phases == ["pretrain", "pretrain", "fb", "fb"]
    assert reasons["fb"] is None  # the pretrain phase's "stopped after 1 decays" did not reach it
    assert trainer.stopped_reason is None  # the run ended because the fb phase ran its 2 epochs
