"""A lock held by someone else (PostgreSQL): a thread on a second database connection takes it in
an open transaction, as a long report or a stuck session would, and gives it up when the test is
done with it. Shared by the tests of every layer, so it imports neither ``campaign`` nor
``workflows``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections


@contextmanager
def holding_lock(sql: str, *, timeout: float = 10, longest: float = 30) -> Iterator[None]:
    """Run ``sql`` (a ``LOCK TABLE …``) in a transaction on a connection of its own and keep it
    open while the block runs; then roll it back and close the connection.

    Waits at most ``timeout`` seconds for the lock (a holder that never gets it would make the test
    pass or fail for the wrong reason) and as long again for the holder to finish; the holder gives
    the lock up by itself after ``longest`` seconds, should the test never come back. An error in
    the holder (bad SQL, a refused connection) is raised here, not lost in its thread."""
    ready, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            other = connections.create_connection("default")
            try:
                other.set_autocommit(False)
                with other.cursor() as cursor:
                    cursor.execute(sql)
                    ready.set()
                    release.wait(longest)
                other.rollback()
            finally:
                other.close()
        except BaseException as error:  # handed to the test's thread
            errors.append(error)
            ready.set()

    holder = threading.Thread(target=hold, name="lock holder", daemon=True)
    holder.start()
    try:
        if not ready.wait(timeout):
            raise AssertionError(f"the lock was not held within {timeout:g} s: {sql}")
        if errors:
            raise errors[0]
        yield
    finally:
        release.set()
        holder.join(timeout)
    if holder.is_alive():
        raise AssertionError(f"the lock's holder did not finish within {timeout:g} s of its release: {sql}")
    if errors:
        raise errors[0]
