"""Public report links from emails: unsubscribe from a share, download an oversized PDF.

Why signed URLs and no login: the links are opened from a mailbox. The token (TimestampSigner,
salted per purpose) names exactly one share and user (or one send), so a tampered or expired
link is refused and a valid one can only do that one thing. Unsubscribing is a POST behind a
confirm page, so mail scanners that prefetch links do not unsubscribe anyone.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods

from campaign.models import ReportSend, ReportShare
from campaign.report_shares import read_download_token, read_unsubscribe_token


@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    try:
        share_id, user_id = read_unsubscribe_token(token)
    except signing.SignatureExpired:
        return render(request, "reports/unsubscribe.html", {"error": "This link has expired."}, status=400)
    except (signing.BadSignature, ValueError):
        return render(request, "reports/unsubscribe.html", {"error": "This link is not valid."}, status=400)
    share = ReportShare.objects.select_related("report").filter(pk=share_id).first()
    user = get_user_model().objects.filter(pk=user_id).first()
    if share is None or user is None:
        return render(request, "reports/unsubscribe.html", {"error": "This report share no longer exists."}, status=404)
    subscribed = share.recipients.filter(pk=user.pk).exists()
    if request.method == "POST":
        share.recipients.remove(user)
        return render(request, "reports/unsubscribe.html", {"share": share, "done": True})
    return render(request, "reports/unsubscribe.html", {"share": share, "subscribed": subscribed, "email": user.email})


@require_GET
def download(request: HttpRequest, token: str) -> FileResponse:
    try:
        send_id = read_download_token(token)
    except (signing.BadSignature, ValueError):
        raise Http404("invalid link") from None
    send = ReportSend.objects.filter(pk=send_id, status=ReportSend.Status.SENT).exclude(pdf_path="").first()
    if send is None:
        raise Http404("no such report")
    path = Path(settings.MEDIA_ROOT) / send.pdf_path
    if not path.is_file():
        raise Http404("the report file was removed")
    return FileResponse(path.open("rb"), content_type="application/pdf", filename=path.name)
