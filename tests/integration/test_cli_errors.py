"""Failures in the user's words: one line with the image, what went wrong, what to try.

Every kind of failure a user meets is caused for real where it can be (a local
registry with TLS and basic authentication, a relay that cuts or stalls
connections, a corrupted layout, skopeo run as another user, the installed and
the newer skopeo) and the command's last line is checked: the reference, the plain
words, the advice, the exit status, and no protocol method names (which only
``--debug`` shows, with the traceback).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from containers_image_proxy.cli import (
    EXIT_AUTH,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_POLICY,
    EXIT_SPAWN,
    EXIT_USAGE,
    EXIT_VERIFICATION,
    ErrorContext,
    error_message,
    exit_code_for,
)
from containers_image_proxy.errors import (
    LayerUnavailableError,
    ProtocolError,
    ProxyExitedError,
    ProxyTooOldError,
)
from tests.support.images import BuiltImage
from tests.support.registry import Registry, RegistryImage
from tests.support.relay import Relay

pytestmark = pytest.mark.usefixtures("no_leaks")

CLI = [sys.executable, "-m", "containers_image_proxy"]
PREFIX = "containers-image-proxy: error: "
UPSTREAM_ENV = "CIP_TEST_SKOPEO_UPSTREAM"
#: The image proxy's method names: protocol words that normal output never shows.
METHODS = re.compile(
    r"\b(?:Initialize|OpenImage|OpenImageOptional|CloseImage|GetManifest|GetFullConfig"
    r"|GetConfig|GetBlob|GetRawBlob|GetLayerInfo|GetLayerInfoPiped|FinishPipe|Shutdown)\b"
)


def run_cli(
    *args: str | Path, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CONTAINERS_IMAGE_PROXY_PASSWORD", "CONTAINERS_IMAGE_PROXY_DEBUG")
    }
    environ.update(env or {})
    proc = subprocess.run(
        [*CLI, *map(str, args)], input=stdin, capture_output=True, env=environ, timeout=120
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def failure(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The one line the command failed with (exit status ``code``), holding ``words``."""
    print(proc.stderr)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not METHODS.search(lines[0]), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def image(plain_registry: Registry, oci_image: BuiltImage) -> RegistryImage:
    return plain_registry.push_image(oci_image, "errors/plain", "v1")


@pytest.fixture(scope="module")
def private(auth_registry: Registry, oci_image: BuiltImage) -> RegistryImage:
    return auth_registry.push_image(oci_image, "errors/private", "v1")


@pytest.fixture(scope="module")
def secured(tls_registry: Registry, oci_image: BuiltImage) -> RegistryImage:
    return tls_registry.push_image(oci_image, "errors/tls", "v1")


# --------------------------------------------------------------------------- not found


def test_image_not_found(plain_registry: Registry, image: RegistryImage) -> None:
    for ref in (plain_registry.ref("errors/none", "v1"), plain_registry.ref(image.repo, "nope")):
        proc = run_cli("--tls-verify=false", "inspect", ref)
        failure(proc, EXIT_NOT_FOUND, f"{ref}: not found: ", "Check the name, the tag")


# --------------------------------------------------------------------------- authentication


def test_no_credentials_given(auth_registry: Registry, private: RegistryImage) -> None:
    certs = ("--cert-dir", auth_registry.cert_dir or "")
    proc = run_cli(*certs, "inspect", private.ref)
    line = failure(proc, EXIT_AUTH, private.ref, "none were given", "--username USER")
    assert "refused the credentials" not in line
    proc = run_cli(*certs, "--no-creds", "layers", private.ref)
    failure(proc, EXIT_AUTH, "--no-creds sent none", "instead of --no-creds")


def test_credentials_refused(
    auth_registry: Registry, private: RegistryImage, tmp_path: Path
) -> None:
    assert auth_registry.username is not None
    certs = ("--cert-dir", auth_registry.cert_dir or "")
    user = ("--username", auth_registry.username, "--password-stdin")
    proc = run_cli(*certs, *user, "inspect", private.ref, stdin=b"pw-not-this-one\n")
    line = failure(proc, EXIT_AUTH, private.ref, "refused the credentials given")
    assert f"--username {auth_registry.username}" in line and "none were given" not in line
    assert "pw-not-this-one" not in proc.stderr
    authfile = tmp_path / "auth.json"
    token = f"{auth_registry.username}:wrong".encode()
    authfile.write_text(
        json.dumps({"auths": {auth_registry.host: {"auth": base64.b64encode(token).decode()}}})
    )
    proc = run_cli(*certs, "--authfile", authfile, "inspect", private.ref)
    failure(proc, EXIT_AUTH, f"refused the credentials given (--authfile {authfile})")


# --------------------------------------------------------------------------- TLS


def test_untrusted_certificate(secured: RegistryImage) -> None:
    proc = run_cli("inspect", secured.ref)
    failure(
        proc,
        EXIT_ERROR,
        f"{secured.ref}: the registry's TLS certificate could not be verified: ",
        "--cert-dir DIR",
        "--tls-verify=false",
    )


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize("name", ["Upper/Case:v1", "a//b:v1", "x:bad tag"])
def test_malformed_reference_is_a_usage_error(plain_registry: Registry, name: str) -> None:
    ref = f"docker://{plain_registry.host}/{name}"
    proc = run_cli("--tls-verify=false", "inspect", ref)
    failure(proc, EXIT_USAGE, f"{ref}: not a valid image reference: ", "References look like")


def test_unknown_transport_is_a_usage_error() -> None:
    proc = run_cli("manifest", "nosuch:thing")
    failure(proc, EXIT_USAGE, "nosuch:thing: not a valid image reference", "unknown transport")


# --------------------------------------------------------------------------- policy


@pytest.fixture
def reject_policy(tmp_path: Path) -> Path:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "reject"}]}))
    return policy


def test_policy_rejects(image: RegistryImage, reject_policy: Path) -> None:
    upstream = os.environ.get(UPSTREAM_ENV)
    if not upstream:
        pytest.skip(f"{UPSTREAM_ENV} is not set: no skopeo that enforces policies")
    proc = run_cli(
        "--skopeo", upstream, "--policy", reject_policy, "--tls-verify=false", "inspect", image.ref
    )
    failure(
        proc,
        EXIT_POLICY,
        f"{image.ref}: the signature policy refused the image: ",
        "sign it with a key the policy trusts",
        "--policy FILE",
    )


def test_policy_not_enforced(image: RegistryImage, reject_policy: Path, skopeo: str) -> None:
    proc = run_cli("--policy", reject_policy, "--tls-verify=false", "inspect", image.ref)
    if proc.returncode == 0 or "refused the image" in proc.stderr:
        pytest.skip("the installed skopeo enforces signature policies")
    failure(
        proc,
        EXIT_POLICY,
        f"{image.ref}: the signature policy {reject_policy}",
        "the requirement reject",
        "would not enforce",
        "--insecure-policy",
        "--skopeo PATH",
    )


def test_option_this_skopeo_lacks(image: RegistryImage, skopeo: str) -> None:
    proc = run_cli("--require-signed", "--tls-verify=false", "inspect", image.ref)
    if "does not accept" not in proc.stderr:
        pytest.skip("the installed skopeo has --require-signed")
    failure(proc, EXIT_SPAWN, "skopeo does not accept --require-signed", "Leave --require-signed")


# --------------------------------------------------------------------------- access


def test_access_denied(oci_image: BuiltImage, tmp_path: Path, skopeo: str) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv, to run skopeo as another user")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    layout = private / "layout"
    shutil.copytree(oci_image.path, layout)
    home = tmp_path / "home"
    home.mkdir(mode=0o777)
    wrapper = tmp_path / "skopeo-as-nobody"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"HOME={home} exec setpriv --reuid=65534 --regid=65534 --clear-groups"
        f' {shutil.which(skopeo)} "$@"\n'
    )
    wrapper.chmod(0o755)
    ref = f"oci:{layout}:latest"
    proc = run_cli("--skopeo", wrapper, "inspect", ref)
    failure(proc, EXIT_ERROR, f"{ref}: permission denied: ", "Run as the user who owns")


# --------------------------------------------------------------------------- network


@pytest.fixture(scope="module")
def big_image(plain_registry: Registry, big_layers_image: BuiltImage) -> RegistryImage:
    return plain_registry.push_image(big_layers_image, "errors/big", "v1")


def test_connection_cut(relay: Relay, big_image: RegistryImage, tmp_path: Path) -> None:
    relay.set_faults(cut_after=1_000_000, max_cuts=1)
    ref = f"docker://{relay.address}/{big_image.repo}:{big_image.tag}"
    proc = run_cli("--tls-verify=false", "--retry-times", "0", "pull", ref, tmp_path / "d")
    failure(
        proc,
        EXIT_ERROR,
        f"{ref}: reading the image failed: ",
        "connection reset by peer",
        "This may pass: try again",
        "--retry-times",
    )


def test_source_stalls(relay: Relay, big_image: RegistryImage, tmp_path: Path) -> None:
    relay.set_faults(stall_after=1_000_000)
    ref = f"docker://{relay.address}/{big_image.repo}:{big_image.tag}"
    proc = run_cli(
        "--tls-verify=false", "--retry-times=0", "--stall-timeout=2s", "--probe-interval=0",
        "unpack", ref, tmp_path / "rootfs",
    )  # fmt: skip
    failure(
        proc,
        EXIT_ERROR,
        f"{ref}: the source stopped sending data: nothing arrived for 2 seconds",
        "--stall-timeout DURATION waits longer",
    )


# --------------------------------------------------------------------------- verification


def test_corrupted_blob(corrupted_image: BuiltImage, tmp_path: Path) -> None:
    proc = run_cli("pull", corrupted_image.ref, tmp_path / "layout")
    failure(
        proc,
        EXIT_VERIFICATION,
        f"{corrupted_image.ref}: data did not match its digest or size: ",
        "nothing unverified was kept",
    )


# --------------------------------------------------------------------------- configuration


def test_unreadable_policy_is_a_usage_error(image: RegistryImage, tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    proc = run_cli("--policy", missing, "--tls-verify=false", "inspect", image.ref)
    if proc.returncode == 0:
        pytest.skip("this skopeo enforces policies itself: the file is its to read")
    failure(proc, EXIT_USAGE, "invalid options: ", str(missing))


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--authfile", "/a.json", "--no-creds"], ["--authfile", "--no-creds"]),
        (["--authfile", "/a.json", "--username", "me"], ["--authfile", "--username"]),
        (["--override-variant", "v8"], ["--override-variant needs --override-arch"]),
        (["--policy", "/p", "--insecure-policy"], ["--policy and --insecure-policy"]),
        (["--stall-timeout", "9999999"], ["--stall-timeout must be"]),
        (["--retry-times", "1000"], ["--retry-times must be"]),
    ],
)
def test_conflicts_name_the_options(argv: list[str], words: list[str]) -> None:
    proc = run_cli(*argv, "inspect", "oci:x")
    assert proc.returncode == EXIT_USAGE, proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("containers-image-proxy: error: "), proc.stderr
    for word in words:
        assert word in last, last
    assert not re.search(r"\b(?:auth_anonymous|override_variant|insecure_policy)\b", last)


# --------------------------------------------------------------------------- skopeo itself


def test_skopeo_missing() -> None:
    proc = run_cli("--skopeo", "/nonexistent/skopeo", "inspect", "oci:x")
    failure(proc, EXIT_SPAWN, "'/nonexistent/skopeo'", "Is skopeo installed? --skopeo PATH")


def test_skopeo_that_exits_at_once() -> None:
    false = shutil.which("false") or "/bin/false"
    proc = run_cli("--skopeo", false, "inspect", "oci:x")
    failure(proc, EXIT_SPAWN, f"{false} exited before its image proxy started", "exit status 1")


@pytest.mark.parametrize(
    ("error", "code", "words"),
    [
        (
            ProxyExitedError("GetBlob", -9, "fatal error: out of memory\n"),
            EXIT_ERROR,
            ["oci:x: skopeo stopped unexpectedly (killed by signal 9): fatal error: out of memory"],
        ),
        (
            ProxyTooOldError("0.2.5", "0.2.3", "GetLayerInfo"),
            EXIT_SPAWN,
            ["oci:x: skopeo is too old", "protocol 0.2.3, 0.2.5 is needed", "--skopeo PATH"],
        ),
        (
            LayerUnavailableError("oci:y", "sha256:" + "a" * 64, "0.2.3", "blob unknown"),
            EXIT_SPAWN,
            ["oci:y: layer sha256:aaa", "skopeo 1.11 or newer"],
        ),
        (
            ProtocolError("reply to GetManifest is invalid: bad"),
            EXIT_ERROR,
            ["image proxy sent something this program cannot read", "--debug"],
        ),
    ],
)
def test_failures_only_a_fake_could_cause(error: Exception, code: int, words: list[str]) -> None:
    """Failures a real skopeo here does not cause on demand: the messages alone."""
    line = error_message(error, ErrorContext(reference="oci:x"))
    assert exit_code_for(error) == code
    assert not METHODS.search(line), line
    for word in words:
        assert word in line, line


# --------------------------------------------------------------------------- debug


def test_debug_keeps_the_raw_error(plain_registry: Registry) -> None:
    ref = plain_registry.ref("errors/none", "v1")
    proc = run_cli("--debug", "--tls-verify=false", "inspect", ref)
    assert proc.returncode == EXIT_NOT_FOUND
    lines = proc.stderr.splitlines()
    assert "Traceback" in proc.stderr
    raw = "containers-image-proxy: debug: ImageNotFoundError: OpenImage failed: "
    assert any(line.startswith(raw) for line in lines), proc.stderr
    assert lines[-1].startswith(f"{PREFIX}{ref}: not found: ")
    assert not METHODS.search(lines[-1])
