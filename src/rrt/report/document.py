"""What a report is made of, independent of its format: sections of paragraphs, bullet lists,
tables (Polars frames of display strings) and figures (PNG bytes), each section with the
long-form data behind it (tables/NAME.csv). ``render`` writes them as Markdown and HTML."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl


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
class Bullets:
    items: list[str]


Block = str | Bullets | Table | Figure


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
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


def frame(rows: list[dict[str, Any]], columns: Sequence[str]) -> pl.DataFrame:
    """Long-form data: ``columns`` of each row, their types inferred from every row."""
    if not rows:
        return pl.DataFrame(schema=dict.fromkeys(columns, pl.String))
    return pl.DataFrame(
        [{c: row.get(c) for c in columns} for row in rows], infer_schema_length=None
    )
