"""ASGI entry point for gunicorn's ``gasgi`` worker (Procfile ``web``, see gunicorn.conf.py):
Django's ordinary WSGI application behind an event loop that reads each request body first.

Why it exists: a sync or threaded worker gives a request its thread as soon as the headers have
arrived, so a client that announces a body and then stalls holds that thread until it gives up;
a few such clients hold every thread, and a health check waits behind them. Here the worker's
event loop reads the body, where a stalled upload costs a coroutine and a socket, and gives up
after :data:`DEFAULT_BODY_TIMEOUT_S` (``WEB_BODY_TIMEOUT``) with a 408 and a closed connection.
Only a complete request goes to one of the worker's ``WEB_THREADS`` threads, which runs the WSGI
handler exactly as under a WSGI server: the same middleware, views and settings.

Why not Django's own ASGI handler: it runs each request's synchronous code in a thread made for
that request, and Django's database connections belong to a thread, so with psycopg2 every
request would open a new PostgreSQL connection (persistent connections, ``CONN_MAX_AGE``, only
pay off in long-lived threads). The pool's threads live as long as the worker: a worker holds at
most ``WEB_THREADS`` database connections, reused from one request to the next.

Invariants: Django sees a request only with its whole body, which is at most ``WEB_MAX_BODY_BYTES``
(refused with 413 before a byte is read when ``Content-Length`` announces more); a body that is
not complete within the deadline is answered 408 and its connection closed; at most
``WEB_THREADS`` requests of a worker run Django code at a time, the others wait in the loop.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from project.config import ConfigError, parse_int

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: Defaults of the variables below; gunicorn.conf.py reads the same variables with the same
#: defaults (and rejects a malformed value before any worker starts).
#: Threads running Django per worker: each holds a database connection while the worker lives.
DEFAULT_THREADS = 8
#: Seconds from the end of the headers to the end of the body. An event is a few hundred bytes
#: and a batch a few hundred kilobytes: even a slow mobile link sends that in well under a second,
#: so 15 s only ever cuts clients that stalled.
DEFAULT_BODY_TIMEOUT_S = 15
#: Largest body read at all, in bytes, whatever the view's own limit (the event API refuses more
#: than 64 KiB itself, with a reason). It bounds the memory one request can take in the loop.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
#: A response is collected in its thread and sent by the loop in one go, up to this many bytes;
#: a larger one (a report download) is streamed from the thread, chunk by chunk.
BUFFERED_RESPONSE_BYTES = 256 * 1024


class BufferedWSGI:
    """An ASGI application running the WSGI application ``wsgi`` once each request is complete."""

    def __init__(self, wsgi: WSGIApp, *, threads: int, body_timeout_s: float, max_body_bytes: int) -> None:
        self.wsgi = wsgi
        self.threads = threads
        self.body_timeout_s = body_timeout_s
        self.max_body_bytes = max_body_bytes
        self._pool: ThreadPoolExecutor | None = None

    @property
    def pool(self) -> ThreadPoolExecutor:
        # Made in the worker, after the fork: a pool's threads do not survive a fork.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="django")
        return self._pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: nothing here speaks them
            raise ValueError(f"unsupported ASGI scope type {scope['type']!r}")
        announced = _content_length(scope)
        if announced is not None and announced > self.max_body_bytes:
            await _plain_response(send, 413, f"body too large: {announced} bytes, the limit is {self.max_body_bytes} bytes")
            return
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await self._read_body(receive)
        except TimeoutError:
            await _plain_response(send, 408, f"request body not received within {self.body_timeout_s:g} seconds")
            return
        if body is None:  # the client went away
            return
        if isinstance(body, int):
            await _plain_response(send, 413, f"body too large: more than {self.max_body_bytes} bytes")
            return
        environ = wsgi_environ(scope, body)
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self.pool, self._run_wsgi, environ, loop, send)
        if response is not None:
            status, headers, content = response
            try:
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": content})
            except OSError:
                pass  # the client went away meanwhile: nobody left to answer

    async def _read_body(self, receive: Receive) -> bytes | int | None:
        """The whole body; None if the client disconnected, its size so far if over the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return size
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _run_wsgi(self, environ: dict[str, Any], loop: asyncio.AbstractEventLoop,
                  send: Send) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """Run the WSGI application in a pool thread; returns the whole response when it is small,
        or None after streaming a large one through the loop."""
        start: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            if exc_info is not None and start.get("sent"):
                raise exc_info[1].with_traceback(exc_info[2])
            start["status"] = int(status.split(" ", 1)[0])
            start["headers"] = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]

        def send_from_thread(message: Message) -> None:
            try:
                asyncio.run_coroutine_threadsafe(send(message), loop).result()
            except OSError:
                start["gone"] = True  # the client went away: stop producing the response

        result = self.wsgi(environ, start_response)
        try:
            chunks: list[bytes] = []
            size = 0
            for chunk in result:
                if start.get("gone"):
                    return None
                if not chunk:
                    continue
                if not start.get("sent") and size + len(chunk) <= BUFFERED_RESPONSE_BYTES:
                    chunks.append(chunk)
                    size += len(chunk)
                    continue
                if not start.get("sent"):
                    start["sent"] = True
                    send_from_thread({"type": "http.response.start", "status": start["status"], "headers": start["headers"]})
                    for buffered in chunks:
                        send_from_thread({"type": "http.response.body", "body": buffered, "more_body": True})
                send_from_thread({"type": "http.response.body", "body": chunk, "more_body": True})
            if start.get("sent"):
                if not start.get("gone"):
                    send_from_thread({"type": "http.response.body", "body": b""})
                return None
            return start["status"], start["headers"], b"".join(chunks)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()  # Django's request_finished: database connections past their age are closed here

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                await send({"type": "lifespan.shutdown.complete"})
                return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length before the application sees it
    return None


async def _plain_response(send: Send, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": f"{text}\n".encode()})


def wsgi_environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """The WSGI environ of an ASGI HTTP request whose whole body is ``body`` (PEP 3333)."""
    script_name = scope.get("root_path", "").encode("utf-8").decode("latin-1")
    path_info = scope["path"].encode("utf-8").decode("latin-1")
    if script_name and path_info.startswith(script_name):
        path_info = path_info[len(script_name):]
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1] if server[1] is not None else 80),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if scope.get("client"):
        environ["REMOTE_ADDR"] = scope["client"][0]
    for raw_name, raw_value in scope.get("headers", []):
        if b"_" in raw_name:
            # X_Forwarded_Proto would become HTTP_X_FORWARDED_PROTO, the header the proxy alone may
            # set: dropped, as gunicorn's WSGI workers and nginx do.
            continue
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        key = name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{name}"
        value = raw_value.decode("latin-1")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    # The body is whole: its length is known even when it came chunked.
    environ["CONTENT_LENGTH"] = str(len(body))
    return environ


def from_environment(wsgi: WSGIApp, env: dict[str, str] | os._Environ[str] = os.environ) -> BufferedWSGI:
    return BufferedWSGI(
        wsgi,
        threads=parse_int(env, "WEB_THREADS", default=DEFAULT_THREADS, minimum=1),
        body_timeout_s=parse_int(env, "WEB_BODY_TIMEOUT", default=DEFAULT_BODY_TIMEOUT_S, minimum=1),
        max_body_bytes=parse_int(env, "WEB_MAX_BODY_BYTES", default=DEFAULT_MAX_BODY_BYTES, minimum=1024),
    )


def _build() -> BufferedWSGI:
    from project.wsgi import application as wsgi_application  # loads the settings, or exits naming the bad variable

    try:
        return from_environment(wsgi_application)
    except ConfigError as error:
        sys.stderr.write(f"Configuration error: {error}\n")
        raise SystemExit(2) from None


application = _build()
