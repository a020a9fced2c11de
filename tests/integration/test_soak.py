"""The seeded invariant soak (tests/support/soak.py): short seeded runs; long ones run from bench/bench_soak.py."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import pytest

from tests.support.soak import Server, SoakSettings, run_soak
from tests.support.soak_cupid import CupidUnderTest

if TYPE_CHECKING:
    from conftest import MariaDB

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("seed", [1, 2])
def test_the_invariants_hold_under_random_changes_and_faults(mariadb: MariaDB, seed: int) -> None:
    server = Server(mariadb.host, mariadb.port, mariadb.user, mariadb.password)
    report = run_soak(SoakSettings(seed=seed), server, f"cupid_soak_{secrets.token_hex(3)}", CupidUnderTest)
    print(report.line())
    assert report.violations == [], report.line() + "\n" + "\n".join(report.violations[:40])
