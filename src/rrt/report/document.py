"""A report apart from its format: sections of paragraphs, bullets, tables (Polars frames of
strings) and figures (PNG bytes), each with its long-form data (tables/NAME.csv), rendered as
Markdown (report.md.j2) and one self-contained HTML page (report.html.j2) with fixed ids and no
dates, so the same results give the same bytes. The words are text.yaml's."""

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import polars as pl
import yaml
from markupsafe import Markup

HERE = Path(__file__).parent
TEXT: dict[str, Any] = yaml.safe_load((HERE / "text.yaml").read_text())


@dataclass
class Table:
    id: str  # the element id in the HTML (table-ID)
    caption: str
    frame: pl.DataFrame  # every column a string
    notes: list[str] = field(default_factory=list)


@dataclass
class Figure:
    id: str  # the element id and the file name (plots/ID.png)
    caption: str
    png: bytes


@dataclass
class Section:
    id: str
    title: str
    blocks: list[str | list[str] | Table | Figure] = field(default_factory=list)  # list: bullets
    data: dict[str, pl.DataFrame] = field(default_factory=dict)  # tables/NAME.csv


def table(
    id: str,
    caption: str,
    rows: list[dict[str, str]],
    notes: Sequence[str] = (),
    columns: Sequence[str] | None = None,
) -> Table:
    """Display strings: ``columns``, or the first row's with status only where a row has one."""
    if columns is None:
        first = rows[0] if rows else {}
        columns = [c for c in first if c != "status" or any(r["status"] for r in rows)]
    frame = pl.DataFrame(
        {c: [row.get(c, "") for row in rows] for c in columns},
        schema=dict.fromkeys(columns, pl.String),
    )
    return Table(id, caption, frame, list(notes))


def one_table(
    id: str,
    data: pl.DataFrame,
    rows: list[dict[str, str]],
    notes: list[str] | None = None,
    **fields: Any,
) -> Section:
    """A section of one table and its data (tables/ID.csv), worded by text.yaml's ``id`` (its
    notes filled in with ``fields``), or why the experiment has none."""
    text = TEXT[id]
    if not rows:
        return Section(id, text["title"], [f"Not in this experiment: {text['absent']}"])
    if notes is None:
        notes = [note.format(**fields) for note in text.get("notes", [])]
    return Section(id, text["title"], [table(id, text["caption"], rows, notes)], {id: data})


def frame(rows: list[dict[str, Any]], columns: Sequence[str]) -> pl.DataFrame:
    """Long-form data: ``columns`` of each row, their types inferred from every row."""
    if not rows:
        return pl.DataFrame(schema=dict.fromkeys(columns, pl.String))
    return pl.DataFrame([{c: r.get(c) for c in columns} for r in rows], infer_schema_length=None)


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


def row(cells: Sequence[str | None]) -> str:
    """A Markdown table row (``|`` escaped, one line)."""
    return "| " + " | ".join((c or "").replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE),
    autoescape=jinja2.select_autoescape(["html.j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
TEMPLATES.filters |= {
    "esc": lambda text: Markup(html.escape(text)),
    "inline": inline,
    "css": css,
    "row": row,
    "base64": lambda data: base64.b64encode(data).decode(),
}
TEMPLATES.tests |= {
    "bullets": lambda b: isinstance(b, list),
    "figure": lambda b: isinstance(b, Figure),
}


def render(title: str, sections: list[Section], form: str) -> str:
    """The document as ``form`` (md, html)."""
    text = TEMPLATES.get_template(f"report.{form}.j2").render(title=title, sections=sections)
    return text.rstrip() + "\n" if form == "md" else text
