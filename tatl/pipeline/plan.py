"""Where every network group of a run starts, decided once before the first epoch and written to RUN/plan.json.

A group (heads sharing one encoder: the Segment-Net, a Stage-2 network, a Stage-3 network or frozen-encoder set) has
one of four starts, tried in this order:

- OWN      its done.json is there (a resumed run): its finished best.pt reloaded;
- COPY     a finished network copied into its folder, then reloaded: another run's Segment-Net
           (pipeline.segment_net, tatl.pipeline.segment_net), another run's identical Stage 1-2
           (pipeline.reuse_stages_from; whether it matches is tatl.pipeline.reuse's decision), or the parent's
           network (pipeline.init_copied, tatl.pipeline.parent);
- WEIGHTS  built, then started from a best.pt (this run's Stage 2 or pretext network: every weight, the head
           re-initialised when its shape differs) and/or from the parent run's best.pt of each head (strictly; a frozen
           encoder keeps the first start's);
- FRESH    built with the encoder's configured start: ImageNet, Lite0 or a weights file, or random.

The pipeline (tatl.pipeline.stages) asks `RunPlan.start(folder)` and tatl.pipeline.groups.train_group carries it out:
no other module decides where a network's weights come from. RUN/plan.json lists each group's folder and its start
in words; a resumed run keeps what the file said of a group it reloads (where it started the first time).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tatl import distributed
from tatl.config import Config
from tatl.constants import JOINT, LESION, UNION
from tatl.io import write_json
from tatl.layout import BEST, DONE, RunLayout, inputs_of, variant_stages
from tatl.pipeline import parent, reuse, segment_net
from tatl.pipeline.context import TrainingContext

OWN, COPY, WEIGHTS, FRESH = "own", "copy", "weights", "fresh"  # GroupStart.kind
BY_SEGMENT_NET, BY_REUSE, BY_PARENT = "segment_net", "reuse", "parent"  # GroupStart.copied_by


@dataclass(frozen=True)
class GroupStart:
    """Where one network group starts (the module's docstring)."""

    folder: Path  # the group's folder in this run: its done.json (and best.pt, for a one-head group)
    kind: str  # OWN, COPY, WEIGHTS or FRESH
    heads: tuple[str, ...] = ()  # the group's head names
    source: Path | None = None  # COPY: the finished group folder copied into `folder`
    copied_by: str | None = None  # COPY: BY_SEGMENT_NET, BY_REUSE or BY_PARENT (what the copy's done.json records)
    state: Path | None = None  # WEIGHTS: a best.pt loaded first into the whole network (Stage 2, the pretext network)
    head_starts: Mapping[str, Path] = field(default_factory=dict)  # WEIGHTS: head -> the best.pt it starts from
    encoder_weights: str | None = None  # FRESH: the encoder's start (imagenet, lite0, a file); None: random

    @property
    def finished(self) -> bool:
        """Reloaded (OWN, or COPY then reloaded), not trained."""
        return self.kind in (OWN, COPY)

    def describe(self) -> str:
        """The start in words, for plan.json and the log."""
        if self.kind == OWN:
            return "its own finished weights (done.json), reloaded"
        if self.kind == COPY:
            why = {BY_SEGMENT_NET: "pipeline.segment_net", BY_REUSE: "pipeline.reuse_stages_from",
                   BY_PARENT: "pipeline.init_copied"}[self.copied_by or BY_PARENT]
            return f"copied from {self.source} ({why})"
        if self.kind == WEIGHTS:
            parts = [f"{self.state} (every weight)"] if self.state else []
            parts += [f"{path} (head {name})" for name, path in self.head_starts.items()]
            return "started from " + "; ".join(parts)
        weights = self.encoder_weights
        return "random weights" if weights in (None, "", "none") else f"encoder weights {weights}, the rest random"

    def as_json(self, root: Path) -> dict:
        """plan.json's entry: the folder relative to the run, the kind, the sources and the words."""
        values = {"folder": str(self.folder.relative_to(root)), "start": self.kind, "heads": list(self.heads),
                  "source": _text(self.source), "copied_by": self.copied_by, "state": _text(self.state),
                  "head_starts": {name: str(path) for name, path in self.head_starts.items()},
                  "encoder_weights": self.encoder_weights, "described": self.describe()}
        return {key: value for key, value in values.items() if value not in (None, {}, [])}


@dataclass(frozen=True)
class RunPlan:
    """Every network group of a run and its start, in the order the pipeline trains them."""

    parent: str | None  # pipeline.init_from: the run this one is fine-tuned from
    groups: dict[Path, GroupStart]  # group folder -> its start

    def start(self, folder: Path) -> GroupStart:
        return self.groups[Path(folder)]

    def as_json(self, root: Path) -> dict:
        return {"parent": self.parent, "groups": [start.as_json(root) for start in self.groups.values()]}


def plan_run(ctx: TrainingContext) -> RunPlan:
    """The run's plan, resolved on rank 0 (it reads other runs' folders) and the same on every rank."""
    plan = resolve_plan(ctx.config, ctx.layout, ctx.data_identity) if distributed.is_main_process() else None
    return distributed.broadcast_from_main(plan)


def resolve_plan(config: Config, layout: RunLayout, data: dict[str, str]) -> RunPlan:
    """The start of every group the config trains, in the module's order (OWN, COPY, then the start it is trained
    from); `data`: the run's data identity (reuse.data_identity), which a reused group must match."""
    starts = [_finished_start(config, layout, data, start) for start in _trained_starts(config, layout)]
    return RunPlan(config.pipeline.init_from, {start.folder: start for start in starts})


def write_plan(layout: RunLayout, plan: RunPlan) -> None:
    """RUN/plan.json; a group reloaded (OWN) keeps the entry an earlier attempt of the run wrote for it."""
    values = plan.as_json(layout.root)
    earlier = _read_entries(layout.plan)
    values["groups"] = [earlier.get(entry["folder"], entry) if entry["start"] == OWN else entry
                        for entry in values["groups"]]
    write_json(layout.plan, values)


# --------------------------------------------------------------------------------------------- the groups
def _trained_starts(config: Config, layout: RunLayout) -> list[GroupStart]:
    """The start of every group the config trains, were it trained here (WEIGHTS or FRESH)."""
    p, m = config.pipeline, config.model
    starts = []
    if p.stages == "1" or any(1 in variant_stages(v) for v in p.variants):
        starts.append(_start(config, layout, layout.stage1(m.stage1_shape), [LESION], m.encoder_weights))
    if p.stages == "1":
        return starts
    for variant in p.variants:
        for shape in m.shapes:
            stage2 = layout.stage2(inputs_of(variant), shape)
            if 2 in variant_stages(variant) and all(s.folder != stage2 for s in starts):
                starts.append(_start(config, layout, stage2, [UNION], m.encoder_weights))
            starts += _stage3_starts(config, layout, variant, shape)
    return starts


def _stage3_starts(config: Config, layout: RunLayout, variant: str, shape: str) -> list[GroupStart]:
    """One group per attribute; or, with a frozen encoder on Stage 2 (TATL-FE), one group of the trained heads and
    a one-head group per head copied from the parent (pipeline.init_copied); or a joint network's one group."""
    p, attributes = config.pipeline, config.data.attributes
    with_stage2 = 2 in variant_stages(variant)
    state = layout.stage2(inputs_of(variant), shape) / BEST if with_stage2 else None
    weights = None
    if not with_stage2 and not p.init_from:
        state, weights = stage3_initialisation(config, layout, variant, shape)
    heads = {a: layout.stage3_head(variant, shape, a) for a in attributes}
    if p.encoder_mode == "joint":  # one network, one output channel per attribute (never fine-tuned: tatl.config)
        return [_start(config, layout, layout.stage3(variant, shape), list(attributes), weights, state,
                       {JOINT: layout.stage3_joint(variant, shape)})]
    if not (with_stage2 and p.encoder_mode == "frozen"):
        return [_start(config, layout, heads[a], [a], weights, state, {a: heads[a]}) for a in attributes]
    trained = [a for a in attributes if a not in p.init_copied]
    group = [_start(config, layout, layout.stage3(variant, shape), trained, None, state,
                    {a: heads[a] for a in trained})] if trained else []
    return group + [_start(config, layout, heads[a], [a]) for a in attributes if a not in trained]


def stage3_initialisation(config: Config, layout: RunLayout, variant: str, shape: str) -> tuple[Path | None,
                                                                                                  str | None]:
    """(a best.pt to start from, or None; encoder weights for a fresh network) of a Stage-3 network without Stage 2,
    by pipeline.init: random, ImageNet (imagenet, augmentation: the configured source, else timm's), the
    context-restoration pretext network, else ("tatl" without Stage 2, the paper's ablation) the configured start."""
    init, configured = config.pipeline.init, config.model.encoder_weights
    if init == "random":
        return None, None
    if init in ("imagenet", "augmentation"):
        return None, configured if configured not in (None, "none") else "imagenet"
    if init == "context-restoration":
        return layout.pretext(inputs_of(variant), shape) / BEST, None
    return None, configured


def _start(config: Config, layout: RunLayout, folder: Path, heads: list[str], weights: str | None = None,
           state: Path | None = None, head_dirs: dict[str, Path] | None = None) -> GroupStart:
    """A group's start were it trained here: its heads from the parent's (pipeline.init_from), after `state`; else
    `state`; else `weights` (FRESH)."""
    head_dirs = head_dirs or {heads[0]: folder}
    head_starts = parent.head_starts(config, layout, head_dirs) if config.pipeline.init_from else {}
    if state is None and not head_starts:
        return GroupStart(folder, FRESH, tuple(heads), encoder_weights=weights)
    return GroupStart(folder, WEIGHTS, tuple(heads), state=state, head_starts=head_starts)


def _finished_start(config: Config, layout: RunLayout, data: dict[str, str], start: GroupStart) -> GroupStart:
    """OWN when the group has finished here, else COPY when a finished one is to be copied, else `start`."""
    folder, heads = start.folder, start.heads
    if (folder / DONE).is_file():
        return GroupStart(folder, OWN, heads)
    if folder == layout.stage1(config.model.stage1_shape) and segment_net.uses_segment_net(config):
        return GroupStart(folder, COPY, heads, segment_net.source_folder(config), BY_SEGMENT_NET)
    source = reuse.find_trained_group(layout.root, folder, config, data) if config.pipeline.reuse_stages_from else None
    if source is not None:
        return GroupStart(folder, COPY, heads, source, BY_REUSE)
    if parent.is_copied(config, layout, folder):
        return GroupStart(folder, COPY, heads, parent.source_of(config, layout, folder), BY_PARENT)
    return start


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _read_entries(path: Path) -> dict[str, dict]:
    """folder -> entry of an earlier plan.json; {} when there is none or it cannot be read."""
    try:
        return {entry["folder"]: entry for entry in json.loads(path.read_text())["groups"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
