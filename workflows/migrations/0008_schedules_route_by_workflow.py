"""Workflow schedules stop naming a queue, so that beat's messages go through the router like the
others (and ``WORKFLOW_QUEUES`` moves them too). Only the queue the schedules were created with,
``celery``, is cleared: a queue an administrator chose in django-celery-beat's admin stays."""

from django.db import migrations


def route_through_the_router(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    Workflow = apps.get_model("workflows", "Workflow")
    PeriodicTask.objects.filter(workflow__in=Workflow.objects.all(), queue="celery").update(queue=None)


def name_the_default_queue(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    Workflow = apps.get_model("workflows", "Workflow")
    PeriodicTask.objects.filter(workflow__in=Workflow.objects.all(), queue=None).update(queue="celery")


class Migration(migrations.Migration):
    dependencies = [
        ("workflows", "0007_run_slot"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(route_through_the_router, name_the_default_queue)]
