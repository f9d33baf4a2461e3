"""PostgreSQL: the log tables become range-partitioned by their time column (campaign.partitions).

The rows are copied into the partitioned tables, so on a large database this migration takes as
long as copying the log tables and stops writers meanwhile. SQLite keeps plain tables.
"""

from django.db import migrations

from campaign import partitions


def partition(apps, schema_editor):
    if partitions.enabled(schema_editor.connection):
        for table in partitions.PARTITIONED_TABLES:
            partitions.rebuild(table, partitioned=True)


def unpartition(apps, schema_editor):
    if partitions.enabled(schema_editor.connection):
        for table in partitions.PARTITIONED_TABLES:
            partitions.rebuild(table, partitioned=False)


class Migration(migrations.Migration):

    dependencies = [("campaign", "0010_complaint_feedback_and_inbound_sms")]

    operations = [migrations.RunPython(partition, unpartition, elidable=False)]
