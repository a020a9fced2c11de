"""Scan settings of ``src``: update time formats, ``updateTimeZone``, late-commit keys."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from cupid_airflow.core.config import CupidConfigError, CupidConfigWarning, load_config
from cupid_airflow.core.timeformat import digits_format, format_characters, php_to_mysql_format, sorts_as_text

if TYPE_CHECKING:
    from pathlib import Path


def write(tmp_path: Path, **src: Any) -> Path:
    data = {
        "src": {"dsn": "u:p@tcp(db:3306)/shop", "table": "user", "byColumn": "number", **src},
        "des": [
            {
                "dsn": "u:p@tcp(db2:3306)/shop",
                "table": "user",
                "byColumn": "number",
                "columns": {"number": "number"},
                "callbackNotification": {"url": "http://app/cb"},
            }
        ],
    }
    path = tmp_path / "user.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("php_format", "sorts"),
    [
        ("Y-m-d H:i:s", True),
        ("Y-m-d\\TH:i:s", True),
        ("Y-m-d\\TH:i:s.u", True),
        ("Ymd", True),
        ("d/m/Y H:i:s", False),
        ("Y-n-j G:i:s", False),
        ("y-m-d H:i:s", False),
        ("Y-m", False),
    ],
)
def test_sorts_as_text_ignores_escaped_literals(php_format: str, sorts: bool) -> None:
    assert sorts_as_text(php_format) is sorts


def test_format_characters_and_digit_formats() -> None:
    assert format_characters("Y-m-d\\TH:i:s") == list("YmdHis")
    assert php_to_mysql_format("Y-m-d\\TH:i:s") == "%Y-%m-%dT%H:%i:%s"
    assert digits_format("YmdHis") and digits_format("Ymd") and digits_format("YmdH")
    assert not digits_format("Y-m-d") and not digits_format("dmY") and not digits_format("YmdHisu")


@pytest.mark.parametrize("zone", ["+00:00", "-05:30", "+14:00", "SYSTEM", "UTC", "Asia/Shanghai", "Etc/GMT+8"])
def test_update_time_zone_accepts_offsets_and_names(tmp_path: Path, zone: str) -> None:
    assert load_config(write(tmp_path, updateTimeZone=zone)).src.update_time_zone == zone


@pytest.mark.parametrize("zone", ["+15:00", "8", "+08:60", "Asia/Shanghai'; --", ""])
def test_update_time_zone_rejects_what_is_not_a_zone(tmp_path: Path, zone: str) -> None:
    with pytest.raises(CupidConfigError, match=r"src\.updateTimeZone: .* is not a time zone \(accepted: an offset"):
        load_config(write(tmp_path, updateTimeZone=zone))


def test_late_commit_max_rows_is_accepted_and_ignored_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(CupidConfigWarning, match=r"lateCommitMaxRows is ignored.*lateCommitMaxGaps"):
        config = load_config(write(tmp_path, lateCommitMaxRows=20000))
    assert config.src.late_commit_max_gaps == 100000


def test_late_commit_max_gaps_is_at_least_one(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, lateCommitMaxGaps=50)).src.late_commit_max_gaps == 50
    with pytest.raises(CupidConfigError, match=r"src\.lateCommitMaxGaps: 0 is not accepted"):
        load_config(write(tmp_path, lateCommitMaxGaps=0))
