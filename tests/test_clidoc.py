"""The committed command-line reference (docs/cli.md) is what the typer app generates, and complete."""

from __future__ import annotations

from pathlib import Path

import typer

from dydiff_earth import cli, clidoc

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_committed_reference_is_up_to_date() -> None:
    assert REFERENCE.read_text() == clidoc.render(), (
        f"docs/cli.md is out of date with dydiff_earth/cli.py; regenerate it from the repository root with: "
        f"{clidoc.REGENERATE}"
    )


def test_every_command_and_option_is_documented() -> None:
    # Checked against the click app directly, not through the generator, so a generator that drops a
    # command, an option or a secondary flag fails here even when the file is in sync with it.
    text = REFERENCE.read_text()
    group = typer.main.get_command(cli.app)
    assert len(group.commands) >= 10  # type: ignore[attr-defined]
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert f"## `{name}`" in text, name
        for param in command.params:
            if param.param_type_name == "argument":
                assert f"`{param.name.upper()}`" in text, (name, param.name)
            for flag in [*param.opts, *param.secondary_opts]:
                if param.param_type_name == "option":
                    assert f"`{flag}`" in text.split(f"## `{name}`")[1].split("\n## ")[0], (name, flag)
            if param.help:
                assert param.help.replace("|", "\\|") in text, (name, param.name)


def test_main_writes_the_reference(tmp_path: Path) -> None:
    out = tmp_path / "cli.md"
    assert clidoc.main([str(out)]) == 0
    text = out.read_text()
    assert text == clidoc.render()
    # Types and defaults come from the signatures: a repeatable option, a flag pair, a required option.
    assert "| `--data` | text, repeatable | required |" in text
    assert "| `--quiet` / `--no-quiet` | flag | off |" in text
    assert "| `--members` | integer | `8` |" in text
