"""The benchmark harness: FLOP floors, result summaries, README rendering, and reproduce.py's arguments,
data layouts and published-figures table (on fake runs: no training here)."""
import json
import math
import os
import pickle
import re
import sys

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, os.path.abspath(BENCH))

import conftest  # noqa: E402  (tests/ is on sys.path, as for helpers)
import floor  # noqa: E402
import render  # noqa: E402
import render_reproduction  # noqa: E402
import reproduce  # noqa: E402
import run_all  # noqa: E402

from fastvae.data.yelp import find_layout, read_yelp, split_sentences  # noqa: E402

RECIPES_MD = os.path.join(conftest.SHARED, "docs", "recipes.md")


# ----------------------------------------------------------------------------- floor.py
def test_flop_model_matches_hand_count():
    w = floor.Workload(emb=256, hidden=256, latent=32, vocab=6300)
    enc = 2 * 1024 * (256 + 256)
    dec = 2 * 1024 * (256 + 32 + 256)
    out = 2 * 256 * 6300
    assert w.train_flops_per_token() == 3 * (enc + dec + out)
    assert w.train_flops_per_token(vae=False) == 3 * (2 * 1024 * 512 + out)
    # the aggressive sub-step skips the decoder's weight gradients: cheaper than a full step, dearer than forward
    assert enc + dec + out < w.encoder_substep_flops_per_token() < w.train_flops_per_token()
    iw = w.iw_flops_per_sentence(tokens=11, samples=500)
    assert iw == 11 * enc + 11 * 2 * 1024 * 256 + 500 * (11 * (2 * 1024 * 256 + out) + 2 * 1024 * 32 + 2 * 32 * 256)


def test_floors_agree_with_issue_figures():
    # issue 5: at ~136 GFLOP/s the floor is ~8,400 tokens/s (ptb size) and ~0.15 s per IW-NLL sentence
    f = floor.floors(136.0)
    assert f["ptb"]["train_vae_tokens_per_s"] == pytest.approx(8400, rel=0.05)
    assert 1 / f["ptb"]["iw_nll_sentences_per_s"] == pytest.approx(0.15, rel=0.1)
    speeds = [f[size]["train_vae_tokens_per_s"] for size in ("yahoo", "yelp", "ptb")]
    assert speeds == sorted(speeds) and len(set(speeds)) == 3
    rate = 50 + 100 * torch.rand(()).item()  # floors scale linearly with the rate
    g = floor.floors(rate)
    assert g["ptb"]["train_vae_tokens_per_s"] / f["ptb"]["train_vae_tokens_per_s"] == pytest.approx(rate / 136.0)


def test_floor_helpers_and_errors():
    assert floor.fraction_of_floor(50.0, 200.0) == 0.25
    assert floor.floor_tokens_per_s(1.0, 1e9) == pytest.approx(1.0)
    for bad in [(0.0, 1.0), (1.0, 0.0), (-1.0, 5.0)]:
        with pytest.raises(ValueError, match="positive"):
            floor.floor_tokens_per_s(*bad)
    with pytest.raises(ValueError, match="floor speed"):
        floor.fraction_of_floor(1.0, 0.0)
    with pytest.raises(ValueError, match="Workload.hidden"):
        floor.Workload(emb=8, hidden=0, latent=2, vocab=10)
    with pytest.raises(ValueError, match="unknown model size"):
        floor.Workload.from_config("imdb")
    with pytest.raises(ValueError, match="tokens and samples"):
        floor.Workload.from_config("ptb").iw_flops_per_sentence(0)


def test_hardware_slug():
    assert floor.hardware_slug("AMD EPYC 7B13 64-Core Processor") == "amd-epyc-7b13-64-core-processor"
    assert floor.hardware_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert floor.hardware_slug("  Intel(R) Xeon(R) @ 2.20GHz ") == "intel-r-xeon-r-2-20ghz"
    with pytest.raises(ValueError, match="file name"):
        floor.hardware_slug("(( ))")


def test_gemm_rate_is_measured():
    rate = floor.measure_gemm_gflops("cpu", shapes=[(64, 48, 32), (96, 64, 80)], repeats=2, min_time=0.005)
    shapes = {"64x48x32", "96x64x80"}
    # ATen's product always; oneDNN's beside it where this torch's oneDNN multiplies float32 (csrc/gemm.h's choice)
    assert rate["gflops"] > 0 and shapes <= set(rate["per_shape"]) <= shapes | {f"{s} (onednn)" for s in shapes}
    assert rate["gflops"] == max(rate["per_shape"].values())


def test_the_floors_onednn_product_is_the_product():
    a, b = torch.randn(33, 17), torch.randn(17, 9)
    product = floor._onednn_fp32_product(a, b)
    if product is None:
        pytest.skip("this torch's oneDNN does not multiply float32")
    assert torch.allclose(product(), a @ b, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- run_all.py
def _fake_bench(name, group, provider, times, extra=None):
    return {"name": name, "group": group,
            "stats": {"median": sorted(times)[len(times) // 2], "min": min(times),
                      "mean": sum(times) / len(times), "stddev": 0.0, "rounds": len(times)},
            "extra_info": {"provider": provider, "shape": "ptb B=32", "device": "cpu (2 threads)", **(extra or {})}}


def fake_results(with_fastvae=True, device="cpu", hardware="Fake CPU 9000"):
    train_extra = {"suite": "training", "config": "ptb", "recipe": "vae", "item": "tokens", "items_per_round": 1000,
                   "flops_per_round": 2e9}
    iw_extra = {"suite": "iw_nll", "config": "ptb", "item": "sentences", "items_per_round": 8, "flops_per_round": 8e9}
    raw_train = {"benchmarks": [_fake_bench("t[b]", "train vae ptb", "baseline", [0.4, 0.5, 0.6], train_extra)]}
    if with_fastvae:
        raw_train["benchmarks"].append(_fake_bench("t[f]", "train vae ptb", "fastvae", [0.2, 0.25, 0.3], train_extra))
    raw_iw = {"benchmarks": [_fake_bench("i[b]", "iw_nll ptb", "baseline", [4.0, 4.0], iw_extra),
                             _fake_bench("i[f]", "iw_nll ptb", "fastvae", [1.0, 1.0], iw_extra)]}
    raw_latent = {"benchmarks": [_fake_bench("l[e]", "sample_and_kl B=32", "eager", [1e-4]),
                                 _fake_bench("l[c]", "sample_and_kl B=32", "compile", [5e-5]),
                                 _fake_bench("l[f]", "sample_and_kl B=32", "fastvae", [2e-5])]}
    rows = run_all.summarize(raw_train, "training", 10.0) + run_all.summarize(raw_iw, "iw_nll", 10.0) \
        + run_all.summarize(raw_latent, "latent", 10.0)
    return {"format": run_all.RESULTS_FORMAT, "hardware": hardware, "slug": floor.hardware_slug(hardware),
            "device": device, "cpu_count": 2, "torch_threads": 2, "torch": torch.__version__, "quick": True,
            "started": "2026-11-22T23:00:00+00:00", "command": "python benchmarks/run_all.py --quick",
            "git_commit": "abc1234", "load_average_start": [1.5, 1.2, 1.0], "load_average_end": [2.0, 1.5, 1.1],
            "gemm_start": {"gflops": 10.0}, "gemm_end": {"gflops": 9.5},
            "suites": {"training": {"returncode": 0 if with_fastvae else 1, "benchmarks": len(raw_train["benchmarks"])},
                       "iw_nll": {"returncode": 0, "benchmarks": 2}, "latent": {"returncode": 0, "benchmarks": 3}},
            "rows": rows}


def test_summarize_ratios_and_floor_fractions():
    rows = {(r["suite"], r["provider"]): r for r in fake_results()["rows"]}
    fast, base = rows[("training", "fastvae")], rows[("training", "baseline")]
    assert fast["per_s_median"] == pytest.approx(1000 / 0.25) and fast["per_s_best"] == pytest.approx(1000 / 0.2)
    assert fast["speedup_median"] == pytest.approx(0.5 / 0.25) and base["speedup_median"] == pytest.approx(1.0)
    # 2e9 FLOPs at 10 GFLOP/s take 0.2 s: the best round sits exactly on the floor
    assert fast["fraction_of_floor_best"] == pytest.approx(1.0)
    assert fast["fraction_of_floor_median"] == pytest.approx(0.8)
    assert rows[("iw_nll", "fastvae")]["speedup_median"] == pytest.approx(4.0)
    latent = rows[("latent", "fastvae")]
    assert latent["reference_provider"] == "eager" and latent["speedup_median"] == pytest.approx(5.0)
    assert "fraction_of_floor_median" not in latent  # no FLOP count given, no floor claimed


def test_reference_provider_choice():
    assert run_all.reference_provider(["fastvae", "Baseline"]) == "Baseline"
    assert run_all.reference_provider(["compile", "eager", "fastvae"]) == "eager"
    assert run_all.reference_provider(["fastvae", "lstmcell-loop"]) is None


def test_discover_suites_errors():
    found = run_all.discover_suites()
    assert {"training", "iw_nll"} <= set(found)
    with pytest.raises(SystemExit, match="unknown suite"):
        run_all.discover_suites(["no-such-suite"])


# ----------------------------------------------------------------------------- render.py
def _write_results(directory, *results):
    for r in results:
        with open(os.path.join(directory, f"{r['slug']}.json"), "w") as handle:
            json.dump(r, handle)
    with open(os.path.join(directory, "cpu-latent.json"), "w") as handle:  # a raw pytest-benchmark file: skipped
        json.dump({"benchmarks": []}, handle)


def test_readme_block_says_gpu_pending_and_missing_numbers(tmp_path):
    block = render.readme_block([fake_results(with_fastvae=False)], str(tmp_path))
    assert block.startswith(render.START) and block.endswith(render.END)
    assert "GPU: pending" in block
    assert "not measured" in block  # the failed fastvae row is said in words, not left blank
    assert "Fake CPU 9000" in block and "python benchmarks/run_all.py --quick" in block
    assert "1.50/1.20/1.00" in block  # the load it ran under
    assert "`training` FAILED" in block
    gpu = fake_results(device="cuda", hardware="NVIDIA H100 80GB HBM3")
    assert "GPU: pending" not in render.readme_block([fake_results(), gpu], str(tmp_path))


def test_headline_table_figures():
    table = render.headline_table(fake_results())
    line = next(x for x in table.splitlines() if "train ptb `vae`" in x)
    assert "5,000 (4,000)" in line  # fastvae tokens/s best (median)
    assert "2.00x (2.00x)" in line and "100%" in line
    iw = next(x for x in table.splitlines() if "IW-NLL" in x)
    assert "8.00 (8.00)" in iw and "2.00 (2.00)" in iw and "4.00x" in iw


def test_replace_block_needs_markers():
    text = f"# title\n\n{render.START}\nold\n{render.END}\ntail\n"
    replaced = render.replace_block(text, f"{render.START}new{render.END}")
    assert replaced == f"# title\n\n{render.START}new{render.END}\ntail\n"
    with pytest.raises(ValueError, match="exactly one"):
        render.replace_block("# no markers\n", "x")
    with pytest.raises(ValueError, match="exactly one"):
        render.replace_block(f"{render.END}\n{render.START}\n", "x")


def test_render_main_writes_readme_markdown_and_chart(tmp_path):
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    _write_results(str(results_dir), fake_results())
    (results_dir / "reproduce-yelp-cpu.md").write_text("# table\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{render.START}\nstale\n{render.END}\n")
    args = ["--results", str(results_dir), "--readme", str(readme)]
    assert render.main(args + ["--check"]) == 1
    assert render.main(args) == 0
    assert render.main(args + ["--check"]) == 0
    text = readme.read_text()
    assert "stale" not in text and "reproduce-yelp-cpu.md" in text and "GPU: pending" in text
    md = (results_dir / "fake-cpu-9000.md").read_text()
    assert "sample_and_kl B=32" in md and "vs eager" in md
    png = results_dir / "fake-cpu-9000.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_markers = tmp_path / "plain.md"
    no_markers.write_text("# nothing\n")
    assert render.main(["--results", str(results_dir), "--readme", str(no_markers)]) == 2


# ----------------------------------------------------------------------------- reproduce.py
def test_parse_recipes():
    assert reproduce.parse_recipes("paper") == ["vae", "beta", "cyclical", "aggressive", "pretrain-fb"]
    assert reproduce.parse_recipes("all")[-1] == "lm"
    assert reproduce.parse_recipes("vae, pretrain-fb") == ["vae", "pretrain-fb"]
    with pytest.raises(ValueError, match="unknown recipe.*savae"):
        reproduce.parse_recipes("vae,savae")
    with pytest.raises(ValueError, match="twice"):
        reproduce.parse_recipes("vae,vae")
    with pytest.raises(ValueError, match="empty"):
        reproduce.parse_recipes(" , ")


def test_resolve_args_budget_and_gpu_check_call(tmp_path):
    # the lead's scripts/gpu_check.sh calls exactly this
    args, budget, recipes, published, out = reproduce.resolve_args(
        ["--config", "tiny", "--budget", "small", "--device", "cuda", "--out", str(tmp_path / "r")])
    assert args.device == "cuda" and budget == reproduce.BUDGETS["small"] and published == "none"
    assert recipes == list(reproduce.PAPER_RECIPES) and out == str(tmp_path / "r")
    args, budget, _, published, out = reproduce.resolve_args(
        ["--data", str(tmp_path), "--config", "yelp", "--budget", "small", "--epochs", "1", "--iw-samples", "7"])
    assert (budget.epochs, budget.iw_samples, budget.pretrain_epochs) == (1, 7, 1)  # pretraining capped by epochs
    assert published == "yelp15" and out.endswith("reproduce-yelp-small")
    assert reproduce.resolve_args(["--config", "yahoo"])[3] == "yahoo"
    budget = reproduce.resolve_args(["--budget", "small", "--warm-up", "3.5", "--pretrain-epochs", "4"])[1]
    assert (budget.warm_up, budget.pretrain_epochs, budget.epochs) == (3.5, 4, 10)
    # every budget keeps the papers' SGD; small caps the aggressive phase, full leaves it to the MI stop
    assert all(b.optimizer is None for b in reproduce.BUDGETS.values())
    assert budget.aggressive_epochs == 2 and reproduce.BUDGETS["full"].aggressive_epochs is None
    assert reproduce.resolve_args(["--budget", "small", "--optimizer", "adam"])[1].optimizer == "adam"
    assert reproduce.resolve_args(["--budget", "small", "--aggressive-epochs", "3"])[1].aggressive_epochs == 3
    assert reproduce.resolve_args(["--budget", "small", "--aggressive-epochs", "0"])[1].aggressive_epochs is None
    assert reproduce.recipe_options("aggressive", budget) == {"warm_up": 3.5, "aggressive_epochs": 2}
    assert reproduce.recipe_options("aggressive", budget, {"aggressive": {"aggressive_epochs": 4}}) == {
        "warm_up": 3.5, "aggressive_epochs": 4}  # the user's --set wins
    assert reproduce.resolve_args(["--budget", "full", "--optimizer", "adam"])[1].optimizer == "adam"
    # small runs cyclical as Fu et al.'s PTB script over its 40 epochs; --epochs sets every recipe's epochs
    small = reproduce.BUDGETS["small"]
    assert reproduce.recipe_options("cyclical", small) == {"variant": "ptb-script", "epochs": 40}
    assert reproduce.split_epochs(reproduce.recipe_options("cyclical", small), "cyclical", 10) == (
        {"variant": "ptb-script"}, 40)
    # vae is the published "VAE + anneal" baseline: kl_start 0.1, the budget's warm-up (He et al.'s 10 under full)
    assert reproduce.split_epochs(reproduce.recipe_options("vae", small), "vae", 10) == (
        {"kl_start": 0.1, "warm_up": small.warm_up}, 10)
    assert reproduce.recipe_options("vae", reproduce.BUDGETS["full"]) == {"kl_start": 0.1, "warm_up": 10.0}
    # Fu et al.'s script trains their own model: at the ptb size, cyclical's ptb-script variant trains ptb-fu2019
    assert reproduce.model_config_for("cyclical", {"variant": "ptb-script"}, "ptb") == "ptb-fu2019"
    assert reproduce.model_config_for("cyclical", {"variant": "paper"}, "ptb") == "ptb"
    assert reproduce.model_config_for("cyclical", {"variant": "ptb-script"}, "yelp") == "yelp"
    assert reproduce.model_config_for("vae", {}, "ptb") == "ptb"
    one = reproduce.resolve_args(["--budget", "small", "--epochs", "1"])[1]
    assert reproduce.recipe_options("cyclical", one) == {"variant": "ptb-script"}
    assert reproduce.recipe_options("cyclical", small, {"cyclical": {"variant": "paper", "epochs": 12}}) == {
        "variant": "paper", "epochs": 12}  # the user's --set wins
    assert reproduce.resolve_args(["--config", "yahoo", "--published", "none"])[3] == "none"


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "positive integer"),
    (["--iw-samples", "many"], "positive integer"),
    (["--config", "imdb"], "invalid choice"),
    (["--budget", "tiny"], "invalid choice"),
    (["--recipe", "vae,sa-vae"], "unknown recipe"),
    (["--data", "/no/such/folder"], "no such folder"),
    (["--warm-up", "-1"], "positive number of epochs"),
    (["--pretrain-epochs", "0"], "positive integer"),
    (["--aggressive-epochs", "-1"], "non-negative integer"),
    (["--aggressive-epochs", "two"], "non-negative integer"),
    (["--recipe", "aggressive", "--set", "aggressive.aggressive_epochs=0"], "aggressive_epochs"),
    (["--jobs", "0"], "positive integer"),
    (["--time-limit", "0"], "positive number of minutes"),
    (["--recipe", "pretrain-fb", "--set", "pretrain-fb.pretrain_epochs=2.5"], "pretrain_epochs must be an int >= 1"),
    (["--recipe", "vae", "--set", "cyclical.cycles=2"], "not among the recipes run"),
    (["--recipe", "cyclical", "--set", "cyclical.cycels=2"], "do not apply to recipe 'cyclical'"),
    (["--recipe", "cyclical", "--set", "cycles=2"], "expected RECIPE.OPTION=VALUE"),
    (["--recipe", "cyclical", "--set", "cyclical.cycles=2", "--set", "cyclical.cycle_epochs=3"], "conflicting"),
    (["--recipe", "cyclical", "--set", "cyclical.epochs=0"], "cyclical.epochs must be a positive whole number"),
    (["--recipe", "vae", "--set", "vae.epochs=2.5"], "vae.epochs must be a positive whole number"),
    (["--recipe", "vae", "--set", "vae.epochs=true"], "vae.epochs must be a positive whole number"),
])
def test_resolve_args_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        reproduce.resolve_args(argv)
    assert message in capsys.readouterr().err


def test_set_options_reach_the_recipe_and_the_worker_command():
    args, budget, recipes, _, _ = reproduce.resolve_args(
        ["--recipe", "cyclical,pretrain-fb", "--budget", "small", "--set", "cyclical.cycles=2",
         "--set", "pretrain-fb.fb-mode=kingma", "--set", "pretrain-fb.target_kl=4.5", "--epochs", "3"])
    assert args.recipe_settings == {"cyclical": {"cycles": 2}, "pretrain-fb": {"fb_mode": "kingma", "target_kl": 4.5}}
    # the user's options win over the budget's, the budget's stay where not overridden
    options = reproduce.recipe_options("pretrain-fb", budget, args.recipe_settings)
    assert options == {"warm_up": budget.warm_up, "pretrain_epochs": budget.pretrain_epochs, "fb_mode": "kingma",
                       "target_kl": 4.5}
    assert reproduce.recipe_options("vae", budget, args.recipe_settings) == {"kl_start": 0.1, "warm_up": budget.warm_up}
    # a worker receives its job object itself (pickled across the process boundary), with the same options
    jobs = reproduce.plan_jobs(recipes, reproduce.RunSettings.from_args(args), budget, "/tmp/x", workers=2, threads=1)
    job = next(j for j in jobs if j.recipe == "cyclical")
    assert pickle.loads(pickle.dumps(job)) == job
    assert job.budget.epochs == 3 and job.threads == 1
    assert job.out == os.path.join("/tmp/x", "jobs", "cyclical") and job.log == os.path.join(job.out, "log.txt")
    assert reproduce.recipe_options("cyclical", job.budget, job.settings.recipe_settings) == {
        "variant": "ptb-script", "cycles": 2}
    # the long recipes start first
    assert reproduce.job_order(list(reproduce.PAPER_RECIPES), reproduce.BUDGETS["small"], {}) == [
        "aggressive", "cyclical", "pretrain-fb", "vae", "beta"]
    assert reproduce.job_order(["vae", "beta"], reproduce.BUDGETS["small"], {"beta": {"epochs": 12}}) == [
        "beta", "vae"]
    # a worker gets every budget override, the aggressive cap and per-recipe epochs included
    args, budget, recipes, _, _ = reproduce.resolve_args(["--recipe", "aggressive,vae", "--budget", "small",
                                                          "--aggressive-epochs", "0", "--set", "vae.epochs=3"])
    jobs = {j.recipe: pickle.loads(pickle.dumps(j))
            for j in reproduce.plan_jobs(recipes, reproduce.RunSettings.from_args(args), budget, "/tmp/x", workers=2)}
    assert "aggressive_epochs" not in reproduce.recipe_options("aggressive", jobs["aggressive"].budget,
                                                               jobs["aggressive"].settings.recipe_settings)
    vae = jobs["vae"]
    assert vae.budget.aggressive_epochs is None
    assert reproduce.split_epochs(reproduce.recipe_options("vae", vae.budget, vae.settings.recipe_settings), "vae",
                                  vae.budget.epochs) == ({"kl_start": 0.1, "warm_up": vae.budget.warm_up}, 3)
    # one job at a time: the recipes' order, each run directory in --out itself, output to this process
    jobs = reproduce.plan_jobs(recipes, reproduce.RunSettings.from_args(args), budget, "/tmp/x")
    assert [(j.recipe, j.out, j.log) for j in jobs] == [("aggressive", "/tmp/x", None), ("vae", "/tmp/x", None)]
    # Python's spellings of booleans are booleans, not the (truthy) strings "False"/"True"
    args = reproduce.resolve_args(["--recipe", "vae", "--set", "vae.aggressive=False", "--set", "vae.fb_mode=dim",
                                   "--set", "vae.target_kl=4"])[0]
    assert args.recipe_settings == {"vae": {"aggressive": False, "fb_mode": "dim", "target_kl": 4}}


def test_yelp_layout_labels_from_suffix(tmp_path):
    (tmp_path / "sentiment.dev.0").write_text("bad food .\nnever again .\n\nslow service .\n")
    (tmp_path / "sentiment.dev.1").write_text("great place !\nlovely staff .\n")
    assert find_layout(str(tmp_path)) == "yelp"
    found = read_yelp(str(tmp_path))
    assert sorted(found["dev"]) == [(0, "bad food ."), (0, "never again ."), (0, "slow service ."),
                                    (1, "great place !"), (1, "lovely staff .")]
    budget = reproduce.BUDGETS["small"]
    data_dir, info = reproduce.prepare_data(str(tmp_path), str(tmp_path / "out"), budget, seed=3)
    lines = {s: (tmp_path / "out" / "data" / f"{s}.txt").read_text().splitlines() for s in ("train", "valid", "test")}
    assert info["sentences"] == {"train": 3, "valid": 1, "test": 1}
    everything = sorted(line for split in lines.values() for line in split)
    assert everything == sorted(f"{label}\t{text}" for label, text in found["dev"])
    again, _ = reproduce.prepare_data(str(tmp_path), str(tmp_path / "out2"), budget, seed=3)
    assert (tmp_path / "out2" / "data" / "train.txt").read_text() == "\n".join(lines["train"]) + "\n"


def test_layout_errors(tmp_path):
    (tmp_path / "train.txt").write_text("a b\n")
    with pytest.raises(ValueError, match="missing test.txt, valid.txt"):
        find_layout(str(tmp_path))
    (tmp_path / "sentiment.holdout.1").write_text("x\n")
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        read_yelp(str(tmp_path))


def test_split_sentences_caps_and_determinism():
    rows = [(i % 2, f"s{i}") for i in range(100)]
    a = split_sentences(rows, seed=1, max_train=50, max_eval=5)
    assert [len(a[k]) for k in ("train", "valid", "test")] == [50, 5, 5]
    assert a == split_sentences(rows, seed=1, max_train=50, max_eval=5)
    full = split_sentences(rows, seed=1)
    assert not set(full["train"]) & set(full["test"]) and len(full["train"]) == 80
    with pytest.raises(ValueError, match="too few"):
        split_sentences(rows[:2], seed=0)


def _fake_run(recipe, au, nll=330.0, kl=0.0, mi=0.0):
    test = {"nll": nll, "kl": kl, "mi_batch": mi, "mi": mi * 1.5, "ppl": 60.0, "elbo": nll + 1, "rec": nll + 1 - kl}
    if recipe != "lm":
        test["au"] = au
        test["probe_acc"] = 0.5 + 0.05 * au
    return {"recipe": recipe, "options": {}, "test": test, "best_epoch": 1, "seconds": 90.0, "train_seconds": 60.0,
            "epochs_run": 2}


def test_published_table_and_verdict():
    runs = [_fake_run("vae", 0), _fake_run("beta", 4, kl=3.0, mi=1.5), _fake_run("cyclical", 0),
            _fake_run("pretrain-fb", 12, kl=8.0, mi=2.9), _fake_run("lm", None)]
    runs[1]["test"].update(ss_acc_100=0.61, ss_acc_1000=0.705, bleu_greedy_mean=12.34, bleu_beam_mean=13.0,
                           bleu_greedy_sample=9.0, bleu_beam_sample=9.5)
    runs[2]["model_config"] = "ptb-fu2019"
    table = render_reproduction.render_table(runs, config="yahoo", published="yahoo", budget=reproduce.BUDGETS["full"],
                                             data_info={"source": "x", "layout": "plain"}, device="cpu", iw_samples=500)
    row = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| `")}
    assert "328.6 / 0.0 / 0.0" in row["`vae`"] and "collapsed (AU 0)" in row["`vae`"]
    assert "328.5 / 3.8 / 2.2" in row["`beta`"] and "4 active units" in row["`beta`"]
    # BLEU when measured
    assert "| 12.3 / 13.0 | 9.0 / 9.5 | 0.610 / 0.705 |" in row["`beta`"] and "| - | - |" in row["`vae`"]
    assert "`cyclical` trains `ptb-fu2019`" in table
    assert render_reproduction.collapse_verdict(_fake_run("cyclical", 1)) == "1 active unit"
    assert "not published" in row["`cyclical`"] and "not published" in row["`pretrain-fb`"]
    assert row["`lm`"].rstrip().endswith("328.1 |") and "n/a (language model)" in row["`lm`"]
    assert "NLL (IW-500)" in table and "(Yahoo)" in table and "He et al." in table
    assert "Contrast: `vae` collapsed (AU 0); remedies keeping active units: `beta` (4), `pretrain-fb` (12); " \
           "remedies that collapsed too: `cyclical`." in table
    yelp = render_reproduction.render_table(runs[:1], config="yelp", published="yelp15",
                                            budget=reproduce.BUDGETS["small"], data_info={}, device="cpu",
                                            iw_samples=100)
    assert "358.1 / 0.0 / 0.0" in yelp and "Caveat" in yelp and "Budget `small`" in yelp
    bare = render_reproduction.render_table(runs[:2], config="ptb", published="none",
                                            budget=reproduce.BUDGETS["small"], data_info={}, device="cpu",
                                            iw_samples=100)
    assert "Published:" not in bare and "published NLL / KL / MI |" in bare


def test_published_figures_match_recipes_md():
    if not os.path.exists(RECIPES_MD):
        pytest.skip("../shared/docs/recipes.md is not beside the repository")
    text = open(RECIPES_MD).read()
    rows = {}
    for label, yahoo, yelp in re.findall(r"^\| ([^|]+?) \| ([\d./ ]+) \| ([\d./ ]+) \|$", text, flags=re.M):
        rows[label] = ([float(x) for x in yahoo.split("/")], [float(x) for x in yelp.split("/")])
    for key, label in render_reproduction.PUBLISHED_LABELS.items():
        yahoo, yelp = rows[label]
        for dataset, values in (("yahoo", yahoo), ("yelp15", yelp)):
            expected = [v for v in render_reproduction.PUBLISHED[dataset][key] if v is not None]
            assert values == expected, (label, dataset)


def test_main_on_a_tiny_fake_run(tmp_path, monkeypatch):
    """The whole driver with training replaced by canned results: files, table, partial-run status."""
    class FakeCorpus:
        vocab = list(range(42))

    calls = []

    def fake_run_recipe(recipe, corpus, args, budget, out, corpus_info):
        calls.append((recipe, reproduce.recipe_options(recipe, budget)))
        return _fake_run(recipe, 0 if recipe == "vae" else 3)

    monkeypatch.setattr(reproduce, "load_data", lambda data_dir, budget: FakeCorpus())
    monkeypatch.setattr(reproduce, "run_recipe", fake_run_recipe)
    data = tmp_path / "yelp"
    data.mkdir()
    (data / "sentiment.dev.0").write_text("".join(f"bad {i} .\n" for i in range(30)))
    (data / "sentiment.dev.1").write_text("".join(f"good {i} !\n" for i in range(30)))
    out = tmp_path / "out"
    table_path = tmp_path / "results" / "reproduce-fake.md"
    rc = reproduce.main(["--data", str(data), "--config", "yelp", "--budget", "small", "--recipe",
                         "vae,aggressive,pretrain-fb", "--out", str(out), "--table", str(table_path)])
    assert rc == 0
    assert calls == [("vae", {"kl_start": 0.1, "warm_up": 2.0}),
                     ("aggressive", {"warm_up": 2.0, "aggressive_epochs": 2}),
                     ("pretrain-fb", {"warm_up": 2.0, "pretrain_epochs": 5})]
    payload = json.loads((out / "reproduce.json").read_text())
    assert payload["status"] == "finished" and [r["recipe"] for r in payload["runs"]] == ["vae", "aggressive",
                                                                                           "pretrain-fb"]
    assert payload["data"]["sentences"] == {"train": 48, "valid": 6, "test": 6}
    md = table_path.read_text()
    assert md == (out / "reproduce.md").read_text()
    assert "Run status: finished" in md and "`vae` collapsed (AU 0)" in md and "355.9 / 3.7 / 2.3" in md
    assert "optimiser the recipe's (the papers' SGD;" in md and "aggressive phase capped at 2 epochs" in md
    assert math.isfinite(payload["runs"][0]["test"]["nll"])


def test_main_keeps_finished_recipes_and_a_partial_one_when_interrupted(tmp_path, monkeypatch):
    class FakeCorpus:
        vocab = list(range(42))

    def fake_run_recipe(recipe, corpus, args, budget, out, corpus_info):
        if recipe == "aggressive":
            partial = _fake_run("aggressive", 5)
            partial["test"].pop("nll")
            partial.update(partial=True, partial_note="interrupted: validation metrics of epoch 2 (train), "
                                                      "no test evaluation")
            raise reproduce.RecipeInterrupted(partial)
        return _fake_run(recipe, 0)

    monkeypatch.setattr(reproduce, "load_data", lambda data_dir, budget: FakeCorpus())
    monkeypatch.setattr(reproduce, "run_recipe", fake_run_recipe)
    out = tmp_path / "out"
    rc = reproduce.main(["--config", "tiny", "--budget", "small", "--recipe", "vae,aggressive,beta", "--out", str(out)])
    assert rc == 1
    payload = json.loads((out / "reproduce.json").read_text())
    assert [r["recipe"] for r in payload["runs"]] == ["vae", "aggressive"]  # beta never started
    assert payload["status"].startswith("interrupted during aggressive")
    md = (out / "reproduce.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| `aggressive` (partial)"))
    assert row.split("|")[2].strip() == "-"  # no test NLL claimed
    assert "5 active units" in row and "validation figures" in md


@pytest.mark.slow
def test_reproduce_real_tiny_run(tmp_path):
    """reproduce.py end to end through fastvae.Trainer on the built-in corpus, one epoch, tiny model."""
    for layer in ("fastvae.data", "fastvae.models", "fastvae.evaluation"):
        pytest.importorskip(layer)
    out = tmp_path / "run"
    rc = reproduce.main(["--config", "tiny", "--budget", "small", "--epochs", "1", "--iw-samples", "4",
                         "--recipe", "vae,pretrain-fb", "--out", str(out), "--seed", "1"])
    assert rc == 0
    payload = json.loads((out / "reproduce.json").read_text())
    assert [r["recipe"] for r in payload["runs"]] == ["vae", "pretrain-fb"]
    for run in payload["runs"]:
        test = run["test"]
        assert math.isfinite(test["nll"]) and test["nll"] > 0 and test["kl"] >= 0
        assert 0 <= int(test["au"]) <= 32
        assert (out / run["recipe"] / "metrics.jsonl").exists()
    md = (out / "reproduce.md").read_text()
    assert "`vae`" in md and "`pretrain-fb`" in md and "NLL (IW-4)" in md and "Contrast:" in md


def test_reproduce_jobs_merge_the_workers_tables(tmp_path):
    """--jobs 2: each recipe in its own worker process; one table in the recipes' order, options noted."""
    for layer in ("fastvae.data", "fastvae.models", "fastvae.evaluation"):
        pytest.importorskip(layer)
    out = tmp_path / "run"
    rc = reproduce.main(["--config", "tiny", "--budget", "small", "--epochs", "1", "--max-train", "64",
                         "--max-eval", "32", "--iw-samples", "2", "--recipe", "vae,cyclical", "--jobs", "2",
                         "--set", "cyclical.cycles=2", "--out", str(out)])
    assert rc == 0
    payload = json.loads((out / "reproduce.json").read_text())
    assert [r["recipe"] for r in payload["runs"]] == ["vae", "cyclical"] and payload["status"] == "finished"
    assert payload["runs"][1]["options"] == {"variant": "ptb-script", "cycles": 2}  # the budget's, then --set
    for recipe in ("vae", "cyclical"):
        assert (out / "jobs" / recipe / recipe / "metrics.jsonl").exists()
    md = (out / "reproduce.md").read_text()
    assert "2 recipes at a time" in md and "`cyclical` variant=ptb-script, cycles=2" in md


def test_reproduce_time_limit_keeps_partial_figures_and_skips_the_rest(tmp_path, monkeypatch):
    """--time-limit: the running recipe stops like Ctrl-C, keeps its last validation figures; the rest are skipped.

    The limit is armed at 60 minutes; once the first validation evaluation has run, the timer is brought
    forward to fire 0.2 s later, so the test does not depend on the machine's speed."""
    import signal

    for layer in ("fastvae.data", "fastvae.models", "fastvae.evaluation"):
        pytest.importorskip(layer)
    from fastvae.training import trainer as trainer_module

    evaluate = trainer_module.Trainer._evaluate

    def evaluate_then_fire_soon(self, dataset, *, final):
        result = evaluate(self, dataset, final=final)
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        return result

    monkeypatch.setattr(trainer_module.Trainer, "_evaluate", evaluate_then_fire_soon)
    out = tmp_path / "run"
    try:
        rc = reproduce.main(["--config", "tiny", "--budget", "small", "--epochs", "200", "--max-train", "2000",
                             "--max-eval", "32", "--iw-samples", "2", "--recipe", "vae,pretrain-fb",
                             "--time-limit", "60", "--out", str(out)])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
    assert rc == 1
    payload = json.loads((out / "reproduce.json").read_text())
    assert "stopped by the 60-minute time limit during vae" in payload["status"]
    assert "not run: pretrain-fb" in payload["status"]
    runs = payload["runs"]
    assert [r["recipe"] for r in runs] == ["vae"] and runs[0]["partial"] and "au" in runs[0]["test"]
    assert "(partial)" in (out / "reproduce.md").read_text()


def test_fidelity_compares_runs_against_the_seed_spread(tmp_path):
    import fidelity

    def write(folder, elbos, au):
        os.makedirs(tmp_path / folder / "vae", exist_ok=True)
        with open(tmp_path / folder / "vae" / "metrics.jsonl", "w") as handle:
            for epoch, elbo in enumerate(elbos, 1):
                handle.write(json.dumps({"split": "train", "phase": "train", "epoch": epoch, "seconds": 2.0}) + "\n")
                handle.write(json.dumps({"split": "valid", "phase": "train", "epoch": epoch, "rec": elbo - 1,
                                         "kl": 1.0, "au": au}) + "\n")
            handle.write(json.dumps({"split": "test", "phase": "train", "rec": elbos[-1] - 1, "kl": 1.0,
                                     "au": au}) + "\n")

    write("s0", [100.0, 90.0, 80.0], 5)
    write("s1", [101.0, 90.5, 80.2], 7)
    write("b", [100.4, 93.0, 80.1], 6)
    runs = [fidelity.read_run(str(tmp_path / f), "vae") for f in ("s0", "s1")]
    result = fidelity.compare_recipe("vae", runs, fidelity.read_run(str(tmp_path / "b"), "vae"))
    assert [e["ok"] for e in result["epochs"]] == [True, False, True]  # epoch 2 is 2.75 off, the spread 0.5
    assert result["au_within_spread"] and result["same_collapse_outcome"]
    text = fidelity.render({"hardware": "test", "fp32_runs": ["s0", "s1"], "bf16_run": "b", "recipes": [result]})
    assert "2 of 3" in text and "| 2 | 90.000 | 90.500 | 93.000 |" in text
    with pytest.raises(SystemExit, match="not found"):
        fidelity.read_run(str(tmp_path / "missing"), "vae")
