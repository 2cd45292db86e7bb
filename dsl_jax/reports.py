"""Report files: Markdown tables, CSV and PNG figures from rows of results, each
written atomically (a killed job leaves the old file or the new one, never half), at a
local path or in a bucket (through :mod:`dsl_jax.storage`).

The sweep report (:mod:`dsl_jax.evaluation.report`), the robustness report
(:mod:`dsl_jax.evaluation.robustness`) and the demo report (:mod:`dsl_jax.demo`) build
their content from these pieces. matplotlib is imported only when a figure is drawn,
with the Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import io
import os
from typing import Mapping, Sequence

from dsl_jax import storage
from dsl_jax.textfiles import write_atomic


def num(x, scale: float = 1.0, digits: int = 2) -> str:
    """``x * scale`` with ``digits`` decimals; ``-`` for a missing value (None)."""
    return "-" if x is None else f"{x * scale:.{digits}f}"


def markdown_cell(value) -> str:
    """``value`` as the text of one Markdown table cell: a ``|`` escaped (else it would
    split the cell), a backslash before one kept, line breaks as spaces (else they
    would end the row)."""
    return " ".join(str(value).replace("\\", "\\\\").replace("|", "\\|").splitlines())


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A Markdown table (no trailing newline): the first ``left`` columns left-aligned
    (labels), the others right-aligned (numbers); every cell escaped
    (:func:`markdown_cell`), so names and texts holding ``|`` or line breaks stay in
    their cell."""
    align = ["---"] * left + ["---:"] * (len(head) - left)
    lines = ["| " + " | ".join(markdown_cell(c) for c in head) + " |",
             "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(columns: Sequence[str], rows: Sequence[Mapping], digits: int = 6) -> str:
    """CSV of ``rows`` (dicts) in ``columns``: floats with ``digits`` decimals, missing
    values (absent or None) empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(k) is None else (f"{r[k]:.{digits}f}" if isinstance(r[k], float)
                                                  else r[k]) for k in columns])
    return buf.getvalue()


def write_csv(path: str, columns: Sequence[str], rows: Sequence[Mapping], digits: int = 6) -> None:
    write_atomic(path, csv_text(columns, rows, digits))


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str, dpi: int = 120) -> str:
    """Save ``fig`` at ``path`` atomically (format from the file's extension), close it,
    return ``path``."""
    fmt = os.path.splitext(storage.basename(path))[1].lstrip(".") or "png"
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=dpi)
    finally:
        pyplot().close(fig)
    storage.write_bytes(path, buf.getvalue())
    return path
