"""The shared HTTP layer of the external-service clients.

- One ``requests`` session per account (connection reuse), a bearer token read from the
  environment variable the account names (never stored, never logged), explicit connect and read
  timeouts on every call.
- Retries with exponential backoff and full jitter, only for what may pass by itself: connection
  errors and timeouts, 429 (honouring ``Retry-After``) and 5xx. A 4xx or a malformed body is a
  permanent failure with a reason that names the call; the caller writes nothing.
- Answers are JSON validated by the caller against the documented shape (:func:`expect`).
- The token goes only where :mod:`campaign.integrations.accounts` allows: it is read only from a
  ``CAMPAIGN_TOKEN_*`` variable, and every request URL is checked (HTTPS, or loopback HTTP in
  development) before the request is made, so a row saved before those rules is refused, not
  obeyed. Redirects are not followed: a 3xx is a permanent failure, and the token never goes to
  the address it points to.
- ``requests`` is imported by the first client made, not with this module, which every process
  loads through the workflows that call services: it takes some 50 ms, which each ``manage.py``
  command would otherwise pay.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from campaign.integrations.accounts import destination_error, token_env_error, without_credentials
from campaign.integrations.errors import PermanentError, TransientError
from campaign.models import ExternalAccount

if TYPE_CHECKING:
    import requests

logger = logging.getLogger(__name__)

#: Attempts per call (the first included) before a transient failure is given up.
MAX_ATTEMPTS = 4
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
#: A Retry-After longer than this is not waited for in-process: the run fails as transient and the
#: engine's own retry (minutes later) takes over.
RETRY_AFTER_MAX_S = 60.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class ServiceUnavailable(TransientError):
    """The service could not be reached or kept answering 429/5xx."""


def wait(seconds: float) -> None:
    """How every client waits between attempts (backoff, ``Retry-After``). Tests replace it to
    observe the waits without sleeping."""
    time.sleep(seconds)


class ServiceError(PermanentError):
    """The service refused the call (4xx) or answered something this client does not understand."""


class ConfigurationError(PermanentError):
    """The account is set up so that no call can succeed or may be made (no token, a token variable
    or URL the rules refuse, an http:// URL where HTTPS is due)."""


def new_session() -> requests.Session:
    """A client's session (``requests`` imported here, by the first client)."""
    import requests

    return requests.Session()


@dataclass
class ServiceClient:
    account: ExternalAccount
    require_https: bool = False
    #: How to wait between attempts; by default :func:`wait`, looked up at each call.
    sleep: Callable[[float], None] | None = None
    session: requests.Session = field(default_factory=new_session)
    #: The bearer token, for the clients to scrub it from their errors.
    token: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # The errors raised here never carry the token: it is read last.
        if self.require_https and urlsplit(self.account.base_url).scheme != "https":
            raise ConfigurationError(f"{self.account.name}: the base URL must use https:// "
                                     f"(got {without_credentials(self.account.base_url)!r})")
        if refusal := token_env_error(self.account.token_env):
            raise ConfigurationError(f"{self.account.name}: {refusal}; nothing was sent")
        self._refuse_unsafe_destination(self.account.base_url, what="the base URL")
        token = os.environ.get(self.account.token_env, "")
        if not token:
            raise ConfigurationError(
                f"{self.account.name}: the environment variable {self.account.token_env} (its token) is not set")
        self.token = token
        self.session.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json"})

    def url(self, path: str) -> str:
        return urljoin(self.account.base_url.rstrip("/") + "/", path.lstrip("/"))

    def get(self, path: str, *, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, *, json: Any) -> Any:
        return self.request("POST", path, json=json)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call, retried on transient failures; returns the decoded JSON body."""
        import requests  # loaded by new_session() already, unless a session was given

        what = f"{method} {path}"
        timeout = (self.account.timeout_s, self.account.timeout_s)
        url = self.url(path)
        self._refuse_unsafe_destination(url, what=what)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                # A redirect is not followed: it would take the token to an address nobody checked.
                response = self.session.request(method, url, timeout=timeout, allow_redirects=False, **kwargs)
            except requests.exceptions.SSLError as error:  # a ConnectionError, but retrying cannot fix it
                raise ConfigurationError(f"{self.account.name}: {what}: the TLS certificate is not trusted "
                                         f"({type(error).__name__})") from None
            except (requests.ConnectionError, requests.Timeout) as error:
                reason = f"{self.account.name}: {what} failed: {type(error).__name__}"
                delay = self._backoff(attempt)
            else:
                if response.status_code in RETRY_STATUSES:
                    reason = f"{self.account.name}: {what} answered {response.status_code}"
                    delay = self._retry_after(response) if response.status_code == 429 else None
                    delay = self._backoff(attempt) if delay is None else delay
                elif 300 <= response.status_code < 400:
                    location = response.headers.get("Location")
                    target = repr(without_credentials(location)[:200]) if location else "nowhere (no Location)"
                    raise ServiceError(f"{self.account.name}: {what} answered {response.status_code}, a redirect to "
                                       f"{target}, not followed (the token would go with it): set the base URL "
                                       "to the service's own address")
                elif response.status_code >= 400:
                    raise ServiceError(f"{self.account.name}: {what} answered {response.status_code}: "
                                       f"{response.text[:200].strip()}")
                else:
                    return self._decode(response, what)
            if attempt == MAX_ATTEMPTS or delay > RETRY_AFTER_MAX_S:
                raise ServiceUnavailable(f"{reason} (after {attempt} attempt{'s' if attempt > 1 else ''})")
            logger.info("%s; retry %s in %.1fs", reason, attempt, delay)
            (self.sleep or wait)(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _refuse_unsafe_destination(self, url: str, *, what: str) -> None:
        if refusal := destination_error(url):
            raise ConfigurationError(f"{self.account.name}: {what}: {without_credentials(url)!r} refused: "
                                     f"{refusal}; nothing was sent")

    def _decode(self, response: requests.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ServiceError(f"{self.account.name}: {what} answered a body that is not JSON: "
                               f"{response.text[:100]!r}") from None

    @staticmethod
    def _backoff(attempt: int) -> float:
        return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))

    @staticmethod
    def _retry_after(response: requests.Response) -> float | None:
        value = response.headers.get("Retry-After")
        if value is None:
            return None
        if value.strip().isdigit():
            return float(value)
        try:
            return max(0.0, (parsedate_to_datetime(value).timestamp() - time.time()))
        except (TypeError, ValueError):
            return None


def without_token(secret: str, call: Callable[[], Any]) -> Any:
    """Run ``call``; an error carrying the token (a server echoing the Authorization header) is
    raised again with the token scrubbed and without the original in its chain."""
    try:
        return call()
    except (ServiceError, ServiceUnavailable, ConfigurationError) as error:
        if secret and secret in str(error):
            raise type(error)(str(error).replace(secret, "[token]")) from None
        raise


def expect(condition: bool, message: str) -> None:
    """Validate an answer's shape: a malformed answer is a permanent failure that writes nothing."""
    if not condition:
        raise ServiceError(f"malformed answer: {message}")


def get_account(kind: str, name: str | None = None) -> ExternalAccount | None:
    """The enabled account of ``kind`` (the first by name, or the named one), or None."""
    accounts = ExternalAccount.objects.filter(kind=kind, enabled=True)
    if name:
        accounts = accounts.filter(name=name)
    return accounts.order_by("name").first()
