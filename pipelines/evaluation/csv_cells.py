"""CSV a spreadsheet opens safely: a text cell never starts a formula, and never carries a URL's credentials.

Spreadsheets run a cell that starts with `=`, `+`, `-` or `@` as a formula (`=HYPERLINK(...)` sends
data to another host when clicked; DDE formulas run commands), and a leading tab or carriage
return hides such a start. Image ids are file names the user did not choose alone: OWASP's CSV
injection advice is to prefix such a cell with a single quote, which spreadsheets show as text.
Numbers are written as numbers (a negative difference stays -1.5): only text cells are escaped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from adir_storage import redact_text

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: Any) -> Any:
    """`value` as a CSV cell: text that a spreadsheet would run as a formula is prefixed with `'`."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[Any]], delimiter: str = ",") -> bytes:
    """UTF-8 CSV of the rows: None as an empty cell, text redacted (redact_text) and escaped (spreadsheet_cell)."""
    sink = io.StringIO()
    # RFC 4180's CRLF: with "\n" as the terminator, csv leaves a lone "\r" in a cell unquoted, and a
    # reader then splits the row there (an id with a carriage return broke per_image.csv).
    writer = csv.writer(sink, lineterminator="\r\n", delimiter=delimiter)
    for row in [header, *rows]:
        writer.writerow(
            ["" if v is None else spreadsheet_cell(redact_text(v) if isinstance(v, str) else v) for v in row]
        )
    return sink.getvalue().encode("utf-8")
