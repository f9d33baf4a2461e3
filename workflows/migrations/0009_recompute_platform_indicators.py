"""Recompute every delivery's indicators and every daily aggregate once, after the platform's full
indicator table was added (campaign 0008): the next run of updateDeliveryIndicators and of
reportingAggregates is a first run (a full pass), which fills the new fields and rewrites the
figures whose formula changed. kpiSharing then pushes the differences as corrections."""

from django.db import migrations

RECOMPUTED = ("updateDeliveryIndicators", "reportingAggregates")


def forget_cursors(apps, schema_editor):
    Workflow = apps.get_model("workflows", "Workflow")
    Workflow.objects.filter(pk__in=RECOMPUTED).update(cursors={})


class Migration(migrations.Migration):

    dependencies = [
        ("workflows", "0008_schedules_route_by_workflow"),
        ("campaign", "0009_platform_indicator_table"),
    ]

    operations = [
        migrations.RunPython(forget_cursors, migrations.RunPython.noop),
    ]
