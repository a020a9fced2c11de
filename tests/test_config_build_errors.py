"""A config that loads but whose DAGs cannot be built is an import error naming its file; each DAG's docs
show a hash of its config file so an edit is visible."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import pytest

from cupid_airflow.core.config import load_config
from cupid_airflow.dag_factory import build_dags, load_dags
from tests.support.dags_folder import PARSING_CONTEXT_ENV, config_text, dagbag, make_dags_folder

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(autouse=True)
def default_config_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CUPID_CONFIG_FOLDER", "AIRFLOW__CUPID__CONFIG_FOLDER", PARSING_CONTEXT_ENV):
        monkeypatch.delenv(name, raising=False)


def test_a_config_whose_dags_cannot_be_built_is_an_import_error_naming_the_file(tmp_path: Path) -> None:
    """A 96-character file name loads, but the tag 'cupid:<name>' is over Airflow's 100 characters: its
    DAGs vanished with a log line only."""
    long_name = "a" * 96
    folder = make_dags_folder(tmp_path, {"alpha.json": config_text(), f"{long_name}.json": config_text()})
    load_config(folder / "cupid" / f"{long_name}.json")  # it loads: the failure is in building

    bag = dagbag(folder)

    assert sorted(bag.dag_ids) == ["cupid_alpha_failure_pool", "cupid_alpha_sync"]
    error = bag.import_errors[str(folder / "cupid_config_errors.py")]
    assert "1 cupid config file(s) are broken" in error
    assert (
        f"{folder / 'cupid' / f'{long_name}.json'}: its DAGs cannot be built: ValueError: tag cannot be longer "
        "than 100 characters"
    ) in error
    assert sorted(load_dags(folder)) == ["cupid_alpha_failure_pool", "cupid_alpha_sync"]


def test_every_dag_doc_shows_the_hash_of_its_config_file(tmp_path: Path) -> None:
    path = tmp_path / "hashed.json"
    path.write_text(config_text(extra={"reconcile": {"enabled": True}}))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    dags = build_dags(load_config(path))
    assert len(dags) == 3
    for dag in dags.values():
        assert f"`{path}` (sha256 `{digest}`)" in (dag.doc_md or ""), dag.dag_id

    path.write_text(config_text(extra={"reconcile": {"enabled": True}, "retries": 4}))
    edited = build_dags(load_config(path))
    assert all(digest not in (dag.doc_md or "") for dag in edited.values())
