"""Fixtures for the operator tests: a kmock API server and the operator running against it
in the test's own event loop. Helpers live in `opkit` and `fakecluster`."""

from collections.abc import AsyncIterator

import pytest
from fakecluster import ApiServer, Harness, api_server, running_operator


@pytest.fixture
async def api() -> AsyncIterator[ApiServer]:
    async with api_server() as server:
        yield server


@pytest.fixture
async def operator(api: ApiServer) -> AsyncIterator[Harness]:
    async with running_operator(api) as harness:
        yield harness
