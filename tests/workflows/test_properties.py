"""Every workflow property has a real range, and every way a value comes in is held to it: the
admin form, ``--set``, the shell, a Celery message's overrides, and a value already stored. A
stored value that no longer validates fails each run once, before any work, without pausing the
workflow."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.db.models import DateTimeField, ExpressionWrapper, F, Value
from django.utils import timezone

from tests.workflows.admin_helpers import change_url, edit, staff_client
from tests.workflows.cli_helpers import workflow_cli
from workflows import commands, leases
from workflows.builtin import mc_synch_local
from workflows.definition import all_definitions, get_definition, load_definitions
from workflows.engine import RunRequest, execute
from workflows.forms import property_form_field
from workflows.models import (
    ActivityRun,
    LogLevel,
    RunStatus,
    Trigger,
    Workflow,
    WorkflowAudit,
    WorkflowLog,
    WorkflowRun,
    WorkflowState,
)
from workflows.properties import (
    DURATION_CEILINGS,
    DURATION_UNITS,
    MAXIMUM_DURATION,
    DateTimeProperty,
    DurationProperty,
    IntegerProperty,
    MonthProperty,
    Property,
    invalid_values,
    quantity,
)

ARCHIVING = "mcSynch_local"
TOO_LONG = 10**30
TOO_LONG_MESSAGE = f"delay_minutes: must be at most 43200 minutes, got {TOO_LONG}"
STORED_REASON = f"property {TOO_LONG_MESSAGE}; fix it on the workflow page"

#: A property named like this counts a duration in that unit, so it must be a DurationProperty.
DURATION_SUFFIXES = {"_ms": "ms", "_seconds": "seconds", "_minutes": "minutes", "_hours": "hours", "_days": "days"}


def declared_properties() -> list[tuple[str, Property]]:
    load_definitions()
    return [(definition.id, prop) for definition in all_definitions() for prop in definition.properties]


def ids(pairs: list[tuple[str, Property]]) -> list[str]:
    return [f"{workflow_id}.{prop.name}" for workflow_id, prop in pairs]


PROPERTIES = declared_properties()
INTEGERS = [(workflow_id, prop) for workflow_id, prop in PROPERTIES if isinstance(prop, IntegerProperty)]
DURATIONS = [(workflow_id, prop) for workflow_id, prop in PROPERTIES if isinstance(prop, DurationProperty)]


# -- every declared property has a usable range -------------------------------------------------------

def test_the_walk_covers_every_builtin_workflow_with_properties():
    walked = {workflow_id for workflow_id, _ in PROPERTIES}
    assert {"billing", "cleanup", "mcSynch_local", "reportSendingNow", "updateEventsStatus"} <= walked
    assert len(DURATIONS) >= 20


@pytest.mark.parametrize(("workflow_id", "prop"), INTEGERS, ids=ids(INTEGERS))
def test_every_integer_property_has_finite_bounds_around_its_default(workflow_id: str, prop: IntegerProperty):
    assert isinstance(prop.minimum, int) and isinstance(prop.maximum, int)
    assert prop.minimum <= prop.default <= prop.maximum
    assert prop.validate(prop.maximum) == prop.maximum
    with pytest.raises(ValidationError, match=f"must be at most {prop.maximum}"):
        prop.validate(prop.maximum + 1)
    with pytest.raises(ValidationError, match=f"must be at least {prop.minimum}"):
        prop.validate(prop.minimum - 1)


#: Each unit the code declares, in the plural, and its singular.
SINGULARS = {"ms": "ms", "seconds": "second", "minutes": "minute", "hours": "hour", "days": "day", "rows": "row",
             "messages": "message", "rules": "rule"}


def test_every_declared_unit_agrees_with_one_and_with_more():
    declared = {prop.unit for _, prop in INTEGERS if prop.unit}
    assert declared <= set(SINGULARS), f"a new unit: add its singular here, {declared - set(SINGULARS)}"
    for unit in declared | set(DURATION_UNITS):
        assert quantity(1, unit) == f"1 {SINGULARS[unit]}"
        assert quantity(-1, unit) == f"-1 {SINGULARS[unit]}"
        assert quantity(0, unit) == f"0 {unit}"
        assert quantity(2, unit) == f"2 {unit}"
        assert quantity(36500, unit, grouped=True) == f"36,500 {unit}"
    assert quantity(1, "") == "1"


@pytest.mark.parametrize("unit", sorted(SINGULARS))
def test_range_messages_and_help_write_one_unit_in_the_singular(unit: str):
    prop = IntegerProperty("size", 1, minimum=1, maximum=1_000, unit=unit)
    with pytest.raises(ValidationError) as below:
        prop.validate(0)
    assert below.value.messages == [f"size: must be at least 1 {SINGULARS[unit]}, got 0"]
    with pytest.raises(ValidationError) as above:
        IntegerProperty("flag", 0, minimum=0, maximum=1, unit=unit).validate(2)
    assert above.value.messages == [f"flag: must be at most 1 {SINGULARS[unit]}, got 2"]
    assert IntegerProperty("flag", 0, minimum=0, maximum=1, unit=unit).range_text == f"0 to 1 {SINGULARS[unit]}"
    assert prop.range_text == f"1 to 1,000 {unit}"
    assert property_form_field(prop).help_text == f"Default: 1 {SINGULARS[unit]}. Accepted: 1 to 1,000 {unit}."


@pytest.mark.parametrize(("workflow_id", "prop"), PROPERTIES, ids=ids(PROPERTIES))
def test_a_property_counted_in_a_time_unit_is_a_duration_in_that_unit(workflow_id: str, prop: Property):
    named_unit = next((unit for suffix, unit in DURATION_SUFFIXES.items() if prop.name.endswith(suffix)), None)
    if named_unit is not None:
        assert isinstance(prop, DurationProperty) and prop.unit == named_unit
    if isinstance(prop, IntegerProperty) and prop.unit in DURATION_UNITS:
        assert isinstance(prop, DurationProperty), f"{prop.name} counts {prop.unit}: declare it a DurationProperty"


@pytest.mark.parametrize(("workflow_id", "prop"), DURATIONS, ids=ids(DURATIONS))
def test_the_longest_duration_accepted_works_in_python_and_in_the_database(db, workflow_id: str, prop: DurationProperty):
    longest = prop.as_timedelta(prop.maximum)
    assert longest <= MAXIMUM_DURATION
    now = timezone.now()
    assert (now - longest).year >= 1900 and (now + longest).year <= 2200
    assert timedelta(**{"milliseconds" if prop.unit == "ms" else prop.unit: prop.maximum}) == longest

    # The database compares a column with now - it, and subtracts it from a date-time column.
    Workflow.objects.filter(pk=ARCHIVING).update(created_at=now - longest / 2)
    assert Workflow.objects.filter(pk=ARCHIVING, created_at__gt=now - longest).exists()
    assert not Workflow.objects.filter(pk=ARCHIVING, created_at__gt=now - longest / 4).exists()
    created_at, cutoff = Workflow.objects.annotate(
        cutoff=ExpressionWrapper(F("created_at") - Value(longest), output_field=DateTimeField()),
    ).values_list("created_at", "cutoff").get(pk=ARCHIVING)
    assert abs((created_at - cutoff) - longest) < timedelta(milliseconds=1)


def test_the_duration_ceiling_is_a_hundred_years_in_every_unit():
    assert MAXIMUM_DURATION == timedelta(days=36_500)
    assert DURATION_CEILINGS["days"] == 36_500
    assert DURATION_CEILINGS["hours"] == 36_500 * 24
    assert DURATION_CEILINGS["minutes"] == 36_500 * 24 * 60
    assert set(DURATION_CEILINGS) == set(DURATION_UNITS)


# -- declarations that are refused --------------------------------------------------------------------

@pytest.mark.parametrize(("build", "message"), [
    (lambda: IntegerProperty("rows", 3, minimum=0), "needs a minimum and a maximum"),
    (lambda: IntegerProperty("rows", 3, maximum=10), "needs a minimum and a maximum"),
    (lambda: IntegerProperty("rows", 30, minimum=0, maximum=10), "the default is not valid"),
    (lambda: IntegerProperty("rows", 3, minimum=10, maximum=0), "minimum <= maximum"),
    (lambda: IntegerProperty("rows", 3, minimum=0, maximum=2**64), "maximum <="),
    (lambda: DurationProperty("delay", 1, minimum=0, maximum=10), "unit is one of"),
    (lambda: DurationProperty("delay_days", 1, minimum=0, maximum=36_501, unit="days"), "may not exceed 36,500 days"),
    (lambda: DurationProperty("delay_minutes", 1, minimum=0, maximum=10**9, unit="minutes"), "may not exceed"),
    (lambda: MonthProperty("month", "2024-13"), "the default is not valid"),
])
def test_a_declaration_without_a_usable_range_is_refused_at_import(build: Any, message: str):
    with pytest.raises(ValueError, match=message):
        build()


# -- the types ----------------------------------------------------------------------------------------

def test_an_absurd_delay_is_refused_by_parse_and_by_validate():
    prop = mc_synch_local.definition.get_property("delay_minutes")

    with pytest.raises(ValidationError) as parsed:
        prop.parse(str(TOO_LONG))
    assert parsed.value.messages == [TOO_LONG_MESSAGE]
    with pytest.raises(ValidationError):
        prop.validate(TOO_LONG)
    with pytest.raises(ValidationError, match="expected a whole number"):
        prop.parse("10^30")
    with pytest.raises(ValidationError, match="expected a whole number"):
        prop.validate(1e30)
    assert prop.parse(" 43200 ") == 43_200


def test_a_huge_value_is_shortened_in_the_message():
    prop = mc_synch_local.definition.get_property("delay_minutes")

    with pytest.raises(ValidationError) as raised:
        prop.validate(10**100)
    assert raised.value.messages == ["delay_minutes: must be at most 43200 minutes, got a 101-digit number"]
    with pytest.raises(ValidationError) as raised:
        prop.parse("9" * 5000)  # more digits than Python converts
    assert len(raised.value.messages[0]) < 100


@pytest.mark.parametrize(("text", "message"), [
    ("2024-13", "month: MM must be 01 to 12, got '2024-13'"),
    ("2024-00", "month: MM must be 01 to 12, got '2024-00'"),
    ("1999-12", "month: YYYY must be 2000 to 2100, got '1999-12'"),
    ("2024-1", "month: expected a month as YYYY-MM, got '2024-1'"),
    ("24-01", "month: expected a month as YYYY-MM, got '24-01'"),
    ("2024/01", "month: expected a month as YYYY-MM, got '2024/01'"),
    ("2024-01-01", "month: at most 7 characters, got 10"),
])
def test_billing_month_must_be_a_real_month(text: str, message: str):
    prop = get_definition("billing").get_property("month")

    with pytest.raises(ValidationError) as raised:
        prop.parse(text)
    assert raised.value.messages == [message]


@pytest.mark.parametrize("text", ["2024-02", "2000-01", "2100-12", ""])
def test_billing_month_accepts_months_and_empty(text: str):
    assert get_definition("billing").get_property("month").parse(text) == text


def test_a_due_time_must_be_an_iso_date_time_with_its_offset():
    prop = get_definition("reportSendingNow").get_property("due_at")
    assert isinstance(prop, DateTimeProperty)

    assert prop.validate("2026-12-01T08:00:00+01:00") == "2026-12-01T08:00:00+01:00"
    assert prop.validate("") == ""
    with pytest.raises(ValidationError, match="needs a UTC offset"):
        prop.validate("2026-12-01T08:00:00")
    with pytest.raises(ValidationError, match="expected an ISO date-time"):
        prop.validate("tomorrow at eight")
    with pytest.raises(ValidationError, match="expected an ISO date-time"):
        prop.validate("2026-02-30T08:00:00+00:00")


@pytest.mark.parametrize(("text", "message"), [
    ("", "opt_out_keywords: expected at least one word"),
    (" , ", "opt_out_keywords: expected at least one word"),
    ("STOP, --", "opt_out_keywords: each item needs a letter or a digit, got '--'"),
    ("STOP" * 300, "opt_out_keywords: at most 1000 characters, got 1200"),
])
def test_a_keyword_list_needs_words(text: str, message: str):
    prop = get_definition("updateDeliveryExecInfo").get_property("opt_out_keywords")

    with pytest.raises(ValidationError) as raised:
        prop.parse(text)
    assert raised.value.messages == [message]


@pytest.mark.parametrize("text", ["STOP", "STOP, ARRET", "stop,, quit", "opt out, ne plus recevoir"])
def test_a_keyword_list_accepts_comma_separated_words(text: str):
    assert get_definition("updateDeliveryExecInfo").get_property("opt_out_keywords").parse(text) == text


def test_invalid_values_names_each_bad_or_unknown_entry_and_nothing_else():
    declared = mc_synch_local.definition.properties

    assert invalid_values(declared, {"delay_minutes": 120, "batch_size": 10}) == {}
    assert invalid_values(declared, {"delay_minutes": TOO_LONG, "batch_size": 0, "colour": "red"}) == {
        "delay_minutes": TOO_LONG_MESSAGE,
        "batch_size": "batch_size: must be at least 1, got 0",
        "colour": "colour: no such property (known: delay_minutes, batch_size, throttle_ms)",
    }


# -- every way in refuses the same values -------------------------------------------------------------

def test_the_admin_refuses_an_absurd_delay_on_the_field_and_saves_nothing(admin_client):
    response = edit(admin_client, ARCHIVING, property__delay_minutes=str(TOO_LONG))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["property__delay_minutes"] == [TOO_LONG_MESSAGE]
    assert Workflow.objects.get(pk=ARCHIVING).properties == {}
    assert not WorkflowAudit.objects.filter(workflow_id=ARCHIVING, action="edit").exists()


def test_the_admin_refuses_a_month_13_and_accepts_a_real_month(admin_client):
    response = edit(admin_client, "billing", property__month="2024-13")
    assert response.context["adminform"].form.errors["property__month"] == ["month: MM must be 01 to 12, got '2024-13'"]
    assert Workflow.objects.get(pk="billing").properties == {}

    assert edit(admin_client, "billing", property__month="2024-12").status_code == 302
    assert Workflow.objects.get(pk="billing").properties == {"month": "2024-12"}


def test_the_admin_states_the_accepted_range_in_the_help_text(admin_client):
    form = admin_client.get(change_url(ARCHIVING)).context["adminform"].form
    assert form.fields["property__delay_minutes"].help_text.endswith(
        "Default: 60 minutes. Accepted: 0 to 43,200 minutes.")


@pytest.mark.parametrize(("workflow_id", "assignment", "message"), [
    (ARCHIVING, f"delay_minutes={TOO_LONG}", TOO_LONG_MESSAGE),
    ("billing", "month=2024-13", "month: MM must be 01 to 12, got '2024-13'"),
    ("reportSendingNow", "due_at=2026-12-01 08:00", "due_at: needs a UTC offset"),
])
def test_the_cli_refuses_an_out_of_range_set_with_exit_2_and_no_run(db, workflow_id: str, assignment: str, message: str):
    result = workflow_cli("run", workflow_id, "--sync", "--set", assignment)

    assert result.exit_code == 2
    assert result.stderr.startswith(f"workflow: invalid --set for {workflow_id}: {message}")
    assert not WorkflowRun.objects.filter(workflow_id=workflow_id).exists()


def test_the_shell_refuses_an_out_of_range_override_and_creates_no_run(db):
    from workflows import run

    with pytest.raises(ValidationError) as raised:
        run(ARCHIVING, sync=True, delay_minutes=TOO_LONG)
    assert raised.value.messages == [TOO_LONG_MESSAGE]
    with pytest.raises(ValidationError, match="MM must be 01 to 12"):
        run("billing", sync=True, month="2024-13")
    assert not WorkflowRun.objects.exists()
    assert not WorkflowAudit.objects.filter(action="run now").exists()


def test_a_celery_message_with_an_out_of_range_override_fails_its_run_before_any_work(db):
    # What the task does with `celery -A campaign call workflows.mcSynch_local --kwargs '{"overrides": ...}'`.
    run = execute(RunRequest(workflow_id=ARCHIVING, trigger=Trigger.SHELL, overrides={"delay_minutes": TOO_LONG}))

    reason = f"override {TOO_LONG_MESSAGE}; run again without it or with a valid value"
    assert (run.status, run.reason) == (RunStatus.FAILED, reason)
    assert not ActivityRun.objects.filter(run=run).exists()
    workflow = Workflow.objects.get(pk=ARCHIVING)
    assert (workflow.consecutive_errors, workflow.state) == (0, WorkflowState.STARTED)


# -- a stored value that no longer validates ----------------------------------------------------------

@pytest.fixture
def stored_absurd_delay(db, settings) -> Workflow:
    """Written past the form, as data saved before the range existed would be."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    Workflow.objects.filter(pk=ARCHIVING).update(
        properties={"delay_minutes": TOO_LONG}, error_threshold=2, consecutive_errors=1,
        supervisors="ops@example.com")
    return Workflow.objects.get(pk=ARCHIVING)


def archive(**overrides: Any) -> WorkflowRun:
    return commands.run_now(ARCHIVING, actor="test", sync=True, overrides=overrides or None)


def test_a_stored_invalid_value_fails_each_run_once_before_any_work_and_never_pauses(stored_absurd_delay):
    runs = [archive(), archive(), archive()]

    for run in runs:
        assert (run.status, run.reason) == (RunStatus.FAILED, STORED_REASON)
        assert not ActivityRun.objects.filter(run=run).exists()
        assert WorkflowLog.objects.filter(run=run, level=LogLevel.ERROR, message__contains=STORED_REASON).exists()
        assert not WorkflowLog.objects.filter(run=run, message__contains="started").exists()
    workflow = Workflow.objects.get(pk=ARCHIVING)
    assert workflow.state == WorkflowState.STARTED  # three failures, threshold 2: still not paused
    assert workflow.consecutive_errors == 1  # neither counted nor reset
    assert leases.lease_of(ARCHIVING)[0] is None
    assert not WorkflowAudit.objects.filter(workflow_id=ARCHIVING, action="pause").exists()


def test_the_supervisors_are_emailed_when_the_invalid_value_first_fails_a_run_not_at_every_run(stored_absurd_delay):
    archive()
    archive()

    assert len(mail.outbox) == 1
    assert mail.outbox[0].subject == "[workflows] Workflow mcSynch_local: runs refused, invalid properties"
    assert STORED_REASON in mail.outbox[0].body

    Workflow.objects.filter(pk=ARCHIVING).update(properties={"batch_size": 0})
    archive()
    assert len(mail.outbox) == 2, "a different reason is news"


def test_an_override_stands_in_for_the_invalid_stored_value(stored_absurd_delay):
    run = archive(delay_minutes=120)

    assert run.status == RunStatus.SUCCEEDED
    assert Workflow.objects.get(pk=ARCHIVING).consecutive_errors == 0


def test_a_real_failure_after_refused_runs_still_counts_from_where_the_count_was(stored_absurd_delay, monkeypatch):
    archive()

    def broken(ctx: object) -> None:
        raise RuntimeError("disk full")

    broken.__name__ = "archive_events"
    from dataclasses import replace

    from workflows import definition as definition_module
    monkeypatch.setitem(definition_module._REGISTRY, ARCHIVING, replace(mc_synch_local.definition, activities=(broken,)))
    Workflow.objects.filter(pk=ARCHIVING).update(properties={})

    failed = archive()

    assert (failed.status, failed.reason) == (RunStatus.FAILED, "RuntimeError: disk full")
    assert Workflow.objects.get(pk=ARCHIVING).state == WorkflowState.PAUSED  # 1 before + 1 = threshold 2


def test_a_scheduled_message_is_refused_the_same_way(stored_absurd_delay):
    run = execute(RunRequest(workflow_id=ARCHIVING, trigger=Trigger.SCHEDULE))

    assert (run.status, run.reason) == (RunStatus.FAILED, STORED_REASON)
    assert Workflow.objects.get(pk=ARCHIVING).consecutive_errors == 1


def test_the_cli_sync_run_exits_1_with_the_reason(stored_absurd_delay):
    result = workflow_cli("run", ARCHIVING, "--sync")

    assert result.exit_code == 1
    assert result.stderr.strip().endswith(f"failed: {STORED_REASON}")


def test_the_workflow_page_names_the_invalid_value_and_the_form_refuses_it_until_fixed(stored_absurd_delay, admin_client):
    page = admin_client.get(change_url(ARCHIVING))
    html = page.content.decode()

    assert 'id="invalid-properties"' in html
    assert page.context["invalid_properties"] == [TOO_LONG_MESSAGE]
    assert page.context["adminform"].form["property__delay_minutes"].value() == TOO_LONG  # shown as stored

    refused = edit(admin_client, ARCHIVING, property__batch_size="100")
    assert refused.context["adminform"].form.errors["property__delay_minutes"] == [TOO_LONG_MESSAGE]
    assert Workflow.objects.get(pk=ARCHIVING).properties == {"delay_minutes": TOO_LONG}

    assert edit(admin_client, ARCHIVING, property__delay_minutes="90").status_code == 302
    assert Workflow.objects.get(pk=ARCHIVING).properties == {"delay_minutes": 90}
    assert 'id="invalid-properties"' not in admin_client.get(change_url(ARCHIVING)).content.decode()
    assert archive().status == RunStatus.SUCCEEDED


def test_a_read_only_viewer_sees_the_invalid_value_marked(stored_absurd_delay, django_user_model):
    client = staff_client(django_user_model, "view_workflow")

    html = client.get(change_url(ARCHIVING)).content.decode()

    assert 'id="invalid-properties"' in html
    assert "⚠ invalid: " in html and "must be at most 43200 minutes" in html


def test_a_stored_month_13_fails_the_billing_run_with_its_reason(db):
    Workflow.objects.filter(pk="billing").update(properties={"month": "2024-13"})

    run = commands.run_now("billing", actor="test", sync=True)

    assert (run.status, run.reason) == (
        RunStatus.FAILED, "property month: MM must be 01 to 12, got '2024-13'; fix it on the workflow page")
    assert Workflow.objects.get(pk="billing").consecutive_errors == 0
