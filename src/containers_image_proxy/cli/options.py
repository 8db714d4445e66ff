"""The options every command shares, written once, and how option values are read.

Options follow skopeo's spelling. Boolean flags are written as skopeo's are: the
bare flag is true, ``--flag=false`` and ``--flag=true`` say it outright, and a bare
flag never takes the next argument (the image reference) as its value
(:func:`expand_bool_flags`). Passwords are refused on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Iterator, Sequence
from typing import Any, Final, NoReturn

from ..errors import InvalidDigestError
from ..oci import Digest, parse_digest

__all__ = [
    "PASSWORD_ENV",
    "BoolFlag",
    "HelpFormatter",
    "PlatformSpec",
    "add_shared_options",
    "digest_argument",
    "expand_bool_flags",
    "parse_bool",
    "parse_duration",
    "parse_platform",
    "positive_int",
]

#: Environment variable that may hold the password for ``--username``.
PASSWORD_ENV: Final = "CONTAINERS_IMAGE_PROXY_PASSWORD"

#: Options that would put a secret on the command line (skopeo's among them).
SECRET_OPTIONS: Final = (
    "--password",
    "--passwd",
    "--creds",
    "--src-creds",
    "--src-password",
    "--registry-token",
    "--src-registry-token",
)

#: The one boolean option that also takes ``true`` or ``false`` as the next argument,
#: as earlier versions of this command did (skopeo only takes ``--tls-verify=false``).
_SPACED_BOOL: Final = "--tls-verify"
_TRUE: Final = frozenset({"true", "1", "yes", "on", "t"})
_FALSE: Final = frozenset({"false", "0", "no", "off", "f"})


@dataclasses.dataclass(frozen=True)
class PlatformSpec:
    """An ``os/arch[/variant]`` platform given with ``--platform``."""

    os: str
    architecture: str
    variant: str | None = None


def parse_platform(text: str) -> PlatformSpec:
    """Parse ``os/arch[/variant]``; raises :class:`argparse.ArgumentTypeError`."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise argparse.ArgumentTypeError(f"expected OS/ARCH[/VARIANT], got {text!r}")
    return PlatformSpec(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def parse_bool(text: str) -> bool:
    """Parse ``true``/``false`` (also ``1``/``0``, ``t``/``f``, ``yes``/``no``, ``on``/``off``)."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    return _whole_number(text, 1)


def _count(text: str) -> int:
    return _whole_number(text, 0)


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|s|m|h)?")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from ``2``, ``2.5``, ``500ms``, ``2s``, ``5m`` or ``1h`` (Go's units)."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration such as 2s or 500ms, got {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def digest_argument(text: str) -> Digest:
    """A blob digest; 64 bare hex digits mean sha256."""
    if _HEX_DIGEST.fullmatch(text):
        text = f"sha256:{text}"
    try:
        return parse_digest(text)
    except InvalidDigestError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class BoolFlag(argparse.Action):
    """A boolean flag as skopeo spells it: ``--flag``, ``--flag=true``, ``--flag=false``.

    The command line passes through :func:`expand_bool_flags` first, which writes a
    bare flag as ``--flag=true``, so the flag never takes the next argument.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest, nargs="?", const=True, type=parse_bool, metavar="BOOL", **kwargs
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        """Store the flag's value (true when bare)."""
        setattr(namespace, self.dest, values)


def _bool_flags(parser: argparse.ArgumentParser) -> Iterator[str]:
    """The option strings of every :class:`BoolFlag` of ``parser`` and its commands."""
    for action in parser._actions:
        if isinstance(action, BoolFlag):
            yield from action.option_strings
        elif isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _bool_flags(sub)


def expand_bool_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``argv`` with each bare boolean flag written ``--flag=true``.

    A bare ``--tls-verify`` followed by ``true`` or ``false`` takes that word, as
    before; every other argument after a bare flag stays an argument. Nothing after
    ``--`` changes.
    """
    flags = frozenset(_bool_flags(parser))
    expanded: list[str] = []
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            expanded += [arg, *rest]
            break
        if arg not in flags:
            expanded.append(arg)
        elif arg == _SPACED_BOOL and rest and rest[0].lower() in _TRUE | _FALSE:
            expanded.append(f"{arg}={rest.pop(0)}")
        else:
            expanded.append(f"{arg}=true")
    return expanded


class _RejectSecret(argparse.Action):
    """A hidden option that refuses a password given on the command line."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> NoReturn:
        parser.error(
            f"{option_string} is not accepted: a secret on the command line is visible to"
            f" other users; use --username with --password-stdin, ${PASSWORD_ENV} or the prompt"
        )


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The help layout: descriptions as written, boolean flags as ``--flag[=BOOL]``."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, BoolFlag):
            return ", ".join(
                f"{name}[=BOOL]" if name.startswith("--") else name
                for name in action.option_strings
            )
        return super()._format_action_invocation(action)


def add_shared_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """Add the options every command shares, shown in help only before the command.

    Before the command they are listed by ``--help`` and ``help options``; after it,
    they are accepted but not listed again, and have no defaults (``SUPPRESS``) so
    that they only override what was given before; repeated keys are collected
    separately.
    """
    _Options(parser, after_command).add_all()


class _Options:
    """Adds the shared options to one parser: shown with defaults, or hidden without."""

    def __init__(self, parser: argparse.ArgumentParser, after_command: bool) -> None:
        self.parser = parser
        self.after = after_command
        self.groups: dict[str, argparse._ArgumentGroup] = {}

    def add(self, group: str, *names: str, help: str, **kwargs: Any) -> None:
        """Add one option to ``group`` (a title), hidden after the command."""
        flag = kwargs.get("action") in (BoolFlag, "store_true")
        if self.after:
            kwargs["default"] = argparse.SUPPRESS
            target: Any = self.parser
        else:
            kwargs.setdefault("default", False if flag else None)
            if group not in self.groups:
                self.groups[group] = self.parser.add_argument_group(group)
            target = self.groups[group]
        target.add_argument(*names, help=argparse.SUPPRESS if self.after else help, **kwargs)

    def add_all(self) -> None:
        """Every shared option, in the order help lists them."""
        self._image_access()
        self._signatures()
        self._network()
        self._program()
        for name in SECRET_OPTIONS:
            self.parser.add_argument(
                name,
                nargs="?",
                action=_RejectSecret,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )

    def _image_access(self) -> None:
        access = "image access (skopeo's spelling; before or after COMMAND)"
        self.add(access, "--authfile", metavar="PATH", help="auth file to use")
        self.add(access, "--no-creds", action=BoolFlag, help="access registries anonymously")
        self.add(access, "--username", metavar="USER", help="registry user (see credentials)")
        self.add(
            access,
            "--password-stdin",
            action=BoolFlag,
            help="read the password of --username from the first line of standard input",
        )
        self.add(access, "--cert-dir", metavar="PATH", help="registry certificates")
        self.add(
            access,
            "--tls-verify",
            action=BoolFlag,
            default=None,  # unset: skopeo's default, true
            help="verify registries' TLS certificates (default: true)",
        )
        self.add(
            access,
            "--decryption-key",
            metavar="KEY",
            action="append",
            dest="decryption_keys_after" if self.after else "decryption_keys",
            help="key to decrypt an encrypted image (repeatable)",
        )
        self.add(
            access,
            "--platform",
            metavar="OS/ARCH[/VARIANT]",
            type=parse_platform,
            help="platform to choose from a multi-platform image",
        )
        self.add(access, "--override-os", metavar="OS", help="see --platform")
        self.add(access, "--override-arch", metavar="ARCH", help="see --platform")
        self.add(access, "--override-variant", metavar="VARIANT", help="see --platform")

    def _signatures(self) -> None:
        signatures = "signatures"
        self.add(signatures, "--policy", metavar="PATH", help="signature policy file")
        self.add(
            signatures,
            "--insecure-policy",
            action=BoolFlag,
            help="run without any signature policy check",
        )
        self.add(
            signatures,
            "--require-signed",
            action=BoolFlag,
            help="refuse images without a signature the policy verifies (newer skopeo only)",
        )
        self.add(
            signatures,
            "--registries.d",
            metavar="DIR",
            dest="registries_d",
            help="registries.d directory (where signatures are looked up)",
        )

    def _network(self) -> None:
        network = "network failures"
        self.add(
            network,
            "--stall-timeout",
            metavar="DURATION",
            type=parse_duration,
            help="give up on a source that sends nothing for this long (default: 300s; 0: never)",
        )
        self.add(
            network,
            "--probe-interval",
            metavar="DURATION",
            type=parse_duration,
            help="after this long without data, ask skopeo whether the source failed"
            " (default: 3s; 0: never)",
        )
        self.add(
            network,
            "--retry-times",
            metavar="N",
            type=_count,
            help="times pull and unpack retry a blob that failed for a reason that may pass"
            " (default: 3)",
        )
        self.add(
            network,
            "--retry-delay",
            metavar="DURATION",
            type=parse_duration,
            help="wait between retries (default: 1s, doubling up to 30s)",
        )

    def _program(self) -> None:
        program = "program"
        self.add(program, "--skopeo", metavar="PATH", help="the skopeo binary (default: skopeo)")
        self.add(
            program,
            "--debug",
            action=BoolFlag,
            help="debug logging (skopeo's too), raw errors and tracebacks on standard error",
        )
        target: Any = self.parser if self.after else self.groups[program]
        display = target.add_mutually_exclusive_group()
        for names, const, text in (
            (("-q", "--quiet"), "quiet", "no progress display and no summary"),
            (
                ("--progress",),
                "progress",
                "show progress even when standard error is not a terminal",
            ),
        ):
            display.add_argument(
                *names,
                dest="display",
                action="store_const",
                const=const,
                default=argparse.SUPPRESS if self.after else None,
                help=argparse.SUPPRESS if self.after else text,
            )
