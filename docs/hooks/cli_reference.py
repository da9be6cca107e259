"""mkdocs hook: the CLI reference page is generated from flowvae's own argument parser, so it cannot drift.

``docs/cli.md`` holds the marker ``<!-- cli-reference -->``; at build time this hook replaces it with the
top-level help and, per subcommand, its one-line summary and its full ``--help`` (usage and every option).
The parser comes from ``flowvae.cli.build_parser()`` (the command registry) or, in older trees,
``flowvae.cli._parser()``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- cli-reference -->"
PAGE = "cli.md"


def _build_parser() -> argparse.ArgumentParser:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from flowvae import cli

    build = getattr(cli, "build_parser", None) or getattr(cli, "_parser")
    return build()


def _subcommands(parser: argparse.ArgumentParser):
    """(name, summary, subparser) for every subcommand, in the parser's order; aliases listed once."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {a.dest: a.help or "" for a in action._choices_actions}
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield name, summaries.get(name, ""), sub
            return
    raise PluginError("cli_reference: the flowvae parser has no subcommands")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a '|' in a help text would end the table cell


def render() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width: fix it so the page is stable
    parser = _build_parser()
    commands = list(_subcommands(parser))
    out = ["| command | what it does |", "|---|---|"]
    out += [f"| [`flowvae {name}`](#{name}) | {_cell(summary)} |" for name, summary, _ in commands]
    out += ["", "```text", parser.format_help().rstrip(), "```", ""]
    for name, summary, sub in commands:
        out += [f"## {name}", "", summary, "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"cli_reference: {PAGE} has lost its marker {MARKER}")
    return markdown.replace(MARKER, render())
