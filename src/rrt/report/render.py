"""The document as Markdown (figures as plots/ID.png beside it) and as one self-contained HTML
page from report.html.j2 (figures as base64 PNGs, styles inline). Both are functions of the
document alone: fixed element ids, no dates, so the same results give the same bytes."""

import base64
import html
import re
from pathlib import Path

import jinja2
from markupsafe import Markup

from rrt.report.document import Bullets, Figure, Section, Table

# Columns of prose (wrapped) and of names (left-aligned); the others hold numbers.
TEXT_COLUMNS = {"paper's claim", "paper", "this run", "reason", "note", "what it is", "status"}
NAME_COLUMNS = {"model", "reference", "claim", "system", "missing result", "training (tokens)"}


def inline(text: str | None) -> Markup:
    """Escape, then `code` and **bold**."""
    out = html.escape(text or "", quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return Markup(re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out))


def css(column: str, value: str | None = None) -> Markup:
    """A cell's class: a gap, prose, a name, or none (a number)."""
    if (value or "").startswith("missing"):
        return Markup(' class="missing"')
    if column in TEXT_COLUMNS:
        return Markup(' class="text"')
    return Markup(' class="name"' if column in NAME_COLUMNS else "")


HTML = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
HTML.filters |= {
    "esc": lambda text: Markup(html.escape(text)),
    "inline": inline,
    "css": css,
    "base64": lambda data: base64.b64encode(data).decode(),
}
HTML.tests |= {
    "bullets": lambda b: isinstance(b, Bullets),
    "figure": lambda b: isinstance(b, Figure),
}


def to_html(title: str, sections: list[Section]) -> str:
    return HTML.get_template("report.html.j2").render(title=title, sections=sections)


def to_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += [*_markdown(block), ""]
    return "\n".join(lines).rstrip() + "\n"


def _markdown(block: str | Bullets | Table | Figure) -> list[str]:
    if isinstance(block, str):
        return [block]
    if isinstance(block, Bullets):
        return [f"- {item}" for item in block.items]
    if isinstance(block, Figure):
        return [f"![{block.caption}](plots/{block.id}.png)", "", f"*{block.caption}*"]
    columns = block.frame.columns
    lines = [
        f"**{block.caption}**",
        "",
        _row(columns),
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += [_row(row) for row in block.frame.iter_rows()]
    return lines + (["", *(f"> {note}" for note in block.notes)] if block.notes else [])


def _row(cells: list[str] | tuple[str | None, ...]) -> str:
    return "| " + " | ".join((c or "").replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
