"""`smpq-deploy train`: full-precision training of a zoo model, resumable, writing `<output>/fp.pt`.

    smpq-deploy train --model resnet8 --dataset cifar10 --epochs 30 --output runs/r8 \
        [--subset N] [--batch-size B] [--lr LR] [--accelerator cpu|cuda|auto]

Settings come, in order, from these flags, pipeline.yaml's ``train`` section (and ``model``,
``dataset``, ``seed``, ``output``, ``accelerator``) and the schema defaults. Killed or interrupted,
the same command resumes from the last completed epoch (``<output>/train_state.pt``) and ends with
the weights an uninterrupted run would have had.
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

HELP = "train a zoo model in full precision (resumable; writes <output>/fp.pt)"

# command-line flag (argparse dest) -> type; each one is also a key of pipeline.yaml's train section
_FLAGS = {"epochs": int, "batch_size": int, "lr": float, "momentum": float, "weight_decay": float,
          "warmup_epochs": float, "label_smoothing": float, "subset": int}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Training options (the common --model/--dataset/--data-dir/--seed/--output/--set come from cli.py)."""
    for name, typ in _FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=typ, default=None, dest=name,
                            help=f"overrides train.{name} of the config")
    parser.add_argument("--no-nesterov", action="store_true", help="plain momentum instead of Nesterov")
    parser.add_argument("--init", default=None, metavar="FP.PT",
                        help="start from this checkpoint's weights (same model and dataset) instead of a random init")
    parser.add_argument("--accelerator", choices=("cpu", "cuda", "auto"), default=None,
                        help="where to train: CUDA when available ('auto'), or the CPU (default: config's accelerator)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if <output>/train_state.pt exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar and no per-epoch lines")


def run(args: argparse.Namespace) -> int:
    """Train, then print where fp.pt went and its accuracy."""
    from deploy.pipeline.config import config_from_args
    from deploy.pipeline.validation import prepare_output
    from search.nn.data import load_dataset
    from search.nn.models import build_model
    from search.errors import SearchError
    from search.nn.train import TrainConfig, fit, load_checkpoint

    cfg = config_from_args(args, {name: f"train.{name}" for name in _FLAGS})  # flags validated as train.<name>
    prepare_output(Path(cfg.output))
    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in cfg.train.model_dump().items() if k in known}
    if args.no_nesterov:
        values["nesterov"] = False
    train_cfg = TrainConfig(**values, seed=cfg.seed, progress=not args.no_progress)
    dataset = load_dataset(cfg.dataset.name, cfg.dataset.data_dir, seed=cfg.seed, val_fraction=cfg.dataset.val_fraction)
    if train_cfg.subset is not None and train_cfg.subset > len(dataset.train):
        raise SearchError(f"'train.subset' is {train_cfg.subset}, but that is more than the {len(dataset.train)} images "
                          f"of {cfg.dataset.name}'s train split: give at most {len(dataset.train)} or leave it out")
    kwargs = cfg.model.model_kwargs
    extra = {}
    if args.init:
        model, init_meta = load_checkpoint(args.init)
        wanted = (cfg.model.name, kwargs, list(dataset.input_shape), list(dataset.classes))
        if (init_meta["model"], init_meta.get("model_kwargs") or {}, init_meta["input_shape"], init_meta["classes"]) != wanted:
            raise SearchError(f"--init '{args.init}' holds {init_meta['model']} for {init_meta.get('dataset')} "
                              f"{init_meta['input_shape']}, not {cfg.model.name} for {cfg.dataset.name}: pick a matching checkpoint")
        extra = {"init": str(args.init), "init_test_accuracy": init_meta.get("test_accuracy")}
    else:
        model = build_model(cfg.model.name, dataset.input_shape, dataset.num_classes, **kwargs)
    result = fit(model, dataset, train_cfg, cfg.output, device=args.accelerator or cfg.accelerator,
                 model_name=cfg.model.name, model_kwargs=kwargs, resume=not args.no_resume, extra_meta=extra)
    meta = result.meta
    subset = f" (subset of {train_cfg.subset} images)" if train_cfg.subset else ""
    print(f"wrote {Path(cfg.output) / 'fp.pt'}: {cfg.model.name} on {cfg.dataset.name}{subset}, "
          f"{train_cfg.epochs} epochs, val accuracy {meta['val_accuracy']:.4f}, test accuracy {meta['test_accuracy']:.4f}")
    return 0
