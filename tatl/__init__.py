"""tatl: Task Agnostic Transfer Learning for skin attribute segmentation (Nguyen et al., MedIA 2022)."""

__version__ = "0.1.0"
