"""Experiment grids (paper Tables 6-7): backbone x shape x setting x fold x seed, one `tatl run` per job.

A grid file names the axes; every combination is a job, i.e. one run folder `OUT/jobs/<name>` trained by
`tatl run` with config overrides. Every job's config is resolved here, before any job starts, so a typo fails in
a second and not after hours. The tables aggregate each job's `metrics.json`: the scores of the job's one variant
for its one shape, mean ± standard deviation over folds and seeds.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tatl.config import Config, load_config
from tatl.errors import ConfigError
from tatl.io import write_csv, write_text
from tatl.layout import RunLayout

REQUIRED_KEYS = ("data", "backbones", "shapes", "settings", "folds", "seeds")
OPTIONAL_KEYS = ("base_config", "set")
SETTING_KEYS = ("set", "variant")  # the mapping form of a setting; the list form is its `set` alone
# Keys the grid's own axes set: an override of one of them in `set` or a setting would be silently overwritten.
AXIS_KEYS = {"model.encoder_name": "backbones", "model.shapes": "shapes", "data.fold": "folds", "train.seed": "seeds"}
SHAPE_LABELS = {"unet": "U-shape", "linknet": "Link-shape"}
AVERAGES = {"macro_average": "macro", "micro_average": "micro"}  # macro = the paper's tables; micro = leaderboard
Columns = list[tuple[str, str, str]]  # a table's columns: (header, shape, score key of results_rows)


@dataclass(frozen=True)
class Setting:
    """One row of Tables 6-7: overrides for every job of the setting, and the variant whose scores it reports."""

    name: str
    overrides: tuple[str, ...]
    variant: str | None = None


@dataclass
class Grid:
    path: Path
    data: str
    base_config: str | None
    overrides: list[str]
    backbones: list[str]
    shapes: list[str]
    settings: list[Setting]
    folds: list[int]
    seeds: list[int]

    def resolved(self) -> dict[str, Any]:
        """The grid as written to grid.json."""
        settings = {s.name: {"set": list(s.overrides), "variant": s.variant} for s in self.settings}
        return {"file": str(self.path), "data": self.data, "base_config": self.base_config, "set": self.overrides,
                "backbones": self.backbones, "shapes": self.shapes, "settings": settings, "folds": self.folds,
                "seeds": self.seeds}


@dataclass
class Job:
    """One `tatl run`: one backbone, shape, setting, fold and seed."""

    name: str
    backbone: str
    shape: str
    setting: str
    fold: int
    seed: int
    variant: str  # the variant whose scores the tables take, e.g. "1,2,3"
    overrides: list[str]  # every --set of the run, axes last

    def run_dir(self, out: Path) -> Path:
        return out / "jobs" / self.name

    def log_path(self, out: Path) -> Path:
        # Not inside the run folder: `tatl run` refuses a non-empty new --out.
        return out / "logs" / f"{self.name}.log"

    def is_finished(self, out: Path) -> bool:
        return RunLayout(self.run_dir(out)).metrics.is_file()

    def is_started(self, out: Path) -> bool:
        """A run folder with a saved config: continued with --resume."""
        return RunLayout(self.run_dir(out)).config.is_file()


# ------------------------------------------------------------------------------------------------- the grid file
def read_grid(path: Path, data: str | None = None) -> Grid:
    """Read and check a grid file; `data` replaces its `data:`. Unknown keys and wrong types name the key."""
    try:
        values = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read the grid file ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of grid keys ({', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)})")
    for key in values:
        if key not in REQUIRED_KEYS + OPTIONAL_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)})")
    for key in REQUIRED_KEYS:
        if key not in values:
            raise ConfigError(f"{path}: missing key {key!r}")
    base = values.get("base_config")
    return Grid(
        path=Path(path),
        data=data or _text(values["data"], path, "data"),
        base_config=None if base is None else _text(base, path, "base_config"),
        overrides=_overrides(values.get("set") or [], path, "set"),
        backbones=_unique_list(values["backbones"], str, path, "backbones"),
        shapes=_unique_list(values["shapes"], str, path, "shapes"),
        settings=_settings(values["settings"], path),
        folds=_unique_list(values["folds"], int, path, "folds"),
        seeds=_unique_list(values["seeds"], int, path, "seeds"),
    )


def _text(value: Any, path: Path, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: {key} must be a non-empty string, got {value!r}")
    return value


def _unique_list(value: Any, kind: type, path: Path, key: str) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: {key} must be a non-empty list, got {value!r}")
    for item in value:
        if not isinstance(item, kind) or isinstance(item, bool):
            raise ConfigError(f"{path}: {key}: {item!r} is not a {kind.__name__}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{path}: {key} has duplicates: {value}")
    return list(value)


def _overrides(value: Any, path: Path, key: str) -> list[str]:
    """A list of `section.key=value` strings, none of them a key the grid's axes set."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{path}: {key} must be a list of section.key=value strings, got {value!r}")
    for override in value:
        dotted = override.split("=", 1)[0].strip()
        if dotted in AXIS_KEYS:
            raise ConfigError(f"{path}: {key}: {dotted} is set by the grid's {AXIS_KEYS[dotted]!r} axis; "
                              f"list its values there instead")
    return list(value)


def _settings(value: Any, path: Path) -> list[Setting]:
    """`name: [overrides]` or `name: {set: [overrides], variant: "1,2,3"}`."""
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{path}: settings must be a non-empty mapping of name -> list of overrides")
    settings = []
    for name, body in value.items():
        where = f"settings.{name}"
        if isinstance(body, list):
            body = {"set": body}
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {where} must be a list of overrides or a mapping with set and variant")
        for key in body:
            if key not in SETTING_KEYS:
                raise ConfigError(f"{path}: unknown key '{where}.{key}' (known: {', '.join(SETTING_KEYS)})")
        variant = body.get("variant")
        if variant is not None:
            variant = str(variant).replace(" ", "")  # YAML reads `variant: 3` as an int
        settings.append(Setting(str(name), tuple(_overrides(body.get("set") or [], path, where)), variant))
    return settings


# ------------------------------------------------------------------------------------------------- the jobs
def safe_name(text: str) -> str:
    """Filesystem-safe: letters, digits, dot, dash and underscore; anything else becomes a dash."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def plan_jobs(grid: Grid) -> tuple[list[Job], Config]:
    """Every job, its config resolved (so every override is checked now); and the first job's config."""
    names = {}
    for setting in grid.settings:
        previous = names.setdefault(safe_name(setting.name), setting.name)
        if previous != setting.name:
            raise ConfigError(f"{grid.path}: settings {previous!r} and {setting.name!r} give the same folder name")
    for backbone in grid.backbones:
        _check_backbone(backbone, grid.path)
    jobs, first = [], None
    for backbone, shape, setting, fold, seed in itertools.product(
            grid.backbones, grid.shapes, grid.settings, grid.folds, grid.seeds):
        name = "__".join([safe_name(backbone), shape, safe_name(setting.name), f"fold{fold}", f"seed{seed}"])
        variant_set = [f'pipeline.variants=["{setting.variant}"]'] if setting.variant else []
        axes = [f"model.encoder_name={json.dumps(backbone)}", f"model.shapes=[{shape}]", f"data.fold={fold}",
                f"train.seed={seed}"]
        overrides = [*grid.overrides, *variant_set, *setting.overrides, *axes]
        try:
            config = load_config(grid.base_config, overrides)
        except ConfigError as error:
            raise ConfigError(f"{grid.path}: job {name}: {error}") from None
        jobs.append(Job(name, backbone, shape, setting.name, fold, seed, _job_variant(config, setting, grid.path),
                        overrides))
        first = first or config
    return jobs, first


def _check_backbone(backbone: str, path: Path) -> None:
    from tatl.models.networks import check_encoder_name  # imports smp and timm: only when a grid is planned

    try:
        check_encoder_name(backbone)
    except ConfigError as error:
        raise ConfigError(f"{path}: backbones: {error}") from None


def _job_variant(config: Config, setting: Setting, path: Path) -> str:
    variants = config.pipeline.variants
    if setting.variant is not None:
        if setting.variant not in variants:
            raise ConfigError(f"{path}: settings.{setting.name}.variant {setting.variant!r} is not among the "
                              f"variants it runs ({' '.join(variants)})")
        return setting.variant
    if len(variants) != 1:
        raise ConfigError(f"{path}: settings.{setting.name} runs variants {' '.join(variants)}; name the one the "
                          "tables report with `variant:` (or run one)")
    return variants[0]


def check_synthetic_overrides(grid: Grid) -> None:
    """`data: synthetic` is generated once for all jobs, so synth.* may be set for the whole grid only."""
    for setting in grid.settings:
        for override in setting.overrides:
            if override.split("=", 1)[0].strip().startswith("synth."):
                raise ConfigError(f"{grid.path}: settings.{setting.name}: {override.split('=', 1)[0]}: the synthetic "
                                  "data is generated once for every job; set synth.* in the grid's `set`")


# ------------------------------------------------------------------------------------------------- aggregation
def job_scores(job: Job, out: Path) -> dict[str, dict[str, float]] | None:
    """{attribute or macro_average/micro_average: {jaccard, dice}} of the job's variant and shape, None if absent."""
    path = RunLayout(job.run_dir(out)).metrics
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return metrics.get(f"variant {job.variant}", {}).get(job.shape)


def results_rows(jobs: list[Job], out: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per job (scores empty when it has none) and the attributes, in the order the runs report them."""
    rows, attributes = [], []
    for job in jobs:
        scores = job_scores(job, out) or {}
        row: dict[str, Any] = {"backbone": job.backbone, "shape": job.shape, "setting": job.setting,
                               "fold": job.fold, "seed": job.seed, "variant": job.variant, "job": job.name,
                               "finished": bool(scores)}
        for name, values in scores.items():
            if name not in AVERAGES and name not in attributes:
                attributes.append(name)
            for metric in ("jaccard", "dice"):
                row[f"{AVERAGES.get(name, name)} {metric}"] = values[metric]
        rows.append(row)
    return rows, attributes


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); None where undefined."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _cell(values: list[float], expected: int) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "–"
    text = f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
    return text + (f" (n={len(values)})" if len(values) != expected else "")


def table_cells(rows: list[dict], grid: Grid, columns: Columns) -> tuple[list[list[str]], list[dict]]:
    """One row per backbone x setting: its cells (backbone, setting, "mean ± std" per column) and its CSV row (mean,
    std, n per column); columns are (header, shape, score key). The report shows the same cells as table6/7.md."""
    expected = len(grid.folds) * len(grid.seeds)
    cell_rows, csv_rows = [], []
    for backbone, setting in itertools.product(grid.backbones, [s.name for s in grid.settings]):
        mine = [r for r in rows if r["backbone"] == backbone and r["setting"] == setting and r["finished"]]
        cells, csv_row = [backbone, setting], {"backbone": backbone, "setting": setting}
        for header, shape, key in columns:
            values = [r[key] for r in mine if r["shape"] == shape and key in r]
            cells.append(_cell(values, expected))
            mean, std = mean_std(values)
            csv_row.update({f"{header} mean": mean, f"{header} std": std, f"{header} n": len(values)})
        cell_rows.append(cells)
        csv_rows.append(csv_row)
    return cell_rows, csv_rows


def table(rows: list[dict], grid: Grid, columns: Columns, title: str, note: str):
    """Markdown and CSV rows: one row per backbone x setting; columns (header, shape, score key)."""
    cell_rows, csv_rows = table_cells(rows, grid, columns)
    md = [f"# {title}", "", note, "", "| backbone | setting | " + " | ".join(c[0] for c in columns) + " |",
          "|---|---|" + "---|" * len(columns), *("| " + " | ".join(cells) + " |" for cells in cell_rows)]
    return "\n".join(md) + "\n", csv_rows


def table_specs(grid: Grid, attributes: list[str]) -> list[tuple[str, Columns, str, str]]:
    """(file stem, columns, title, note) of Tables 6 and 7."""
    spread = (f"Cells: mean ± sample standard deviation over {len(grid.folds)} fold(s) x {len(grid.seeds)} seed(s) "
              "of each job's validation fold (official ISIC 2018 Task 2 scores at original size); (n=k): only k "
              "jobs finished; –: none.")
    table6 = [(f"{a} {SHAPE_LABELS[s]} Dice", s, f"{a} dice") for a in attributes for s in grid.shapes]
    table7 = [(f"{SHAPE_LABELS[s]} {metric.capitalize()}", s, f"macro {metric}")
              for s in grid.shapes for metric in ("dice", "jaccard")]
    return [("table6", table6, "Table 6: Dice per attribute and shape", spread),
            ("table7", table7, "Table 7: macro average over attributes", spread + " Macro = unweighted mean over "
             "attributes, the scale of the paper's tables (not the ISIC leaderboard's micro 'overall').")]


def write_tables(grid: Grid, jobs: list[Job], out: Path) -> list[Path]:
    """table6.md/.csv, table7.md/.csv and results.csv in `out`; return the paths written."""
    rows, attributes = results_rows(jobs, out)
    written = []
    for name, columns, title, note in table_specs(grid, attributes):
        markdown, csv_rows = table(rows, grid, columns, title, note)
        written += [_write_text(out / f"{name}.md", markdown), _write_csv(out / f"{name}.csv", csv_rows)]
    return [*written, _write_csv(out / "results.csv", rows)]


def _write_text(path: Path, text: str) -> Path:
    write_text(path, text)
    return path


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    write_csv(path, rows)
    return path
