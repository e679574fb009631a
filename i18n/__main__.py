"""`python -m i18n missing`: every marked string of the app that lacks a Chinese translation,
as .po entries with an empty msgstr, ready to fill in and append to messages.po.

`python -m i18n check` exits 1 when any is missing (tests/test_i18n.py asserts the same).
`python -m i18n dedupe` keeps the first translation of a string that a union merge left twice."""

from __future__ import annotations

import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract, extract_from_dir
from babel.messages.pofile import write_po

import i18n

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("app.py", "builder", "compiler", "runtime", "pages", "i18n")


def source_messages() -> dict[str, str]:
    """msgid -> 'file:line' for every string marked with _(), N_() or msg() in the app."""
    found: dict[str, str] = {}
    for entry in SOURCES:
        path = ROOT / entry
        if path.is_file():
            with path.open("rb") as handle:
                for line, text, _comments, _context in extract(
                    "python", handle, keywords=i18n.KEYWORDS
                ):
                    if isinstance(text, str) and text:
                        found.setdefault(text, f"{entry}:{line}")
            continue
        for name, line, text, _comments, _context in extract_from_dir(
            path, [("**.py", "python")], keywords=i18n.KEYWORDS
        ):
            if isinstance(text, str) and text:
                found.setdefault(text, f"{entry}/{name}:{line}")
    return found


def needs_translation(text: str) -> bool:
    """A template with no words outside its placeholders ('{first}; {rest}') reads the same."""
    import string

    literal = "".join(part for part, *_ in string.Formatter().parse(text))
    return any(ch.isalpha() for ch in literal)


def missing(lang: str = "zh") -> dict[str, str]:
    known = i18n.catalog(lang)
    return {
        text: where
        for text, where in source_messages().items()
        if needs_translation(text) and text not in known
    }


def po_path(lang: str = "zh") -> Path:
    return i18n.LOCALES_DIR / lang / "LC_MESSAGES" / f"{i18n.DOMAIN}.po"


def po_entries(text: str) -> list[tuple[str | None, str]]:
    """(msgid or None for a block without one, the block's text) for each blank-line block."""
    from babel.messages.pofile import denormalize

    entries: list[tuple[str | None, str]] = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith("#")]
        start = next((i for i, line in enumerate(lines) if line.startswith("msgid ")), None)
        end = next((i for i, line in enumerate(lines) if line.startswith("msgstr")), None)
        if start is None or end is None:
            entries.append((None, block))
            continue
        entries.append((denormalize("\n".join(lines[start:end])[len("msgid ") :]), block))
    return entries


def dedupe(lang: str = "zh") -> int:
    path = po_path(lang)
    seen: set[str] = set()
    kept = []
    for msgid, block in po_entries(path.read_text(encoding="utf-8")):
        if msgid is not None and msgid != "":
            if msgid in seen:
                continue
            seen.add(msgid)
        kept.append(block)
    path.write_text("\n\n".join(kept), encoding="utf-8")
    return 0


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "missing"
    if command == "dedupe":
        return dedupe()
    gaps = missing()
    if command == "check":
        for text, where in sorted(gaps.items(), key=lambda item: item[1]):
            print(f"{where}: {text!r}")
        return 1 if gaps else 0
    catalog = Catalog(locale="zh")
    for text, where in gaps.items():
        file, _, line = where.rpartition(":")
        catalog.add(text, "", locations=[(file, int(line))])
    write_po(sys.stdout.buffer, catalog, omit_header=True, width=100)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
