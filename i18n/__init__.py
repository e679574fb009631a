"""Chinese and English: gettext catalogs kept with Babel, and the reader's language per run.

English is the source language: every string a person reads is written in English in the code,
wrapped in `_()` (translate now) or `N_()` (mark now, translate when shown), and its Chinese lives
in `i18n/locales/zh/LC_MESSAGES/messages.po`. A message that is data (a compiler diagnostic, a run
status) is a `Message`: the English template (its code) and its values, rendered in any language
later, so nothing is ever translated by string surgery.

Adding a string: write `_("Start training")` or `msg("kernel {k} is too big", k=5)` in the code,
add its `msgid`/`msgstr` pair to messages.po, and run `pytest tests/test_i18n.py`, which lists any
string that lacks a translation or whose placeholders differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

LOCALES_DIR = Path(__file__).resolve().parent / "locales"
DOMAIN = "messages"
LANGUAGES: dict[str, str] = {"en": "English", "zh": "中文"}
DEFAULT_LANGUAGE = "en"
# Babel's extraction keywords: the functions whose first argument is a message.
KEYWORDS = {"_": None, "N_": None, "msg": None}

_current: ContextVar[str | None] = ContextVar("netbuilder_language", default=None)
_resolver: list[Callable[[], str]] = []


def normalise(lang: str | None) -> str:
    """'zh', 'zh-CN', 'zh_Hans' -> 'zh'; anything unknown -> English."""
    code = (lang or "").replace("_", "-").split("-")[0].lower()
    return code if code in LANGUAGES else DEFAULT_LANGUAGE


def set_language(lang: str | None) -> None:
    """The language for this thread's work (the command line, a test, one script run)."""
    _current.set(normalise(lang) if lang else None)


def use_resolver(resolver: Callable[[], str]) -> None:
    """Where the language comes from when none was set here (the app: the session's choice)."""
    _resolver[:] = [resolver]


def language() -> str:
    lang = _current.get()
    if lang:
        return lang
    return normalise(_resolver[0]()) if _resolver else DEFAULT_LANGUAGE


@cache
def catalog(lang: str) -> Mapping[str, str]:
    """msgid -> msgstr for one language, read from its .po file once (English has none)."""
    path = LOCALES_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"
    if lang == DEFAULT_LANGUAGE or not path.is_file():
        return {}
    from babel.messages.pofile import read_po

    with path.open("rb") as handle:
        po = read_po(handle, locale=lang)
    return {
        str(m.id): str(m.string)
        for m in po
        if m.id and isinstance(m.id, str) and m.string and not m.fuzzy
    }


def translate(text: str, lang: str | None = None) -> str:
    """The template in `lang` (default: the current language); English when none is known."""
    return catalog(normalise(lang) if lang else language()).get(text, text)


def N_(text: str) -> str:
    """Marks text for translation without translating it (module-level constants)."""
    return text


def _(text: str, **values: Any) -> str:
    """Text in the reader's language, with `{name}` placeholders filled from values."""
    template = translate(text)
    return template.format(**_rendered(values, None)) if values else template


@dataclass(frozen=True)
class Message:
    """A message as data: the English template (its code) and the values that fill it."""

    text: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def render(self, lang: str | None = None) -> str:
        template = translate(self.text, lang)
        return template.format(**_rendered(self.values, lang)) if self.values else template

    def __str__(self) -> str:
        return self.render(DEFAULT_LANGUAGE)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.text, "values": {k: _jsonable(v) for k, v in self.values.items()}}


def msg(text: str, **values: Any) -> Message:
    """A message to render later: `msg("kernel {k} exceeds {size}", k=5, size="3x3")`."""
    return Message(text, values)


def render(message: Message | str, lang: str | None = None) -> str:
    """A Message in `lang` (default: the current one); plain text passes through translated."""
    if isinstance(message, Message):
        return message.render(lang)
    return translate(message, lang)


def _rendered(values: Mapping[str, Any], lang: str | None) -> dict[str, Any]:
    """Nested Messages (a layer's error inside a node's) are rendered in the same language."""
    return {k: v.render(lang) if isinstance(v, Message) else v for k, v in values.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Message):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def language_arguments(parser_class: type[Any] | None = None) -> Any:
    """The `--lang en|zh` option every command line takes, as an argparse parent parser
    (`parser_class`: the command's own ArgumentParser subclass, if it has one)."""
    import argparse

    parser = (parser_class or argparse.ArgumentParser)(add_help=False)
    parser.add_argument(
        "--lang",
        choices=sorted(LANGUAGES),
        default=DEFAULT_LANGUAGE,
        help="the language of messages (default: en)",
    )
    return parser
