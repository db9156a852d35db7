"""The Python API: `tatl.train` does what `tatl run` does, `tatl.load(...).predict(image)` what `tatl predict` does,
`tatl.active_learning` what `tatl active-learning` does.

    import tatl
    run = tatl.train("synthetic", "runs/x", config="demo", overrides={"train.epochs": 1})
    model = tatl.load(run.run_dir)                      # or an ONNX export folder of `tatl export`
    result = model.predict("photo.jpg")                 # a path, a PIL image or an RGB uint8 array (H, W, 3)
    result.attributes["pigment_network"]                # probabilities at the image's size; result.masks, .present

`tatl.finetune(run, new_data, out)` does what `tatl finetune` does (a finished run continued on new labels).
All run the command line's code (tatl.pipeline.train, tatl.inference.results), so a script and the CLI give the
same run folder and the same masks. Errors caused by the input are tatl.errors.TatlError subclasses, with the
one-line message the CLI prints. Messages are logged through `logging` under the "tatl" logger (Python shows
warnings only unless the program configures logging, e.g. tatl.logs.configure()); every run appends its own
record to RUN/log.txt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tatl.errors import ConfigError
from tatl.io import write_text
from tatl.layout import RunLayout

if TYPE_CHECKING:  # heavy (torch): imported where they are used, so `import tatl` stays light
    from tatl.config import Config
    from tatl.inference.prediction_settings import PredictionSettings
    from tatl.inference.predictor import Predictor
    from tatl.inference.results import PredictedImage

log = logging.getLogger(__name__)


@dataclass
class TrainedRun:
    """What `train` returns: the run folder, its metrics (metrics.json) and summary.md's text (None on the other
    ranks under torchrun, where rank 0 alone writes)."""

    run_dir: Path
    metrics: dict
    summary: str | None

    def load(self, variant: str | None = None, device: str = "auto", tta: bool = False) -> Model:
        """The trained networks, ready to predict (`load(run_dir, ...)`)."""
        return load(self.run_dir, variant=variant, device=device, tta=tta)


def train(data: str | Path | Sequence[str | Path], out: str | Path, config: str | Path | None = None, *,
          overrides: Mapping[str, Any] | Sequence[str] | None = None, resume: bool = False, stages: str | None = None,
          variants: Sequence[str] | None = None, device: str | None = None, compile: bool = False,
          segment_net: str | Path | None = None) -> TrainedRun:
    """Train and evaluate the TATL pipeline on `data` in the run folder `out`, as `tatl run` does: the stages and
    variants, RUN/metrics.json, summary.md, the HTML report and RUN/log.txt.

    data: a dataset folder in the ISIC 2018 layout, or "synthetic" (generated into the run folder); for the
    Segment-Net alone (stages="1") also a list of lesion dataset folders, trained on together (ids must differ).
    config: a YAML config file or preset name ("demo", "paper"); defaults when None.
    overrides: config values, {"train.epochs": 5, "model.shapes": ["unet"]} (or "train.epochs=5" strings as --set).
    resume: continue the run in `out` (its own config.yaml; overrides may change what resuming allows).
    stages: "1,2,3", or "1" for the Segment-Net alone (lesion-only data); default: the config's pipeline.stages
    (1,2,3), and a resumed run keeps its own.
    variants: the ablation variants to train, e.g. ["3", "1,2,3"]; device: "auto", "cpu" or "cuda"; compile:
    torch.compile the networks.
    segment_net: a finished run whose Segment-Net crops this run's images (pipeline.segment_net), for data without
    lesion masks; it is copied into `out`."""
    from tatl.pipeline.train import train as train_pipeline  # deferred: torch (~2 s), not on `import tatl`

    finish = _SummaryAndReport(Path(out))
    metrics = train_pipeline(data, out, config, resume=resume, stages=stages, variants=variants, device=device,
                             compile=compile, overrides=overrides, segment_net=segment_net, finish=finish)
    return TrainedRun(Path(out), metrics, finish.summary)


def finetune(run: str | Path, new_data: str | Path, out: str | Path, with_original: bool = False,
             overrides: Mapping[str, Any] | Sequence[str] | None = None, *, resume: bool = False,
             device: str | None = None) -> TrainedRun:
    """Fine-tune the finished run `run` on `new_data` into the new run folder `out`, as `tatl finetune` does: every
    network starts from `run`'s, the heads of the attributes `new_data` has masks for are trained (the others are
    copied), validation is on `run`'s validation split; `out` is a normal run folder (metrics.json, summary.md, the
    report) plus out/finetune.json, its parent and the scores before and after (tatl.pipeline.finetune).

    with_original: train on `run`'s own training images too; overrides: config values as in `train` (train.epochs,
    train.lr; not the networks' settings); resume: continue an interrupted fine-tuning in `out`."""
    from tatl.pipeline.finetune import finetune as finetune_pipeline  # deferred: torch, not on `import tatl`

    finish = _SummaryAndReport(Path(out))
    metrics = finetune_pipeline(run, new_data, out, with_original=with_original, overrides=overrides, resume=resume,
                                device=device, finish=finish)
    return TrainedRun(Path(out), metrics, finish.summary)


class _SummaryAndReport:
    """What `train` and `finetune` do when the pipeline has the metrics (rank 0 only): summary.md, whose text it
    keeps, and the report; a failing report is a warning, not a failed run."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.summary: str | None = None  # summary.md's text, once written

    def __call__(self, metrics: dict, config: Config, data_root: Any) -> None:
        from tatl.reporting.report import write_report_or_say_why  # deferred: torch, not on `import tatl`
        from tatl.reporting.summary import summary_markdown

        layout, run_dir = RunLayout(self.run_dir), self.run_dir
        parent = config.pipeline.init_from  # a fine-tuned run names the run it was fine-tuned from
        title = f"TATL run {run_dir}" + (f", fine-tuned from {parent}" if parent else "")
        self.summary = summary_markdown(metrics, config.data.attributes, title,
                                        config.pipeline.tune_thresholds and not config.data.tune_fraction)
        write_text(layout.summary, self.summary)
        log.info("wrote %s and %s", layout.metrics, layout.summary)
        said = write_report_or_say_why(run_dir, data_root)
        (log.warning if said.startswith("report not written") else log.info)(said)


@dataclass
class ActiveLearningResult:
    """What `active_learning` returns: the experiment folder, the summary (summary.json: area under each curve,
    labels to 95% of random's final score) and the jobs that failed (with --workers or Ray)."""

    out: Path
    summary: dict
    failed: list[str]


def active_learning(data: str | Path, out: str | Path, *, initial: int, per_round: int, rounds: int,
                    strategies: Sequence[str] = ("random", "uncertainty", "disagreement"), seeds: Sequence[int] = (0,),
                    config: str | Path | None = None, overrides: Mapping[str, Any] | Sequence[str] | None = None,
                    workers: int = 1, ray: str | None = None, gpus_per_job: float = 0, cpus_per_job: int = 1,
                    job: str | None = None) -> ActiveLearningResult:
    """Simulated active learning on `data` in the experiment folder `out`, as `tatl active-learning` does
    (tatl.experiments.active_learning): a model on `initial` labelled images per seed, then `rounds` rounds of
    `per_round` images selected by each strategy and fine-tuned on; curves.csv, summary.json and the report.
    Running it again on the same `out` continues it (more rounds, strategies or seeds may be added).

    config, overrides: as for `train`, for every run of the experiment (train.seed is set to each seed).
    workers, ray, gpus_per_job, cpus_per_job: run the strategy x seed chains in parallel, as `tatl experiment`.
    job: run this one job only (what --workers starts in each process); no results written."""
    # deferred: torch and the experiments, not on `import tatl`
    from tatl.experiments.active_learning import Settings
    from tatl.experiments.active_learning_jobs import job_named, plan_jobs, run_job, run_jobs
    from tatl.experiments.active_learning_rounds import prepare
    from tatl.pipeline.train import override_strings
    from tatl.reporting.active_learning_report import write_results

    if config is not None and Path(config).is_file():  # a job process may start in another folder
        config = str(Path(config).resolve())
    settings = Settings(str(Path(data).expanduser().resolve()), initial, per_round, rounds, tuple(strategies),
                        tuple(seeds), None if config is None else str(config),
                        tuple(override_strings(overrides)))
    if workers < 1 or cpus_per_job < 1 or gpus_per_job < 0:
        raise ConfigError("--workers and --cpus-per-job must be >= 1, --gpus-per-job >= 0")
    exp = prepare(settings, Path(out), check_data=job is None)
    if job is not None:
        run_job(exp, job_named(settings, job))
        return ActiveLearningResult(Path(out), {}, [])
    initial_jobs, chains = plan_jobs(settings)
    try:
        every = [*initial_jobs, *chains]
        failed = run_jobs(exp, initial_jobs, workers, ray, gpus_per_job, cpus_per_job, every)
        failed_seeds = {j.seed for j in initial_jobs if j.name in failed}
        failed += run_jobs(exp, [c for c in chains if c.seed not in failed_seeds], workers, ray, gpus_per_job,
                           cpus_per_job, every)
    except BaseException:  # what has finished goes on the curves, also when a round fails or is interrupted
        try:
            write_results(exp.folder, settings, exp.split)
        except Exception as error:  # noqa: BLE001 - the error that stopped the rounds is the one to see
            log.warning(f"results not written: {error}")
        raise
    return ActiveLearningResult(Path(out), write_results(exp.folder, settings, exp.split), failed)


class Model:
    """A trained run (or its ONNX export), loaded once: `predict(image)` for one image at a time."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    @property
    def settings(self) -> PredictionSettings:
        """The variant, attributes, shapes, sizes and thresholds used (tatl.inference.predictor)."""
        return self.predictor.settings

    @property
    def attributes(self) -> list[str]:
        return list(self.predictor.settings.attributes)

    def predict(self, image: Any) -> PredictedImage:
        """Probabilities and masks of one image at its original size (tatl.inference.results.PredictedImage).

        image: a path (str or Path), a PIL image, or an RGB uint8 numpy array (height, width, 3). A file is read as
        `tatl predict` reads it (a JPEG DCT-scaled while decoded); an image in memory is resized from its pixels."""
        from tatl.inference.results import predict  # deferred: torch, not on `import tatl`

        return predict(self.predictor, image)

    def __repr__(self) -> str:
        s = self.predictor.settings
        return (f"Model({str(self.predictor.source)!r}, variant={s.variant!r}, shapes={s.shapes}, "
                f"engine={self.predictor.engine!r})")


def load(model: str | Path, variant: str | None = None, device: str = "auto", tta: bool = False) -> Model:
    """A run folder of `tatl run` (torch) or an export folder of `tatl export` (onnxruntime), ready to predict.

    variant: which trained variant ("3", "2,3", "1,3", "1,2,3"; default 1,2,3 when trained, else the last trained);
    device: "auto", "cpu" or "cuda"; tta: average over the flips (4x the network time)."""
    from tatl.inference.predictor import load_predictor  # deferred: torch, not on `import tatl`

    return Model(load_predictor(Path(model), variant, device=device, tta=tta))
