"""Write the command-line reference from the argument parsers (never by hand)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from nninv.cli import build_parser

    return build_parser()


def write_cli_page(path: Path) -> None:
    parser = _parser()
    parser.prog = "nninv"
    lines = [
        "# Command-line reference",
        "",
        "Generated from the argument parsers of `nninv` (the text of each",
        "command's `--help`). Errors are one line on stderr with exit status 2;",
        "`nninv --debug COMMAND ...` shows the traceback.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        command.prog = f"nninv {name}"
        lines += [f"## `nninv {name}`", "", "```text", command.format_help().rstrip(), "```", ""]
    text = "\n".join(lines)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
