"""The powerstrip-flocker command: one subcommand per part of the system.

Each subcommand lives in the module of its part, which provides HELP (one line),
configure(parser) to add its options and run(options) -> exit status.
"""

import argparse
import importlib
import sys

from powerstripflocker import __version__
from powerstripflocker.cli.logs import add_logging_options, start_logging

SUBCOMMANDS = {
    "adapter": "powerstripflocker.frontends.adapter_command",
    "agent": "powerstripflocker.agent.command",
    "proxy": "powerstripflocker.powerstrip.command",
    "control": "powerstripflocker.control.command",
    "status": "powerstripflocker.cli.status",
    "demo": "powerstripflocker.cli.demo",
    "units": "powerstripflocker.cli.units",
    "plugin": "powerstripflocker.frontends.plugin_command",
    "release": "powerstripflocker.cli.release",
    "restore": "powerstripflocker.cli.restore",
    "up": "powerstripflocker.cli.up",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="powerstrip-flocker",
        description="Portable Docker volumes: -v /flocker/NAME:/path on any node of a cluster.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        subparser = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(subparser)
        add_logging_options(subparser)
        subparser.set_defaults(run=module.run)
    return parser


def main(argv=None):
    options = build_parser().parse_args(argv)
    start_logging(options.log_format, options.log_level)
    sys.exit(options.run(options))
