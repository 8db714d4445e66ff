"""Signature policies with real signatures, a real registry and two real skopeos.

Images are pushed to a local ``docker-registry`` unsigned, signed with a GPG key
made here (``skopeo copy --sign-by``, lookaside in a ``file://`` directory named by
registries.d), signed by another key, and with a corrupted signature; the same
again with sigstore keys (``skopeo generate-sigstore-key``, signatures attached in
the registry). Then every policy is tried against every image:

* with a skopeo whose image proxy enforces the policy (protocol 0.2.6+, found
  through ``CIP_TEST_SKOPEO_UPSTREAM``): signed images open, the others are refused
  with :class:`PolicyRejectedError` carrying skopeo's reason;
* with Debian's skopeo (protocol 0.2.3, which ignores ``--policy``): every image a
  policy applies to is refused before OpenImage with :class:`PolicyNotEnforcedError`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from containers_image_proxy import (
    ImageProxy,
    ImageProxyConfig,
    ImageProxyError,
    PolicyNotEnforcedError,
    PolicyRejectedError,
    RequestError,
    UnsupportedOptionError,
    pull,
    unpack,
)
from containers_image_proxy.cli import EXIT_OK, EXIT_POLICY, EXIT_SPAWN
from tests.support.images import BuiltImage
from tests.support.registry import Registry
from tests.support.signing import GpgKeys, SignedRegistry, SigstoreKey, upstream_skopeo

IMAGES = ("signed", "unsigned", "other-key", "corrupted")
KINDS = ("gpg", "sigstore")


@dataclass(frozen=True)
class Setup:
    """Everything the tests share: registry, registries.d, keys, policies, images."""

    signed: SignedRegistry
    policies: dict[str, Path]
    #: ``"gpg/signed"`` -> ``docker://HOST/gpg/signed:latest``, for the images pushed.
    refs: dict[str, str]

    @property
    def registry(self) -> Registry:
        return self.signed.registry

    def ref(self, kind: str, image: str) -> str:
        return f"docker://{self.registry.host}/{kind}/{image}:latest"

    def config(self, skopeo: str, policy: str, **options: Any) -> ImageProxyConfig:
        """A configuration with ``policy`` (a name in ``policies``, or ``insecure``)."""
        if policy == "insecure":
            options["insecure_policy"] = True
        else:
            options["policy"] = self.policies[policy]
        return ImageProxyConfig(
            skopeo_cmd=[skopeo],
            registries_d=self.signed.registries_d,
            insecure_skip_tls_verification=True,
            **options,
        )


def _enforces(proxy: ImageProxy) -> bool:
    """Whether the proxy's protocol checks signature policies (0.2.6 and later)."""
    return tuple(int(part) for part in proxy.protocol_version.split(".")) >= (0, 2, 6)


def _write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document))
    return path


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
    plain_registry: Registry,
    oci_image: BuiltImage,
    skopeo: str,
) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("signatures")
    signed = SignedRegistry(plain_registry, directory)
    host = plain_registry.host
    gpg = GpgKeys(directory)
    try:
        trusted, other = gpg.make("trusted"), gpg.make("other")
        sigstore_trusted = directory / "sigstore-trusted.pub"
        signed_by = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(trusted.public)}
        policies = {
            "signatures": _write(
                directory / "signatures.json",
                {
                    "default": [{"type": "reject"}],
                    "transports": {
                        "docker": {
                            f"{host}/gpg": [signed_by],
                            f"{host}/sigstore": [
                                {"type": "sigstoreSigned", "keyPath": str(sigstore_trusted)}
                            ],
                        }
                    },
                },
            ),
            "reject-all": _write(directory / "reject.json", {"default": [{"type": "reject"}]}),
            "accept-all": _write(
                directory / "accept.json", {"default": [{"type": "insecureAcceptAnything"}]}
            ),
        }
        refs: dict[str, str] = {}
        # Debian's skopeo signs with gpg (the newer build here verifies only).
        for image, sign in (
            ("signed", ["--sign-by", trusted.fingerprint]),
            ("unsigned", []),
            ("other-key", ["--sign-by", other.fingerprint]),
            ("corrupted", ["--sign-by", trusted.fingerprint]),
        ):
            refs[f"gpg/{image}"] = signed.push(
                skopeo, oci_image.ref, f"gpg/{image}", *sign, env=gpg.env
            )
        signed.corrupt_lookaside_signature("gpg/corrupted")
        try:
            upstream = upstream_skopeo()
        except pytest.skip.Exception:
            upstream = None
        if upstream is not None:
            # Debian's skopeo cannot make sigstore signatures: the newer one does.
            key = SigstoreKey.make(upstream, directory, "sigstore-trusted")
            assert key.public == sigstore_trusted
            other_key = SigstoreKey.make(upstream, directory, "sigstore-other")
            for image, chosen in (
                ("signed", key),
                ("unsigned", None),
                ("other-key", other_key),
                ("corrupted", key),
            ):
                sign = []
                if chosen is not None:
                    sign = ["--sign-by-sigstore-private-key", str(chosen.private),
                            "--sign-passphrase-file", str(chosen.passphrase_file)]  # fmt: skip
                refs[f"sigstore/{image}"] = signed.push(
                    upstream, oci_image.ref, f"sigstore/{image}", *sign
                )
            signed.corrupt_sigstore_signature("sigstore/corrupted")
        yield Setup(signed, policies, refs)
    finally:
        gpg.close()


def _outcome(proxy: ImageProxy, reference: str, expected_digest: str) -> str:
    try:
        with proxy.open_image(reference) as image:
            digest, _ = proxy.fetch_manifest(image)
    except ImageProxyError as exc:
        return type(exc).__name__
    assert digest == expected_digest
    return "opened"


def _table(setup: Setup, skopeo: str, policy: str, **options: Any) -> dict[str, str]:
    """The outcome of opening every pushed image under ``policy`` with ``skopeo``."""
    try:
        proxy = ImageProxy(setup.config(skopeo, policy, **options)).open()
    except UnsupportedOptionError:
        return dict.fromkeys(setup.refs, "UnsupportedOptionError")
    with proxy:
        registry = setup.registry
        return {
            name: _outcome(proxy, ref, registry.manifest_digest(name, "latest"))
            for name, ref in setup.refs.items()
        }


def _expect(setup: Setup, signed: str, others: str) -> dict[str, str]:
    return {name: signed if name.endswith("/signed") else others for name in setup.refs}


def _every(setup: Setup, outcome: str) -> dict[str, str]:
    return dict.fromkeys(setup.refs, outcome)


# --------------------------------------------------------------------------
# The whole table: policy x skopeo x image
# --------------------------------------------------------------------------

ENFORCING = {
    # policy (and options) -> (outcome for signed images, outcome for the others)
    "signatures": ("opened", "PolicyRejectedError"),
    "signatures+require_signed": ("opened", "PolicyRejectedError"),
    "reject-all": ("PolicyRejectedError", "PolicyRejectedError"),
    "accept-all": ("opened", "opened"),
    "accept-all+require_signed": ("PolicyRejectedError", "PolicyRejectedError"),
    "insecure": ("opened", "opened"),
}
NOT_ENFORCING = {
    "signatures": ("PolicyNotEnforcedError", "PolicyNotEnforcedError"),
    "signatures+require_signed": ("UnsupportedOptionError", "UnsupportedOptionError"),
    "reject-all": ("PolicyNotEnforcedError", "PolicyNotEnforcedError"),
    "accept-all": ("opened", "opened"),
    "accept-all+require_signed": ("UnsupportedOptionError", "UnsupportedOptionError"),
    "insecure": ("opened", "opened"),
}


def _run_table(setup: Setup, skopeo: str, label: str, rows: dict[str, tuple[str, str]]) -> None:
    failures = []
    for row, (signed, others) in rows.items():
        policy, _, option = row.partition("+")
        found = _table(setup, skopeo, policy, **({option: True} if option else {}))
        expected = _expect(setup, signed, others)
        print(f"{label:8} {row:26} " + " ".join(f"{k}={v}" for k, v in found.items()))
        if found != expected:
            failures.append(f"{row}: expected {expected}, found {found}")
    assert not failures, "\n".join(failures)


def test_outcomes_with_an_enforcing_skopeo(setup: Setup) -> None:
    upstream = upstream_skopeo()
    assert len(setup.refs) == len(IMAGES) * len(KINDS)
    _run_table(setup, upstream, "upstream", ENFORCING)


def test_outcomes_with_debians_skopeo(setup: Setup, skopeo: str) -> None:
    with ImageProxy(ImageProxyConfig(insecure_policy=True)) as proxy:
        if _enforces(proxy):
            pytest.skip(f"the installed skopeo speaks {proxy.protocol_version}")
    _run_table(setup, skopeo, "debian", NOT_ENFORCING)


# --------------------------------------------------------------------------
# What each refusal says
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_refusals_carry_the_proxys_reason(setup: Setup, kind: str) -> None:
    upstream = upstream_skopeo()
    reasons = {}
    with ImageProxy(setup.config(upstream, "signatures")) as proxy:
        for image in ("unsigned", "other-key", "corrupted"):
            with pytest.raises(PolicyRejectedError) as info:
                proxy.open_image(setup.ref(kind, image))
            error = info.value
            assert isinstance(error, RequestError) and error.method == "OpenImage"
            assert str(error) == f"OpenImage failed: {error.message}"
            reasons[image] = error.message
        # A refusal leaves the proxy usable.
        with proxy.open_image(setup.ref(kind, "signed")):
            pass
    print(kind, reasons)
    assert reasons["unsigned"] == "A signature was required, but no signature exists"
    if kind == "gpg":
        assert reasons["other-key"].startswith("Key not found for key ID")
        assert "signature" in reasons["corrupted"]
    else:
        assert "signature verification failed" in reasons["other-key"]
        assert "signature verification failed" in reasons["corrupted"]


def test_require_signed_needs_a_signature_requirement(setup: Setup) -> None:
    upstream = upstream_skopeo()
    config = setup.config(upstream, "accept-all", require_signed=True)
    with ImageProxy(config) as proxy, pytest.raises(PolicyRejectedError) as info:
        proxy.open_image(setup.ref("gpg", "signed"))
    assert info.value.message.startswith("No signature verification policy found for image")


def test_require_signed_on_debians_skopeo(setup: Setup, skopeo: str) -> None:
    config = setup.config(skopeo, "signatures", require_signed=True)
    try:
        proxy = ImageProxy(config).open()
    except UnsupportedOptionError as exc:
        assert (exc.option, exc.field) == ("--require-signed", "require_signed")
        assert "unknown flag: --require-signed" in exc.stderr
        return
    proxy.close()
    pytest.skip("the installed skopeo has --require-signed")


def test_policy_refusal_is_not_enforced_by_debians_skopeo(setup: Setup, skopeo: str) -> None:
    with ImageProxy(setup.config(skopeo, "signatures")) as proxy:
        if _enforces(proxy):
            pytest.skip(f"the installed skopeo speaks {proxy.protocol_version}")
        version = proxy.protocol_version
        with pytest.raises(PolicyNotEnforcedError) as info:
            proxy.open_image(setup.ref("gpg", "signed"))
    error = info.value
    assert error.found == version and error.required == "0.2.6"
    assert f'transports.docker["{setup.registry.host}/gpg"]' in error.source
    assert error.requirements == "the requirement signedBy"


# --------------------------------------------------------------------------
# pull and unpack under a refusing policy write nothing
# --------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["upstream", "debian"])
def test_refused_pull_and_unpack_write_nothing(
    setup: Setup, skopeo: str, tmp_path: Path, which: str
) -> None:
    binary = upstream_skopeo() if which == "upstream" else skopeo
    expected = PolicyRejectedError if which == "upstream" else PolicyNotEnforcedError
    config = setup.config(binary, "signatures")
    with ImageProxy(config) as proxy:
        if which == "debian" and _enforces(proxy):
            pytest.skip(f"the installed skopeo speaks {proxy.protocol_version}")
    layout, rootfs = tmp_path / "layout", tmp_path / "rootfs"
    with pytest.raises(expected):
        pull(setup.ref("gpg", "unsigned"), layout, config=config)
    assert not layout.exists()
    with pytest.raises(expected):
        unpack(setup.ref("gpg", "unsigned"), rootfs, config=config)
    assert not rootfs.exists()
    # An existing, empty destination stays empty.
    layout.mkdir()
    with pytest.raises(expected):
        pull(setup.ref("gpg", "corrupted"), layout, config=config)
    assert list(layout.iterdir()) == []


def test_signed_pull_and_unpack(setup: Setup, tmp_path: Path) -> None:
    config = setup.config(upstream_skopeo(), "signatures")
    result = pull(setup.ref("gpg", "signed"), tmp_path / "layout", config=config)
    assert (tmp_path / "layout" / "index.json").exists()
    unpacked = unpack(setup.ref("sigstore", "signed"), tmp_path / "rootfs", config=config)
    assert unpacked.manifest_digest == result.source_digest
    assert any((tmp_path / "rootfs").iterdir())


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "containers_image_proxy", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _options(setup: Setup, skopeo: str, policy: str) -> list[str | Path]:
    return ["--skopeo", skopeo, "--policy", setup.policies[policy],
            "--registries.d", setup.signed.registries_d, "--tls-verify=false"]  # fmt: skip


def test_cli_policy_refusal(setup: Setup, tmp_path: Path) -> None:
    upstream = upstream_skopeo()
    dest = tmp_path / "dest"
    options = _options(setup, upstream, "signatures")
    proc = _cli(*options, "pull", setup.ref("gpg", "unsigned"), dest)
    assert proc.returncode == EXIT_POLICY, proc.stderr
    assert "A signature was required, but no signature exists" in proc.stderr
    assert "sign it with a key the policy trusts" in proc.stderr
    assert "Traceback" not in proc.stderr and not dest.exists()
    proc = _cli(*options, "pull", setup.ref("gpg", "signed"), dest)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert (dest / "index.json").exists()
    proc = _cli(*_options(setup, upstream, "accept-all"), "--require-signed", "inspect",
                setup.ref("gpg", "signed"))  # fmt: skip
    assert proc.returncode == EXIT_POLICY, proc.stderr
    assert "No signature verification policy found" in proc.stderr


def test_cli_policy_not_enforced(setup: Setup, skopeo: str, tmp_path: Path) -> None:
    with ImageProxy(ImageProxyConfig(insecure_policy=True)) as proxy:
        if _enforces(proxy):
            pytest.skip(f"the installed skopeo speaks {proxy.protocol_version}")
    dest = tmp_path / "dest"
    proc = _cli(*_options(setup, skopeo, "signatures"), "unpack", setup.ref("gpg", "signed"), dest)
    assert proc.returncode == EXIT_POLICY, proc.stderr
    assert "would not enforce" in proc.stderr and "--insecure-policy" in proc.stderr
    assert not dest.exists()
    proc = _cli(*_options(setup, skopeo, "signatures"), "--require-signed", "inspect",
                setup.ref("gpg", "signed"))  # fmt: skip
    assert proc.returncode == EXIT_SPAWN, proc.stderr
    assert "--require-signed" in proc.stderr and "require_signed" in proc.stderr
