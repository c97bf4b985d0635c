"""The `fastvae` command line."""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from . import logs, options


def _cmd_info(args) -> int:
    from . import info

    return info.main(["--json"] if args.json else [])


def _cmd_smoke(args) -> int:
    """Runs every registered op on every backend available here and compares with the reference."""
    import torch

    from . import backend, ops

    torch.manual_seed(args.seed)
    gates, c_prev = torch.randn(args.batch, 4 * args.hidden), torch.randn(args.batch, args.hidden)
    ref = ops.lstm_cell_reference(gates, c_prev)
    start = time.perf_counter()
    out = ops.lstm_cell(gates, c_prev)
    elapsed = time.perf_counter() - start
    err = max((a - b).abs().max().item() for a, b in zip(out, ref))
    print(f"lstm_cell [{args.batch}x{args.hidden}] backend={backend.select(ops.lstm_cell_module.OP, 'cpu')} "
          f"max|diff| vs reference={err:.2e}  ({elapsed * 1e3:.2f} ms)")
    return 0 if err < 1e-5 else 1


# ----------------------------------------------------------------------------- train/eval/generate
# The no-argument demo on the built-in corpus: pretrain-fb on the tiny config, 15 epochs per phase with the
# recipe's own 10-epoch KL warm-up, Adam at DEMO_ADAM_LR (about a minute on 2 idle CPU cores). Measured on
# 2026-12-01: with a 2-epoch warm-up or 5 epochs per phase the free-bits phase lost every active unit (the
# re-initialised decoder ignores z while the KL weight rises); with these values AU 8/8, MI ~1.9 nats, and
# reconstructions that keep each sentence's template and sentiment.
DEMO_EPOCHS = 15
DEMO_ADAM_LR = 3e-3


def _load_training_corpus(args, vocab=None):
    """(corpus, corpus_info) from --data/--train/--valid/--test or a built-in corpus; `vocab` (a transformer VAE's
    subword vocabulary) encodes the text instead of a vocabulary built from the training split."""
    from .data import BUILTIN_CORPORA, load_corpus

    files = [args.train, args.valid, args.test]
    if args.data and any(files):
        raise ValueError("conflicting options: give --data DIR or --train/--valid/--test files, not both")
    if any(files) and not all(files):
        raise ValueError("--train, --valid and --test go together: give all three files (or --data DIR)")
    if args.corpus and (args.data or any(files)):
        raise ValueError("conflicting options: --corpus names a built-in corpus; it cannot be combined with "
                         "--data or --train/--valid/--test")
    vocab_opts = {k: v for k, v in (("max_vocab", args.max_vocab), ("min_count", args.min_count),
                                    ("max_len", args.max_len)) if v is not None}
    if vocab is not None and (args.max_vocab is not None or args.min_count is not None):
        raise ValueError("--max-vocab/--min-count build a word vocabulary; a transformer VAE (--encoder/--decoder) "
                         "uses its decoder's tokenizer")
    if args.data or any(files):
        given = {"vocab": vocab} if vocab is not None else {}
        if args.data:
            corpus = load_corpus(args.data, **vocab_opts, **given)
            info = {"data": os.path.abspath(args.data)}
        else:
            corpus = load_corpus(train=args.train, valid=args.valid, test=args.test, **vocab_opts, **given)
            info = {"train": os.path.abspath(args.train), "valid": os.path.abspath(args.valid),
                    "test": os.path.abspath(args.test)}
        info.update(vocab_opts)
        from .data.fingerprint import corpus_fingerprints

        info["fingerprints"] = corpus_fingerprints(info)  # checked when the run is resumed
        return corpus, info, False
    name = args.corpus or "grammar"
    if name not in BUILTIN_CORPORA:
        raise ValueError(f"unknown built-in corpus {name!r}: expected one of {', '.join(BUILTIN_CORPORA)}")
    if vocab_opts:
        raise ValueError("--max-vocab/--min-count/--max-len apply to corpora read from files, not built-in ones")
    return _builtin_corpus(name, vocab), {"builtin": name}, True


def _builtin_corpus(name, vocab=None):
    """A built-in corpus, re-encoded with `vocab` when it is a subword vocabulary (a transformer VAE's)."""
    from .data import BUILTIN_CORPORA

    corpus = BUILTIN_CORPORA[name]()
    if vocab is not None and hasattr(vocab, "tokenizer"):
        from .data.subword import retokenize_corpus

        corpus = retokenize_corpus(corpus, vocab)
    return corpus


# a transformer VAE's optimiser unless told otherwise: SGD at lr 1 (the LSTM recipes') destroys a pretrained model
HF_OPTIMIZER, HF_LR = "adam", 5e-5


def _hf_model(args):
    """The transformer VAE of --encoder/--decoder (fastvae.hf), or None when neither is given."""
    if args.encoder is None and args.decoder is None:
        if args.latent_dim is not None or args.inject is not None:
            raise ValueError("--latent-dim/--inject configure a transformer VAE: give --encoder and --decoder too")
        return None
    if args.encoder is None or args.decoder is None:
        raise ValueError("--encoder and --decoder go together: give both (a Hugging Face name or local path each)")
    if args.config:
        raise ValueError("--config names an LSTM model; a transformer VAE is given by --encoder and --decoder")
    import torch

    from .hf import HFTextVAE
    from .training.trainer import TrainConfig

    # the new layers' initialisation follows --seed, as a built model's does (the Trainer seeds before building)
    torch.manual_seed(args.seed if args.seed is not None else TrainConfig.seed)
    return HFTextVAE(args.encoder, args.decoder, latent_dim=args.latent_dim or 32, inject=args.inject or "both")


def _user_model_factory(spec: str):
    """The callable of `--model MODULE:CALLABLE` (a user's own VAE, fastvae.models.protocol), imported from the
    Python path (the current directory first, as `python -m` would)."""
    import importlib
    import sys

    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name or not all(p.isidentifier() for p in name.split(".")):
        raise ValueError(f"--model must be MODULE:CALLABLE (e.g. my_models:GRUVAE), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--model {spec}: cannot import {module_name!r} ({exc}); run from the folder that holds it "
                         f"or add it to PYTHONPATH") from exc
    for part in name.split("."):
        if not hasattr(target, part):
            raise ValueError(f"--model {spec}: {module_name!r} has no {name!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"--model {spec}: {name!r} is not callable")
    return target


def _user_model(spec: str, vocab_size: int, seed: int | None = None):
    """`--model`'s model for a vocabulary of `vocab_size` (called as CALLABLE(vocab_size=N)); its initialisation
    follows --seed, as a built model's does."""
    import torch

    factory = _user_model_factory(spec)
    if seed is not None:
        torch.manual_seed(seed)
    model = factory(vocab_size=vocab_size)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--model {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_checkpoint_model(args):
    """(model, vocab, checkpoint) of --checkpoint: fastvae's models and transformer VAEs rebuild themselves; a run
    trained with --model needs the same --model here."""
    from .data import Vocab
    from .training.checkpoint import load_model, read_checkpoint

    from .devices import resolve_device

    resolve_device(args.device)  # a device that is not there is the first thing to say, before reading the file
    ckpt = read_checkpoint(args.checkpoint)
    spec = getattr(args, "model", None)
    if spec is None:
        if ckpt.get("model_config") is None and ckpt.get("model_source") is None:
            raise ValueError(f"{args.checkpoint!r} holds a user model ({ckpt.get('model_class', '?')}): give the "
                             f"--model MODULE:CALLABLE it was trained with")
        return load_model(args.checkpoint, device=args.device, checkpoint=ckpt)
    model = _user_model(spec, len(Vocab.from_dict(ckpt["vocab"])))
    return load_model(args.checkpoint, device=args.device, model=model, checkpoint=ckpt)


_CORPUS_FLAGS = ["data", "train", "valid", "test", "corpus", "max_vocab", "min_count", "max_len"]
# fastvae train's flags that are TrainConfig fields: generated from its declarations (fastvae.options)
_OPTIMISATION_FLAGS = ["epochs", "batch_size", "batch_mode", "optimizer", "lr", "momentum", "clip", "patience",
                       "decay_factor", "decay_min_epoch", "max_decays", "plateau_decay"]
_RUN_FLAGS = ["seed", "device", "precision", "iw_samples", "eval_batch_size", "mi_batch_size", "log_interval",
              "checkpoint_every"]
_TRAIN_FLAGS = _OPTIMISATION_FLAGS + _RUN_FLAGS
_HF_FLAGS = ["encoder", "decoder", "latent_dim", "inject"]


def _cmd_train(args) -> int:
    """`fastvae train`; under torchrun (WORLD_SIZE > 1) every rank runs this, data-parallel."""
    from .training import distributed

    ctx = distributed.init_distributed(args.device or _resume_device(args)) if distributed.launched_by_torchrun() \
        else distributed.SINGLE
    try:
        code = _train(args, ctx)
    except BaseException:
        distributed.shutdown(ctx, wait=False)
        raise
    distributed.shutdown(ctx)
    return code


def _resume_device(args) -> str:
    """The device a resumed run trained on (its config.json), to pick gloo or NCCL before the
    checkpoint can be read; the trainer then checks it against the checkpoint's options."""
    import json

    if args.resume:
        run_dir = args.resume if os.path.isdir(args.resume) else os.path.dirname(os.path.abspath(args.resume))
        try:
            with open(os.path.join(run_dir, "config.json")) as handle:
                return json.load(handle)["train"]["device"]
        except (OSError, ValueError, KeyError):
            pass
    return "cpu"


def _train(args, ctx) -> int:
    previous = logs.logger.level  # --quiet/--verbose hold for this command only (main() may run again in-process)
    logs.set_level(quiet=args.quiet, verbose=args.verbose)
    try:
        if args.json or not ctx.is_main:  # the JSON object is the only output (rank 0's)
            return _train_with_levels_set(args, ctx)
        with logs.console_output(application=True):  # the program: its lines go to stdout
            return _train_with_levels_set(args, ctx)
    finally:
        logs.logger.setLevel(previous)


def _train_with_levels_set(args, ctx) -> int:
    import json

    from .training import Trainer
    from .training.checkpoint import read_checkpoint
    from .training.distributed import broadcast_object, main_reads
    from .training.recipes import RECIPE_OPTION_NAMES, RecipeOptions
    from .training.trainer import TrainConfig

    if args.resume:
        if any(getattr(args, f) is not None for f in (*RECIPE_OPTION_NAMES, *_TRAIN_FLAGS, *_HF_FLAGS)) \
                or args.recipe or args.config:
            raise ValueError("--resume continues a run with its saved options; give no other training options "
                             "(only --model, for a run of a user model)")
        given = [f"--{f.replace('_', '-')}" for f in _CORPUS_FLAGS if getattr(args, f) is not None]
        given += ["--out"] * (args.out is not None) + ["--overwrite"] * args.overwrite
        if given:
            raise ValueError(f"--resume continues a run in its own directory on its own data; {', '.join(given)} "
                             f"would be ignored: leave {'it' if len(given) == 1 else 'them'} out")
        last = os.path.join(args.resume, "last.pt") if os.path.isdir(args.resume) else args.resume
        saved = main_reads(lambda: read_checkpoint(last), ctx)
        if "trainer" not in saved or "train_config" not in saved:
            raise ValueError(f"{last!r} holds a model only (no training state); --resume needs the last.pt of a run")
        info = saved["corpus"]  # the options come back in Trainer.from_checkpoint; the data is found here
        args.data, args.train, args.valid, args.test = info.get("data"), info.get("train"), info.get("valid"), \
            info.get("test")
        args.corpus = info.get("builtin")
        for key in ("max_vocab", "min_count", "max_len"):
            setattr(args, key, info.get(key))
        from .data import Vocab

        saved_vocab = Vocab.from_dict(saved["vocab"])  # a transformer VAE's subword vocabulary encodes its data again
        corpus, corpus_info, builtin = _load_training_corpus(
            args, saved_vocab if hasattr(saved_vocab, "tokenizer") else None)
        user_built = saved.get("model_config") is None and saved.get("model_source") is None
        if user_built and args.model is None:
            raise ValueError(f"{last!r} is a run of a user model ({saved.get('model_class', '?')}): give the "
                             f"--model MODULE:CALLABLE it was trained with to resume it")
        if args.model is not None and not user_built:
            raise ValueError(f"{last!r} rebuilds its own model; --model is for runs of a user model")
        model = None if args.model is None else _user_model(args.model, len(corpus.vocab))
        out = os.path.dirname(os.path.abspath(args.resume)) if not os.path.isdir(args.resume) else args.resume
    else:
        if args.allow_changed_data:
            raise ValueError("--allow-changed-data goes with --resume (a new run reads its data as it is)")
        model = _hf_model(args)
        if args.model is not None and (model is not None or args.config):
            raise ValueError("--model is your own VAE: leave out --config and --encoder/--decoder")
        corpus, corpus_info, builtin = _load_training_corpus(args, None if model is None else model.vocab)
        if args.model is not None:
            model = _user_model(args.model, len(corpus.vocab),
                                args.seed if args.seed is not None else TrainConfig.seed)
        # on a built-in corpus the defaults make a short demo that does not collapse: pretrain-fb with
        # Adam (the tiny model learns within a few epochs); on user data, the references' defaults
        recipe = args.recipe or ("pretrain-fb" if builtin else "vae")
        # Fu et al.'s own PTB script trains their own model (ptb-fu2019): the ptb-script variant's default
        script = recipe == "cyclical" and args.variant == "ptb-script"
        config = args.config or ("tiny" if builtin else ("ptb-fu2019" if script else "ptb"))
        recipe_options = options.from_arguments(args, RecipeOptions, RECIPE_OPTION_NAMES)
        train_options = options.from_arguments(args, TrainConfig, _TRAIN_FLAGS)
        if "epochs" not in train_options and builtin:
            train_options["epochs"] = DEMO_EPOCHS  # elsewhere the recipe's (100; cyclical ptb-script: 40)
        if model is not None:  # fine-tuning a transformer: Adam at 5e-5 unless told otherwise
            train_options.setdefault("optimizer", HF_OPTIMIZER)
            if train_options["optimizer"] == HF_OPTIMIZER:
                train_options.setdefault("lr", HF_LR)
        elif builtin and "optimizer" not in train_options and "lr" not in train_options:
            train_options["optimizer"] = "adam"
            train_options["lr"] = DEMO_ADAM_LR
        out = args.out or os.path.join("runs", f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}")
        out = broadcast_object(out, ctx)  # one run directory, named by rank 0's clock
    from .data.corpus import unk_rate

    data_report = {split: {"sentences": len(corpus.split(split)), "unk_rate": unk_rate(corpus.split(split))}
                   for split in ("train", "valid", "test")}
    if ctx.is_main and not args.json:  # an INFO line (--quiet drops it), as the trainer's
        logs.logger.info("fastvae train: data: " + ", ".join(
            f"{split} {row['sentences']:,} sentences (<unk> {row['unk_rate']:.1%})"
            for split, row in data_report.items()) + f"; vocabulary {len(corpus.vocab):,}")
    if args.resume:
        trainer = Trainer.from_checkpoint(args.resume, corpus, corpus_info=corpus_info, distributed=ctx,
                                          allow_changed_data=args.allow_changed_data, checkpoint=saved,
                                          progress=not args.no_progress, verbose=not args.json, model=model)
        recipe = trainer.recipe.name
    else:
        if model is None:  # a transformer VAE or a user model is not an LSTM config
            train_options["config"] = config
        trainer = Trainer(model, corpus, recipe=recipe, out_dir=out, recipe_options=recipe_options,
                          corpus_info=corpus_info, progress=not args.no_progress, verbose=not args.json,
                          distributed=ctx, overwrite=args.overwrite, allow_changed_data=args.allow_changed_data,
                          **train_options)
    test = trainer.fit()
    if not ctx.is_main:  # rank 0 reports
        return 0
    if args.json:
        print(json.dumps({"out_dir": out, "recipe": recipe, "best_epoch": trainer.best_epoch, "data": data_report,
                          "test": test}))
        return 0
    print(f"run directory: {out} (config.json, metrics.jsonl, best.pt, last.pt, training.png)")
    if args.examples and trainer.is_vae:
        _print_examples(trainer.model, corpus, args.examples, seed=trainer.cfg.seed)
    return 0


def _print_examples(model, corpus, num, seed=0):
    import torch

    from . import generation

    vocab = corpus.vocab
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    sentences = [vocab.decode(s.tolist()) for s in corpus.test.sentences[:num]]
    print("\nreconstructions (z = posterior mean, greedy decoding):")
    for src, out in zip(sentences, generation.reconstruct(model, vocab, sentences)):
        print(f"  > {src}\n  = {out}")
    print("\nsamples from the prior (greedy decoding):")
    for text in generation.sample_prior(model, vocab, num, generator=gen):
        print(f"  - {text}")
    if len(sentences) >= 2:
        print("\ninterpolation between the first two test sentences:")
        for i, text in enumerate(generation.interpolate(model, vocab, sentences[0], sentences[1], steps=5)):
            print(f"  {i / 4:.2f}  {text}")


def _eval_dataset(args, vocab, ckpt):
    """The dataset to evaluate: --data FILE|DIR (with --split), or the checkpoint's built-in corpus."""
    from .data import load_corpus

    if args.data is None:
        name = ckpt.get("corpus", {}).get("builtin")
        if name is None:
            raise ValueError("give --data FILE|DIR: the checkpoint was trained on files, not a built-in corpus")
        corpus = _builtin_corpus(name, vocab)
        if corpus.vocab.to_dict() != vocab.to_dict():
            raise ValueError(f"the built-in corpus {name!r} here has another vocabulary than the checkpoint's")
        return getattr(corpus, args.split)
    if os.path.isdir(args.data):
        return getattr(load_corpus(args.data, vocab=vocab), args.split)
    if not os.path.isfile(args.data):
        raise FileNotFoundError(f"--data {args.data!r}: no such file or directory")
    return load_corpus(train=args.data, valid=args.data, test=args.data, vocab=vocab).test


def _cmd_eval(args) -> int:
    import json

    import torch

    from .evaluation import evaluate
    from .training import format_metrics_table

    model, vocab, ckpt = _load_checkpoint_model(args)
    dataset = _eval_dataset(args, vocab, ckpt)
    metrics = args.metrics.split(",") if args.metrics else None
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    result = evaluate(model, dataset, batch_size=args.batch_size, iw_samples=args.iw_samples, metrics=metrics,
                      device=args.device, generator=gen, batch_mode=args.batch_mode,
                      mi_batch_size=args.mi_batch_size)
    result = {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in result.items()}
    from .data.corpus import unk_rate

    result["unk_rate"] = unk_rate(dataset)  # of the checkpoint's vocabulary on this text
    if args.bleu:
        from .evaluation import reconstruction_bleu

        result.update(reconstruction_bleu(model, dataset, vocab, beam_size=args.beam_size, batch_size=args.batch_size,
                                          generator=torch.Generator(device=args.device).manual_seed(args.seed + 1)))
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "kind": ckpt["kind"], "iw_samples": args.iw_samples,
                          "mi_estimators": {"mi": "whole split", "mi_batch": f"per batch of {args.mi_batch_size}"},
                          **result}))
    else:
        print(format_metrics_table(result, title=f"{args.checkpoint}: {len(dataset)} sentences"))
    return 0


def _label_counts(text: str) -> list:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--num-labels {text!r}: expected comma-separated positive ints, e.g. 100,1000") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"--num-labels {text!r}: expected comma-separated positive ints, e.g. 100,1000")
    return counts


def _cmd_probe(args) -> int:
    """`fastvae probe`: Li et al.'s semi-supervised classification from a checkpoint's encoder."""
    import json

    from .data import load_corpus
    from .evaluation.semi_supervised import semi_supervised_accuracy

    counts = _label_counts(args.num_labels)
    model, vocab, ckpt = _load_checkpoint_model(args)
    if not os.path.isdir(args.data):
        raise FileNotFoundError(f"--data {args.data!r}: expected a corpus directory with labelled train.txt, "
                                "valid.txt and test.txt (lines `label<TAB>sentence`)")
    corpus = load_corpus(args.data, vocab=vocab)
    rows = []
    for count in counts:
        result = semi_supervised_accuracy(model, corpus.train, corpus.valid, corpus.test, num_labels=count,
                                          classifier=args.classifier, freeze_encoder=not args.finetune,
                                          epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                                          lr=args.lr, seed=args.seed)
        rows.append(result)
        if not args.json:
            print(f"{count:>6} labels: test accuracy {result['test_acc']:.4f} (valid {result['valid_acc']:.4f}, "
                  f"best epoch {result['best_epoch']} of {result['epochs_run']})", flush=True)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "protocol": "Li et al. 2019 text_ss_ft.py",
                          "classifier": args.classifier, "encoder": "fine-tuned" if args.finetune else "frozen",
                          "results": rows}))
    return 0


def _cmd_lag(args) -> int:
    """`fastvae lag`: He et al.'s inference-lag picture on the built-in synthetic corpus (2-dimensional latent)."""
    import json

    import torch

    from .data import synthetic_corpus
    from .evaluation.inference_lag import PosteriorTracker, plot_inference_lag
    from .training import Trainer
    from .training.recipes import RECIPE_NAMES

    vae_recipes = [r for r in RECIPE_NAMES if r != "lm"]
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if not recipes or any(r not in vae_recipes for r in recipes):
        raise ValueError(f"--recipes {args.recipes!r}: expected VAE recipes among {', '.join(vae_recipes)}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out!r} is a file, not a directory")
    os.makedirs(args.out, exist_ok=True)
    corpus = synthetic_corpus(seed=args.seed, n_train=args.train_sentences, n_valid=max(args.sentences, 100),
                              n_test=100)
    trackers, summary = {}, {}
    for recipe in recipes:
        tracker = PosteriorTracker(corpus.valid.subset(range(args.sentences)), every=args.every,
                                   extent=args.extent, points=args.grid)
        trainer = Trainer(None, corpus, recipe=recipe, config="synthetic", epochs=args.epochs, seed=args.seed,
                          iw_samples=0, progress=False, verbose=False, step_callbacks=[tracker])
        test = trainer.fit()
        trackers[recipe] = tracker
        summary[recipe] = {"gaps": tracker.gaps(), "test": {k: test[k] for k in ("rec", "kl", "mi", "au") if k in test},
                           "steps": trainer.global_step}
        print(f"fastvae lag: {recipe}: {trainer.global_step} steps, mean |E_q - E_p| {tracker.gaps()[-1][1]:.3f} at "
              f"the end, test KL {test['kl']:.3f}, AU {test.get('au')}", flush=True)
    png = plot_inference_lag(trackers, os.path.join(args.out, "inference_lag.png"))
    torch.save({name: t.records for name, t in trackers.items()}, os.path.join(args.out, "inference_lag.pt"))
    with open(os.path.join(args.out, "inference_lag.json"), "w") as f:
        json.dump({"recipes": summary, "options": {k: getattr(args, k) for k in (
            "epochs", "train_sentences", "sentences", "every", "grid", "extent", "seed")}}, f, indent=1)
    print(f"fastvae lag: wrote {png}")
    return 0


def _cmd_generate(args) -> int:
    import json

    import torch

    from . import generation

    model, vocab, ckpt = _load_checkpoint_model(args)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    decode = {"strategy": args.strategy, "max_len": args.max_len, "temperature": args.temperature,
              "top_k": args.top_k, "beam_size": args.beam_size}
    sentences = list(args.sentences or [])
    if args.input:
        with open(args.input, encoding="utf-8") as handle:
            sentences += [line.strip() for line in handle if line.strip()]
    given = bool(args.sentences or args.input)
    if args.mode is None:
        args.mode = "reconstruct" if given else "sample"
    elif args.mode == "sample" and given:
        raise ValueError("--mode sample draws sentences from the prior and takes no input: leave out "
                         "--sentences/--input, or use --mode reconstruct")
    if not sentences and args.mode != "sample":
        name = ckpt.get("corpus", {}).get("builtin")
        if name is None:
            raise ValueError(f"--mode {args.mode} needs input sentences: --sentences '...' or --input FILE")
        from .data import BUILTIN_CORPORA

        builtin = BUILTIN_CORPORA[name]()  # its text, by its own vocabulary (a transformer VAE re-tokenizes it)
        sentences = [builtin.vocab.decode(s.tolist()) for s in builtin.test.sentences[: max(args.num, 2)]]
    if args.mode == "reconstruct":
        sentences = sentences[: args.num] if not args.sentences and not args.input else sentences
        outputs = generation.reconstruct(model, vocab, sentences, use_mean=not args.sample_posterior,
                                         generator=gen, **decode)
        result = [{"input": s, "output": o} for s, o in zip(sentences, outputs)]
    elif args.mode == "sample":
        result = [{"output": o} for o in generation.sample_prior(model, vocab, args.num, generator=gen, **decode)]
    else:
        if len(sentences) < 2:
            raise ValueError("--mode interpolate needs two sentences (--sentences 'first ...' 'second ...')")
        if len(sentences) > 2 and (args.sentences or args.input):
            raise ValueError(f"--mode interpolate takes exactly two sentences, got {len(sentences)}")
        outputs = generation.interpolate(model, vocab, sentences[0], sentences[1], steps=args.steps, generator=gen,
                                         **decode)
        result = [{"t": i / (args.steps - 1), "output": o} for i, o in enumerate(outputs)]
    if args.json:
        print(json.dumps({"mode": args.mode, "strategy": args.strategy, "results": result}))
        return 0
    for row in result:
        if "input" in row:
            print(f"> {row['input']}\n= {row['output']}")
        elif "t" in row:
            print(f"{row['t']:.2f}  {row['output']}")
        else:
            print(row["output"])
    return 0


_positive_int = options.int_type(1)
_nonneg_int = options.int_type(0)


def _add_train_parser(sub):
    from .training.recipes import RECIPE_NAMES, RECIPE_OPTION_NAMES, RecipeOptions
    from .training.trainer import TrainConfig

    p = sub.add_parser("train", help="train a text VAE (or the LSTM LM baseline) with a recipe",
                       description="Train with a published recipe. With no data argument, trains the tiny config "
                                   "on the built-in grammar corpus. Data-parallel on several processes/GPUs/"
                                   "machines: torchrun --nproc_per_node=N -m fastvae train ... (gloo on CPUs, "
                                   "NCCL with --device cuda; only rank 0 writes).")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="directory with train.txt, valid.txt, test.txt (one sentence per line, "
                                  "optionally label<TAB>text)")
    g.add_argument("--train", help="training file (with --valid and --test)")
    g.add_argument("--valid")
    g.add_argument("--test")
    g.add_argument("--corpus", help="built-in corpus: grammar (default without data) or synthetic")
    g.add_argument("--max-vocab", type=_positive_int)
    g.add_argument("--min-count", type=_positive_int)
    g.add_argument("--max-len", type=_positive_int)
    g = p.add_argument_group("model and recipe")
    g.add_argument("--config", help="model config: ptb, yelp, yahoo, synthetic, tiny "
                                    "(default: tiny for a built-in corpus, ptb otherwise)")
    g.add_argument("--encoder", help="a transformer VAE (needs fastvae[hf]): its encoder, a Hugging Face model name "
                                     "or local path (AutoModel), e.g. bert-base-uncased; with --decoder")
    g.add_argument("--decoder", help="the transformer VAE's decoder, a causal language model name or local path "
                                     "(AutoModelForCausalLM), e.g. gpt2; its tokenizer makes the vocabulary. "
                                     "Default optimiser then: adam at lr 5e-5")
    g.add_argument("--latent-dim", type=_positive_int, help="the transformer VAE's latent size (default 32)")
    g.add_argument("--inject", choices=["memory", "embedding", "both"],
                   help="how z reaches the transformer decoder: a key/value memory position in every layer, an "
                        "offset added to every input embedding, or both (default, as Optimus)")
    g.add_argument("--model", metavar="MODULE:CALLABLE",
                   help="your own VAE (fastvae.models.protocol): CALLABLE(vocab_size=N) returns it; MODULE is "
                        "imported from the current directory or PYTHONPATH. eval/generate/probe and --resume take "
                        "the same --model")
    g.add_argument("--recipe", choices=RECIPE_NAMES,
                   help="default: vae; on a built-in corpus pretrain-fb (with Adam 3e-3: the demo)")
    # every recipe option is a flag, from its declaration (fastvae.training.recipes.RecipeOptions)
    options.add_arguments(g, RecipeOptions, RECIPE_OPTION_NAMES)
    g = p.add_argument_group("optimisation")
    on_builtin = {"epochs": f"; {DEMO_EPOCHS} on a built-in corpus",
                  "optimizer": f"; adam at lr {DEMO_ADAM_LR:g} on a built-in corpus",
                  "lr": f"; {DEMO_ADAM_LR:g} (adam) on a built-in corpus"}
    options.add_arguments(g, TrainConfig, _OPTIMISATION_FLAGS, extra_help=on_builtin)
    g = p.add_argument_group("run")
    g.add_argument("--out", help="run directory (default runs/<recipe>-<time>); one that already holds a run is "
                                 "refused unless --overwrite")
    g.add_argument("--allow-changed-data", action="store_true",
                   help="with --resume: continue even though the run's data files changed since it started "
                        "(refused otherwise; the vocabulary must still be the same)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (deletes fastvae's own files there: checkpoints, config.json, "
                        "metrics.jsonl, training.png)")
    g.add_argument("--resume", help="continue the run in this directory (or last.pt) exactly where it stopped")
    options.add_arguments(g, TrainConfig, _RUN_FLAGS)
    _add_threads_option(g)
    g.add_argument("--examples", type=_nonneg_int, default=3,
                   help="reconstructions/samples printed at the end (default 3; 0: none)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (or, when the output is not a "
                                                                "terminal, no progress lines)")
    g.add_argument("--quiet", action="store_true", help="only warnings and errors: no epoch lines (logging level "
                                                        "WARNING of the fastvae logger)")
    g.add_argument("--verbose", action="store_true", help="also debug messages, e.g. which kernel each op runs "
                                                          "(logging level DEBUG)")
    g.add_argument("--json", action="store_true", help="print only one JSON object with the test metrics")
    p.set_defaults(func=_cmd_train)


def _add_threads_option(group) -> None:
    group.add_argument("--threads", type=_positive_int,
                       help="CPU threads for torch (default: torch's choice, usually one per core; under torchrun "
                            "per process). On a machine shared with other jobs, fewer avoids oversubscribing it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvae", description="Text VAEs without posterior collapse.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("info", help="what is built and which backend each op uses")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("smoke", help="run the compiled ops once against their references")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_smoke)
    _add_train_parser(sub)

    p = sub.add_parser("eval", help="metrics of a checkpoint on a corpus (rec, kl, elbo, IW nll, ppl, mi, au)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", metavar="MODULE:CALLABLE", help="the run's own model, when it was trained with --model")
    p.add_argument("--data", help="a file (one sentence per line) or a corpus directory (see --split); default: "
                                  "the checkpoint's built-in corpus")
    p.add_argument("--split", choices=["train", "valid", "test"], default="test")
    p.add_argument("--iw-samples", type=_positive_int, default=500)
    p.add_argument("--batch-size", type=_positive_int, default=32, help="sentences evaluated at once")
    p.add_argument("--mi-batch-size", type=_positive_int, default=32,
                   help="the per-batch MI estimator's batch (mi_batch; default 32, He et al.'s)")
    p.add_argument("--batch-mode", choices=["bucket", "padded"], default="bucket")
    p.add_argument("--metrics", help="comma-separated subset, e.g. rec,kl,nll (default: all)")
    p.add_argument("--bleu", action="store_true",
                   help="also reconstruction BLEU: corpus BLEU of the decoded split, z the posterior mean or a "
                        "sample, greedy or beam (bleu_<greedy|beam>_<mean|sample>; needs fastvae[bleu])")
    p.add_argument("--beam-size", type=_positive_int, default=5, help="beam width of --bleu's beam search (5)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    _add_threads_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("generate", help="reconstructions, prior samples or interpolations from a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", metavar="MODULE:CALLABLE", help="the run's own model, when it was trained with --model")
    p.add_argument("--mode", choices=["reconstruct", "sample", "interpolate"],
                   help="default: reconstruct when --sentences or --input is given, else sample (from the prior)")
    p.add_argument("--strategy", choices=["greedy", "sample", "beam"], default="greedy")
    p.add_argument("--sentences", nargs="+", help="input sentences (reconstruct; two for interpolate)")
    p.add_argument("--input", help="file of input sentences, one per line")
    p.add_argument("--num", type=_positive_int, default=5, help="samples to draw / default inputs to take")
    p.add_argument("--steps", type=_positive_int, default=5, help="interpolation points, end points included")
    p.add_argument("--sample-posterior", action="store_true", help="reconstruct from a posterior sample, not mu")
    p.add_argument("--max-len", type=_positive_int, default=40)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=_nonneg_int, default=0)
    p.add_argument("--beam-size", type=_positive_int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    _add_threads_option(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("lag", help="He et al.'s inference-lag picture: approximate vs true posterior means "
                                   "during training, on the built-in synthetic corpus (2-d latent)")
    p.add_argument("--out", required=True, help="folder for inference_lag.png / .json / .pt")
    p.add_argument("--recipes", default="vae,aggressive")
    p.add_argument("--epochs", type=_positive_int, default=10)
    p.add_argument("--train-sentences", type=_positive_int, default=4000)
    p.add_argument("--sentences", type=_positive_int, default=50, help="validation sentences tracked")
    p.add_argument("--every", type=_positive_int, default=50, help="optimiser steps between snapshots")
    p.add_argument("--grid", type=_positive_int, default=61, help="grid points per latent axis")
    p.add_argument("--extent", type=float, default=4.0, help="the grid covers [-extent, extent]^2")
    p.add_argument("--seed", type=int, default=0)
    _add_threads_option(p)
    p.set_defaults(func=_cmd_lag)

    p = sub.add_parser("probe", help="semi-supervised classification on the posterior mean (Li et al.'s protocol)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", metavar="MODULE:CALLABLE", help="the run's own model, when it was trained with --model")
    p.add_argument("--data", required=True, help="a labelled corpus directory (train/valid/test.txt, `label<TAB>text`)")
    p.add_argument("--num-labels", default="100,500,1000,2000,10000",
                   help="labelled training sentences, comma-separated (default: the papers' 100,500,1000,2000,10000)")
    p.add_argument("--classifier", choices=["linear", "mlp"], default="linear")
    p.add_argument("--finetune", action="store_true", help="train the encoder with the classifier (default: frozen)")
    p.add_argument("--epochs", type=_positive_int, default=100)
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="sgd (lr 1, the reference) or adam")
    p.add_argument("--lr", type=float, help="default: 1 for sgd, 1e-3 for adam")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="the labelled subset's sample and the classifier's init")
    p.add_argument("--json", action="store_true")
    _add_threads_option(p)
    p.set_defaults(func=_cmd_probe)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _show_corpus_warnings(command: str):
    """warnings.showwarning that prints fastvae's corpus warnings as one line each (others as usual)."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        from .data.corpus import CorpusWarning

        if issubclass(category, CorpusWarning):
            print(f"fastvae {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_corpus_warnings(args.command)
            if getattr(args, "threads", None):
                import torch

                torch.set_num_threads(args.threads)
            return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        # bad options or input: one clear line, no traceback
        print(f"fastvae {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:
        from .training.trainer import TrainingDiverged

        if isinstance(exc, TrainingDiverged):  # the run's numbers, not a bug: one line saying what was kept
            print(f"fastvae {args.command}: training diverged: {_one_line(exc)}", file=sys.stderr)
            return 3
        if isinstance(exc, OSError):  # a full disk, a permission, a directory given as a file: it names it
            print(f"fastvae {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", None)  # a TrainingInterrupted says what it kept
        if signum is not None:
            print(f"fastvae {args.command}: {_one_line(exc)}", file=sys.stderr)
            return 128 + signum
        print(f"fastvae {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The `fastvae` command and `python -m fastvae`: main(), then leave with its exit code."""
    code = main()
    from .training import distributed

    if distributed.launched_by_torchrun():
        # A torchrun worker has left its process group and closed every file it wrote (distributed.shutdown
        # ran in _cmd_train). It leaves without the interpreter's teardown: once in CI a worker that had finished
        # its work aborted there (SIGABRT, "terminate called without an active exception", from native threads
        # torn down at exit), and torchrun then failed the whole job.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)

