"""A docstring's summary as a help text: the workflow page shows each activity's docstring under
its field.

Docstrings are written for a reader of the source, in reStructuredText: wrapped at the line length,
with ``literals``, :func:`roles` and *emphasis*. The admin reads them in a browser, so the summary is
the first paragraph whole (its lines joined, never cut mid-sentence), its inline markup turned into
HTML (literals and roles as ``<code>``, emphasis as ``<em>``, strong emphasis as ``<strong>``), and
every other character escaped: the result is safe to render as it is.
"""

from __future__ import annotations

import inspect
import re

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

#: reST inline markup, longest delimiters first: ``literal``, :role:`target`, **strong**, *emphasis*,
#: `interpreted text` (the default role). A lone ``*`` (``3 * 4``) is text.
INLINE_MARKUP = re.compile(
    r"``(?P<literal>.+?)``"
    r"|:[\w.+-]+(?::[\w.+-]+)*:`(?P<role>[^`]+)`"
    r"|\*\*(?P<strong>\S(?:.*?\S)?)\*\*"
    r"|\*(?P<emphasis>[^*\s](?:[^*]*[^*\s])?)\*"
    r"|`(?P<interpreted>[^`]+)`"
)
#: A role's explicit title: :func:`the engine <workflows.engine.run>` reads "the engine".
ROLE_TITLE = re.compile(r"^(?P<title>.+?)\s*<[^<>]+>$")


def first_paragraph(docstring: str | None) -> str:
    """The docstring's first paragraph on one line: up to the first blank line, lines joined by a
    space. A paragraph that introduces a literal block (``Example::``) ends with one colon."""
    text = inspect.cleandoc(docstring or "")
    paragraph = re.split(r"\n[ \t]*\n", text, maxsplit=1)[0]
    joined = " ".join(line.strip() for line in paragraph.splitlines() if line.strip())
    return joined[:-1] if joined.endswith("::") else joined


def _role_text(target: str) -> str:
    """What a role shows: its title if it has one, else its target (``~a.b.c`` shows ``c``)."""
    titled = ROLE_TITLE.match(target)
    if titled:
        return titled["title"]
    target = target.lstrip("!")
    return target[1:].rsplit(".", 1)[-1] if target.startswith("~") else target


def inline_html(text: str) -> SafeString:
    """``text`` with its reST inline markup as HTML, everything else escaped."""
    parts: list[str] = []
    position = 0
    for match in INLINE_MARKUP.finditer(text):
        parts.append(escape(text[position:match.start()]))
        if match["literal"] is not None:
            parts.append(format_html("<code>{}</code>", match["literal"]))
        elif match["role"] is not None:
            parts.append(format_html("<code>{}</code>", _role_text(match["role"])))
        elif match["strong"] is not None:
            parts.append(format_html("<strong>{}</strong>", match["strong"]))
        elif match["emphasis"] is not None:
            parts.append(format_html("<em>{}</em>", match["emphasis"]))
        else:
            parts.append(format_html("<code>{}</code>", match["interpreted"]))
        position = match.end()
    parts.append(escape(text[position:]))
    return mark_safe("".join(parts))  # every part escaped above, or built by format_html


def summary_html(docstring: str | None) -> SafeString:
    """The help text of a docstring: its first paragraph, whole, as safe HTML ("" without one)."""
    return inline_html(first_paragraph(docstring))
