"""The ``airflow cupid`` command group, declared under ``cli`` in the provider info."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand, lazy_load_command

if TYPE_CHECKING:
    from collections.abc import Sequence

COMMANDS_MODULE = "cupid_airflow.cli.commands"

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
    ActionCommand(
        name="stats",
        help="Items of a config's delivery store by status, and the oldest parked and pending ages",
        func=lazy_load_command(f"{COMMANDS_MODULE}.pool_stats"),
        args=(ARG_CONFIG, ARG_OUTPUT),
    ),
    ActionCommand(
        name="list",
        help="List items of a config's delivery store, oldest first",
        func=lazy_load_command(f"{COMMANDS_MODULE}.pool_list"),
        args=(ARG_CONFIG, ARG_LIST_STATUS, ARG_LIMIT, ARG_OUTPUT, ARG_JSON_LINES),
    ),
    ActionCommand(
        name="requeue",
        help="Put dead (or other) items back into the failure pool with a fresh attempt count",
        func=lazy_load_command(f"{COMMANDS_MODULE}.pool_requeue"),
        args=(ARG_CONFIG, ARG_FROM, ARG_IDS, ARG_YES),
    ),
    ActionCommand(
        name="purge",
        help="Delete delivered and resolved items (needs --yes)",
        func=lazy_load_command(f"{COMMANDS_MODULE}.pool_purge"),
        args=(ARG_CONFIG, ARG_PURGE_STATUS, ARG_IDS, ARG_YES, ARG_LOSES_DATA),
    ),
    ActionCommand(
        name="dead",
        help="Move parked items past the failure pool's limits to dead now",
        func=lazy_load_command(f"{COMMANDS_MODULE}.pool_dead"),
        args=(ARG_CONFIG, ARG_MAX_ATTEMPTS, ARG_MAX_AGE),
    ),
)

CONFIG_COMMANDS = (
    ActionCommand(
        name="check",
        help="Validate config files and build their DAGs as the dag-processor will",
        func=lazy_load_command(f"{COMMANDS_MODULE}.config_check"),
        args=(ARG_PATHS, ARG_OUTPUT),
    ),
)

CUPID_COMMANDS = (
    GroupCommand(name="pool", help="The delivery store and failure pool of one config", subcommands=POOL_COMMANDS),
    GroupCommand(name="config", help="cupid config files", subcommands=CONFIG_COMMANDS),
)


def get_cupid_cli_commands() -> list[GroupCommand]:
    """The ``cli`` entry of the provider info: ``airflow cupid pool ...`` and ``airflow cupid config ...``."""
    return [
        GroupCommand(
            name="cupid",
            help="cupid-airflow: the failure pool and config files",
            description="Inspect and act on cupid's delivery store and failure pool; check config files.",
            subcommands=CUPID_COMMANDS,
        )
    ]


def build_parser(prog: str = "python -m cupid_airflow") -> argparse.ArgumentParser:
    """The same commands without Airflow's CLI around them (``python -m cupid_airflow``)."""
    parser = argparse.ArgumentParser(prog=prog, description=get_cupid_cli_commands()[0].description)
    _add_commands(parser, CUPID_COMMANDS)
    return parser


def _add_commands(parser: argparse.ArgumentParser, commands: Sequence[ActionCommand | GroupCommand]) -> None:
    subparsers = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.description or command.help)
        if isinstance(command, GroupCommand):
            _add_commands(sub, tuple(command.subcommands))
        else:
            for arg in command.args:
                arg.add_to_parser(sub)
            sub.set_defaults(func=command.func)
