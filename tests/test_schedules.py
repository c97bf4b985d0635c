"""KL-weight schedules against the papers' formulas (recipes.md)."""
import math
import random

import numpy as np
import pytest

from fastvae.training.schedules import (ConstantSchedule, CosineRestartLR, CyclicalSchedule,
                                        LinearAnnealing)


def frange_cycle(n_iter, start=0.0, stop=1.0, n_cycle=4, ratio=0.5, shape="linear"):
    """Fu et al.'s blog functions (frange_cycle_linear/sigmoid/cosine), written out as the oracle."""
    values = np.ones(n_iter) * stop
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and int(i + c * period) < n_iter:
            if shape == "linear":
                values[int(i + c * period)] = v
            elif shape == "sigmoid":
                values[int(i + c * period)] = 1.0 / (1.0 + math.exp(-(v * 12.0 - 6.0)))
            else:
                values[int(i + c * period)] = 0.5 - 0.5 * math.cos(v * math.pi)
            v += step
            i += 1
    return values


def reference_linear_annealing(kl_start, warm_up, batches_per_epoch, n_steps):
    """He et al.'s loop: the weight is incremented before each step, capped at 1."""
    weight, rate, out = kl_start, (1.0 - kl_start) / (warm_up * batches_per_epoch), []
    for _ in range(n_steps):
        weight = min(1.0, weight + rate)
        out.append(weight)
    return out


@pytest.mark.parametrize("shape", ["linear", "sigmoid", "cosine"])
def test_cyclical_matches_blog_formula_integer_period(shape):
    cycles = random.randint(1, 6)
    period = random.randint(4, 40)
    ratio = random.choice([0.25, 0.5, 0.75, 1.0])
    steps_per_epoch = period * cycles
    sched = CyclicalSchedule(cycles=cycles, ratio=ratio, ramp=shape).bind(steps_per_epoch, 1)
    expected = frange_cycle(steps_per_epoch, n_cycle=cycles, ratio=ratio, shape=shape)
    got = np.array([sched(t) for t in range(steps_per_epoch)])
    # the blog accumulates v by repeated addition, so at the exact end of the ramp its v may
    # exceed `stop` by rounding and keep the plateau value; everywhere else the forms agree
    in_cycle = np.arange(steps_per_epoch) % period
    ramp_end = np.isclose(in_cycle, period * ratio)
    assert np.allclose(got[~ramp_end], expected[~ramp_end], atol=1e-9)
    assert np.allclose(got[ramp_end], expected[ramp_end], atol=0.003)


def test_cyclical_paper_formula_directly():
    # T = 1000, M = 4, R = 0.5: period 250, ramp over 125 steps
    sched = CyclicalSchedule().bind(100, 10)
    assert sched.period == 250
    assert sched(0) == 0.0
    assert sched(62) == pytest.approx(62 / 125)
    assert sched(125) == 1.0 and sched(249) == 1.0
    assert sched(250) == 0.0 and sched(251) == pytest.approx(1 / 125)
    assert sched.cycle_index(999) == 3


def test_cyclical_non_integer_period_stays_close_to_blog():
    T, M = 997, 3
    sched = CyclicalSchedule(cycles=M).bind(T, 1)
    expected = frange_cycle(T, n_cycle=M)
    got = np.array([sched(t) for t in range(T)])
    assert np.abs(got - expected).max() <= 1e-9


def test_cyclical_ptb_script_variant():
    # 10-epoch cycles restarting at 0.1, reaching 1 after 4.5 epochs
    spe = 20
    sched = CyclicalSchedule(cycle_epochs=10, ratio=0.45, start=0.1).bind(spe, 40)
    assert sched.period == 200
    assert sched(0) == pytest.approx(0.1)
    assert sched(int(4.5 * spe)) == pytest.approx(1.0)
    assert sched(int(4.5 * spe) - 1) < 1.0
    assert sched(200) == pytest.approx(0.1)
    lr = CosineRestartLR(sched)
    assert lr(0) == pytest.approx(1.0)
    assert lr(100) == pytest.approx(0.5)
    assert lr(199) < 0.01 and lr(200) == pytest.approx(1.0)
    # the script's form: cur_lr = lr * 0.5 * (1 + cos(pi * ((epoch - 1) % cycle) / cycle)), once per epoch
    per_epoch = CosineRestartLR(sched, per_epoch=True)
    for step in range(40 * spe):
        epoch = step // spe + 1
        assert per_epoch(step) == pytest.approx(0.5 * (1 + math.cos(math.pi * ((epoch - 1) % 10) / 10)), abs=1e-12)


@pytest.mark.parametrize("kl_start,warm_up", [(0.1, 10), (0.0, 10), (0.5, 2.5), (0.1, 1)])
def test_linear_annealing_matches_reference_loop(kl_start, warm_up):
    spe = random.randint(1, 30)
    sched = LinearAnnealing(kl_start, warm_up).bind(spe, 20)
    n = int(warm_up * spe) + 10
    ref = reference_linear_annealing(kl_start, warm_up, spe, n)
    got = [sched(t) for t in range(n)]
    assert np.allclose(got, ref, atol=1e-9)
    assert got[-1] == 1.0
    assert all(b >= a for a, b in zip(got, got[1:]))


def test_linear_annealing_uses_actual_batches():
    assert LinearAnnealing(0.0, 10).bind(7, 3).increment == pytest.approx(1 / 70)
    # no warm-up: issue 17 (Li et al.'s code keeps kl_start); this used to jump to the full weight
    assert LinearAnnealing(0.3, 0).bind(5, 2)(0) == 0.3


def test_constant():
    sched = ConstantSchedule(0.4).bind(3, 1)
    assert sched(0) == 0.4 and sched(10_000) == 0.4


@pytest.mark.parametrize("make,match", [
    (lambda: CyclicalSchedule(cycles=0), "cycles"),
    (lambda: CyclicalSchedule(ratio=0.0), "ratio"),
    (lambda: CyclicalSchedule(ratio=1.5), "ratio"),
    (lambda: CyclicalSchedule(ramp="tanh"), "ramp"),
    (lambda: CyclicalSchedule(start=0.5, stop=0.2), "start"),
    (lambda: LinearAnnealing(-0.1, 10), "kl_start"),
    (lambda: LinearAnnealing(0.1, float("nan")), "warm_up"),
    (lambda: LinearAnnealing(2.0, 10), "kl_start"),
    (lambda: ConstantSchedule(-1), "constant"),
])
def test_bad_schedule_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_unbound_schedule_is_a_clear_error():
    with pytest.raises(RuntimeError, match="bind"):
        CyclicalSchedule()(3)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        LinearAnnealing().bind(0, 3)


def test_no_warm_up_keeps_the_start_weight_and_a_lone_zero_warm_up_means_weight_one():
    from fastvae.training.recipes import build_recipe

    sched = LinearAnnealing(0.3, 0).bind(7, 5)
    assert [sched(s) for s in (0, 1, 6, 34)] == [0.3] * 4  # Li et al.'s code keeps kl_start
    for recipe in ("vae", "aggressive", "pretrain-fb"):
        alone = build_recipe(recipe, {"warm_up": 0}).phases[-1].schedule.bind(7, 5)
        assert [alone(s) for s in (0, 20)] == [1.0, 1.0], recipe  # no annealing
        both = build_recipe(recipe, {"warm_up": 0, "kl_start": 0.2}).phases[-1].schedule.bind(7, 5)
        assert [both(s) for s in (0, 20)] == [0.2, 0.2], recipe
