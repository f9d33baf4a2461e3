"""Fixtures of the event API's tests."""

import pytest

from campaign import api


@pytest.fixture
def key(db) -> str:
    return api.create_api_key(name="crm")[1]
