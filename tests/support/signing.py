"""Real image signatures for the tests: GPG simple signing and sigstore.

:class:`GpgKeys` makes throw-away RSA keys with ``gpg --batch`` in a private
GNUPGHOME (its agent is stopped at the end). :class:`SignedRegistry` pushes images
to a local registry unsigned, signed by a GPG key (``skopeo copy --sign-by``, into a
``file://`` lookaside directory named by a registries.d file) or signed with a
sigstore key (``--sign-by-sigstore-private-key``, stored as registry attachments),
and can corrupt a signature in place.

A second, newer skopeo (protocol 0.2.8) is found only through the environment
variable ``CIP_TEST_SKOPEO_UPSTREAM``; :func:`upstream_skopeo` skips without it.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.registry import Registry

__all__ = [
    "UPSTREAM_ENV",
    "GpgKey",
    "GpgKeys",
    "SignedRegistry",
    "SigstoreKey",
    "upstream_skopeo",
]

#: Environment variable naming a newer skopeo binary (protocol 0.2.6 or later).
UPSTREAM_ENV = "CIP_TEST_SKOPEO_UPSTREAM"

SIGSTORE_ANNOTATION = "dev.cosignproject.cosign/signature"


def upstream_skopeo() -> str:
    """The newer skopeo named by ``CIP_TEST_SKOPEO_UPSTREAM``; skips when unset."""
    path = os.environ.get(UPSTREAM_ENV)
    if not path:
        pytest.skip(f"{UPSTREAM_ENV} is not set: no skopeo that enforces signature policies")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{UPSTREAM_ENV}={path} is not an executable")
    return path


def _run(argv: list[str], env: dict[str, str] | None = None, stdin: bytes = b"") -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=120, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
        )
    return proc.stdout.decode()


@dataclass(frozen=True)
class GpgKey:
    """A GPG key: its fingerprint and its public keyring file."""

    fingerprint: str
    public: Path


class GpgKeys:
    """Throw-away GPG keys in a private GNUPGHOME; :meth:`close` stops its agent."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("gpg") is None:
            if os.environ.get("CI"):
                pytest.fail("gpg is required in CI (apt-get install gnupg)")
            pytest.skip("gpg is not installed (set CI=1 to make this a failure)")
        self.directory = directory
        # Short, so that the agent's socket path fits in a sockaddr_un.
        self.home = Path(tempfile.mkdtemp(prefix="cip-gpg-"))
        self.env = {**os.environ, "GNUPGHOME": str(self.home)}

    def make(self, name: str) -> GpgKey:
        """A new RSA key without passphrase for ``name``."""
        params = (
            "%no-protection\nKey-Type: RSA\nKey-Length: 2048\n"
            f"Name-Real: {name}\nName-Email: {name}@example.com\nExpire-Date: 0\n%commit\n"
        )
        _run(["gpg", "--batch", "--gen-key"], self.env, params.encode())
        listing = _run(["gpg", "--batch", "--with-colons", "--list-keys", f"{name}@example.com"],
                       self.env)  # fmt: skip
        fingerprint = next(
            line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
        )
        public = self.directory / f"{name}.gpg"
        public.write_bytes(
            subprocess.run(
                ["gpg", "--batch", "--export", fingerprint],
                capture_output=True,
                env=self.env,
                check=True,
                timeout=60,
            ).stdout
        )
        return GpgKey(fingerprint, public)

    def close(self) -> None:
        """Stop the agent this GNUPGHOME started and remove the directory."""
        subprocess.run(["gpgconf", "--kill", "all"], env=self.env, capture_output=True, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


@dataclass(frozen=True)
class SigstoreKey:
    """A sigstore key pair made by ``skopeo generate-sigstore-key``."""

    private: Path
    public: Path
    passphrase_file: Path

    @classmethod
    def make(cls, skopeo: str, directory: Path, name: str) -> SigstoreKey:
        passphrase = directory / f"{name}.passphrase"
        passphrase.write_text(f"passphrase of {name}")
        prefix = directory / name
        _run([skopeo, "generate-sigstore-key", "--output-prefix", str(prefix),
              "--passphrase-file", str(passphrase)])  # fmt: skip
        return cls(Path(f"{prefix}.private"), Path(f"{prefix}.pub"), passphrase)


class SignedRegistry:
    """A registry with a registries.d directory: GPG signatures go to a ``file://``
    lookaside under ``lookaside/``, repositories under ``HOST/sigstore`` use sigstore
    attachments in the registry itself.
    """

    def __init__(self, registry: Registry, directory: Path) -> None:
        self.registry = registry
        self.lookaside = directory / "lookaside"
        self.lookaside.mkdir(parents=True)
        self.registries_d = directory / "registries.d"
        self.registries_d.mkdir()
        host = registry.host
        # JSON is YAML.
        (self.registries_d / "test.yaml").write_text(
            json.dumps(
                {
                    "docker": {
                        host: {"lookaside": self.lookaside.as_uri()},
                        f"{host}/sigstore": {"use-sigstore-attachments": True},
                    }
                }
            )
        )

    def push(
        self,
        skopeo: str,
        source: str,
        repo: str,
        *sign: str,
        env: dict[str, str] | None = None,
    ) -> str:
        """Copy ``source`` to ``HOST/repo:latest`` with ``sign`` options; its reference."""
        dest = f"docker://{self.registry.host}/{repo}:latest"
        _run([skopeo, "--insecure-policy", "--registries.d", str(self.registries_d), "copy",
              "--quiet", "--preserve-digests", "--dest-tls-verify=false", "--dest-no-creds",
              *sign, source, dest], env)  # fmt: skip
        return dest

    def corrupt_lookaside_signature(self, repo: str) -> Path:
        """Flip a bit near the end of the GPG signature stored for ``repo``."""
        (path,) = self.lookaside.glob(f"{repo}@sha256=*/signature-1")
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x01
        path.write_bytes(bytes(data))
        return path

    def corrupt_sigstore_signature(self, repo: str) -> None:
        """Flip a bit of the sigstore signature attached to ``repo:latest``."""
        digest = self.registry.manifest_digest(repo, "latest")
        tag = digest.replace(":", "-") + ".sig"
        body, media_type, _ = self.registry.get_manifest(repo, tag)
        manifest: dict[str, Any] = json.loads(body)
        annotations = manifest["layers"][0]["annotations"]
        signature = bytearray(base64.b64decode(annotations[SIGSTORE_ANNOTATION]))
        signature[-1] ^= 0x01
        annotations[SIGSTORE_ANNOTATION] = base64.b64encode(bytes(signature)).decode()
        data = json.dumps(manifest).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.registry.port, timeout=30)
        try:
            conn.request("PUT", f"/v2/{repo}/manifests/{tag}", data, {"Content-Type": media_type})
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        if response.status != 201:
            raise RuntimeError(f"PUT {repo}:{tag} answered {response.status}")
