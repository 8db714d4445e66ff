"""The ``containers-image-proxy`` command: inspect and fetch images from the shell.

``containers-image-proxy inspect REF`` shows what an image is made of,
``manifest``, ``config``, ``layers`` and ``blob`` print its parts, and ``pull``
stores it in an OCI image layout. Any containers/image reference works
(``docker://``, ``oci:``, ``oci-archive:``, ``docker-archive:``, ``dir:``, ...).
Options follow skopeo's spelling; they are accepted before or after the command.
``python -m containers_image_proxy`` runs the same :func:`main`.

Failures end with one line on standard error and an exit status that tells what
went wrong (``EXIT_*`` below); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import json
import logging
import os
import re
import signal
import stat
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Final, NoReturn

from rich.filesize import decimal as human_size

from ._inspect import (
    InspectedImage,
    TemplateError,
    check_template,
    go_json,
    inspect_table,
    is_json_format,
    manifest_converted,
    raw_config_note,
    raw_manifest_note,
    render_template,
    skopeo_inspect,
)
from ._layout import LayoutError
from ._sync.proxy import ImageProxy
from ._sync.pull import pull
from ._tags import parse_destination
from ._unpack.image import unpack
from ._unpack.results import LayerResult
from ._version import VersionAction, package_version
from .config import ImageProxyConfig, build_command
from .errors import (
    AuthenticationError,
    CertificateError,
    ConfigurationError,
    ImageNotFoundError,
    ImageProxyError,
    InvalidDigestError,
    InvalidReferenceError,
    PolicyNotEnforcedError,
    PolicyRejectedError,
    ProxyExitedError,
    ProxyFailedError,
    SpawnError,
    UnpackError,
    UnsupportedOptionError,
    VerificationError,
)
from .events import (
    BlobFinished,
    BlobProgress,
    BlobRetrying,
    BlobStarted,
    PullEvent,
    PullResult,
    PullStarted,
    blob_progress,
)
from .oci import (
    Descriptor,
    Digest,
    ImageManifest,
    decode_manifest,
    encode,
    parse_digest,
)

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

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
    "CliError",
    "PlatformSpec",
    "ProgressDisplay",
    "Terminated",
    "build_parser",
    "error_message",
    "exit_code_for",
    "main",
    "make_config",
    "parse_args",
    "parse_bool",
    "parse_duration",
    "parse_platform",
    "pull_result_json",
]

PROG: Final = "containers-image-proxy"

#: Success.
EXIT_OK: Final = 0
#: Any other failure (also: the output pipe was closed early, e.g. by ``| head``).
EXIT_ERROR: Final = 1
#: The command line is wrong (argparse's own status).
EXIT_USAGE: Final = 2
#: The image, or a blob asked for, does not exist.
EXIT_NOT_FOUND: Final = 3
#: The registry refused the credentials, or asked for some.
EXIT_AUTH: Final = 4
#: Data did not match its digest or size.
EXIT_VERIFICATION: Final = 5
#: The destination (a layout, an output file, standard output) cannot be written.
EXIT_OUTPUT: Final = 6
#: skopeo is missing, failed to start, or lacks an option that was asked for.
EXIT_SPAWN: Final = 7
#: The signature policy refused the image, or this skopeo cannot enforce the policy.
EXIT_POLICY: Final = 8
#: Interrupted (Ctrl-C, SIGINT).
EXIT_INTERRUPTED: Final = 130
#: Terminated (SIGTERM).
EXIT_TERMINATED: Final = 143

#: Environment variable that may hold the password for ``--username``.
PASSWORD_ENV: Final = "CONTAINERS_IMAGE_PROXY_PASSWORD"

EPILOG: Final = f"""\
references:
  docker://quay.io/fedora/fedora:latest, oci:DIR[:TAG], oci-archive:FILE[:TAG],
  docker-archive:FILE[:NAME:TAG], dir:DIR, containers-storage:NAME, ...

credentials:
  --username USER takes its password from --password-stdin (one line), else from
  ${PASSWORD_ENV}, else from a prompt when standard input is a terminal.
  Passwords are never accepted as command-line arguments.

exit status:
  {EXIT_OK}  success
  {EXIT_ERROR}  other error (also: the output pipe was closed early)
  {EXIT_USAGE}  usage error
  {EXIT_NOT_FOUND}  image or blob not found
  {EXIT_AUTH}  authentication failed or required
  {EXIT_VERIFICATION}  verification failed (digest or size mismatch), or a layer refused by unpack
  {EXIT_OUTPUT}  the destination cannot be written
  {EXIT_SPAWN}  skopeo is missing, failed to start, or lacks an option asked for
  {EXIT_POLICY}  the signature policy refused the image, or this skopeo cannot enforce it
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); {EXIT_TERMINATED} terminated (SIGTERM)

failures of the network:
  A blob whose source sends nothing for --probe-interval seconds is checked with the
  proxy, so a dead connection is reported in seconds; a source that stays silent
  fails after --stall-timeout seconds. pull and unpack try a blob that failed for a
  reason that may pass (a cut connection, an HTTP 5xx) again, --retry-times times.
"""

_log = logging.getLogger("containers_image_proxy")

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


class CliError(Exception):
    """A failure the command reports as ``message`` with exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


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
    """Parse ``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``)."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|s|m|h)?")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from ``2``, ``2.5``, ``500ms``, ``2s``, ``5m`` or ``1h`` (Go's units)."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration such as 2s or 500ms, got {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _digest_argument(text: str) -> Digest:
    if _HEX_DIGEST.fullmatch(text):
        text = f"sha256:{text}"
    try:
        return parse_digest(text)
    except InvalidDigestError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
            f"{option_string} is not accepted: a password on the command line is visible to"
            f" other users; use --username with --password-stdin, ${PASSWORD_ENV} or the prompt"
        )


def _add_global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """The options shared by all commands, accepted before and after the command.

    After the command, options have no defaults (``SUPPRESS``) so that they only
    override what was given before it; repeated keys are collected separately.
    """
    default: Any = argparse.SUPPRESS if after_command else None
    flag_default: Any = argparse.SUPPRESS if after_command else False
    group = parser.add_argument_group("image access options (skopeo's spelling)")
    group.add_argument("--authfile", metavar="PATH", default=default, help="auth file to use")
    group.add_argument(
        "--no-creds",
        action="store_true",
        default=flag_default,
        help="access registries anonymously",
    )
    group.add_argument(
        "--username", metavar="USER", default=default, help="registry user (see credentials)"
    )
    group.add_argument(
        "--password-stdin",
        action="store_true",
        default=flag_default,
        help="read the password of --username from the first line of standard input",
    )
    group.add_argument("--cert-dir", metavar="PATH", default=default, help="registry certificates")
    group.add_argument(
        "--tls-verify",
        metavar="BOOL",
        nargs="?",
        const=True,
        type=parse_bool,
        default=default,
        help="verify registries' TLS certificates (default: true)",
    )
    group.add_argument(
        "--decryption-key",
        metavar="KEY",
        action="append",
        dest="decryption_keys_after" if after_command else "decryption_keys",
        default=default,
        help="key to decrypt an encrypted image (repeatable)",
    )
    group.add_argument(
        "--platform",
        metavar="OS/ARCH[/VARIANT]",
        type=parse_platform,
        default=default,
        help="platform to choose from a multi-platform image",
    )
    group.add_argument("--override-os", metavar="OS", default=default, help="see --platform")
    group.add_argument("--override-arch", metavar="ARCH", default=default, help="see --platform")
    group.add_argument(
        "--override-variant", metavar="VARIANT", default=default, help="see --platform"
    )
    group.add_argument("--policy", metavar="PATH", default=default, help="signature policy file")
    group.add_argument(
        "--insecure-policy",
        action="store_true",
        default=flag_default,
        help="run without any signature policy check",
    )
    group.add_argument(
        "--require-signed",
        action="store_true",
        default=flag_default,
        help="refuse images without a signature the policy verifies (newer skopeo only)",
    )
    group.add_argument(
        "--registries.d",
        metavar="DIR",
        dest="registries_d",
        default=default,
        help="registries.d directory (where signatures are looked up)",
    )
    group.add_argument(
        "--skopeo", metavar="PATH", default=default, help="the skopeo binary (default: skopeo)"
    )
    network = parser.add_argument_group("network failures")
    network.add_argument(
        "--stall-timeout",
        metavar="DURATION",
        type=parse_duration,
        default=default,
        help="give up on a source that sends nothing for this long (default: 300s; 0: never)",
    )
    network.add_argument(
        "--probe-interval",
        metavar="DURATION",
        type=parse_duration,
        default=default,
        help="after this long without data, ask skopeo whether the source failed"
        " (default: 3s; 0: never)",
    )
    network.add_argument(
        "--retry-times",
        metavar="N",
        type=_count,
        default=default,
        help="times pull and unpack retry a blob that failed for a reason that may pass"
        " (default: 3)",
    )
    network.add_argument(
        "--retry-delay",
        metavar="DURATION",
        type=parse_duration,
        default=default,
        help="wait between retries (default: 1s, doubling up to 30s)",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=flag_default,
        help="debug logging (skopeo's too) and tracebacks on standard error",
    )
    display = group.add_mutually_exclusive_group()
    display.add_argument(
        "-q",
        "--quiet",
        dest="display",
        action="store_const",
        const="quiet",
        default=default,
        help="no progress display and no summary",
    )
    display.add_argument(
        "--progress",
        dest="display",
        action="store_const",
        const="progress",
        default=default,
        help="show progress even when standard error is not a terminal",
    )
    for name in ("--password", "--passwd", "--creds", "--src-creds"):
        group.add_argument(
            name, nargs="?", action=_RejectSecret, default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``containers-image-proxy`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage="%(prog)s [OPTIONS] COMMAND [ARGS]",
        description="Inspect and fetch container images through skopeo's image proxy.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action=VersionAction)
    _add_global_options(parser, after_command=False)
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_global_options(common, after_command=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, summary: str, description: str, arguments: str = ""
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            prog=f"{PROG} {name}",
            usage=f"{PROG} [OPTIONS] {name} [OPTIONS] REF{arguments}",
            parents=[common],
            help=summary,
            description=description,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        sub.add_argument("reference", metavar="REF", help="image reference, e.g. oci:DIR:TAG")
        return sub

    inspect = command(
        "inspect",
        "show an image as skopeo inspect does",
        "Print what `skopeo inspect` prints: one JSON object with the keys Name (for"
        " references that carry a repository name), Digest, RepoTags, Created,"
        " DockerVersion, Labels, Architecture, Os, Layers, LayersData and Env. RepoTags"
        " is always empty (as with skopeo's --no-tags). --raw prints the manifest,"
        " --config the configuration, --raw --config its bytes. For a Docker schema 2"
        " source the proxy returns the OCI conversion, and --raw says so on standard"
        " error. See docs/cli.md for every difference from skopeo.",
    )
    inspect.add_argument(
        "-f",
        "--format",
        metavar="FORMAT",
        help="json (the default), table (a human-readable layout), or a template of"
        " {{.Field}} such as '{{.Digest}}'",
    )
    inspect.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        help="the same as --format json",
    )
    inspect.add_argument("--raw", action="store_true", help="print the manifest as returned")
    inspect.add_argument(
        "--config", action="store_true", help="print the image configuration instead"
    )
    inspect.add_argument(
        "-n",
        "--no-tags",
        action="store_true",
        help="accepted for skopeo's sake: repository tags are never listed",
    )
    command(
        "manifest",
        "print the image's OCI manifest",
        "Print the image's manifest as OCI JSON, exactly as the proxy returns it.",
    )
    command(
        "config",
        "print the image's configuration",
        "Print the image configuration JSON, exactly as the proxy returns it.",
    )
    layers = command(
        "layers",
        "list the image's layers",
        "Print one line per layer: DIGEST SIZE MEDIA_TYPE (SIZE in bytes).",
    )
    layers.add_argument("--json", action="store_true", help="print a JSON list")
    blob = command(
        "blob",
        "write one blob (the config or a layer) of the image",
        "Stream a blob named by the image's manifest (its config or a layer) to FILE"
        " (written atomically) or to standard output. The proxy verifies its digest and size.",
        " DIGEST [-o FILE]",
    )
    blob.add_argument("digest", metavar="DIGEST", type=_digest_argument, help="blob digest")
    blob.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE instead of standard output"
    )
    pull_ = command(
        "pull",
        "store the image in an OCI image layout",
        "Fetch the image into the OCI image layout DEST, usable as oci:DEST:TAG. Blobs"
        " already there are not fetched again. Layers are stored as the source serves"
        " them, labelled with the media type their bytes prove: where that corrects the"
        " proxy's manifest, the layout gets a corrected manifest that names the source's"
        " manifest digest. A short summary goes to standard error.",
        " DEST",
    )
    pull_.add_argument(
        "dest", metavar="DEST", help="OCI layout directory (created if needed), or oci:DIR[:TAG]"
    )
    pull_.add_argument(
        "--tag",
        metavar="TAG",
        help="tag in DEST (default: the reference's tag, else the image's own, else latest)",
    )
    pull_.add_argument(
        "-j", "--jobs", metavar="N", type=_positive_int, default=4, help="blobs fetched at once"
    )
    pull_.add_argument("--json", action="store_true", help="print the result as JSON")
    unpack_ = command(
        "unpack",
        "unpack the image into a root filesystem directory",
        "Stream every layer into DIR (missing or empty), applying whiteouts, verifying each"
        " layer against its diff_id and refusing entries that would escape DIR. Layers"
        " stream straight from the proxy. A line per layer goes to standard error.",
        " DIR",
    )
    unpack_.add_argument("dest", metavar="DIR", help="root filesystem directory to create")
    unpack_.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check a command line; a usage error exits (status 2) as argparse does."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _resolve(parser, args)
    return args


def _version() -> str:
    """This package's version (``--version`` also reports skopeo's and the protocol's)."""
    return package_version()


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
    if args.override_variant is not None and args.override_arch is None:
        parser.error("--override-variant needs --override-arch")
    auth = [
        name
        for name, on in (
            ("--authfile", args.authfile is not None),
            ("--no-creds", args.no_creds),
            ("--username", args.username is not None),
        )
        if on
    ]
    if len(auth) > 1:
        parser.error(f"{auth[0]} conflicts with {auth[1]}")
    if args.password_stdin and args.username is None:
        parser.error("--password-stdin needs --username")
    if args.policy is not None and args.insecure_policy:
        parser.error("--policy conflicts with --insecure-policy")
    if args.require_signed and args.insecure_policy:
        parser.error("--require-signed conflicts with --insecure-policy")
    try:
        build_command(make_config(args, password="x" if args.username is not None else None))
    except ConfigurationError as exc:
        parser.error(str(exc))


def make_config(args: argparse.Namespace, password: str | None) -> ImageProxyConfig:
    """The proxy configuration the parsed command line ``args`` asks for."""
    tls_verify: bool | None = args.tls_verify
    network: dict[str, Any] = {}
    for name in ("stall_timeout", "probe_interval"):
        value = getattr(args, name, None)
        if value is not None:
            network[name] = value or None  # 0 turns it off
    if getattr(args, "retry_times", None) is not None:
        network["retry_times"] = args.retry_times
    if getattr(args, "retry_delay", None) is not None:
        network["retry_delay"] = args.retry_delay
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


def _password(args: argparse.Namespace, stdin: IO[str], environ: Mapping[str, str]) -> str | None:
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


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


class _OutputClosed(Exception):
    """Standard output (or an output pipe) was closed by its reader."""


def _output_error(what: str, exc: OSError) -> CliError:
    if isinstance(exc, BrokenPipeError):
        raise _OutputClosed from exc
    return CliError(f"cannot write {what}: {exc.strerror or exc}", EXIT_OUTPUT)


def _write_stdout(data: bytes | str) -> None:
    try:
        if isinstance(data, str):
            sys.stdout.write(data)
        else:
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
        sys.stdout.flush()
    except OSError as exc:
        _silence_stdout()
        raise _output_error("to standard output", exc) from exc


def _print_json(value: object) -> None:
    _write_stdout(json.dumps(value, indent=2) + "\n")


@contextlib.contextmanager
def _atomic_output(name: str) -> Iterator[BinaryIO]:
    """A file that replaces ``name`` once the block succeeds (temp file, then rename).

    Devices and FIFOs (``/dev/null``) are written directly; symbolic links are
    followed, so the file they point to is replaced.
    """
    target = Path(os.path.realpath(name))
    try:
        existing: os.stat_result | None = target.stat()
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise _output_error(name, exc) from exc
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise CliError(f"cannot write {name}: it is a directory", EXIT_OUTPUT)
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        try:
            direct = open(target, "wb")  # noqa: SIM115
        except OSError as exc:
            raise _output_error(name, exc) from exc
        with direct:
            yield direct
        return
    if existing is not None:
        mode = stat.S_IMODE(existing.st_mode)
    else:
        umask = os.umask(0o022)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        fd, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".part", dir=target.parent
        )
    except OSError as exc:
        raise _output_error(name, exc) from exc
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as exc:
                raise _output_error(name, exc) from exc
        try:
            os.chmod(temporary, mode)
            os.replace(temporary, target)
        except OSError as exc:
            raise _output_error(name, exc) from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


# --------------------------------------------------------------------------
# Progress display
# --------------------------------------------------------------------------


def _short(digest: Digest) -> str:
    return digest.encoded[:12]


def retry_line(event: BlobRetrying) -> str:
    """The line that reports a retry."""
    return (
        f"retrying {_short(event.descriptor.digest)} ({event.attempt}/{event.limit})"
        f" in {event.delay:g}s after: {error_message(event.error)}"
    )


def _pull_events(
    args: argparse.Namespace, display: Callable[[PullEvent], None] | None
) -> Callable[[PullEvent], None] | None:
    """The pull's progress callback: the display, or (without one) lines for retries."""
    if display is not None or args.display == "quiet":
        return display

    def report(event: PullEvent) -> None:
        if isinstance(event, BlobRetrying):
            print(f"{PROG}: {retry_line(event)}", file=sys.stderr, flush=True)

    return report


def _retries_json(retries: Sequence[BlobRetrying]) -> list[dict[str, Any]]:
    return [
        {
            "digest": str(event.descriptor.digest),
            "attempt": event.attempt,
            "delay": event.delay,
            "error": error_message(event.error),
        }
        for event in retries
    ]


def _retried(retries: Sequence[BlobRetrying]) -> str:
    if not retries:
        return ""
    return f", {len(retries)} {'retry' if len(retries) == 1 else 'retries'}"


class ProgressDisplay:
    """Draws pull events with rich: one bar per blob being fetched, and a total.

    Callable with :data:`~containers_image_proxy.PullEvent` values, from any thread.
    The total counts only the bytes that are fetched (skipped blobs are taken off).
    A finished blob's bar is hidden, unless it is the only one. A retry prints a
    line and starts the blob's bar (and its share of the total) again.
    """

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._tasks: dict[Digest, TaskID] = {}
        self._received: dict[Digest, int] = {}
        self._total: TaskID | None = None
        self._total_bytes = 0

    def __call__(self, event: PullEvent) -> None:
        """Show ``event``; safe to call from several threads at once."""
        with self._lock:
            self._handle(event)

    def _advance(self, digest: Digest, count: int) -> None:
        task = self._tasks.get(digest)
        if task is not None:
            self._received[digest] += count
            self._progress.advance(task, count)
        if self._total is not None:
            self._progress.advance(self._total, count)

    def _handle(self, event: PullEvent) -> None:
        progress = self._progress
        if isinstance(event, PullStarted):
            if len(event.blobs) > 1:
                self._total_bytes = event.total_bytes
                self._total = progress.add_task("total", total=self._total_bytes)
        elif isinstance(event, BlobStarted):
            digest = event.descriptor.digest
            if digest not in self._tasks:
                self._tasks[digest] = progress.add_task(_short(digest), total=event.descriptor.size)
                self._received[digest] = 0
        elif isinstance(event, BlobProgress):
            self._advance(event.descriptor.digest, event.advance)
        elif isinstance(event, BlobRetrying):
            digest = event.descriptor.digest
            lost = self._received.get(digest, 0)
            task = self._tasks.get(digest)
            if task is not None:
                self._received[digest] = 0
                progress.reset(
                    task, description=f"{_short(digest)} retry {event.attempt}/{event.limit}"
                )
            if self._total is not None and lost:
                progress.advance(self._total, -lost)
            progress.console.print(retry_line(event), highlight=False, markup=False)
        elif isinstance(event, BlobFinished):
            descriptor = event.descriptor
            if event.skipped:
                if self._total is not None:
                    self._total_bytes = max(0, self._total_bytes - descriptor.size)
                    progress.update(self._total, total=self._total_bytes)
                return
            missing = descriptor.size - self._received.get(descriptor.digest, descriptor.size)
            if missing > 0:
                self._advance(descriptor.digest, missing)
            task = self._tasks.pop(descriptor.digest, None)
            self._received.pop(descriptor.digest, None)
            if task is not None:
                progress.update(task, visible=self._total is None)


@contextlib.contextmanager
def _progress_display(args: argparse.Namespace) -> Iterator[Callable[[PullEvent], None] | None]:
    """A progress callback drawing on standard error, or None when there is no display."""
    display: str | None = args.display
    if display == "quiet" or (display is None and not _isatty(sys.stderr)):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True, force_terminal=True if display == "progress" else None)
    progress = Progress(
        TextColumn("{task.description:>12}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        redirect_stdout=False,
    )
    with progress:
        yield ProgressDisplay(progress)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _summary(args: argparse.Namespace, text: str) -> None:
    if args.display != "quiet":
        print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


def _layers_json(manifest: ImageManifest) -> list[dict[str, Any]]:
    return [
        {"digest": str(layer.digest), "size": layer.size, "media_type": layer.media_type}
        for layer in manifest.layers
    ]


def _note(text: str) -> None:
    print(f"{PROG}: note: {text}", file=sys.stderr, flush=True)


def _inspect_format(args: argparse.Namespace) -> str:
    """Check ``inspect``'s options before anything starts; returns the output format."""
    text: str | None = args.format
    if args.raw and text is not None:
        raise CliError("--raw does not take --format (as in skopeo)", EXIT_USAGE)
    if text is None or is_json_format(text):
        return "json"
    if args.config:
        raise CliError("--config prints JSON: --format takes only json with it", EXIT_USAGE)
    if text.strip() == "table":
        return "table"
    try:
        check_template(text)
    except TemplateError as exc:
        raise CliError(f"--format: {exc}", EXIT_USAGE) from None
    return text


def cmd_inspect(args: argparse.Namespace, config: ImageProxyConfig) -> int:
    """``inspect REF [--format F] [--raw] [--config]``: what ``skopeo inspect`` prints."""
    output = _inspect_format(args)
    with ImageProxy(config) as proxy, proxy.open_image(args.reference) as image:
        digest, raw = proxy.fetch_manifest_raw_oci(image)
        converted = manifest_converted(digest, raw)
        if args.raw and not args.config:
            if converted:
                _note(raw_manifest_note(args.reference, digest, Digest.from_bytes(raw)))
            _write_stdout(raw)
            return EXIT_OK
        full_config = proxy.fetch_config_raw(image)
        original_config = None
        if not converted and (args.raw or not args.config):
            # The configuration blob as stored: GetFullConfig re-serialises it.
            with proxy.get_descriptor(image, decode_manifest(raw).config) as blob:
                original_config = blob.readall()
    if args.config and args.raw:
        if original_config is None:
            printed = Digest.from_bytes(full_config)
            _note(raw_config_note(args.reference, digest, printed))
        _write_stdout(full_config if original_config is None else original_config)
        return EXIT_OK
    if args.config:
        _write_stdout(go_json(json.loads(full_config)))
        return EXIT_OK
    inspected = InspectedImage(args.reference, digest, raw, full_config, original_config)
    report = skopeo_inspect(inspected)
    if output == "json":
        _write_stdout(go_json(report))
    elif output == "table":
        _write_stdout(inspect_table(inspected, report))
    else:
        _write_stdout(render_template(output, report))
    return EXIT_OK


def cmd_manifest(args: argparse.Namespace, config: ImageProxyConfig) -> int:
    """``manifest REF``: the OCI manifest bytes."""
    with ImageProxy(config) as proxy, proxy.open_image(args.reference) as image:
        _, raw = proxy.fetch_manifest_raw_oci(image)
    _write_stdout(raw)
    return EXIT_OK


def cmd_config(args: argparse.Namespace, config: ImageProxyConfig) -> int:
    """``config REF``: the image configuration bytes."""
    with ImageProxy(config) as proxy, proxy.open_image(args.reference) as image:
        raw = proxy.fetch_config_raw(image)
    _write_stdout(raw)
    return EXIT_OK


def cmd_layers(args: argparse.Namespace, config: ImageProxyConfig) -> int:
    """``layers REF [--json]``."""
    with ImageProxy(config) as proxy, proxy.open_image(args.reference) as image:
        _, manifest = proxy.fetch_manifest(image)
    if args.json:
        _print_json(_layers_json(manifest))
    else:
        _write_stdout(
            "".join(
                f"{layer.digest} {layer.size} {layer.media_type}\n" for layer in manifest.layers
            )
        )
    return EXIT_OK


def _find_blob(manifest: ImageManifest, digest: Digest) -> Descriptor | None:
    for descriptor in (manifest.config, *manifest.layers):
        if descriptor.digest == digest:
            return descriptor
    return None


def cmd_blob(args: argparse.Namespace, config: ImageProxyConfig) -> int:
    """``blob REF DIGEST [-o FILE]``."""
    to_stdout = args.output in (None, "-")
    if to_stdout and _isatty(sys.stdout):
        raise CliError("refusing to write a blob to a terminal: use -o FILE", EXIT_USAGE)
    with ImageProxy(config) as proxy, proxy.open_image(args.reference) as image:
        _, manifest = proxy.fetch_manifest(image)
        descriptor = _find_blob(manifest, args.digest)
        if descriptor is None:
            raise CliError(
                f"blob {args.digest} is not in the manifest of {args.reference}", EXIT_NOT_FOUND
            )
        if to_stdout:
            with proxy.get_descriptor(image, descriptor) as blob:
                try:
                    sys.stdout.flush()
                    blob.copy_to(sys.stdout.buffer)
                except ImageProxyError:
                    raise
                except OSError as exc:
                    raise _output_error("to standard output", exc) from exc
            return EXIT_OK
        with (
            _atomic_output(args.output) as out,
            _progress_display(args) as progress,
            proxy.get_descriptor(image, descriptor) as blob,
        ):
            if progress is not None:
                progress(PullStarted(args.reference, (descriptor,)))
                progress(BlobStarted(descriptor))
            try:
                blob.copy_to(out, blob_progress(descriptor, progress))
            except ImageProxyError:
                raise
            except OSError as exc:
                raise _output_error(args.output, exc) from exc
            if progress is not None:
                progress(BlobFinished(descriptor, skipped=False))
    return EXIT_OK


def pull_result_json(result: PullResult) -> dict[str, Any]:
    """What ``pull --json`` prints."""
    return {
        "reference": result.reference,
        "dest": str(result.dest),
        "tag": result.tag,
        "manifest_digest": str(result.manifest_digest),
        "source_digest": str(result.source_digest),
        "fetched": [str(d) for d in result.fetched],
        "skipped": [str(d) for d in result.skipped],
        "bytes_fetched": result.bytes_fetched,
        "tag_origin": result.tag_origin,
        "rewritten": result.rewritten,
        "retries": _retries_json(result.retries),
        "manifest": json.loads(encode(result.manifest)),
    }


def pull_notes(result: PullResult) -> list[str]:
    """What the pull summary adds about the tag and the manifest stored."""
    notes = []
    if result.tag_origin == "image":
        notes.append(f"tagged {result.tag}, the image's own tag")
    elif result.tag_origin == "default":
        notes.append(f"tagged {result.tag}: the source names no tag")
    if result.rewritten:
        notes.append(
            f"layer descriptors corrected to match the bytes; source manifest"
            f" {result.source_digest}"
        )
    elif result.source_digest != result.manifest_digest:
        notes.append(f"converted to OCI from source manifest {result.source_digest}")
    return notes


def cmd_pull(args: argparse.Namespace, config: ImageProxyConfig) -> int:
    """``pull REF DEST [--tag TAG] [--jobs N] [--json]``."""
    try:
        parse_destination(args.dest, args.tag)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    with _progress_display(args) as progress:
        result = pull(
            args.reference,
            args.dest,
            tag=args.tag,
            config=config,
            jobs=args.jobs,
            progress=_pull_events(args, progress),
        )
    where = f"oci:{result.dest}" + (f":{result.tag}" if result.tag else "")
    blobs = "blob" if len(result.fetched) == 1 else "blobs"
    _summary(
        args,
        f"Pulled {result.manifest_digest} into {where}: fetched {len(result.fetched)} {blobs}"
        f" ({human_size(result.bytes_fetched)}), skipped {len(result.skipped)}"
        + "".join(f"\n  {note}" for note in pull_notes(result))
        + _retried(result.retries),
    )
    if args.json:
        _print_json(pull_result_json(result))
    return EXIT_OK


def cmd_unpack(args: argparse.Namespace, config: ImageProxyConfig) -> int:
    """``unpack REF DIR [--json]``."""
    done = 0

    def report(layer: LayerResult) -> None:
        nonlocal done
        done += 1
        digest = layer.descriptor.digest.encoded[:12] if layer.descriptor else "-"
        _summary(
            args,
            f"layer {done}: {digest} {layer.compression}, {layer.entries} entries,"
            f" {human_size(layer.bytes)}",
        )

    def retrying(event: BlobRetrying) -> None:
        _summary(args, f"{PROG}: {retry_line(event)}")

    result = unpack(args.reference, args.dest, config=config, progress=report, on_retry=retrying)
    _summary(
        args,
        f"Unpacked {result.manifest_digest} into {result.dest}: {len(result.layers)} layers,"
        f" {result.entries} entries, {human_size(result.bytes)}"
        + (f", {len(result.warnings)} warnings" if result.warnings else "")
        + _retried(result.retries),
    )
    if args.json:
        _print_json(
            {
                "reference": result.reference,
                "dest": str(result.dest),
                "manifest_digest": str(result.manifest_digest),
                "rootless": result.rootless,
                "entries": result.entries,
                "bytes": result.bytes,
                "warnings": list(result.warnings),
                "retries": _retries_json(result.retries),
                "layers": [
                    {
                        "digest": str(layer.descriptor.digest) if layer.descriptor else None,
                        "diff_id": str(layer.diff_id) if layer.diff_id else None,
                        "compression": layer.compression,
                        "entries": layer.entries,
                        "bytes": layer.bytes,
                    }
                    for layer in result.layers
                ],
            }
        )
    return EXIT_OK


_COMMANDS: Final[dict[str, Callable[[argparse.Namespace, ImageProxyConfig], int]]] = {
    "inspect": cmd_inspect,
    "manifest": cmd_manifest,
    "config": cmd_config,
    "layers": cmd_layers,
    "blob": cmd_blob,
    "pull": cmd_pull,
    "unpack": cmd_unpack,
}


# --------------------------------------------------------------------------
# Errors and main
# --------------------------------------------------------------------------


def exit_code_for(exc: BaseException) -> int:
    """The exit status the command ends with after ``exc``."""
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, Terminated):
        return 128 + exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, PolicyRejectedError | PolicyNotEnforcedError):
        return EXIT_POLICY
    if isinstance(exc, UnsupportedOptionError | SpawnError):
        return EXIT_SPAWN
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE
    if (
        isinstance(exc, ProxyExitedError)
        and not isinstance(exc, ProxyFailedError)
        and exc.method == "Initialize"
    ):
        return EXIT_SPAWN
    if isinstance(exc, LayoutError):
        return EXIT_OUTPUT
    if isinstance(exc, VerificationError | UnpackError):
        return EXIT_VERIFICATION
    if isinstance(exc, ImageNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, AuthenticationError):
        return EXIT_AUTH
    if isinstance(exc, ImageProxyError):
        return EXIT_ERROR
    if isinstance(exc, OSError):
        # Outside the library's own errors, the command only writes: its destination.
        return EXIT_OUTPUT
    return EXIT_ERROR


def error_message(exc: BaseException) -> str:
    """One line describing ``exc`` for standard error."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = exc.message if isinstance(exc, CliError) else str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, ImageProxyError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    text = " ".join(text.split()) or type(exc).__name__
    if isinstance(exc, SpawnError):
        text += " (is skopeo installed? --skopeo PATH names it)"
    elif isinstance(exc, InvalidReferenceError):
        text += " (references look like docker://HOST/NAME:TAG or oci:DIR:TAG)"
    elif isinstance(exc, PolicyRejectedError):
        text += (
            " (the signature policy refused the image: sign it with a key the policy"
            " trusts, or fix the policy given by --policy or policy.json)"
        )
    elif isinstance(exc, CertificateError):
        text += " (--cert-dir DIR names a directory with the registry's CA certificate)"
    return text


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so that exiting flushes nothing into a dead pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class _StderrHandler(logging.Handler):
    """Writes records to whatever ``sys.stderr`` is at the time (rich may redirect it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _logging(debug: bool) -> Iterator[None]:
    handler = _StderrHandler(logging.DEBUG if debug else logging.WARNING)
    handler.setFormatter(
        logging.Formatter(
            "%(name)s: %(message)s" if debug else f"{PROG}: %(levelname)s: %(message)s"
        )
    )
    previous = _log.level
    _log.addHandler(handler)
    if debug:
        _log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        _log.removeHandler(handler)
        _log.setLevel(previous)


def _report(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    code = exit_code_for(exc)
    if isinstance(exc, KeyboardInterrupt):
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
    else:
        print(f"{PROG}: error: {error_message(exc)}", file=sys.stderr, flush=True)
    return code


class Terminated(KeyboardInterrupt):
    """A termination signal (SIGTERM, SIGHUP) that arrived during a command.

    It unwinds the command as Ctrl-C does (temporary files removed, skopeo
    stopped), and the command then exits with status 128 + ``signum``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _termination_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` while a command runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    debug: bool = args.debug
    with _logging(debug), _termination_signals():
        try:
            password = _password(args, sys.stdin, os.environ)
            status = _COMMANDS[args.command](args, make_config(args, password))
            _write_stdout("")
            return status
        except _OutputClosed:
            _silence_stdout()
            return EXIT_ERROR
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_ERROR
        except (Exception, KeyboardInterrupt) as exc:
            return _report(exc, debug)
