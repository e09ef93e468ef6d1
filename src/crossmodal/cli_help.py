"""Help pages that read like a manual: each value named as click names it (TEXT, INTEGER, PATH) where Typer
prints a Python type (``<str>``, ``<list[Path]>``), flags with no type at all (Typer prints ``<bool>``),
arguments named in capitals, and prose that wraps to the terminal (Typer keeps a docstring's line breaks)."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any, get_args, get_origin

from typer.core import TyperArgument, TyperGroup

VALUE_NAMES = {str: "TEXT", int: "INTEGER", float: "NUMBER", Path: "PATH"}


class TidyGroup(TyperGroup):
    """A command group whose commands (and groups below) show tidy help, as each is looked up."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            tidy(command, ctx)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        tidy(self, ctx)
        super().format_help(ctx, formatter)


def tidy(command: Any, ctx: Any) -> None:
    """Name the values of ``command``'s parameters (its help option's too) and reflow its help, and so for every
    command below it."""
    if command.help:
        command.help = reflow(command.help)
    for param in [*command.params, command.get_help_option(ctx)]:
        if param is None:
            continue
        if isinstance(param, TyperArgument):
            param.metavar = param.metavar or param.name.upper() + ("..." if param.nargs == -1 else "")
            param.display_type_rich = _no_type  # the capitalised name says what to give (Typer 0.29)
            if hasattr(param, "type"):  # Typer 0.28 prints the type's metavar instead
                param.type = _without_metavar(param.type)
        elif getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.metavar is None:
            param.metavar = value_name(param)
    for sub in getattr(command, "commands", {}).values():
        tidy(sub, ctx)


def reflow(text: str) -> str:
    """Paragraphs as one line each, to wrap at the terminal's width; those with indented lines (examples) stay."""
    return "\n\n".join(p if "\n " in p else p.replace("\n", " ") for p in inspect.cleandoc(text).split("\n\n"))


def value_name(param: Any) -> str:
    """TEXT, INTEGER, NUMBER or PATH for an option's type (a repeatable option: its items' type); with a Typer
    that still builds on click (before 0.28), click's own name for it."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None:
        return param.type.name.upper()
    annotation = descriptor.annotation
    if get_origin(annotation) in (list, tuple):
        annotation = get_args(annotation)[0]
    return VALUE_NAMES.get(annotation, getattr(annotation, "__name__", "VALUE").upper())


def _no_type(ctx: Any = None) -> None:
    return None


def _without_metavar(kind: Any) -> Any:
    """A copy of a parameter type that names no value in help (types such as click's STRING are shared)."""
    kind = copy.copy(kind)
    kind.get_metavar = lambda *args, **kwargs: ""
    return kind
