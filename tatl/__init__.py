"""tatl: Task Agnostic Transfer Learning for skin attribute segmentation (Nguyen et al., MedIA 2022).

The Python API (tatl.api), loaded on first use so that `import tatl` and `tatl --help` import no torch:
    tatl.train(data, out, config=None, overrides={...})   what `tatl run` does; returns a TrainedRun
    tatl.load(run_or_export).predict(image)                what `tatl predict` does for one image
    tatl.finetune(run, new_data, out)                      what `tatl finetune` does; returns a TrainedRun
    tatl.active_learning(data, out, initial=..., per_round=..., rounds=...)   what `tatl active-learning` does
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ActiveLearningResult", "Model", "PredictedImage", "TrainedRun", "__version__", "active_learning",
           "finetune", "load", "train"]

if TYPE_CHECKING:
    from tatl.api import ActiveLearningResult, Model, TrainedRun, active_learning, finetune, load, train
    from tatl.inference.results import PredictedImage

_LAZY = {"train": "tatl.api", "finetune": "tatl.api", "load": "tatl.api", "Model": "tatl.api", "TrainedRun": "tatl.api",
         "active_learning": "tatl.api", "ActiveLearningResult": "tatl.api", "PredictedImage": "tatl.inference.results"}


def __getattr__(name: str) -> Any:  # PEP 562: the API module is imported when first used
    if name not in _LAZY:
        raise AttributeError(f"module 'tatl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
