"""The ``containers-image-proxy`` command: inspect and fetch images from the shell.

``containers-image-proxy inspect REF`` shows what an image is made of,
``manifest``, ``config``, ``layers`` and ``blob`` print its parts, ``pull``
stores it in an OCI image layout and ``unpack`` makes a root filesystem of it.
Any containers/image reference works (``docker://``, ``oci:``, ``oci-archive:``,
``docker-archive:``, ``dir:``, ...). Options follow skopeo's spelling; they are
accepted before or after the command. ``python -m containers_image_proxy`` runs
the same :func:`main`.

The package is laid out as the command is made:

- :mod:`.status`: exit statuses, and the status each error type ends with;
- :mod:`.messages`: the one-line message of each kind of failure;
- :mod:`.options`: the options every command shares, and how values are read;
- :mod:`.parser`: the parser, its help, and the configuration it asks for;
- :mod:`.output`: standard output, JSON and output files;
- :mod:`.progress`: the progress display;
- :mod:`.commands`: one module per command;
- :mod:`.main`: :func:`main`, which runs a command line.
"""

from __future__ import annotations

from ..config import ImageProxyConfig
from .commands.pull import pull_notes, pull_result_json
from .main import main
from .messages import ErrorContext, error_message
from .options import (
    PASSWORD_ENV,
    PlatformSpec,
    parse_bool,
    parse_duration,
    parse_platform,
)
from .output import PROG
from .parser import build_parser, make_config, parse_args
from .progress import ProgressDisplay, UnpackDisplay, retry_line
from .status import (
    EXIT_AUTH,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_POLICY,
    EXIT_SPAWN,
    EXIT_TERMINATED,
    EXIT_USAGE,
    EXIT_VERIFICATION,
    CliError,
    Terminated,
    exit_code_for,
)

__all__ = [
    "EXIT_AUTH",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_POLICY",
    "EXIT_SPAWN",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "EXIT_VERIFICATION",
    "PASSWORD_ENV",
    "PROG",
    "CliError",
    "ErrorContext",
    "ImageProxyConfig",
    "PlatformSpec",
    "ProgressDisplay",
    "Terminated",
    "UnpackDisplay",
    "build_parser",
    "error_message",
    "exit_code_for",
    "main",
    "make_config",
    "parse_args",
    "parse_bool",
    "parse_duration",
    "parse_platform",
    "pull_notes",
    "pull_result_json",
    "retry_line",
]
