"""Every string a person reads exists in Chinese and English, with the same placeholders."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir

import i18n
from i18n import Message, msg

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("app.py", "builder", "compiler", "runtime", "pages", "i18n")
GLOSSARY = json.loads((ROOT / "i18n" / "glossary.json").read_text(encoding="utf-8"))["terms"]


def _source_messages() -> dict[str, str]:
    """msgid -> 'file:line' for every message marked in the app's own source."""
    found: dict[str, str] = {}
    method_map = [("**.py", "python")]
    for entry in SOURCE_DIRS:
        path = ROOT / entry
        if path.is_file():
            with path.open("rb") as handle:
                from babel.messages.extract import extract

                for line, text, _comments, _ctx in extract(
                    "python", handle, keywords=i18n.KEYWORDS
                ):
                    if isinstance(text, str) and text:
                        found.setdefault(text, f"{entry}:{line}")
            continue
        for filename, line, text, _comments, _ctx in extract_from_dir(
            path, method_map, keywords=i18n.KEYWORDS
        ):
            if isinstance(text, str) and text:
                found.setdefault(text, f"{entry}/{filename}:{line}")
    return found


SOURCE = _source_messages()


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_the_source_marks_messages() -> None:
    assert len(SOURCE) >= 4, "the extractor found no marked strings: is the keyword list right?"


def test_every_message_has_a_chinese_translation() -> None:
    zh = i18n.catalog("zh")
    missing = [f"{where}: {text!r}" for text, where in SOURCE.items() if text not in zh]
    assert not missing, "untranslated strings:\n" + "\n".join(sorted(missing))


def test_translations_keep_every_placeholder() -> None:
    zh = i18n.catalog("zh")
    wrong = [
        f"{text!r}: {sorted(_placeholders(text))} vs {sorted(_placeholders(zh[text]))}"
        for text in SOURCE
        if text in zh and _placeholders(text) != _placeholders(zh[text])
    ]
    assert not wrong, "placeholders differ:\n" + "\n".join(wrong)


def test_translations_use_the_glossary_terms() -> None:
    zh = i18n.catalog("zh")
    wrong = []
    for text in SOURCE:
        for term in GLOSSARY:
            uses = any(re.search(rf"\b{re.escape(en)}\b", text, re.I) for en in term["en"])
            if uses and text in zh and term["zh"] not in zh[text]:
                wrong.append(f"{text!r} uses {term['en'][0]!r} but its Chinese lacks {term['zh']}")
    assert not wrong, "\n".join(wrong)


def test_a_message_is_data_rendered_in_either_language() -> None:
    message = msg("This page hit an unexpected problem and stopped. Your graph is autosaved: reload the page to carry on. The details are in the server log.")
    assert message.render("en").startswith("This page")
    assert message.render("zh") == i18n.catalog("zh")[message.text]
    assert message.to_json()["code"] == message.text


def test_nested_messages_render_in_the_same_language() -> None:
    inner = msg("Build")
    outer = Message("{what}", {"what": inner})
    assert outer.render("zh") == "搭建"
    assert outer.render("en") == "Build"


@pytest.mark.parametrize("lang", ["zh", "zh-CN", "zh_Hans", "ZH"])
def test_chinese_locales_normalise_to_zh(lang: str) -> None:
    assert i18n.normalise(lang) == "zh"


@pytest.mark.parametrize("lang", ["", None, "fr", "en-GB"])
def test_other_locales_fall_back_to_english(lang: str | None) -> None:
    assert i18n.normalise(lang) == "en"


def test_the_language_is_per_context() -> None:
    i18n.set_language("zh")
    try:
        assert i18n._("Train") == "训练"
    finally:
        i18n.set_language(None)
    assert i18n._("Train") == "Train"
