"""Which variable an external account may read its token from, and where it may send it.

Why it exists: a worker holds every secret of the instance in its environment (``SECRET_KEY``,
``DATABASE_URL``, the broker's password, ...). An ``ExternalAccount`` names, in the admin, the
variable its bearer token is read from and the URL the token is sent to. Unchecked, an
administrator could have the worker send ``Authorization: Bearer <SECRET_KEY>`` to any host.

Invariants:

- A token is read only from a variable named ``CAMPAIGN_TOKEN_<NAME>``. The prefix is reserved for
  these tokens and no setting of the project uses it, so no other secret can be named.
- A token travels only over ``https://``, or over plain ``http://`` to a loopback address
  (127.0.0.0/8, ::1, ``localhost``) when the development setting
  ``INTEGRATIONS_ALLOW_LOOPBACK_HTTP`` is on. Any other scheme, and any URL carrying credentials
  (``user:password@``), is refused.

``ExternalAccount.clean()`` applies these rules when an account is saved from the admin; the HTTP
client (:mod:`campaign.integrations.http`) applies them again before every request, for rows saved
before the rules existed. Each function returns the reason of a refusal, or None.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

from django.conf import settings

TOKEN_ENV_PREFIX = "CAMPAIGN_TOKEN_"
TOKEN_ENV_EXAMPLE = "CAMPAIGN_TOKEN_ANALYTICS"
TOKEN_ENV_RULE = (
    f"the token variable must be named {TOKEN_ENV_PREFIX}<NAME> with capitals, digits and underscores "
    f"(e.g. {TOKEN_ENV_EXAMPLE}): only variables with this prefix are ever sent to an external service"
)
_TOKEN_ENV = re.compile(re.escape(TOKEN_ENV_PREFIX) + r"[A-Z0-9][A-Z0-9_]*")
#: What an environment variable name looks like; anything else is not echoed in a message (an
#: administrator may have pasted the token itself into the field).
_VARIABLE_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")

_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.ip_address("::1")


def token_env_error(name: str) -> str | None:
    """Why ``name`` may not be read as a token variable, or None when it may."""
    if _TOKEN_ENV.fullmatch(name or ""):
        return None
    shown = name if _VARIABLE_NAME.fullmatch(name or "") else "(not a variable name)"
    return f"token variable {shown} refused: {TOKEN_ENV_RULE}"


def destination_error(url: str) -> str | None:
    """Why a bearer token may not be sent to ``url``, or None when it may. Reads
    ``settings.INTEGRATIONS_ALLOW_LOOPBACK_HTTP`` at each call."""
    parts = _split(url)
    if parts is None or not parts.hostname:
        return "not a valid URL with a host"
    if "@" in parts.netloc:
        return "a URL must not carry credentials (user:password@): the token variable is the only credential sent"
    scheme = parts.scheme.lower()
    if scheme == "https":
        return None
    if scheme != "http":
        return f"only https:// is accepted (got {scheme}://)" if scheme else "only https:// is accepted"
    if not is_loopback_host(parts.hostname):
        return ("plain http:// would send the token in clear: use https:// "
                "(http:// is accepted only to a loopback address, in development)")
    if not getattr(settings, "INTEGRATIONS_ALLOW_LOOPBACK_HTTP", False):
        return ("plain http:// is refused: use https:// (http:// to a loopback address is accepted only "
                "when INTEGRATIONS_ALLOW_LOOPBACK_HTTP is on, in development)")
    return None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (as ``urlsplit`` gives it: lower case, IPv6 without brackets) is
    ``localhost``, an address of 127.0.0.0/8 or ::1. Other spellings (``0x7f.1``, a name that
    resolves to 127.0.0.1) are not loopback here: refusing them is the safe side."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address in _LOOPBACK_V4 if address.version == 4 else address == _LOOPBACK_V6


def without_credentials(url: str) -> str:
    """``url`` fit to be shown in a message: a ``user:password@`` part replaced by ``***@``."""
    parts = _split(url)
    if parts is None:
        return "(not a valid URL)"
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def _split(url: str) -> SplitResult | None:
    """``url`` split, or None when it is malformed: a bad port, or a space or control character
    (parsers disagree on those, and the check must judge the URL the request will use)."""
    if not url or any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in url):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError:
        return None
    return parts
