"""tatl.io: the shared file helpers (the atomic writer itself is exercised by every test that writes a run)."""

from __future__ import annotations

import os

from tatl.io import link_or_copy


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
