"""Comparing nested score dictionaries (metrics.json and the like) across runs, processes and ranks."""

import pytest


def assert_close_numbers(actual, expected, where: str = "scores") -> None:
    """Equal structure and values, floats to 1e-9 (sums over images added up in another order)."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key, value in expected.items():
            assert_close_numbers(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-12), where
    else:
        assert actual == expected, where
