"""ImageProxyConfig checks every field when it is made: nothing weakens security by accident.

A string where a flag belongs (``insecure_skip_tls_verification="false"``, which is
truthy) raises, paths are ``str`` or ``os.PathLike``, and options that exclude each
other raise at construction, not when skopeo is started.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
from typing import Any

import pytest

from containers_image_proxy import ConfigurationError, ImageProxyConfig
from containers_image_proxy.config import build_command

FLAGS = ["auth_anonymous", "debug", "insecure_policy", "require_signed"]
PATHS = [
    "authfile",
    "certificate_directory",
    "policy",
    "registries_d",
    "tmpdir",
    "shared_blob_dir",
    "tls_details",
]
TEXTS = ["override_os", "override_arch", "daemon_host", "user_agent_prefix"]


def make(**options: Any) -> ImageProxyConfig:
    return ImageProxyConfig(**options)


@pytest.mark.parametrize("value", ["false", "False", "0", "", "no", 0, 1, None, [], 1.0])
def test_tls_verification_wants_a_bool(value: object) -> None:
    if value is None:
        assert make(insecure_skip_tls_verification=value).insecure_skip_tls_verification is None
        return
    with pytest.raises(ConfigurationError, match="insecure_skip_tls_verification must be a bool"):
        make(insecure_skip_tls_verification=value)


@pytest.mark.parametrize("value", [True, False])
def test_tls_verification_bools(value: bool) -> None:
    argv = build_command(make(insecure_skip_tls_verification=value), {}).argv
    assert ("--tls-verify=false" in argv) is value


@pytest.mark.parametrize("field", FLAGS)
@pytest.mark.parametrize("value", ["true", "false", 1, 0, None, "yes"])
def test_flags_want_a_bool(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"^{field} must be a bool"):
        make(**{field: value})


@pytest.mark.parametrize("field", PATHS)
def test_paths_accept_str_and_pathlike(field: str) -> None:
    assert getattr(make(**{field: "/some/path"}), field) == "/some/path"
    assert getattr(make(**{field: pathlib.Path("/p")}), field) == pathlib.Path("/p")
    assert getattr(make(**{field: pathlib.PurePosixPath("/p")}), field) is not None


@pytest.mark.parametrize("field", PATHS)
@pytest.mark.parametrize("value", [b"/bytes/path", 42, ["/a"], True, "", "/with\0nul"])
def test_paths_refuse_other_values(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"^{field} must"):
        make(**{field: value})


def test_pathlike_returning_bytes_is_refused() -> None:
    class BytesPath:
        def __fspath__(self) -> bytes:
            return b"/bytes"

    with pytest.raises(ConfigurationError, match="policy must be a str path"):
        make(policy=BytesPath())


@pytest.mark.parametrize("field", TEXTS)
@pytest.mark.parametrize("value", [b"x", 1, "", ["x"], "a\0b"])
def test_texts_refuse_other_values(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"^{field} must"):
        make(**{field: value})


def test_override_variant() -> None:
    assert make(override_arch="arm", override_variant="v7").override_variant == "v7"
    with pytest.raises(ConfigurationError, match=r"^override_variant must be a str"):
        make(override_arch="arm", override_variant=7)


@pytest.mark.parametrize(
    ("username", "password", "message"),
    [
        (b"user", "pw", "username must be a str"),
        ("user", b"pw", "password must be a str"),
        ("", "pw", "username must not be empty"),
        ("us:er", "pw", "username must not contain ':'"),
        ("user", None, "password is missing"),
        (None, "pw", "username is missing"),
    ],
)
def test_credentials(username: object, password: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make(username=username, password=password)


def test_empty_password_is_allowed() -> None:
    assert make(username="user", password="").password == ""


@pytest.mark.parametrize("value", ["a string", 42, io.StringIO("{}"), ["x"]])
def test_auth_data_wants_bytes_or_a_binary_file(value: object) -> None:
    with pytest.raises(ConfigurationError, match="auth_data must be bytes or a binary file"):
        make(auth_data=value)


def test_auth_data_accepts_bytes_and_binary_files() -> None:
    make(auth_data=b"{}")
    make(auth_data=io.BytesIO(b"{}"))


@pytest.mark.parametrize("field", ["decryption_keys", "skopeo_cmd"])
@pytest.mark.parametrize("value", ["single string", b"bytes", [b"x"], ["ok", 3], [""], 5])
def test_string_lists(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"^{field}"):
        make(**{field: value})


def test_string_lists_accept_lists_and_tuples() -> None:
    assert make(decryption_keys=("a", "b")).decryption_keys == ("a", "b")
    assert make(skopeo_cmd=["sudo", "skopeo"]).skopeo_cmd == ["sudo", "skopeo"]


@pytest.mark.parametrize("value", [True, "300", 0, -1, float("nan"), float("inf"), 10**7])
def test_stall_timeout(value: object) -> None:
    with pytest.raises(ConfigurationError, match="stall_timeout"):
        make(stall_timeout=value)


@pytest.mark.parametrize("value", [None, 0.5, 1, 300.0])
def test_stall_timeout_values(value: float | None) -> None:
    assert make(stall_timeout=value).stall_timeout == value


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"policy": "/p.json", "insecure_policy": True}, "policy and insecure_policy"),
        ({"require_signed": True, "insecure_policy": True}, "require_signed and insecure_policy"),
        ({"authfile": "/a", "auth_anonymous": True}, "authfile and auth_anonymous"),
        ({"auth_data": b"{}", "username": "u", "password": "p"}, "auth_data and username"),
        ({"override_variant": "v7"}, "override_variant needs override_arch"),
        ({"skopeo_cmd": []}, "skopeo_cmd must be a non-empty list"),
    ],
)
def test_conflicts_raise_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make(**options)


def test_changes_after_construction_are_checked_before_spawning() -> None:
    config = make()
    config.insecure_skip_tls_verification = "false"  # type: ignore[assignment]
    with pytest.raises(ConfigurationError, match="insecure_skip_tls_verification"):
        build_command(config, {})
    config = make(policy="/p.json")
    config.insecure_policy = True
    with pytest.raises(ConfigurationError, match="policy and insecure_policy"):
        build_command(config, {})


def test_replace_validates_too() -> None:
    config = make(insecure_policy=True)
    with pytest.raises(ConfigurationError):
        dataclasses.replace(config, require_signed=True)


def test_every_field_is_checked() -> None:
    # A field added later without a check would accept anything: catch that here.
    checked = {
        *FLAGS, *PATHS, *TEXTS, "override_variant", "username", "password", "auth_data",
        "decryption_keys", "skopeo_cmd", "stall_timeout", "insecure_skip_tls_verification",
        "probe_interval", "retry_times", "retry_delay",
    }  # fmt: skip
    assert {field.name for field in dataclasses.fields(ImageProxyConfig)} == checked


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("probe_interval", "3"),
        ("probe_interval", True),
        ("probe_interval", 0),
        ("probe_interval", -1.0),
        ("probe_interval", float("nan")),
        ("retry_times", "3"),
        ("retry_times", 2.5),
        ("retry_times", True),
        ("retry_times", -1),
        ("retry_times", 101),
        ("retry_delay", "1"),
        ("retry_delay", -0.5),
        ("retry_delay", float("nan")),
        ("retry_delay", False),
    ],
)
def test_retry_options_are_checked(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=field):
        make(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("probe_interval", None),
        ("probe_interval", 0.5),
        ("retry_times", 0),
        ("retry_times", 10),
        ("retry_delay", None),
        ("retry_delay", 0),
        ("retry_delay", 2.5),
    ],
)
def test_retry_options_accept_valid_values(field: str, value: object) -> None:
    assert getattr(make(**{field: value}), field) == value
