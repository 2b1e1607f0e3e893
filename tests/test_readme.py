"""The README is the newcomer's page and links to docs/; the command reference in
docs/commands.md names every command and every option it has."""

import argparse
import os
import re

from powerstripflocker.cli.main import build_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
COMMANDS = os.path.join(REPO, "docs", "commands.md")


def read(path):
    with open(path, encoding="utf-8") as document:
        return document.read()


def documented_options():
    text = read(COMMANDS)
    table = text.split("# Command reference", 1)[1].split("\n\n| environment variable")[0]
    options, command = {}, None
    for row in table.splitlines():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if len(cells) < 4 or not cells[1].startswith("`"):
            continue
        if cells[0].startswith("`"):
            command = cells[0].strip("`")
        elif cells[0] == "every command":
            continue
        options.setdefault(command, set()).update(re.findall(r"`([^`]+)`", cells[1]))
    return options


def actual_options(parser=None, command=None):
    """{command: its options}; a nested command ("control migrate") is a command of its
    own, with its own row."""
    parser = parser or build_parser()
    [subcommands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    options = {}
    for name, subparser in subcommands.choices.items():
        name = f"{command} {name}" if command else name
        names = set()
        for action in subparser._actions:
            if isinstance(action, argparse._SubParsersAction):
                options.update(actual_options(subparser, name))
                continue
            if isinstance(action, argparse._HelpAction) or action.dest in (
                    "log_format", "log_level"):
                continue
            names.update(action.option_strings or [action.dest.upper()])
        options[name] = names
    return options


def test_every_command_and_option_is_in_the_reference_table():
    assert documented_options() == actual_options()


def test_the_readme_is_at_most_300_lines():
    assert len(read(README).splitlines()) <= 300


def test_every_docs_page_the_readme_links_exists():
    linked = set(re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#[^)]*)?\)", read(README)))
    assert "docs/commands.md" in linked
    missing = sorted(path for path in linked if not os.path.isfile(os.path.join(REPO, path)))
    assert missing == []


def test_the_readmes_package_map_names_every_subpackage():
    readme, package = read(README), os.path.join(REPO, "powerstripflocker")
    subpackages = sorted(os.path.relpath(folder, package) for folder, _, files in os.walk(package)
                         if "__init__.py" in files and folder != package)
    assert [name for name in subpackages
            if f" {os.path.basename(name)}/ " not in readme] == []
