"""The commands, one module each; :data:`COMMANDS` lists them in the order help shows.

A command reads one image, named by the argument ``REF`` every command takes, and
may add arguments and options of its own (:attr:`Command.add_arguments`).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

from ...config import ImageProxyConfig

__all__ = ["COMMANDS", "Command"]


@dataclasses.dataclass(frozen=True)
class Command:
    """A command: its name, its help, its own arguments, and what it does."""

    #: The word on the command line.
    name: str
    #: One line for the list of commands.
    summary: str
    #: What ``COMMAND --help`` says about it.
    description: str
    #: Runs the command with the parsed arguments; returns the exit status.
    run: Callable[[argparse.Namespace, ImageProxyConfig], int]
    #: What the usage line shows after ``REF``.
    arguments: str = ""
    #: Adds the command's own arguments and options to its parser.
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None


def _commands() -> tuple[Command, ...]:
    from . import blob, config, inspect, layers, manifest, pull, unpack

    return (
        inspect.COMMAND,
        manifest.COMMAND,
        config.COMMAND,
        layers.COMMAND,
        blob.COMMAND,
        pull.COMMAND,
        unpack.COMMAND,
    )


#: Every command, in the order help lists them.
COMMANDS: tuple[Command, ...] = _commands()
