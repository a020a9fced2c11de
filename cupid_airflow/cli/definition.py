"""The ``airflow cupid`` command group (declared under ``cli`` in the provider info) and, from the same
definitions, the parser of ``python -m cupid_airflow``, which checks arguments before importing Airflow."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from airflow.cli.cli_config import GroupCommand

COMMANDS_MODULE = "cupid_airflow.cli.commands"


class Arg:
    """One argument, as ``airflow.cli.cli_config.Arg`` (and ``argparse``) take it."""

    def __init__(self, flags: tuple[str, ...], **kwargs: Any) -> None:
        self.flags = flags
        self.kwargs = kwargs


@dataclass(frozen=True)
class Action:
    name: str
    help: str
    func: str
    args: tuple[Arg, ...]


@dataclass(frozen=True)
class Group:
    name: str
    help: str
    subcommands: tuple[Action | Group, ...]
    description: str | None = None


ARG_CONFIG = Arg(("config",), help="a config file, or the name of a config in the configs folder")
ARG_OUTPUT = Arg(
    ("-o", "--output"),
    help="Output format. Allowed values: json, yaml, plain, table (default: table)",
    metavar="(table, json, yaml, plain)",
    choices=("table", "json", "yaml", "plain"),
    default="table",
)
ARG_LIST_STATUS = Arg(("--status",), help="comma-separated statuses (default: parked,dead)")
ARG_LIMIT = Arg(("--limit",), help="list at most this many items, oldest first (default: 50)")
ARG_JSON_LINES = Arg(
    ("--json",), dest="json_lines", action="store_true", help="one JSON object per line, with the body"
)
ARG_FROM = Arg(("--from",), dest="from_status", help="comma-separated statuses to requeue (default: dead)")
ARG_IDS = Arg(("--ids",), help="only these comma-separated item ids")
ARG_PURGE_STATUS = Arg(("--status",), help="comma-separated statuses to delete (default: delivered,resolved)")
ARG_YES = Arg(("-y", "--yes"), action="store_true", help="confirm: this deletes or re-sends items")
ARG_LOSES_DATA = Arg(
    ("--i-know-this-loses-data",),
    dest="loses_data",
    action="store_true",
    help="also required to purge pending, parked or dead items (never delivered)",
)
ARG_MAX_ATTEMPTS = Arg(("--max-attempts",), help="parked items with this many attempts or more (default: the config's)")
ARG_MAX_AGE = Arg(("--max-age-second",), help="parked items queued this long ago or longer (default: the config's)")
ARG_PATHS = Arg(("paths",), nargs="+", metavar="PATH", help="config files, or folders of config files")


POOL_COMMANDS = (
    Action(
        "stats",
        "Items of a config's delivery store by status, and the oldest parked and pending ages",
        "pool_stats",
        (ARG_CONFIG, ARG_OUTPUT),
    ),
    Action(
        "list",
        "List items of a config's delivery store, oldest first",
        "pool_list",
        (ARG_CONFIG, ARG_LIST_STATUS, ARG_LIMIT, ARG_OUTPUT, ARG_JSON_LINES),
    ),
    Action(
        "requeue",
        "Put dead (or other) items back into the failure pool with a fresh attempt count",
        "pool_requeue",
        (ARG_CONFIG, ARG_FROM, ARG_IDS, ARG_YES),
    ),
    Action(
        "purge",
        "Delete delivered and resolved items (needs --yes)",
        "pool_purge",
        (ARG_CONFIG, ARG_PURGE_STATUS, ARG_IDS, ARG_YES, ARG_LOSES_DATA),
    ),
    Action(
        "dead",
        "Move parked items past the failure pool's limits to dead now",
        "pool_dead",
        (ARG_CONFIG, ARG_MAX_ATTEMPTS, ARG_MAX_AGE),
    ),
)

CUPID = Group(
    "cupid",
    "cupid-airflow: the failure pool and config files",
    (
        Group("pool", "The delivery store and failure pool of one config", POOL_COMMANDS),
        Group(
            "config",
            "cupid config files",
            (
                Action(
                    "check",
                    "Validate config files and build their DAGs as the dag-processor will",
                    "config_check",
                    (ARG_PATHS, ARG_OUTPUT),
                ),
            ),
        ),
    ),
    description="Inspect and act on cupid's delivery store and failure pool; check config files.",
)


def get_cupid_cli_commands() -> list[GroupCommand]:
    """The ``cli`` entry of the provider info: ``airflow cupid pool ...`` and ``airflow cupid config ...``."""
    from airflow.cli import cli_config

    def convert(command: Action | Group) -> Any:
        if isinstance(command, Group):
            return cli_config.GroupCommand(
                name=command.name,
                help=command.help,
                description=command.description,
                subcommands=[convert(c) for c in command.subcommands],
            )
        return cli_config.ActionCommand(
            name=command.name,
            help=command.help,
            func=cli_config.lazy_load_command(f"{COMMANDS_MODULE}.{command.func}"),
            args=tuple(cli_config.Arg(arg.flags, **arg.kwargs) for arg in command.args),
        )

    return [convert(CUPID)]


def build_parser(prog: str = "python -m cupid_airflow") -> argparse.ArgumentParser:
    """The same commands without Airflow's CLI around them (``python -m cupid_airflow``)."""
    parser = argparse.ArgumentParser(prog=prog, description=CUPID.description)
    _add_commands(parser, CUPID.subcommands)
    return parser


def _add_commands(parser: argparse.ArgumentParser, commands: Sequence[Action | Group]) -> None:
    subparsers = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    for command in commands:
        description = command.description if isinstance(command, Group) else None
        sub = subparsers.add_parser(command.name, help=command.help, description=description or command.help)
        if isinstance(command, Group):
            _add_commands(sub, command.subcommands)
        else:
            for arg in command.args:
                sub.add_argument(*arg.flags, **arg.kwargs)
            sub.set_defaults(func=_lazy(command.func))


def _lazy(name: str) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        getattr(importlib.import_module(COMMANDS_MODULE), name)(args)

    return run
