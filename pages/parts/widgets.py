"""Streamlit's own words on its widgets, in the reader's language.

Streamlit writes a few strings of its own into the page in English only: the file uploader's
"Upload" button and its "200MB per file • CSV" line, and "Press Enter to apply" over a typed
field. It has no setting for them, so the pages hide them with CSS and show NetBuilder's own
words in their place (CSS generated text, which screen readers read too). The sizes and types
are the page's own, given here again.
"""

from __future__ import annotations

import json

import streamlit as st

from i18n import _


def css_text(text: str) -> str:
    """A CSS string literal holding `text` (quotes, backslashes and newlines escaped)."""
    # a JSON string (quotes and backslashes escaped, no newline) is a valid CSS string; "<"
    # could end the style element
    return json.dumps(text.replace("\n", " "), ensure_ascii=False).replace("<", "\\3c ")


def global_style() -> str:
    """For every page: the uploader's button says "Upload" in the reader's language, and the
    "Press Enter to apply" hint is gone (a field applies its value when it loses focus too)."""
    return f"""
<style>
[data-testid="InputInstructions"] {{ display: none; }}
[data-testid="stFileUploaderDropzone"] button [data-testid="stMarkdownContainer"] p {{
  display: none;
}}
[data-testid="stFileUploaderDropzone"] button [data-testid="stMarkdownContainer"]::after {{
  content: {css_text(_("Upload"))};
}}
</style>
"""


def uploader_note(key_prefix: str, megabytes: int, suffixes: list[str]) -> None:
    """The line beside an uploader whose key starts with `key_prefix`: its size limit and file
    types in the reader's language, in place of Streamlit's English one."""
    note = _(
        "Up to {size} MB per file · {types}",
        size=megabytes,
        types=", ".join(suffix.upper() for suffix in suffixes),
    )
    container = f'[class*="st-key-{key_prefix}"] [data-testid="stFileUploaderDropzoneInstructions"]'
    st.html(f"""<style>
{container} span {{ display: none; }}
{container} > div::after {{ content: {css_text(note)}; font-size: 0.875rem; opacity: 0.7; }}
</style>""")
