"""Exit statuses of the command, and the status each failure ends with.

The status is decided by the exception's type alone (and, for a proxy that died,
by the step it died in), never by the text of a message: :func:`exit_code_for`.
"""

from __future__ import annotations

from typing import Final

from .. import LayoutError
from ..errors import (
    AuthenticationError,
    ConfigurationError,
    ImageNotFoundError,
    ImageProxyError,
    InvalidReferenceError,
    PolicyNotEnforcedError,
    PolicyRejectedError,
    ProxyExitedError,
    ProxyFailedError,
    ProxyTooOldError,
    SpawnError,
    UnpackError,
    UnsupportedOptionError,
    VerificationError,
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
    "EXIT_STATUSES",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "EXIT_VERIFICATION",
    "CliError",
    "Terminated",
    "exit_code_for",
]

#: Success.
EXIT_OK: Final = 0
#: Any other failure (also: the output pipe was closed early, e.g. by ``| head``).
EXIT_ERROR: Final = 1
#: The command line is wrong (argparse's own status), a malformed reference included.
EXIT_USAGE: Final = 2
#: The image, or a blob asked for, does not exist.
EXIT_NOT_FOUND: Final = 3
#: The registry refused the credentials, or asked for some.
EXIT_AUTH: Final = 4
#: Data did not match its digest or size.
EXIT_VERIFICATION: Final = 5
#: The destination (a layout, an output file, standard output) cannot be written.
EXIT_OUTPUT: Final = 6
#: skopeo is missing, failed to start, is too old, or lacks an option asked for.
EXIT_SPAWN: Final = 7
#: The signature policy refused the image, or this skopeo cannot enforce the policy.
EXIT_POLICY: Final = 8
#: Interrupted (Ctrl-C, SIGINT).
EXIT_INTERRUPTED: Final = 130
#: Terminated (SIGTERM).
EXIT_TERMINATED: Final = 143

#: Each status and what it means, as the help lists them.
EXIT_STATUSES: Final = (
    (EXIT_OK, "success"),
    (EXIT_ERROR, "other error (also: the output pipe was closed early)"),
    (EXIT_USAGE, "usage error, a malformed image reference included"),
    (EXIT_NOT_FOUND, "image or blob not found"),
    (EXIT_AUTH, "authentication failed or required"),
    (
        EXIT_VERIFICATION,
        "verification failed (digest or size mismatch), or a layer refused by unpack",
    ),
    (EXIT_OUTPUT, "the destination cannot be written"),
    (EXIT_SPAWN, "skopeo is missing, failed to start, is too old, or lacks an option asked for"),
    (EXIT_POLICY, "the signature policy refused the image, or this skopeo cannot enforce it"),
)


class CliError(Exception):
    """A failure the command reports as ``message`` with exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Terminated(KeyboardInterrupt):
    """A termination signal (SIGTERM, SIGHUP) that arrived during a command.

    It unwinds the command as Ctrl-C does (temporary files removed, skopeo
    stopped), and the command then exits with status 128 + ``signum``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: Library errors and their statuses, the more specific types first.
_STATUS_BY_TYPE: Final[tuple[tuple[type[BaseException], int], ...]] = (
    (PolicyRejectedError, EXIT_POLICY),
    (PolicyNotEnforcedError, EXIT_POLICY),
    (UnsupportedOptionError, EXIT_SPAWN),
    (SpawnError, EXIT_SPAWN),
    (ProxyTooOldError, EXIT_SPAWN),
    (ConfigurationError, EXIT_USAGE),
    (InvalidReferenceError, EXIT_USAGE),
    (LayoutError, EXIT_OUTPUT),
    (VerificationError, EXIT_VERIFICATION),
    (UnpackError, EXIT_VERIFICATION),
    (ImageNotFoundError, EXIT_NOT_FOUND),
    (AuthenticationError, EXIT_AUTH),
    (ImageProxyError, EXIT_ERROR),
    # Outside the library's own errors, the command only writes: its destination.
    (OSError, EXIT_OUTPUT),
)


def exit_code_for(exc: BaseException) -> int:
    """The exit status the command ends with after ``exc``, from its type alone."""
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, Terminated):
        return 128 + exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if (
        isinstance(exc, ProxyExitedError)
        and not isinstance(exc, ProxyFailedError)
        and exc.method == "Initialize"
    ):
        return EXIT_SPAWN  # skopeo exited before it spoke the protocol
    for kind, code in _STATUS_BY_TYPE:
        if isinstance(exc, kind):
            return code
    return EXIT_ERROR
