"""The long invariant soak: seeded soaks one after another for N minutes; prints each and the totals.

Each seed runs the real core against the local MariaDB and applying loopback receivers with
random source changes, late commits, sparse ids, a lossy CDC, receiver faults, concurrent and
SIGKILLed dispatchers and killed state-database connections (tests/support/soak.py), then checks
the invariants. Exits 1 on the first seed with a violation, printing it (rerun that seed with
``--first-seed N --seeds 1`` to reproduce the same random choices).

    .venv/bin/python bench/bench_soak.py --minutes 20
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.soak import Server, SoakSettings, run_soak
from tests.support.soak_cupid import CupidUnderTest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="run seeds until this long has passed")
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=None, help="at most this many seeds")
    parser.add_argument("--rounds", type=int, default=30, help="rounds per seed (the CI test runs 12)")
    arguments = parser.parse_args(argv)
    server = Server(
        os.environ.get("CUPID_TEST_MYSQL_HOST", "127.0.0.1"),
        int(os.environ.get("CUPID_TEST_MYSQL_PORT", "3306")),
        os.environ.get("CUPID_TEST_MYSQL_USER", "root"),
        os.environ.get("CUPID_TEST_MYSQL_PASSWORD", ""),
    )
    deadline = time.monotonic() + arguments.minutes * 60
    totals = {"seeds": 0, "rounds": 0, "changes": 0, "late": 0, "callbacks": 0, "kills": 0, "connections": 0}
    seed = arguments.first_seed
    started = time.monotonic()
    while time.monotonic() < deadline and (arguments.seeds is None or totals["seeds"] < arguments.seeds):
        settings = SoakSettings(seed=seed, rounds=arguments.rounds)
        report = run_soak(settings, server, f"cupid_soak_{secrets.token_hex(3)}", CupidUnderTest)
        print(report.line(), flush=True)
        totals["seeds"] += 1
        totals["rounds"] += report.rounds
        totals["changes"] += report.source_changes
        totals["late"] += report.late_commits
        totals["callbacks"] += report.requests
        totals["kills"] += report.kills
        totals["connections"] += report.connection_kills
        if report.violations:
            print(f"seed {seed}: {len(report.violations)} violation(s):")
            for violation in report.violations[:50]:
                print(f"  {violation}")
            return 1
        seed += 1
    minutes = (time.monotonic() - started) / 60
    print(
        f"{totals['seeds']} seeds, {totals['rounds']} rounds in {minutes:.1f} min: {totals['changes']} source changes "
        f"({totals['late']} committed late), {totals['callbacks']} callbacks, {totals['kills']} dispatchers "
        f"SIGKILLed, {totals['connections']} state connections killed, 0 violations"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
