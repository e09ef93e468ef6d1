"""Command-line options whose value may be left out (``--diverse`` alone means ``--diverse 0.5``), which
Typer does not offer: a command class that puts the default value in before the arguments are parsed."""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand


def with_optional_values(args: list[str], defaults: dict[str, str]) -> list[str]:
    """``args`` with ``defaults[option]`` after each of those options not followed by a number."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg in defaults:
            following = args[i + 1] if i + 1 < len(args) else ""
            try:
                float(following)
            except ValueError:
                out.append(defaults[arg])
    return out


def optional_values(defaults: dict[str, str]) -> type[TyperCommand]:
    """A Typer command class (``@app.command(cls=...)``) where each option of ``defaults`` may come alone."""

    class OptionalValues(TyperCommand):
        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            return super().parse_args(ctx, with_optional_values(args, defaults))

    return OptionalValues
