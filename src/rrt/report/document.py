"""What a report is made of, independent of its format: sections of paragraphs, bullet lists,
tables (Polars frames of display strings) and figures (PNG bytes). ``render`` writes them as
Markdown and as one self-contained HTML page."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl


@dataclass
class Table:
    id: str  # the element id in the HTML and the name of its long-form data (tables/ID.csv)
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


def strings(rows: list[dict[str, str]], columns: list[str]) -> pl.DataFrame:
    """A display frame: the given columns, in order, all strings."""
    return pl.DataFrame(
        {c: [row.get(c, "") for row in rows] for c in columns},
        schema=dict.fromkeys(columns, pl.String),
    )
