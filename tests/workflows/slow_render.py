"""Loaded into a test worker through WORKFLOW_EXTRA_MODULES: rendering a report takes
``SLOW_RENDER_S`` seconds more, long enough to kill the worker in the middle of it."""

from __future__ import annotations

import os
import time

from campaign import reports

_render_report_pdf = reports.render_report_pdf


def _slow_render_report_pdf(*args, **kwargs) -> bytes:
    time.sleep(float(os.environ.get("SLOW_RENDER_S", "30")))
    return _render_report_pdf(*args, **kwargs)


reports.render_report_pdf = _slow_render_report_pdf
