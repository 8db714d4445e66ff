"""The fail-closed rule: a policy that applies is enforced, or the image is refused.

Unit tests of ``_trust.PolicyGuard`` (which policy file applies, and what it says
about a reference), then the rule end to end with Debian's skopeo, whose image
proxy (protocol 0.2.3) accepts ``--policy`` and never consults it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from containers_image_proxy import (
    ConfigurationError,
    ImageProxy,
    ImageProxyConfig,
    PolicyNotEnforcedError,
    ProxyTooOldError,
    _trust,
    pull,
    unpack,
)
from containers_image_proxy._trust import PolicyGuard, default_policy_path, resolve_path
from tests.support.images import BuiltImage

ACCEPT = {"type": "insecureAcceptAnything"}
REJECT = {"type": "reject"}
GPG = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/nonexistent/key.gpg"}


def write_policy(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home directory, and no system policy unless a test writes one."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(_trust, "SYSTEM_POLICY", str(tmp_path / "etc" / "policy.json"))
    return home


def user_policy(home: Path) -> Path:
    return home / ".config" / "containers" / "policy.json"


def test_default_policy_path_prefers_the_users(home: Path, tmp_path: Path) -> None:
    assert default_policy_path() is None
    system = write_policy(tmp_path / "etc" / "policy.json", {"default": [ACCEPT]})
    assert default_policy_path() == str(system)
    user = write_policy(user_policy(home), {"default": [REJECT]})
    assert default_policy_path() == str(user)


def test_no_policy_file_at_all_applies_nothing(home: Path) -> None:
    PolicyGuard(ImageProxyConfig()).check("docker://quay.io/a", "0.2.3")


def test_accept_anything_opens(home: Path, tmp_path: Path) -> None:
    write_policy(tmp_path / "etc" / "policy.json", {"default": [ACCEPT]})
    guard = PolicyGuard(ImageProxyConfig())
    for reference in ("docker://quay.io/a", "oci:/srv/x:t", "dir:/x", "docker-archive:/a.tar"):
        guard.check(reference, "0.2.3")


def test_the_users_policy_applies(home: Path, tmp_path: Path) -> None:
    write_policy(tmp_path / "etc" / "policy.json", {"default": [ACCEPT]})
    write_policy(
        user_policy(home),
        {"default": [ACCEPT], "transports": {"docker": {"quay.io/signed": [GPG]}}},
    )
    guard = PolicyGuard(ImageProxyConfig())
    guard.check("docker://quay.io/other:1", "0.2.3")
    guard.check("oci:/srv/x:t", "0.2.3")
    with pytest.raises(PolicyNotEnforcedError) as info:
        guard.check("docker://quay.io/signed/app:1", "0.2.3")
    error = info.value
    assert isinstance(error, ProxyTooOldError)
    assert (error.required, error.found) == ("0.2.6", "0.2.3")
    assert error.reference == "docker://quay.io/signed/app:1"
    assert str(user_policy(home)) in error.source
    assert 'transports.docker["quay.io/signed"]' in error.source
    message = str(error)
    assert "signedBy" in message and "would not enforce" in message
    assert "0.2.6" in message and "insecure_policy" in message


def test_an_explicit_policy_replaces_the_default(home: Path, tmp_path: Path) -> None:
    write_policy(user_policy(home), {"default": [REJECT]})
    explicit = write_policy(tmp_path / "mine.json", {"default": [ACCEPT]})
    PolicyGuard(ImageProxyConfig(policy=explicit)).check("docker://quay.io/a", "0.2.3")
    strict = write_policy(tmp_path / "strict.json", {"default": [REJECT]})
    with pytest.raises(PolicyNotEnforcedError, match="reject"):
        PolicyGuard(ImageProxyConfig(policy=str(strict))).check("oci:/x:t", "0.2.5")


def test_require_signed_always_refuses(home: Path) -> None:
    with pytest.raises(PolicyNotEnforcedError, match="require_signed") as info:
        PolicyGuard(ImageProxyConfig(require_signed=True)).check("oci:/x:t", "0.2.3")
    assert info.value.source == "require_signed"


def test_insecure_policy_opts_out(home: Path) -> None:
    write_policy(user_policy(home), {"default": [REJECT]})
    PolicyGuard(ImageProxyConfig(insecure_policy=True)).check("docker://quay.io/a", "0.2.3")
    # Not even a malformed file is read.
    user_policy(home).write_text("{broken")
    PolicyGuard(ImageProxyConfig(insecure_policy=True)).check("docker://quay.io/a", "0.2.3")


@pytest.mark.parametrize(
    "contents", [b"{broken", b'{"default": []}', b'{"default": [{"type": "nope"}]}']
)
def test_malformed_default_policy_is_a_configuration_error(home: Path, contents: bytes) -> None:
    path = user_policy(home)
    path.parent.mkdir(parents=True)
    path.write_bytes(contents)
    with pytest.raises(ConfigurationError, match=f"invalid signature policy {path}"):
        PolicyGuard(ImageProxyConfig())


def test_unreadable_policy_is_a_configuration_error(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigurationError, match=f"cannot read signature policy {missing}"):
        PolicyGuard(ImageProxyConfig(policy=missing))
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(ConfigurationError, match=f"cannot read signature policy {directory}"):
        PolicyGuard(ImageProxyConfig(policy=directory))


def test_resolve_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert resolve_path(str(tmp_path / "link")) == str(real)
    # The last component may be missing, its parent is still resolved.
    assert resolve_path(str(tmp_path / "link" / "new")) == str(real / "new")
    assert resolve_path(str(tmp_path / "missing" / "new")) is None
    monkeypatch.chdir(real)
    assert resolve_path("sub") == str(real / "sub")
    assert resolve_path("") == str(real)


def test_paths_are_resolved_before_matching(home: Path, tmp_path: Path) -> None:
    layouts = tmp_path / "layouts"
    layouts.mkdir()
    (tmp_path / "alias").symlink_to(layouts)
    write_policy(
        user_policy(home),
        {"default": [ACCEPT], "transports": {"oci": {str(layouts): [REJECT]}}},
    )
    guard = PolicyGuard(ImageProxyConfig())
    with pytest.raises(PolicyNotEnforcedError):
        guard.check(f"oci:{tmp_path / 'alias' / 'img'}:latest", "0.2.3")
    guard.check(f"oci:{tmp_path / 'elsewhere'}:latest", "0.2.3")


# --------------------------------------------------------------------------
# End to end with Debian's skopeo (protocol 0.2.3)
# --------------------------------------------------------------------------


def _enforces(proxy: ImageProxy) -> bool:
    return tuple(int(part) for part in proxy.protocol_version.split(".")) >= (0, 2, 6)


def _old_proxy(proxy: ImageProxy) -> None:
    if _enforces(proxy):
        pytest.skip(f"the installed skopeo speaks {proxy.protocol_version}: it enforces policies")


def test_debian_default_setup_sees_no_change(skopeo: str, oci_image: BuiltImage) -> None:
    # Whatever HOME says, Debian's /etc/containers/policy.json accepts anything.
    if not os.path.exists("/etc/containers/policy.json"):
        pytest.skip("no /etc/containers/policy.json")
    with ImageProxy() as proxy, proxy.open_image(oci_image.ref) as image:
        assert proxy.fetch_manifest(image)[0] == oci_image.manifest_digest


def test_users_policy_is_enforced_by_refusal(
    skopeo: str, oci_image: BuiltImage, oci_archive_image: BuiltImage, home: Path
) -> None:
    layout = os.path.realpath(oci_image.path)
    write_policy(
        user_policy(home),
        {"default": [ACCEPT], "transports": {"oci": {layout: [REJECT]}}},
    )
    with ImageProxy() as proxy:
        _old_proxy(proxy)
        with pytest.raises(PolicyNotEnforcedError, match="reject") as info:
            proxy.open_image(oci_image.ref)
        assert f'transports.oci["{layout}"]' in str(info.value)
        # Refused before OpenImage: the proxy goes on serving images the policy allows.
        with proxy.open_image(oci_archive_image.ref) as image:
            assert proxy.fetch_manifest(image)[0] == oci_archive_image.manifest_digest
    with ImageProxy(ImageProxyConfig(insecure_policy=True)) as proxy:
        with proxy.open_image(oci_image.ref) as image:
            assert proxy.fetch_manifest(image)[0] == oci_image.manifest_digest


def test_refused_pull_and_unpack_write_nothing(
    skopeo: str, oci_image: BuiltImage, tmp_path: Path
) -> None:
    reject = write_policy(tmp_path / "reject.json", {"default": [REJECT]})
    config = ImageProxyConfig(policy=reject)
    with ImageProxy(config) as proxy:
        _old_proxy(proxy)
    layout, rootfs = tmp_path / "layout", tmp_path / "rootfs"
    with pytest.raises(PolicyNotEnforcedError):
        pull(oci_image.ref, layout, config=config)
    assert not layout.exists()
    with pytest.raises(PolicyNotEnforcedError):
        unpack(oci_image.ref, rootfs, config=config)
    assert not rootfs.exists()
