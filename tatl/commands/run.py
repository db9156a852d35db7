"""Train and evaluate the TATL pipeline on an ISIC-layout dataset (or synthetic data) in one run folder.

Stage 1 (Segment-Net, lesion crops), Stage 2 (Attribute-Agnostic Segmenter on union masks), Stage 3 (one
Target-Segmenter per attribute, initialised from Stage 2), for U- and Link-shape networks, their ensemble and the
ablation variants of the paper's Tables 2-3. Writes RUN/config.yaml, splits.json, one folder per stage with
best.pt/last.pt/log.csv, metrics.json and summary.md. DATA "synthetic" generates the embedded default dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  tatl run synthetic --out runs/demo --config demo          # the README's demo: synthetic data, all variants
  tatl run ISIC2018/ --out runs/paper --config paper        # the paper's settings on the real ISIC 2018 data
  tatl run ../shared/data/isic2018-sample --out runs/pn --set data.attributes=[pigment_network] --set train.epochs=5
  tatl run ../shared/data/ph2 --out runs/ph2 --stages 1     # Segment-Net alone on a lesion-only dataset
  tatl run synthetic --out runs/demo --variants 3 2,3 1,3 1,2,3
  tatl run synthetic --out runs/demo --resume               # continue an interrupted run
  torchrun --standalone --nproc_per_node=4 -m tatl run ISIC2018/ --out runs/paper --config paper   # 4 GPUs (DDP)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help='dataset folder in the ISIC 2018 layout, or "synthetic"')
    parser.add_argument("--out", required=True, type=Path, help="run folder (must be new unless --resume)")
    parser.add_argument("--config", help="YAML config file or preset name (demo, paper)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--variants", nargs="+", metavar="STAGES",
                        help="ablation variants to run: 3 2,3 1,3 1,2,3 (default from config: 1,2,3)")
    parser.add_argument("--stages", choices=["1", "1,2,3"], default="1,2,3",
                        help="1: train the Segment-Net alone (lesion-only data, ISIC Task 1 scores)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (train.compile=true)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")


def run(args: argparse.Namespace) -> int:
    from tatl import distributed

    config = _resolved_config(args)  # before the heavy imports: a typo fails at once, and creates no folder
    distributed.setup(config.train.device)  # under torchrun: join the other processes (a no-op otherwise)
    distributed.check_batch_size(config.train.batch_size)  # before anything is written
    code = _train_and_score(args, config)
    distributed.teardown()  # on success only: after an error the others may sit in a collective (NCCL would hang)
    return code


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.variants:
        overrides.append("pipeline.variants=[" + ", ".join(f'"{v}"' for v in args.variants) + "]")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.compile:
        overrides.append("train.compile=true")
    return overrides


def _resolved_config(args: argparse.Namespace):
    """The run's config: defaults + --config + --set, or, with --resume, the saved one + --set (checked)."""
    from tatl.config import load_config
    from tatl.errors import ConfigError, DataError
    from tatl.folders import check_output_folder

    if not args.resume:
        return load_config(args.config, _overrides(args))
    saved = args.out / "config.yaml"
    check_output_folder(args.out, "run folder")
    if args.config:
        raise ConfigError(f"--resume uses {saved}; drop --config (use --set to change a value)")
    if not saved.is_file():
        raise DataError(f"{args.out}: nothing to resume (no config.yaml); start a new run without --resume")
    from tatl.pipeline.setup import check_resume_settings

    config = load_config(saved, _overrides(args))
    check_resume_settings(load_config(saved), config, args.out, args.data)
    return config


def _train_and_score(args: argparse.Namespace, config) -> int:
    from tatl import distributed
    from tatl.config import save_config
    from tatl.errors import DataError
    from tatl.io import write_json
    from tatl.pipeline.setup import check_data_path, check_model_settings, prepare_context, prepare_run_dir
    from tatl.pipeline.stages import log, run_pipeline

    run_dir: Path = args.out
    saved = run_dir / "config.yaml"
    check_model_settings(config)  # an unknown encoder or unusable weights file: named before any data is read
    check_data_path(args.data)
    stage1_only = args.stages == "1"

    def prepare():
        if distributed.is_main_process():  # the folder, its lock and config; the data generated or converted
            prepare_run_dir(run_dir, resume=args.resume)
            save_config(config, saved)
        ctx = prepare_context(args.data, run_dir, config, stage1_only)  # the other ranks read rank 0's split
        if distributed.is_main_process():
            save_config(ctx.config, saved)  # again: the data may have set values (ISIC 2017 -> its four features)
        return ctx

    ctx = distributed.main_process_first(prepare)
    if not stage1_only and not ctx.train:
        raise DataError(f"{args.data}: no training images left after the split")
    metrics = run_pipeline(ctx, stage1_only=stage1_only)
    if not distributed.is_main_process():
        return 0
    write_json(run_dir / "metrics.json", metrics)
    (run_dir / "summary.md").write_text(_summary(metrics, config, run_dir))
    log(f"wrote {run_dir / 'metrics.json'} and {run_dir / 'summary.md'}")
    from tatl.reporting.report import write_report_or_say_why

    log(write_report_or_say_why(run_dir, ctx.report.root))
    print((run_dir / "summary.md").read_text())
    return 0


def _summary(metrics: dict, config, run_dir: Path) -> str:
    from tatl.reporting.summary import summary_markdown

    return summary_markdown(metrics, config.data.attributes, f"TATL run {run_dir}", config.pipeline.tune_thresholds)
