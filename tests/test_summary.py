"""summary.md's tables from a metrics dict: the ensemble per attribute, and U, Link and the ensemble side by side."""

from __future__ import annotations

from tatl.constants import ATTRIBUTES_2018
from tatl.reporting.summary import summary_markdown


def _scores(jaccard: float) -> dict:
    rows = [*ATTRIBUTES_2018, "macro_average", "micro_average"]
    return {row: {"jaccard": jaccard, "dice": 2 * jaccard / (1 + jaccard)} for row in rows}


def test_summary_shows_u_link_and_the_ensemble_of_each_variant():
    metrics = {"variant 3": {"unet": _scores(0.133), "linknet": _scores(0.024), "ensemble": _scores(0.101)},
               "variant 1,2,3": {"unet": _scores(0.135), "linknet": _scores(0.109), "ensemble": _scores(0.150)}}
    text = summary_markdown(metrics, list(ATTRIBUTES_2018))
    shape_table = text[text.index("## Stage 3 by shape"):]
    assert "| stages | U | Link | U+Link ensemble |" in shape_table
    assert "| 3 | 0.133 / 0.133 | 0.024 / 0.024 | 0.101 / 0.101 |" in shape_table
    assert "| 1,2,3 | 0.135 / 0.135 | 0.109 / 0.109 | 0.150 / 0.150 |" in shape_table
    assert "| **Average (macro)** | 0.101 | 0.183 | 0.150 | 0.261 |" in text  # the main table: the ensemble


def test_a_run_with_one_shape_has_no_shape_table():
    text = summary_markdown({"variant 1,2,3": {"unet": _scores(0.2)}}, list(ATTRIBUTES_2018))
    assert "by shape" not in text and "| **Average (macro)** | 0.200 |" in text
