"""The command line's grammar: the parser, its help, and the configuration it asks for.

Shared options are defined once (:func:`~.options.add_shared_options`) and listed
once, by ``containers-image-proxy --help`` and ``containers-image-proxy help
options``; each command's ``--help`` shows only its own arguments. Whether options
fit together is checked by :class:`ImageProxyConfig` itself; only what the
configuration cannot know (``--platform`` beside ``--override-*``, the password's
source) is checked here.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import IO, Any, Final

from .._version import VersionAction
from ..config import ImageProxyConfig
from ..errors import ConfigurationError
from .commands import COMMANDS, Command
from .messages import option_words
from .options import (
    PASSWORD_ENV,
    HelpFormatter,
    PlatformSpec,
    add_shared_options,
    expand_bool_flags,
)
from .output import PROG
from .status import EXIT_STATUSES, EXIT_USAGE, CliError

__all__ = [
    "build_parser",
    "help_text",
    "make_config",
    "parse_args",
    "read_password",
]

_STATUS_LINES: Final = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_STATUSES)

#: What ``help options`` adds below the options.
CREDENTIALS: Final = f"""\
credentials:
  --username USER takes its password from --password-stdin (one line), else from
  ${PASSWORD_ENV}, else from a prompt when standard input is a terminal.
  Passwords are never accepted as command-line arguments.

boolean options:
  --tls-verify alone means true; --tls-verify=false turns it off (as in skopeo).
"""

EPILOG: Final = f"""\
references:
  docker://quay.io/fedora/fedora:latest, oci:DIR[:TAG], oci-archive:FILE[:TAG],
  docker-archive:FILE[:NAME:TAG], dir:DIR, containers-storage:NAME, ...

{CREDENTIALS}
exit status:
{_STATUS_LINES}
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM)

failures of the network:
  A blob whose source sends nothing for --probe-interval seconds is checked with the
  proxy, so a dead connection is reported in seconds; a source that stays silent
  fails after --stall-timeout seconds. pull and unpack try a blob that failed for a
  reason that may pass (a cut connection, an HTTP 5xx) again, --retry-times times.

{PROG} help COMMAND (or COMMAND --help) shows a command's own options.
"""

_COMMAND_EPILOG: Final = f"""\
Options every command takes (--authfile, --tls-verify, --platform, --debug, -q,
...) go before or after the command: `{PROG} help options` lists them.
"""


def _parser(**kwargs: Any) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(formatter_class=HelpFormatter, allow_abbrev=False, **kwargs)


def _add_command(
    commands: Any, command: Command, shared: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser(
        command.name,
        prog=f"{PROG} {command.name}",
        usage=f"{PROG} [OPTIONS] {command.name} [OPTIONS] REF{command.arguments}",
        parents=[shared],
        help=command.summary,
        description=textwrap.fill(command.description, 80),
        epilog=_COMMAND_EPILOG,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    sub.add_argument("reference", metavar="REF", help="image reference, e.g. oci:DIR:TAG")
    command.add_arguments(sub)
    return sub


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``containers-image-proxy`` command."""
    parser = _parser(
        prog=PROG,
        usage="%(prog)s [OPTIONS] COMMAND [OPTIONS] REF [ARGS]",
        description="Inspect and fetch container images through skopeo's image proxy.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action=VersionAction)
    add_shared_options(parser, after_command=False)
    shared = _parser(add_help=False)
    add_shared_options(shared, after_command=True)
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, title="commands"
    )
    for command in COMMANDS:
        _add_command(commands, command, shared)
    topics = [command.name for command in COMMANDS]
    help_ = commands.add_parser(
        "help",
        prog=f"{PROG} help",
        usage=f"{PROG} help [options | COMMAND]",
        help="show this help, the options every command takes, or a command's help",
        description="Show the program's help, the options every command takes"
        " (help options), or a command's help (help COMMAND).",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    help_.add_argument("topic", nargs="?", choices=["options", *topics], metavar="TOPIC")
    return parser


def help_text(topic: str | None) -> str:
    """What ``help [TOPIC]`` prints: the program's help, ``options``, or a command's."""
    parser = build_parser()
    if topic is None:
        return parser.format_help()
    if topic == "options":
        options = _parser(
            prog=PROG,
            usage=f"{PROG} [OPTIONS] COMMAND [OPTIONS] REF [ARGS]",
            description="Options every command takes, before or after COMMAND.",
            epilog=CREDENTIALS,
            add_help=False,
        )
        add_shared_options(options, after_command=False)
        return options.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return str(action.choices[topic].format_help())
    raise ValueError(f"no help on {topic!r}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check a command line; a usage error exits (status 2) as argparse does."""
    parser = build_parser()
    args = parser.parse_args(expand_bool_flags(parser, sys.argv[1:] if argv is None else argv))
    if args.command != "help":
        _resolve(parser, args)
    return args


def _resolve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Merge options given before and after the command, and check how they combine."""
    after = getattr(args, "decryption_keys_after", None)
    if after:
        args.decryption_keys = [*(args.decryption_keys or []), *after]
    platform: PlatformSpec | None = args.platform
    if platform is not None:
        given = [
            f"--override-{name}"
            for name in ("os", "arch", "variant")
            if getattr(args, f"override_{name}") is not None
        ]
        if given:
            parser.error(f"--platform conflicts with {', '.join(given)}")
        args.override_os = platform.os
        args.override_arch = platform.architecture
        args.override_variant = platform.variant
    if args.password_stdin and args.username is None:
        parser.error("--password-stdin needs --username")
    try:
        make_config(args, password="" if args.username is not None else None)
    except ConfigurationError as exc:
        parser.error(option_words(exc))


def make_config(args: argparse.Namespace, password: str | None) -> ImageProxyConfig:
    """The proxy configuration the parsed command line ``args`` asks for.

    Raises:
        ConfigurationError: the options do not fit together (the configuration says why).
    """
    tls_verify: bool | None = args.tls_verify
    network: dict[str, Any] = {}
    for name in ("stall_timeout", "probe_interval"):
        value = getattr(args, name, None)
        if value is not None:
            network[name] = value or None  # 0 turns it off
    for name in ("retry_times", "retry_delay"):
        if getattr(args, name, None) is not None:
            network[name] = getattr(args, name)
    return ImageProxyConfig(
        **network,
        authfile=args.authfile,
        auth_anonymous=args.no_creds,
        username=args.username,
        password=password,
        certificate_directory=args.cert_dir,
        decryption_keys=args.decryption_keys,
        insecure_skip_tls_verification=True if tls_verify is False else None,
        debug=args.debug,
        skopeo_cmd=[args.skopeo] if args.skopeo is not None else None,
        policy=args.policy,
        insecure_policy=args.insecure_policy,
        require_signed=args.require_signed,
        registries_d=args.registries_d,
        override_os=args.override_os,
        override_arch=args.override_arch,
        override_variant=args.override_variant,
    )


def read_password(
    args: argparse.Namespace, stdin: IO[str], environ: Mapping[str, str]
) -> str | None:
    """The password of ``--username``: from standard input, the environment or a prompt.

    Raises:
        CliError: there is no way to get it (exit status 2).
    """
    if args.username is None:
        return None
    if args.password_stdin:
        line = stdin.readline()
        if not line:
            raise CliError("--password-stdin: standard input is empty", EXIT_USAGE)
        return line.removesuffix("\n").removesuffix("\r")
    if PASSWORD_ENV in environ:
        return environ[PASSWORD_ENV]
    if stdin.isatty():
        return getpass.getpass(f"Password for {args.username}: ")
    raise CliError(
        f"--username needs a password: use --password-stdin or set ${PASSWORD_ENV}", EXIT_USAGE
    )
