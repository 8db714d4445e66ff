"""Unit tests of build_command: the translation of ImageProxyConfig into skopeo's argv.

Nothing is spawned: build_command is pure, so every test only inspects its result.
"""

from __future__ import annotations

import io
import itertools
import math
import pathlib
from typing import Any

import pytest

from containers_image_proxy.config import (
    AUTH_FD,
    DEBUG_ENV,
    ChildCommand,
    ImageProxyConfig,
    build_command,
)
from containers_image_proxy.errors import ConfigurationError, ImageProxyError

SUBCOMMAND = "experimental-image-proxy"
AUTH_PATH = f"/proc/self/fd/{AUTH_FD}"


def build(environ: dict[str, str] | None = None, **options: Any) -> ChildCommand:
    """build_command with an empty environment unless one is given."""
    return build_command(ImageProxyConfig(**options), {} if environ is None else environ)


def split(argv: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Split argv into (global options, image options) around the subcommand."""
    assert argv.count(SUBCOMMAND) == 1, argv
    index = argv.index(SUBCOMMAND)
    return list(argv[1:index]), list(argv[index + 1 :])


def test_constants() -> None:
    assert DEBUG_ENV == "CONTAINERS_IMAGE_PROXY_DEBUG"
    assert AUTH_FD == 100


def test_default_argv() -> None:
    command = build()
    assert command.argv == ("skopeo", SUBCOMMAND)
    assert isinstance(command.argv, tuple)
    assert dict(command.fds) == {}
    assert command.debug is False
    assert command.credentials is None


def test_no_config_means_defaults() -> None:
    command = build_command(None, {})
    assert command.argv == ("skopeo", SUBCOMMAND)
    assert build_command(environ={}).argv == ("skopeo", SUBCOMMAND)


def test_default_config_is_pure() -> None:
    config = ImageProxyConfig(decryption_keys=["a"])
    first = build_command(config, {})
    second = build_command(config, {})
    assert first == second
    assert config == ImageProxyConfig(decryption_keys=["a"])


# --------------------------------------------------------------------------
# Global options: between "skopeo" and the subcommand
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"policy": "/etc/policy.json"}, ["--policy", "/etc/policy.json"]),
        ({"insecure_policy": True}, ["--insecure-policy"]),
        ({"registries_d": "/etc/registries.d"}, ["--registries.d", "/etc/registries.d"]),
        ({"override_os": "linux"}, ["--override-os", "linux"]),
        ({"override_arch": "arm64"}, ["--override-arch", "arm64"]),
        (
            {"override_arch": "arm", "override_variant": "v7"},
            ["--override-arch", "arm", "--override-variant", "v7"],
        ),
        ({"tmpdir": "/var/tmp/big"}, ["--tmpdir", "/var/tmp/big"]),
        ({"user_agent_prefix": "my-tool/1.0"}, ["--user-agent-prefix", "my-tool/1.0"]),
        ({"require_signed": True}, ["--require-signed"]),
        ({"tls_details": "/etc/tls-details.yaml"}, ["--tls-details", "/etc/tls-details.yaml"]),
        ({"debug": True}, ["--debug"]),
    ],
)
def test_global_option(options: dict[str, Any], expected: list[str]) -> None:
    command = build(**options)
    assert command.argv[0] == "skopeo"
    global_opts, image_opts = split(command.argv)
    assert global_opts == expected
    assert image_opts == []
    assert dict(command.fds) == {}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"authfile": "/run/auth.json"}, ["--authfile", "/run/auth.json"]),
        ({"auth_anonymous": True}, ["--no-creds"]),
        ({"certificate_directory": "/etc/certs"}, ["--cert-dir", "/etc/certs"]),
        ({"decryption_keys": ["k1.pem"]}, ["--decryption-key", "k1.pem"]),
        (
            {"decryption_keys": ["k1.pem", "k2.pem:pass", "k3"]},
            [
                "--decryption-key",
                "k1.pem",
                "--decryption-key",
                "k2.pem:pass",
                "--decryption-key",
                "k3",
            ],
        ),
        ({"decryption_keys": ("tuple.pem",)}, ["--decryption-key", "tuple.pem"]),
        ({"insecure_skip_tls_verification": True}, ["--tls-verify=false"]),
        ({"shared_blob_dir": "/srv/blobs"}, ["--shared-blob-dir", "/srv/blobs"]),
        ({"daemon_host": "unix:///run/docker.sock"}, ["--daemon-host", "unix:///run/docker.sock"]),
    ],
)
def test_image_option(options: dict[str, Any], expected: list[str]) -> None:
    command = build(**options)
    global_opts, image_opts = split(command.argv)
    assert global_opts == []
    assert image_opts == expected
    assert dict(command.fds) == {}
    assert command.credentials is None


@pytest.mark.parametrize("value", [False, None])
def test_tls_verification_default_adds_nothing(value: bool | None) -> None:
    command = build(insecure_skip_tls_verification=value)
    assert command.argv == ("skopeo", SUBCOMMAND)
    assert not any("tls-verify" in arg for arg in command.argv)


@pytest.mark.parametrize(
    "options",
    [
        {"auth_anonymous": False},
        {"insecure_policy": False},
        {"require_signed": False},
        {"debug": False},
        {"decryption_keys": []},
        {"decryption_keys": None},
    ],
)
def test_false_or_empty_options_add_nothing(options: dict[str, Any]) -> None:
    assert build(**options).argv == ("skopeo", SUBCOMMAND)


def test_pathlike_values_are_converted() -> None:
    command = build(
        authfile=pathlib.Path("/run/auth.json"),
        certificate_directory=pathlib.PurePosixPath("/etc/certs"),
        policy=pathlib.Path("/etc/policy.json"),
        registries_d=pathlib.Path("/etc/registries.d"),
        tmpdir=pathlib.Path("/var/tmp"),
        shared_blob_dir=pathlib.Path("/srv/blobs"),
        tls_details=pathlib.Path("/etc/tls.yaml"),
    )
    assert all(isinstance(arg, str) for arg in command.argv)
    global_opts, image_opts = split(command.argv)
    assert global_opts == [
        "--policy",
        "/etc/policy.json",
        "--registries.d",
        "/etc/registries.d",
        "--tmpdir",
        "/var/tmp",
        "--tls-details",
        "/etc/tls.yaml",
    ]
    assert image_opts == [
        "--authfile",
        "/run/auth.json",
        "--cert-dir",
        "/etc/certs",
        "--shared-blob-dir",
        "/srv/blobs",
    ]


def test_all_options_in_place() -> None:
    command = build(
        authfile="/a.json",
        certificate_directory="/certs",
        decryption_keys=["k1", "k2"],
        insecure_skip_tls_verification=True,
        debug=True,
        policy="/p.json",
        registries_d="/r.d",
        override_os="linux",
        override_arch="arm",
        override_variant="v7",
        tmpdir="/tmp/x",
        shared_blob_dir="/blobs",
        daemon_host="tcp://h:2375",
        user_agent_prefix="ua",
        require_signed=True,
        tls_details="/tls.yaml",
    )
    global_opts, image_opts = split(command.argv)
    global_flags = {arg for arg in global_opts if arg.startswith("--")}
    image_flags = {arg for arg in image_opts if arg.startswith("--")}
    assert global_flags == {
        "--debug",
        "--policy",
        "--require-signed",
        "--registries.d",
        "--override-os",
        "--override-arch",
        "--override-variant",
        "--tmpdir",
        "--user-agent-prefix",
        "--tls-details",
    }
    assert image_flags == {
        "--authfile",
        "--cert-dir",
        "--decryption-key",
        "--tls-verify=false",
        "--shared-blob-dir",
        "--daemon-host",
    }
    # Each valued flag is immediately followed by its value.
    argv = list(command.argv)
    for flag, value in [
        ("--policy", "/p.json"),
        ("--registries.d", "/r.d"),
        ("--override-os", "linux"),
        ("--override-arch", "arm"),
        ("--override-variant", "v7"),
        ("--tmpdir", "/tmp/x"),
        ("--user-agent-prefix", "ua"),
        ("--tls-details", "/tls.yaml"),
        ("--authfile", "/a.json"),
        ("--cert-dir", "/certs"),
        ("--shared-blob-dir", "/blobs"),
        ("--daemon-host", "tcp://h:2375"),
    ]:
        assert argv[argv.index(flag) + 1] == value
    assert argv.count("--decryption-key") == 2
    assert command.debug is True


def test_insecure_policy_in_place() -> None:
    global_opts, image_opts = split(build(insecure_policy=True, auth_anonymous=True).argv)
    assert global_opts == ["--insecure-policy"]
    assert image_opts == ["--no-creds"]


def test_option_values_are_separate_arguments() -> None:
    # A value that looks like a flag, or holds spaces, stays one argument.
    command = build(tmpdir="--dir with spaces", override_os="-x")
    global_opts, _ = split(command.argv)
    assert global_opts == ["--override-os", "-x", "--tmpdir", "--dir with spaces"]


# --------------------------------------------------------------------------
# Debug
# --------------------------------------------------------------------------


def test_debug_flag() -> None:
    command = build(debug=True)
    assert command.argv == ("skopeo", "--debug", SUBCOMMAND)
    assert command.debug is True


@pytest.mark.parametrize("value", ["1", "", "0", "no"])
def test_debug_env_any_value(value: str) -> None:
    command = build_command(ImageProxyConfig(), {DEBUG_ENV: value})
    assert command.argv == ("skopeo", "--debug", SUBCOMMAND)
    assert command.debug is True


def test_debug_env_and_flag_give_one_debug() -> None:
    command = build_command(ImageProxyConfig(debug=True), {DEBUG_ENV: "1"})
    assert command.argv.count("--debug") == 1


def test_debug_env_absent() -> None:
    command = build_command(ImageProxyConfig(), {"OTHER": "1", "containers_image_proxy_debug": "1"})
    assert "--debug" not in command.argv
    assert command.debug is False


def test_debug_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert "--debug" in build_command(ImageProxyConfig()).argv
    monkeypatch.delenv(DEBUG_ENV)
    assert "--debug" not in build_command(ImageProxyConfig()).argv


def test_explicit_environ_overrides_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert "--debug" not in build_command(ImageProxyConfig(), {}).argv


def test_debug_is_a_global_option() -> None:
    command = build(debug=True, auth_anonymous=True, policy="/p")
    global_opts, image_opts = split(command.argv)
    assert global_opts[0] == "--debug"
    assert "--debug" not in image_opts


# --------------------------------------------------------------------------
# skopeo_cmd
# --------------------------------------------------------------------------


def test_skopeo_cmd_replaces_skopeo() -> None:
    wrapper = ["systemd-run", "-Pq", "--", "skopeo"]
    command = build(skopeo_cmd=wrapper, debug=True, auth_anonymous=True)
    assert command.argv == (*wrapper, "--debug", SUBCOMMAND, "--no-creds")
    assert wrapper == ["systemd-run", "-Pq", "--", "skopeo"]


def test_skopeo_cmd_single_path() -> None:
    assert build(skopeo_cmd=("/opt/bin/skopeo",)).argv == ("/opt/bin/skopeo", SUBCOMMAND)


# --------------------------------------------------------------------------
# Authentication by descriptor
# --------------------------------------------------------------------------


def test_auth_data_bytes() -> None:
    secret = b'{"auths": {"quay.io": {"auth": "c2VjcmV0LXRva2Vu"}}}'
    command = build(auth_data=secret)
    assert command.argv == ("skopeo", SUBCOMMAND, "--authfile", AUTH_PATH)
    assert dict(command.fds) == {AUTH_FD: secret}
    assert command.credentials is None
    assert not any("c2VjcmV0" in arg or "quay.io" in arg for arg in command.argv)


def test_auth_data_file_object() -> None:
    secret = io.BytesIO(b'{"auths": {"example.com": {"auth": "dXNlcjpodW50ZXIy"}}}')
    command = build(auth_data=secret)
    assert command.argv == ("skopeo", SUBCOMMAND, "--authfile", AUTH_PATH)
    assert dict(command.fds) == {AUTH_FD: secret}
    assert command.fds[AUTH_FD] is secret
    # build_command is pure: the file was not read.
    assert secret.tell() == 0
    assert not any("dXNlcjpodW50ZXIy" in arg for arg in command.argv)


def test_auth_data_empty_bytes_still_used() -> None:
    command = build(auth_data=b"")
    assert command.argv == ("skopeo", SUBCOMMAND, "--authfile", AUTH_PATH)
    assert dict(command.fds) == {AUTH_FD: b""}


def test_username_password_use_private_auth_file() -> None:
    command = build(username="alice", password="hunter2-s3cret")
    assert command.argv == ("skopeo", SUBCOMMAND, "--authfile", AUTH_PATH)
    assert command.credentials == ("alice", "hunter2-s3cret")
    assert set(command.fds) == {AUTH_FD}
    initial = command.fds[AUTH_FD]
    assert isinstance(initial, bytes)
    assert b"hunter2" not in initial
    assert b"alice" not in initial
    for arg in command.argv:
        assert "alice" not in arg
        assert "hunter2" not in arg
    assert not any(
        arg.startswith(("--creds", "--username", "--password", "--registry-token"))
        for arg in command.argv
    )


def test_empty_password_is_still_a_password() -> None:
    command = build(username="robot", password="")
    assert command.credentials == ("robot", "")
    assert "--authfile" in command.argv


def test_auth_options_are_image_options() -> None:
    for options in (
        {"authfile": "/a.json"},
        {"auth_data": b"{}"},
        {"username": "u", "password": "p"},
        {"auth_anonymous": True},
    ):
        global_opts, image_opts = split(build(debug=True, **options).argv)
        assert global_opts == ["--debug"]
        assert image_opts[0] in ("--authfile", "--no-creds")


# --------------------------------------------------------------------------
# ConfigurationError
# --------------------------------------------------------------------------

AUTH_CHOICES: dict[str, dict[str, Any]] = {
    "authfile": {"authfile": "/a.json"},
    "auth_data": {"auth_data": b"{}"},
    "auth_anonymous": {"auth_anonymous": True},
    "username/password": {"username": "u", "password": "p"},
}


def test_configuration_error_hierarchy() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ConfigurationError, ImageProxyError)
    with pytest.raises(ValueError):
        build(policy="/p", insecure_policy=True)
    with pytest.raises(ImageProxyError):
        build(policy="/p", insecure_policy=True)


@pytest.mark.parametrize(
    ("first", "second"),
    list(itertools.combinations(AUTH_CHOICES, 2)),
    ids=lambda name: name,
)
def test_conflicting_auth_options(first: str, second: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        build(**AUTH_CHOICES[first], **AUTH_CHOICES[second])
    message = str(info.value)
    assert first in message
    assert second in message


def test_all_auth_options_at_once() -> None:
    options: dict[str, Any] = {}
    for choice in AUTH_CHOICES.values():
        options.update(choice)
    with pytest.raises(ConfigurationError, match="conflicting authentication options"):
        build(**options)


def test_username_without_password() -> None:
    with pytest.raises(ConfigurationError, match="password is missing"):
        build(username="alice")


def test_password_without_username() -> None:
    with pytest.raises(ConfigurationError, match="username is missing"):
        build(password="secret")


def test_password_without_username_does_not_leak_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        build(password="very-secret-value")
    assert "very-secret-value" not in str(info.value)


def test_policy_and_insecure_policy() -> None:
    with pytest.raises(ConfigurationError) as info:
        build(policy="/etc/policy.json", insecure_policy=True)
    assert "policy" in str(info.value)
    assert "insecure_policy" in str(info.value)


def test_require_signed_and_insecure_policy() -> None:
    with pytest.raises(ConfigurationError) as info:
        build(require_signed=True, insecure_policy=True)
    assert "require_signed" in str(info.value)
    assert "insecure_policy" in str(info.value)


def test_require_signed_with_policy_is_fine() -> None:
    global_opts, _ = split(build(require_signed=True, policy="/p.json").argv)
    assert global_opts == ["--policy", "/p.json", "--require-signed"]


def test_override_variant_without_arch() -> None:
    with pytest.raises(ConfigurationError, match="override_arch"):
        build(override_variant="v7")


def test_override_variant_with_os_only() -> None:
    with pytest.raises(ConfigurationError, match="override_variant"):
        build(override_variant="v8", override_os="linux")


@pytest.mark.parametrize("cmd", [[], ()])
def test_empty_skopeo_cmd(cmd: list[str] | tuple[str, ...]) -> None:
    with pytest.raises(ConfigurationError, match="skopeo_cmd"):
        build(skopeo_cmd=cmd)


@pytest.mark.parametrize("cmd", ["skopeo", "/usr/bin/skopeo", ""])
def test_skopeo_cmd_as_str(cmd: str) -> None:
    with pytest.raises(ConfigurationError, match="skopeo_cmd"):
        build(skopeo_cmd=cmd)


@pytest.mark.parametrize("timeout", [0, 0.0, -1, -0.001, -math.inf])
def test_non_positive_stall_timeout(timeout: float) -> None:
    with pytest.raises(ConfigurationError, match="stall_timeout"):
        build(stall_timeout=timeout)


@pytest.mark.parametrize("timeout", [None, 0.001, 1, 300.0])
def test_valid_stall_timeout(timeout: float | None) -> None:
    assert build(stall_timeout=timeout).argv == ("skopeo", SUBCOMMAND)


def test_nan_stall_timeout() -> None:
    with pytest.raises(ConfigurationError, match="stall_timeout"):
        build(stall_timeout=math.nan)


def test_errors_precede_any_output() -> None:
    # A conflict is reported even when other options are fine.
    with pytest.raises(ConfigurationError):
        build(debug=True, tmpdir="/t", authfile="/a", auth_anonymous=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e12, 0.0, -1.0])
def test_stall_timeout_must_be_finite_and_positive(value: float) -> None:
    with pytest.raises(ConfigurationError, match="stall_timeout"):
        build_command(ImageProxyConfig(stall_timeout=value), environ={})
