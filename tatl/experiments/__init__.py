"""Experiments with trained runs: grids (backbone x shape x setting x fold x seed: planning, running jobs, Tables
6-7), ranking a pool of images for labelling (`tatl select`, `ranking`) and simulated active learning."""
