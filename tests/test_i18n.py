"""Every string a person reads exists in Chinese and English, with the same placeholders."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest
import i18n
from i18n.__main__ import SOURCES, missing, needs_translation, source_messages
from i18n import Message, msg

ROOT = Path(__file__).resolve().parent.parent
GLOSSARY = json.loads((ROOT / "i18n" / "glossary.json").read_text(encoding="utf-8"))["terms"]


SOURCE = source_messages()


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_the_source_marks_messages() -> None:
    assert len(SOURCE) >= 4, "the extractor found no marked strings: is the keyword list right?"


def test_every_message_has_a_chinese_translation() -> None:
    gaps = [f"{where}: {text!r}" for text, where in missing("zh").items()]
    assert not gaps, "untranslated (python -m i18n missing):\n" + "\n".join(sorted(gaps))


def test_only_templates_without_words_may_go_untranslated() -> None:
    assert not needs_translation("{first}; {rest}")
    assert needs_translation("{n} steps")


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
    message = msg(
        "This page hit an unexpected problem and stopped. Your graph is autosaved: reload the page to carry on. The details are in the server log."
    )
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


def _fstring_messages() -> list[str]:
    """Calls like _(f"{n} steps"): the f-string is filled before lookup, so it never translates."""
    import ast

    found = []
    root = Path(__file__).resolve().parent.parent
    for entry in SOURCES:  # the same files the extractor reads
        path = root / entry
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            tree = ast.parse(file.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in i18n.KEYWORDS
                    and node.args
                    and isinstance(node.args[0], ast.JoinedStr)
                ):
                    found.append(f"{file.relative_to(root)}:{node.lineno}")
    return found


def test_no_message_is_an_f_string() -> None:
    found = _fstring_messages()
    assert not found, "use a template with named values instead of an f-string:\n" + "\n".join(
        found
    )


def test_each_message_is_translated_once() -> None:
    """Branches merge messages.po by union: a string translated twice must be reconciled."""
    from i18n.__main__ import po_entries, po_path

    ids = [msgid for msgid, _ in po_entries(po_path().read_text(encoding="utf-8")) if msgid]
    twice = sorted({text for text in ids if ids.count(text) > 1})
    assert not twice, "translated more than once (python -m i18n dedupe):\n" + "\n".join(twice)
