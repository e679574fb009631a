"""A CSV file of samples as arrays: numeric feature columns and one label column. numpy only.

The app reads an uploaded CSV with this module, and the export bundle carries it verbatim as
csv_table.py, so `python train.py --data mine.csv` reads a file exactly as the app does. A label
column of numbers stays numbers (integers: classes, fractions: regression targets); a label
column of words (cat, dog) becomes class ids in sorted order, with the names kept. Every refusal
is a CsvError carrying an English template and its values; the app renders it in the reader's
language, train.py prints its English.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

import numpy as np


def N_(text: str) -> str:
    """Marks a sentence for translation where the app shows it (this file stays standalone)."""
    return text


NOT_READABLE = N_("{file} is not a readable CSV file: {detail}")
TOO_SMALL = N_(
    "{file} holds {rows} × {columns} (sample rows × columns); it needs a header row, at least 2"
    " sample rows, and at least one feature column beside the label column"
)
NO_SUCH_COLUMN = N_("{file} has no column {label}; choose the label column among: {columns}")
NOT_NUMERIC = N_(
    "{file}: column(s) {columns} are not numeric; every feature column must hold numbers"
    " (encode categories as integers, or drop the column)"
)
MISSING = N_(
    "{file}: empty or NaN cells in {columns} (rows affected: {rows}); fill them in or remove"
    " those rows"
)
RAGGED = N_("{file}: row {row} has {count} cells but the header names {columns} columns")


class CsvError(ValueError):
    """Why a CSV cannot be read: `template` (English) with its `values`."""

    def __init__(self, template: str, **values: Any) -> None:
        self.template, self.values = template, values
        super().__init__(template.format(**values))


@dataclass(frozen=True)
class Table:
    """features [N, F] float32; labels [N] (numbers, or class ids when class_names is set)."""

    features: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] | None = None


def read_csv_table(
    filename: str, data: bytes, label_column: str | None = None, max_rows: int = 1_000_000
) -> Table:
    """The table of a CSV's bytes: a header row, then one sample per row (at most max_rows).

    The label is the last column unless `label_column` names another. Cells are read into one
    float64 array of rows x columns, so the memory it takes is known from the line count."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvError(NOT_READABLE, file=filename, detail=str(exc)) from None
    rows = csv.reader(io.StringIO(text))
    try:
        header = [name.strip() for name in next(rows, [])]
        if not header:
            raise CsvError(NOT_READABLE, file=filename, detail="it has no header row")
        label = header[-1] if label_column is None else label_column
        if label not in header:
            raise CsvError(
                NO_SUCH_COLUMN, file=filename, label=repr(label), columns=", ".join(header[:50])
            )
        label_index = header.index(label)
        capacity = min(text.count("\n") + 1, max_rows)
        cells = np.full((capacity, len(header)), np.nan)
        words: list[str] = []
        bad: dict[int, None] = {}
        count = 0
        for row in rows:
            if not any(cell.strip() for cell in row):
                continue  # a blank line, often the last
            if count == max_rows:
                break
            if len(row) != len(header):
                raise CsvError(
                    RAGGED, file=filename, row=count + 2, count=len(row), columns=len(header)
                )
            for index, cell in enumerate(row):
                cell = cell.strip()
                if index == label_index:
                    words.append(cell)
                if not cell:
                    continue
                try:
                    cells[count, index] = float(cell)
                except ValueError:
                    bad[index] = None
            count += 1
    except csv.Error as exc:
        raise CsvError(NOT_READABLE, file=filename, detail=str(exc)) from None
    cells = cells[:count]
    if len(header) < 2 or count < 2:
        raise CsvError(TOO_SMALL, file=filename, rows=count, columns=len(header))
    text_features = [header[i] for i in bad if i != label_index]
    if text_features:
        raise CsvError(NOT_NUMERIC, file=filename, columns=", ".join(map(repr, text_features[:5])))
    labels, class_names = _labels(cells[:, label_index], words, label_index in bad)
    empty = np.isnan(cells)
    empty[:, label_index] = [not word for word in words]
    if empty.any():
        missing = [header[i] for i in np.flatnonzero(empty.any(axis=0))]
        raise CsvError(
            MISSING,
            file=filename,
            rows=int(empty.any(axis=1).sum()),
            columns=", ".join(map(repr, missing[:5])),
        )
    features = np.delete(cells, label_index, axis=1).astype(np.float32)
    return Table(features, labels, class_names)


def _labels(
    numbers: np.ndarray, words: list[str], any_word: bool
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Whole numbers as class ids, fractions as they are; words as class ids of their names in
    sorted order."""
    if not any_word:
        finite = numbers[np.isfinite(numbers)]
        whole = len(finite) == len(numbers) and bool(np.all(np.mod(finite, 1) == 0))
        return (numbers.astype(np.int64) if whole else numbers), None
    names = tuple(sorted({word for word in words if word}))
    ids = {name: index for index, name in enumerate(names)}
    return np.array([ids.get(word, -1) for word in words], dtype=np.int64), names
