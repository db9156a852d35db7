"""Experiment grids (backbone x shape x setting x fold x seed): planning, running jobs, Tables 6-7."""
