"""tatl.io: the shared file helpers (the atomic writer itself is exercised by every test that writes a run)."""

from __future__ import annotations

import os

from tatl.io import csv_text, link_or_copy, write_csv


def test_link_or_copy_links_and_creates_the_folder(tmp_path):
    source = tmp_path / "a.txt"
    source.write_text("kept")
    target = tmp_path / "deep" / "b.txt"
    link_or_copy(source, target)
    assert target.read_text() == "kept" and os.path.samefile(source, target)


def test_link_or_copy_copies_atomically_with_the_times_where_links_fail(tmp_path, monkeypatch):
    source = tmp_path / "a.txt"
    source.write_text("kept")
    os.utime(source, (1_000_000_000, 1_000_000_000))

    def no_links(*args):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "deep" / "b.txt"
    link_or_copy(source, target)
    assert target.read_text() == "kept" and not os.path.samefile(source, target)
    assert target.stat().st_mtime == source.stat().st_mtime
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.txt"]  # no temporary left


def test_csv_text_takes_every_rows_columns_in_the_order_first_met():
    rows = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4, "dice": 0.7}]
    assert csv_text(rows) == "epoch,loss,dice\r\n1,0.5,\r\n2,0.4,0.7\r\n"
    assert csv_text([], ["rank", "score"], line_end="\n") == "rank,score\n"


def test_write_csv_writes_the_text(tmp_path):
    write_csv(tmp_path / "a.csv", [{"a": 1}], line_end="\n")
    assert (tmp_path / "a.csv").read_bytes() == b"a\n1\n"
