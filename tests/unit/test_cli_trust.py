"""The command line's trust options, and exit statuses derived from error types alone."""

from __future__ import annotations

import pytest

from containers_image_proxy import cli
from containers_image_proxy.cli import (
    EXIT_AUTH,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_POLICY,
    EXIT_SPAWN,
    EXIT_USAGE,
    EXIT_VERIFICATION,
    error_message,
    exit_code_for,
)
from containers_image_proxy.errors import (
    AccessDeniedError,
    AuthenticationError,
    BlobVerificationError,
    CertificateError,
    ConfigurationError,
    ImageNotFoundError,
    InvalidReferenceError,
    PolicyNotEnforcedError,
    PolicyRejectedError,
    ProxyExitedError,
    ProxyFailedError,
    ProxyTooOldError,
    RequestError,
    StallTimeoutError,
    UnsupportedOptionError,
)


def config_of(*argv: str) -> cli.ImageProxyConfig:
    return cli.make_config(cli.parse_args(list(argv)), None)


@pytest.mark.parametrize("where", ["before", "after"])
def test_registries_d_and_require_signed(where: str) -> None:
    options = ["--registries.d", "/etc/mine.d", "--require-signed", "--policy", "/p.json"]
    argv = [*options, "inspect", "oci:x"] if where == "before" else ["inspect", *options, "oci:x"]
    config = config_of(*argv)
    assert config.registries_d == "/etc/mine.d"
    assert config.require_signed is True and config.policy == "/p.json"


def test_defaults() -> None:
    config = config_of("inspect", "oci:x")
    assert config.registries_d is None and config.require_signed is False
    assert config.insecure_policy is False and config.policy is None


@pytest.mark.parametrize(
    ("argv", "first"),
    [
        (["--require-signed", "--insecure-policy", "inspect", "oci:x"], "--require-signed"),
        (["--policy", "/p", "inspect", "--insecure-policy", "oci:x"], "--policy"),
    ],
)
def test_conflicts_are_usage_errors(
    argv: list[str], first: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == EXIT_USAGE
    last = capsys.readouterr().err.splitlines()[-1]
    # The configuration finds the conflict; the message names the options as typed.
    assert f"{first} and --insecure-policy" in last
    assert "insecure_policy" not in last


def test_help_documents_the_policy_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert f"{EXIT_POLICY}  the signature policy refused the image" in out
    assert "--registries.d DIR" in out and "--require-signed" in out


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (PolicyRejectedError("OpenImage", "A signature was required"), EXIT_POLICY),
        (PolicyNotEnforcedError("0.2.6", "0.2.3", "oci:x", "the policy p", "reject"), EXIT_POLICY),
        (AuthenticationError("OpenImage", "authentication required"), EXIT_AUTH),
        (ImageNotFoundError("OpenImage", "manifest unknown"), EXIT_NOT_FOUND),
        (UnsupportedOptionError("--decryption-key", "decryption_keys", "unknown flag"),
         EXIT_SPAWN),
        (ConfigurationError("bad"), EXIT_USAGE),
        (InvalidReferenceError("OpenImage", "invalid reference format"), EXIT_USAGE),
        (CertificateError("OpenImage", "x509: unknown authority"), EXIT_ERROR),
        (AccessDeniedError("OpenImage", "permission denied"), EXIT_ERROR),
        (BlobVerificationError("GetBlob", "corrupted blob"), EXIT_VERIFICATION),
        (StallTimeoutError("no data arrived for 2 seconds"), EXIT_ERROR),
        (ProxyTooOldError("0.2.5", "0.2.3", "GetLayerInfo"), EXIT_SPAWN),
        (ProxyExitedError("Initialize", 1, ""), EXIT_SPAWN),
        (ProxyExitedError("GetBlob", -9, ""), EXIT_ERROR),
        (ProxyFailedError(1, ""), EXIT_ERROR),
        # The text alone decides nothing: only the type does.
        (RequestError("OpenImage", "unauthorized: authentication required"), EXIT_ERROR),
        (RequestError("OpenImage", "A signature was required"), EXIT_ERROR),
    ],
)  # fmt: skip
def test_exit_codes_come_from_types(error: Exception, code: int) -> None:
    assert exit_code_for(error) == code


def test_messages_say_what_to_do() -> None:
    rejected = error_message(PolicyRejectedError("OpenImage", "A signature was required"))
    assert rejected.startswith("the signature policy refused the image: A signature was required")
    assert "OpenImage" not in rejected
    assert "sign it with a key the policy trusts" in rejected and "--policy" in rejected
    not_enforced = error_message(
        PolicyNotEnforcedError("0.2.6", "0.2.3", "oci:x", "the policy p", "the requirement reject")
    )
    assert "would not enforce" in not_enforced and "0.2.6" in not_enforced
    assert "--insecure-policy" in not_enforced
    reference = error_message(InvalidReferenceError("OpenImage", "invalid reference format"))
    assert "docker://HOST/NAME:TAG" in reference
    certificate = error_message(CertificateError("OpenImage", "x509: unknown authority"))
    assert "--cert-dir" in certificate
    unsupported = error_message(
        UnsupportedOptionError("--decryption-key", "decryption_keys", "unknown flag", "remove it")
    )
    assert "does not accept --decryption-key" in unsupported
    assert "encrypted images cannot be read" in unsupported
