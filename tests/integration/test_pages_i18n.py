"""Language choice and catalogs: cookie first, then Accept-Language by quality, else Chinese."""

from __future__ import annotations

import pytest

from web.i18n import JS_MESSAGES, negotiate, translations


@pytest.mark.parametrize(
    "cookie, header, expected",
    [
        (None, None, "zh_CN"),
        (None, "en-US,en;q=0.9", "en"),
        (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh_CN"),
        (None, "fr-FR,en;q=0.5,zh;q=0.4", "en"),
        (None, "en;q=0.3,zh-Hans-CN;q=0.7", "zh_CN"),
        (None, "en;q=0,zh;q=0.1", "zh_CN"),
        (None, "de, fr", "zh_CN"),
        (None, "en;q=garbage", "zh_CN"),
        ("en", "zh-CN", "en"),
        ("zh_CN", "en", "zh_CN"),
        ("klingon", "en", "en"),
    ],
)
def test_negotiate(cookie, header, expected):
    assert negotiate(cookie, header) == expected


def test_every_browser_string_has_an_english_translation():
    english = translations("en")
    missing = [key for key, source in JS_MESSAGES.items() if english.gettext(source) == source]
    assert not missing, f"no English for {missing}: run scripts/compile_translations.sh and fill the .po"


def test_placeholders_survive_translation():
    english = translations("en")
    for key, source in JS_MESSAGES.items():
        names = sorted(set(part.split(")s")[0] for part in source.split("%(")[1:]))
        translated = english.gettext(source)
        assert sorted(set(part.split(")s")[0] for part in translated.split("%(")[1:])) == names, key
