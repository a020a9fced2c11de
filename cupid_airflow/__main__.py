"""``python -m cupid_airflow``: the ``airflow cupid`` commands (failure pool, config check) without Airflow's CLI."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from cupid_airflow.cli.definition import build_parser

    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
