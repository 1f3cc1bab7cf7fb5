"""Messages on the pages: text from user data (column names, file contents, names) is shown as plain text.

``st.error`` and friends render Markdown, so a column named ``![x](https://...)`` would load an attacker's image,
and ``[click](...)`` would be a link, in the page of whoever reads the message. Every message that can hold user
data goes through here: Markdown's special characters are escaped, uploads are named by the names their users
gave, and a shared app shows no server path (webapp.services.uploads.shown).
"""

import re

import streamlit as st

from webapp.services import settings, uploads

# Every ASCII punctuation character can be backslash-escaped in Markdown; escaped, each shows as itself.
MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")


def plain(text: str) -> str:
    """``text`` as Markdown that shows exactly ``text``, its line breaks kept."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", text).replace("\n", "  \n")


def readable(text: str) -> str:
    """``text`` with uploads named and (on a shared app) server paths left out, escaped for Markdown."""
    return plain(uploads.shown(text, settings.load().shared))


def error(text: str, target=st) -> None:
    target.error(readable(text))


def warning(text: str, target=st) -> None:
    target.warning(readable(text))
