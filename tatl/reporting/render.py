"""The building blocks of a report page (Table, Figure, Text, Link) and their two renderings: Markdown with its
pictures beside it, and one self-contained HTML page (inline style, images as base64 PNG, no script)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

from tatl.io import write_bytes, write_text


@dataclass
class Link:
    """A table cell that links to another page: `html` from report.html, `markdown` from report.md."""

    text: str
    html: str
    markdown: str


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str | Link]]
    note: str = ""


@dataclass
class Figure:
    name: str  # file stem in DIR/report/
    png: bytes
    caption: str


@dataclass
class Text:
    text: str


Block = Table | Figure | Text
Section = tuple[str, list[Block]]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    pyplot().close(figure)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------- rendering
def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for heading, blocks in sections:
        lines += [f"## {heading}", ""]
        for block in blocks:
            if isinstance(block, Table):
                cells = [[_markdown_cell(c) for c in row] for row in [block.header, *block.rows]]
                lines += [f"**{block.title}**", "", "| " + " | ".join(cells[0]) + " |",
                          "|" + "---|" * len(block.header), *("| " + " | ".join(r) + " |" for r in cells[1:]), ""]
                lines += [block.note, ""] if block.note else []
            elif isinstance(block, Figure):
                lines += [f"![{block.caption}](report/{block.name}.png)", ""]
            else:
                lines += [block.text, ""]
    return "\n".join(lines)


def _markdown_cell(cell: str | Link) -> str:
    return f"[{cell.text}]({cell.markdown})" if isinstance(cell, Link) else cell.replace("|", "\\|")


def _html_cell(cell: str | Link) -> str:
    e = html.escape
    return f"<a href='{e(cell.html)}'>{e(cell.text)}</a>" if isinstance(cell, Link) else e(cell)


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:2px 8px;"
         "font-size:13px}th{background:#eee}td{text-align:right}td:first-child{text-align:left}"
         "caption{font-weight:bold;text-align:left;padding:4px 0;white-space:nowrap}img{max-width:100%}"
         ".note{color:#555;font-size:13px}")


def render_html(title: str, sections: list[Section]) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{e(title)}</h1>"]
    for heading, blocks in sections:
        parts.append(f"<h2>{e(heading)}</h2>")
        for block in blocks:
            if isinstance(block, Table):
                head = "".join(f"<th>{e(c)}</th>" for c in block.header)
                body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>"
                               for row in block.rows)
                parts.append(f"<table><caption>{e(block.title)}</caption><tr>{head}</tr>{body}</table>")
                parts.append(f"<p class='note'>{e(block.note)}</p>" if block.note else "")
            elif isinstance(block, Figure):
                data = base64.b64encode(block.png).decode()
                parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{e(block.caption)}'>"
                             f"<figcaption>{e(block.caption)}</figcaption></figure>")
            else:
                parts.append(f"<p>{e(block.text)}</p>")
    return "".join(parts) + "</body></html>\n"


def write_page(title: str, sections: list[Section], html_path: Path, markdown_path: Path, pictures: Path) -> Path:
    """The page as self-contained HTML and as Markdown with its figures in `pictures` (the Markdown links them as
    report/<name>.png); returns the HTML's path."""
    pictures.mkdir(parents=True, exist_ok=True)
    for block in (b for _, blocks in sections for b in blocks if isinstance(b, Figure)):
        write_bytes(pictures / f"{block.name}.png", block.png)
    write_text(markdown_path, render_markdown(title, sections))
    write_text(html_path, render_html(title, sections))
    return html_path
