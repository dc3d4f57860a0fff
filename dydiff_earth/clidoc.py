"""The command-line reference (``docs/cli.md``), generated from the typer app so that it cannot drift.

Regenerate after changing a command or an option::

    python -m dydiff_earth.clidoc docs/cli.md

``tests/test_clidoc.py`` fails while the committed file differs from what this writes. Everything comes
from the app itself: command names and docstrings, each parameter's flags, help, default and Python type.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from dydiff_earth import cli

#: The command that rewrites the reference; quoted by the sync test when the file is out of date.
REGENERATE = "python -m dydiff_earth.clidoc docs/cli.md"

_TYPE_NAMES = {str: "text", int: "integer", float: "number", Path: "path", bool: "flag"}

_PREAMBLE = """\
Every command answers `--help`. Bad input (a missing path, an unknown variable, gaps in the context, a
checkpoint that does not fit the data, a bad option value) ends with one line on stderr and exit status 2;
`run` exits 3 when its input is stale and 1 on an unexpected failure. Options that take several values
take them comma-separated (`--thresholds 1,4`); options marked *repeatable* are given once per value.
"""


def _callbacks() -> dict[str, Any]:
    """Command name -> the undecorated function that defines it (its signature holds the types)."""
    out = {}
    for info in cli.app.registered_commands:
        func = inspect.unwrap(info.callback)  # type: ignore[arg-type]
        out[info.name or func.__name__.replace("_", "-")] = func
    return out


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """The parameter's value type without ``Annotated``/``None``, and whether it is a list."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(param: Any, kind: Any) -> str:
    if param.required:
        return "required"
    if kind is bool:
        return "on" if param.default else "off"
    if param.default is None or param.default == []:
        return ""
    return f"`{param.default}`"


def _flags(param: Any) -> str:
    if param.param_type_name == "argument":
        return f"`{param.name.upper()}`"
    spellings = (param.opts, param.secondary_opts)
    return " / ".join(", ".join(f"`{o}`" for o in opts) for opts in spellings if opts)


def _usage(name: str, params: Sequence[Any]) -> str:
    pieces = ["dydiff-earth", name]
    required = [p for p in params if p.param_type_name == "option" and p.required]
    pieces += [f"{p.opts[0]} {p.opts[0].lstrip('-').upper().replace('-', '_')}" for p in required]
    if len(required) < sum(p.param_type_name == "option" for p in params):
        pieces.append("[OPTIONS]")
    for p in params:
        if p.param_type_name == "argument":
            pieces.append(p.name.upper() + ("..." if p.nargs == -1 else ""))
    return " ".join(pieces)


def _command(name: str, command: Any, func: Any) -> list[str]:
    hints = typing.get_type_hints(func, include_extras=True)
    params = [p for p in command.params if not p.hidden]
    lines = [f"## `{name}`", "", "```", _usage(name, params), "```", ""]
    lines += [inspect.cleandoc(command.help or ""), ""]
    lines += ["| argument / option | type | default | description |", "|---|---|---|---|"]
    for p in params:
        kind, many = _base_type(hints[p.name])
        type_name = _TYPE_NAMES.get(kind, getattr(kind, "__name__", str(kind)))
        if many:
            type_name += ", one or more" if p.param_type_name == "argument" else ", repeatable"
        lines.append(f"| {_flags(p)} | {type_name} | {_default(p, kind)} | {_cell(p.help or '')} |")
    return [*lines, ""]


def render() -> str:
    """The Markdown reference of every command and option of ``dydiff-earth``."""
    group = typer.main.get_command(cli.app)
    funcs = _callbacks()
    names = list(group.commands)  # type: ignore[attr-defined]
    lines = [
        "# Command-line reference",
        "",
        f"<!-- Generated from dydiff_earth/cli.py by `{REGENERATE}`; do not edit by hand. -->",
        "",
        f"`dydiff-earth COMMAND [OPTIONS] [ARGUMENTS]`: {group.help}",
        "",
        _PREAMBLE,
        "| command | what it does |",
        "|---|---|",
    ]
    for name in names:
        summary = inspect.cleandoc(group.commands[name].help or "").split("\n\n")[0]  # type: ignore[attr-defined]
        lines.append(f"| [`{name}`](#{name}) | {_cell(summary)} |")
    lines.append("")
    for name in names:
        lines += _command(name, group.commands[name], funcs[name])  # type: ignore[attr-defined]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the reference to the path given (``docs/cli.md``), or print it."""
    args = list(sys.argv[1:] if argv is None else argv)
    text = render()
    if args:
        Path(args[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
