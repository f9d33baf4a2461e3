"""The admin's change form of a workflow, generated from its definition.

A workflow's editable settings come from two places: model fields (history, error threshold,
supervisors) and its definition in code (the typed properties, the activities, the schedule kept on
a django-celery-beat PeriodicTask). :func:`workflow_form_class` builds one form class per
definition, with one field per property and per activity, so the form always matches the code that
will read the values.

Three invariants:

- A property is validated by the property itself (:meth:`Property.validate`), so the admin refuses
  a bad value with the same message as the CLI's ``--set`` and the engine, on the field, and saves
  nothing. A stored value that no longer validates (written before a range existed, or by hand) is
  shown in the field as it is, so submitting the form without fixing it is refused too.
- ``Workflow.properties`` keeps only the values that differ from the definition's defaults (a
  changed default in code then reaches every workflow still on it), and ``activity_modes`` only the
  activities that are not ``normal``.
- :meth:`WorkflowForm.apply` writes only the edited columns (the engine updates the same row while
  runs go on: lease, cursors, error count, state) and audits every change with its before and after.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django import forms
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django_celery_beat.models import PeriodicTask

from workflows import docstrings, schedules
from workflows.audit import audit
from workflows.definition import Activity, WorkflowDefinition
from workflows.models import ActivityMode, Workflow
from workflows.properties import (
    BooleanProperty,
    ChoiceProperty,
    DateTimeProperty,
    IntegerProperty,
    MonthProperty,
    Property,
    TextProperty,
    WordListProperty,
    quantity,
)

#: Form field names of the generated fields: a prefix, then the property's or activity's name.
PROPERTY_PREFIX = "property__"
ACTIVITY_PREFIX = "activity__"
CRONTAB_FIELD = "schedule_crontab"
TIMEZONE_FIELD = "schedule_timezone"

#: The model fields the form edits; :meth:`WorkflowForm.apply` saves these columns and no other.
MODEL_FIELDS = ("history_days", "error_threshold", "supervisors")


def property_field_name(prop: Property) -> str:
    return PROPERTY_PREFIX + prop.name


def activity_field_name(activity: Activity) -> str:
    return ACTIVITY_PREFIX + activity.__name__


def display_value(value: Any) -> str:
    """A property value as an operator reads it in help texts and summaries."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value == "":
        return "(empty)"
    return str(value)


def _property_validator(prop: Property) -> Any:
    def validate(value: Any) -> None:
        prop.validate(value)

    return validate


def property_form_field(prop: Property) -> forms.Field:
    """The form field of one property: its type, its help text with the default and the accepted
    values, and the property's own validation. (The form's initial value is the stored one: see
    WorkflowForm.)"""
    if isinstance(prop, IntegerProperty):
        default = f"Default: {quantity(prop.default, prop.unit)}."
    else:
        default = f"Default: {display_value(prop.default)}."
    if isinstance(prop, (IntegerProperty, MonthProperty, DateTimeProperty)):
        default = f"{default} Accepted: {prop.range_text}."
    help_text = f"{prop.help.rstrip('.')}. {default}" if prop.help else default
    common: dict[str, Any] = {"label": prop.name, "help_text": help_text, "initial": prop.default}
    field: forms.Field
    if isinstance(prop, IntegerProperty):
        # min/max also become the input's HTML attributes.
        field = forms.IntegerField(min_value=prop.minimum, max_value=prop.maximum, **common)
    elif isinstance(prop, BooleanProperty):
        field = forms.BooleanField(required=False, **common)
    elif isinstance(prop, ChoiceProperty):
        field = forms.ChoiceField(choices=[(choice, choice) for choice in prop.choices], **common)
    elif isinstance(prop, WordListProperty):
        # A list reads whole on a few lines; a one-line input would hide most of it.
        field = forms.CharField(max_length=prop.max_length, required=False,
                                widget=forms.Textarea(attrs={"rows": 2, "cols": 60}), **common)
    elif isinstance(prop, TextProperty):
        field = forms.CharField(max_length=prop.max_length, required=False, **common)
    else:
        field = forms.CharField(required=False, **common)
    # The property's validate() replaces Django's min/max/length validators, so the message is the
    # one the CLI and the engine give for the same value.
    field.validators = [_property_validator(prop)]
    return field


def activity_form_field(activity: Activity) -> forms.ChoiceField:
    # The admin renders a help text as HTML: the summary is escaped, its reST markup made HTML.
    return forms.ChoiceField(
        label=activity.__name__, choices=ActivityMode.choices, initial=ActivityMode.NORMAL,
        help_text=docstrings.summary_html(activity.__doc__),
    )


def parse_supervisors(text: str) -> list[str]:
    """Email addresses, one per line or comma-separated; ValidationError naming every bad one."""
    addresses = [address for address in text.replace(",", "\n").split() if address]
    invalid = []
    for address in addresses:
        try:
            validate_email(address)
        except ValidationError:
            invalid.append(address)
    if invalid:
        raise ValidationError(f"Not a valid email address: {', '.join(invalid)}.")
    return addresses


class WorkflowForm(forms.ModelForm):
    """The settings of one workflow; subclassed per definition by :func:`workflow_form_class`."""

    definition: ClassVar[WorkflowDefinition]
    scheduled: ClassVar[bool]

    class Meta:
        model = Workflow
        fields = MODEL_FIELDS
        widgets = {"supervisors": forms.Textarea(attrs={"rows": 3, "cols": 60})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before = self._current_values()
        for name, value in self.before.items():
            if name in self.fields:
                self.initial.setdefault(name, value)

    # -- what is stored now ----------------------------------------------------------------------
    def _current_values(self) -> dict[str, Any]:
        """Field name → the value in force now (a stored property, or its default)."""
        workflow: Workflow = self.instance
        values: dict[str, Any] = {name: getattr(workflow, name) for name in MODEL_FIELDS}
        # Compared with the cleaned submission, which lists one address per line.
        values["supervisors"] = "\n".join(workflow.supervisor_emails)
        if self.scheduled:
            schedule = schedules.crontab_of(workflow.periodic_task)
            values[CRONTAB_FIELD] = schedules.crontab_text(schedule) if schedule else ""
            values[TIMEZONE_FIELD] = str(schedule.timezone) if schedule else ""
        for prop in self.definition.properties:
            values[property_field_name(prop)] = workflow.properties.get(prop.name, prop.default)
        for activity in self.definition.activities:
            values[activity_field_name(activity)] = workflow.activity_modes.get(activity.__name__, ActivityMode.NORMAL)
        return values

    # -- validation ------------------------------------------------------------------------------
    def clean_schedule_crontab(self) -> str:
        return str(schedules.parse_crontab(self.cleaned_data[CRONTAB_FIELD]))

    def clean_schedule_timezone(self) -> str:
        return schedules.validate_time_zone(self.cleaned_data[TIMEZONE_FIELD].strip())

    def clean_supervisors(self) -> str:
        return "\n".join(parse_supervisors(self.cleaned_data["supervisors"]))

    def new_properties(self) -> dict[str, Any]:
        """The ``Workflow.properties`` to store: only the values that differ from the default."""
        values = {}
        for prop in self.definition.properties:
            value = self.cleaned_data[property_field_name(prop)]
            if value != prop.default:
                values[prop.name] = value
        return values

    def new_activity_modes(self) -> dict[str, str]:
        modes = {}
        for activity in self.definition.activities:
            mode = self.cleaned_data[activity_field_name(activity)]
            if mode != ActivityMode.NORMAL:
                modes[activity.__name__] = mode
        return modes

    # -- saving ----------------------------------------------------------------------------------
    def changes(self) -> dict[str, list[Any]]:
        """``{key: [before, after]}`` of what this submission changes, as the audit records it.

        Keys are the model field names, ``schedule`` and ``timezone``, and ``properties.<name>`` /
        ``activity_modes.<name>`` with the values in force (a property on its default counts as
        its default). A stored value for a property the definition no longer has is dropped.
        """
        after: dict[str, Any] = {name: self.cleaned_data[name] for name in MODEL_FIELDS}
        if self.scheduled:
            after[CRONTAB_FIELD] = self.cleaned_data[CRONTAB_FIELD]
            after[TIMEZONE_FIELD] = self.cleaned_data[TIMEZONE_FIELD]
        properties = self.new_properties()
        modes = self.new_activity_modes()
        for prop in self.definition.properties:
            after[property_field_name(prop)] = properties.get(prop.name, prop.default)
        for activity in self.definition.activities:
            after[activity_field_name(activity)] = modes.get(activity.__name__, ActivityMode.NORMAL)

        changes = {
            _audit_key(name): [self.before[name], value] for name, value in after.items() if self.before[name] != value
        }
        known = {prop.name for prop in self.definition.properties}
        for name, value in self.instance.properties.items():
            if name not in known:
                changes[f"properties.{name}"] = [value, None]
        return changes

    def save(self, commit: bool = True) -> Workflow:
        """Put the submitted values on the instance; :meth:`apply` is what writes them."""
        if commit:
            raise TypeError("WorkflowForm.save(commit=True) would skip the audit; call apply(user=...)")
        workflow = super().save(commit=False)
        workflow.properties = self.new_properties()
        workflow.activity_modes = self.new_activity_modes()
        return workflow

    def apply(self, *, user: AbstractBaseUser | None) -> dict[str, list[Any]]:
        """Save the edited columns and the schedule, and audit the changes (nothing when nothing
        changed). Returns the changes."""
        changes = self.changes()
        workflow = self.save(commit=False)
        with transaction.atomic():
            workflow.save(update_fields=[*MODEL_FIELDS, "properties", "activity_modes", "updated_at"])
            if "schedule" in changes or "timezone" in changes:
                # Re-read under lock: beat writes last_run_at on the same row, and the schedule
                # may have been enabled or disabled since this page was loaded.
                workflow.periodic_task = PeriodicTask.objects.select_for_update().get(pk=workflow.periodic_task_id)
                schedules.set_crontab(workflow, self.cleaned_data[CRONTAB_FIELD], self.cleaned_data[TIMEZONE_FIELD])
            if changes:
                audit(workflow.pk, "edit", user=user, changes=changes)
        return changes


def _audit_key(field_name: str) -> str:
    if field_name == CRONTAB_FIELD:
        return "schedule"
    if field_name == TIMEZONE_FIELD:
        return "timezone"
    if field_name.startswith(PROPERTY_PREFIX):
        return "properties." + field_name.removeprefix(PROPERTY_PREFIX)
    if field_name.startswith(ACTIVITY_PREFIX):
        return "activity_modes." + field_name.removeprefix(ACTIVITY_PREFIX)
    return field_name


def workflow_form_class(definition: WorkflowDefinition, *, scheduled: bool) -> type[WorkflowForm]:
    """The change form of ``definition``: the model fields, the schedule (unless the workflow runs
    on demand, ``scheduled=False``), one field per property and one mode per activity."""
    attrs: dict[str, Any] = {"definition": definition, "scheduled": scheduled, "__module__": __name__}
    if scheduled:
        attrs[CRONTAB_FIELD] = forms.CharField(
            label="Schedule (crontab)", max_length=200,
            help_text="Five fields: minute hour day-of-month month day-of-week, e.g. */15 * * * * or 0 4 * * 1-5. "
                      "Day of month and day of week must both match.",
            widget=forms.TextInput(attrs={"size": 30, "spellcheck": "false"}),
        )
        attrs[TIMEZONE_FIELD] = forms.CharField(
            label="Time zone", max_length=63, help_text="An IANA name such as Europe/Paris or UTC.",
        )
    for prop in definition.properties:
        attrs[property_field_name(prop)] = property_form_field(prop)
    for activity in definition.activities:
        attrs[activity_field_name(activity)] = activity_form_field(activity)
    return type(f"{definition.id}WorkflowForm", (WorkflowForm,), attrs)


def generated_field_names(definition: WorkflowDefinition) -> dict[str, list[str]]:
    """The generated fields by fieldset: ``{"properties": [...], "activities": [...]}``."""
    return {
        "properties": [property_field_name(prop) for prop in definition.properties],
        "activities": [activity_field_name(activity) for activity in definition.activities],
    }
