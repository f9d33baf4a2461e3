"""An activity's docstring as its help text on the workflow page: the first paragraph whole, its
reST inline markup as HTML, everything else escaped."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.utils.safestring import SafeString

from tests.workflows.admin_helpers import change_url
from workflows.builtin.ab_testing import decide_winners
from workflows.definition import builtin_definitions
from workflows.docstrings import first_paragraph, inline_html, summary_html


def test_the_summary_is_the_whole_first_paragraph_on_one_line() -> None:
    docstring = """Finished or failed deliveries past retention, when purging is on (off by
        default: deliveries are kept unless configured), in bounded batches.

        Second paragraph, which the help text leaves out.
        """

    assert first_paragraph(docstring) == ("Finished or failed deliveries past retention, when purging is on (off by "
                                          "default: deliveries are kept unless configured), in bounded batches.")


def test_a_paragraph_ends_at_a_line_of_spaces_too_and_a_literal_block_colon_is_single() -> None:
    assert first_paragraph("Runs this, for example::\n    \n    workflow run cleanup\n") == "Runs this, for example:"
    assert first_paragraph("One line.\n  \t\nAnother paragraph.") == "One line."


def test_no_docstring_gives_no_help_text() -> None:
    assert summary_html(None) == "" and summary_html("   \n  ") == ""


@pytest.mark.parametrize(("text", "html"), [
    ("when ``purge_deliveries`` is on", "when <code>purge_deliveries</code> is on"),
    ("gets :func:`decide`, each", "gets <code>decide</code>, each"),
    ("see :mod:`workflows.engine`", "see <code>workflows.engine</code>"),
    ("see :py:meth:`~workflows.context.ActivityContext.unit`", "see <code>unit</code>"),
    ("see :func:`the engine <workflows.engine.run>`", "see <code>the engine</code>"),
    ("only *once* a day, **never** twice", "only <em>once</em> a day, <strong>never</strong> twice"),
    ("the `default role`", "the <code>default role</code>"),
    ("3 * 4 rows, not 12*", "3 * 4 rows, not 12*"),
])
def test_inline_markup_becomes_html(text: str, html: str) -> None:
    assert inline_html(text) == html


def test_everything_else_is_escaped_inside_and_outside_the_markup() -> None:
    html = summary_html('Rows where a < b & "c", then ``<script>alert(1)</script>`` and *<b>*.')

    assert isinstance(html, SafeString)
    assert html == ("Rows where a &lt; b &amp; &quot;c&quot;, then <code>&lt;script&gt;alert(1)&lt;/script&gt;</code> "
                    "and <em>&lt;b&gt;</em>.")


@pytest.mark.django_db
def test_the_workflow_page_shows_an_activitys_whole_summary_without_backticks(admin_client: Client) -> None:
    response = admin_client.get(change_url("abTesting"))

    help_text = response.context["adminform"].form.fields["activity__decide_winners"].help_text
    expected = ("Every test in <code>testing</code>, and every tie resolved by hand since, gets <code>decide</code>, "
                "each in its own unit of work, with its journal line; the email to its owner follows once that "
                "unit committed.")
    assert help_text == expected
    assert first_paragraph(decide_winners.__doc__).endswith("once that unit committed.")
    page = response.content.decode()
    assert expected in page
    assert "``" not in page and ":func:" not in page


def test_every_builtin_activitys_help_text_is_whole_sentences_without_rest_markup() -> None:
    summaries = {f"{definition.id}.{activity.__name__}": summary_html(activity.__doc__)
                 for definition in builtin_definitions() for activity in definition.activities}

    assert summaries["cleanup.purge_workflow_history"] == (
        "Each workflow's journal entries and finished runs older than its own <code>history_days</code>."
        .replace("'", "&#x27;"))
    unfinished = {name: text for name, text in summaries.items()
                  if text and ("`" in text or re.search(r":\w+:", text) or not text.endswith("."))}
    assert unfinished == {}
