"""Fixtures of the integration tests (the shared ones are in tests/conftest.py).

``store`` (function)
    The delivery store in the test's ``fresh_database`` (where its source tables live too), closed after.
``receiver`` (function)
    One started callback receiver (tests/support/receivers.py), answering 204 unless told otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from cupid_airflow.core.store import DeliveryStore
from tests.support.database import params_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from conftest import MariaDB

    from tests.support.receivers import Receiver


@pytest.fixture
def store(mariadb: MariaDB, fresh_database: str) -> Iterator[DeliveryStore]:
    delivery_store = DeliveryStore(params_for(mariadb, fresh_database))
    yield delivery_store
    delivery_store.close()


@pytest.fixture
def receiver(receivers: Callable[..., Receiver]) -> Receiver:
    return receivers()
