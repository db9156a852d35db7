"""The `tatl` command line: one subcommand per module in `tatl/commands/`, listed explicitly below."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap

from tatl import __version__, logs
from tatl.errors import TatlError

# subcommand name -> (module in tatl.commands, one-line help). Modules are imported only when their
# command runs, so `tatl --help` stays fast and does not import torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("tatl.commands.synth", "write a synthetic ISIC-like dataset (ISIC 2018 layout)"),
    "check-data": ("tatl.commands.check_data", "validate a dataset and print a summary or every problem"),
    "params": ("tatl.commands.params", "print a Table-5-style parameter count for every shape x backbone"),
    "evaluate": ("tatl.commands.evaluate", "score a folder of predicted masks with the official ISIC metric"),
    "run": ("tatl.commands.run", "train and evaluate the TATL pipeline (stages 1-3, variants, U+Link)"),
    "finetune": ("tatl.commands.finetune", "fine-tune a finished run on new labels into a new run folder"),
    "predict": ("tatl.commands.predict", "predict attribute masks, overlays and a report for new images"),
    "select": ("tatl.commands.select", "rank unlabelled images for labelling (uncertainty, disagreement, random)"),
    "export": ("tatl.commands.export", "export a trained run's networks to ONNX for onnxruntime"),
    "experiment": ("tatl.commands.experiment", "run a backbone x shape x setting x fold x seed grid; Tables 6-7"),
    "active-learning": ("tatl.commands.active_learning",
                        "simulate labelling rounds per selection strategy; learning curves, AUC, labels to 95%%"),
    "bound": ("tatl.commands.bound", "estimate the generalisation bound (Eq. 6) of each Stage-3 initialisation"),
    "report": ("tatl.commands.report", "write one self-contained HTML (and Markdown) report of a run folder"),
    "serve": ("tatl.commands.serve", "a local web app to see, correct and teach a run's attribute masks"),
}

EPILOG = textwrap.dedent(
    """\
    examples:
      tatl synth data/synth --n 300 --size 128 --seed 0
      tatl check-data ../shared/data/isic2018-sample --attributes pigment_network
      tatl run data/synth --out runs/demo --config demo
      tatl evaluate runs/demo/predictions data/synth/ISIC2018_Task2_Training_GroundTruth_v3 --json
    run `tatl COMMAND --help` for the options and examples of each command.
    """
)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the selected command's module is imported (a fast `tatl --help`, no torch import)."""
    parser = argparse.ArgumentParser(
        prog="tatl",
        description="TATL: Task Agnostic Transfer Learning for skin attribute segmentation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tatl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for input errors")
    _add_verbosity(parser, default=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if name != selected:
            subparsers.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=getattr(module, "EXAMPLES", None),
        )
        # SUPPRESS: no default here, so `tatl --debug COMMAND` (before the command) is not reset to False.
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show full tracebacks for input errors")
        _add_verbosity(sub, default=argparse.SUPPRESS)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, default: object) -> None:
    """-q/--quiet and -v/--verbose, accepted before and after the command name (SUPPRESS, as for --debug)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="show warnings and errors only: no progress lines, no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", default=default, help="also show debug lines")


def main(argv: list[str] | None = None) -> int:
    # Offline by default on a machine without a network: fail fast instead of retrying hub downloads.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    argv = sys.argv[1:] if argv is None else list(argv)
    selected = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:  # one before the command name, the other after it
        parser.error("argument -v/--verbose: not allowed with argument -q/--quiet")
    logs.configure(logs.QUIET if args.quiet else logs.VERBOSE if args.verbose else logs.NORMAL)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args._module.run(args) or 0)
    except TatlError as error:
        if args.debug:
            raise
        print(f"tatl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tatl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
