"""The document as Markdown (figures as plots/ID.png beside it) and as one self-contained HTML
page (figures as base64 PNGs, styles inline). Both are functions of the document alone: fixed
element ids, no dates, so the same results give the same bytes."""

from __future__ import annotations

import base64
import html
import re

from rrt.report.document import Bullets, Figure, Section, Table

CSS = """
body { font-family: "DejaVu Sans", Arial, sans-serif; font-size: 14px; line-height: 1.45;
       color: #1a1a1a; margin: 0; padding: 1.5em 2em; }
p, ul, nav, figcaption { max-width: 80em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
nav ol { columns: 2; margin: 0.3em 0 1em 0; }
code { background: #f3f3f3; padding: 0 0.25em; border-radius: 3px; font-size: 0.92em; }
.table-wrap { overflow-x: auto; margin: 0.6em 0 0.3em 0; }
table { border-collapse: collapse; font-size: 12px; }
caption { caption-side: top; text-align: left; font-weight: bold; padding: 0.3em 0; }
th, td { border: 1px solid #d0d0d0; padding: 0.2em 0.4em; text-align: right;
         vertical-align: top; white-space: nowrap; }
th { background: #f0f0f0; white-space: normal; }
.name { text-align: left; }
.text { text-align: left; white-space: normal; min-width: 14em; max-width: 34em; }
td.missing { color: #a33; text-align: left; white-space: normal; min-width: 20em; }
tr:nth-child(even) td { background: #fafafa; }
p.note { font-size: 12px; color: #444; margin: 0.2em 0; }
figure { margin: 1em 0; }
figure img { max-width: min(100%, 1800px); height: auto; border: 1px solid #e4e4e4; }
figcaption { font-size: 12.5px; color: #333; }
"""

# Columns of prose (wrapped) and of names (left-aligned); the others hold numbers.
TEXT_COLUMNS = {"paper's claim", "paper", "this run", "reason", "note", "what it is", "status"}
NAME_COLUMNS = {"model", "reference", "claim", "system", "missing result", "training (tokens)"}


def _css(column: str) -> str:
    if column in TEXT_COLUMNS:
        return ' class="text"'
    return ' class="name"' if column in NAME_COLUMNS else ""


def inline(text: str) -> str:
    """Escape, then `code` and **bold**."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def to_html(title: str, sections: list[Section]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f'<h1 id="top">{html.escape(title)}</h1>',
        '<nav id="contents"><ol>',
    ]
    parts += [f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in sections]
    parts.append("</ol></nav>")
    for section in sections:
        parts.append(f'<section id="{section.id}">')
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            parts.append(_html_block(block))
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _html_block(block: str | Bullets | Table | Figure) -> str:
    if isinstance(block, str):
        return f"<p>{inline(block)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{inline(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode()
        return (
            f'<figure id="figure-{block.id}"><img alt="{html.escape(block.caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{inline(block.caption)}'
            "</figcaption></figure>"
        )
    columns = block.frame.columns
    head = "".join(f"<th{_css(c)}>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in block.frame.iter_rows():
        cells = []
        for column, value in zip(columns, row, strict=True):
            value = value or ""
            css = ' class="missing"' if value.startswith("missing") else _css(column)
            cells.append(f"<td{css}>{inline(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f'<p class="note">{inline(n)}</p>' for n in block.notes)
    return (
        f'<div class="table-wrap"><table id="table-{block.id}"><caption>'
        f"{inline(block.caption)}</caption><thead><tr>{head}</tr></thead><tbody>"
        + "".join(body)
        + f"</tbody></table></div>{notes}"
    )


def to_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += _md_block(block) + [""]
    return "\n".join(lines).rstrip() + "\n"


def _md_block(block: str | Bullets | Table | Figure) -> list[str]:
    if isinstance(block, str):
        return [block]
    if isinstance(block, Bullets):
        return [f"- {item}" for item in block.items]
    if isinstance(block, Figure):
        return [f"![{block.caption}](plots/{block.id}.png)", "", f"*{block.caption}*"]
    columns = block.frame.columns
    lines = [f"**{block.caption}**", ""]
    lines.append("| " + " | ".join(_cell(c) for c in columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in block.frame.iter_rows():
        lines.append("| " + " | ".join(_cell(v or "") for v in row) + " |")
    if block.notes:
        lines.append("")
        lines += [f"> {note}" for note in block.notes]
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
