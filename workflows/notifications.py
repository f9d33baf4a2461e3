"""Emails to a workflow's supervisors (failures, long pauses), through Django's mail API."""

from __future__ import annotations

import logging
import smtplib

from django.core.mail import send_mail

from workflows.models import Workflow

logger = logging.getLogger(__name__)


def notify_supervisors(workflow: Workflow, *, subject: str, body: str) -> int:
    """Email the supervisors; returns how many were sent. A mail failure is logged, never raised:
    it must not turn a recorded outcome into a crash."""
    recipients = workflow.supervisor_emails
    if not recipients:
        return 0
    try:
        return send_mail(f"[workflows] {subject}", body, None, recipients)
    except (smtplib.SMTPException, OSError) as error:
        logger.error("could not email the supervisors of %s: %s", workflow.pk, error)
        return 0
