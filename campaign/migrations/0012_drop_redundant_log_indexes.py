"""Drop the single-column indexes of four log foreign keys that another index already serves: the
delivery and profile keys of delivery logs, and the delivery key of tracking logs, each lead a
composite index; the tracking log's delivery-log key had two identical indexes. Every log written
paid for them.

Only the indexes go. Letting Django alter the fields would also drop and re-add the foreign-key
constraints, which revalidates every row of the largest tables (and rebuilds them on SQLite)."""

import django.db.models.deletion
from django.db import migrations, models

#: (table, column, index name Django gave the key's index).
INDEXES = (
    ("campaign_deliverylog", "delivery_id", "campaign_deliverylog_delivery_id_afb8c531"),
    ("campaign_deliverylog", "profile_id", "campaign_deliverylog_profile_id_b4002371"),
    ("campaign_trackinglog", "delivery_id", "campaign_trackinglog_delivery_id_fade9c58"),
    ("campaign_trackinglog", "delivery_log_id", "campaign_trackinglog_delivery_log_id_b3bf080d"),
)


class Migration(migrations.Migration):

    dependencies = [
        ('campaign', '0011_partition_log_tables'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(f'DROP INDEX IF EXISTS "{name}"', f'CREATE INDEX "{name}" ON "{table}" ("{column}")')
                for table, column, name in INDEXES
            ],
            state_operations=[
                migrations.AlterField(
                    model_name='deliverylog',
                    name='delivery',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='logs', to='campaign.delivery', verbose_name='delivery'),
                ),
                migrations.AlterField(
                    model_name='deliverylog',
                    name='profile',
                    field=models.ForeignKey(blank=True, db_index=False, help_text='Empty for transactional messages.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='delivery_logs', to='campaign.profile', verbose_name='profile'),
                ),
                migrations.AlterField(
                    model_name='trackinglog',
                    name='delivery',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='tracking_logs', to='campaign.delivery', verbose_name='delivery'),
                ),
                migrations.AlterField(
                    model_name='trackinglog',
                    name='delivery_log',
                    field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name='tracking_logs', to='campaign.deliverylog', verbose_name='delivery log'),
                ),
            ],
        ),
    ]
