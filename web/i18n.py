"""Page translations: simplified Chinese by default, English on request (gettext catalogs)."""

from __future__ import annotations

import gettext
from pathlib import Path

import jinja2

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DEFAULT_LOCALE = "zh_CN"
SUPPORTED = ("zh_CN", "en")


def translations(locale: str) -> gettext.NullTranslations:
    """Catalog for ``locale``; source strings are Chinese, so zh_CN needs no catalog."""
    if locale == DEFAULT_LOCALE:
        return gettext.NullTranslations()
    return gettext.translation("cloudhall", localedir=str(LOCALE_DIR), languages=[locale], fallback=True)


def install_translations(env: jinja2.Environment) -> None:
    env.install_gettext_translations(translations(DEFAULT_LOCALE), newstyle=True)  # type: ignore[attr-defined]
