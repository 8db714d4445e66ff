"""Local container registries for the tests: CNCF distribution (``docker-registry``).

:class:`Registry` writes a configuration file, starts ``docker-registry serve`` on
127.0.0.1 with filesystem storage in a directory of its own, waits until ``/v2/``
answers and stops the process again (terminate, then kill, always waited for).
Three flavours: plain HTTP, HTTPS with a throw-away CA, and HTTPS with htpasswd
basic authentication. Images are pushed with ``skopeo copy``.

Every registry that is started is also stopped at interpreter exit, and (when it
was started from the main thread) gets SIGTERM from the kernel if this process
dies without running ``atexit`` handlers.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from containers_image_proxy._process import _die_with_parent
from tests.support.images import BuiltImage, MultiPlatformImage, run_skopeo

__all__ = [
    "DEFAULT_BINARY",
    "Registry",
    "RegistryError",
    "RegistryImage",
    "RegistryIndex",
    "find_registry_binary",
]

DEFAULT_BINARY = "/usr/bin/docker-registry"

#: Media types a manifest request accepts, so the registry never converts anything.
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)

_START_ATTEMPTS = 5
_START_TIMEOUT = 20.0


class RegistryError(RuntimeError):
    """The registry could not be started, or a request to it failed."""


def find_registry_binary() -> str | None:
    """Path of docker-registry: /usr/bin/docker-registry or the first one on PATH."""
    if os.access(DEFAULT_BINARY, os.X_OK):
        return DEFAULT_BINARY
    return shutil.which("docker-registry") or shutil.which("registry")


# --------------------------------------------------------------------------- process safety

_RUNNING: set[Registry] = set()
_RUNNING_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for registry in running:
        registry.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- certificates


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise RegistryError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """Write a CA and a server certificate for 127.0.0.1 and localhost.

    Returns ``(ca.crt, server.crt, server.key)``; the CA's key stays in ``directory``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
        "-subj", "/CN=containers-image-proxy test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-set_serial", str(secrets.randbits(63)), "-days", "30",
        "-extfile", "server.ext", "-out", "server.crt",
        cwd=directory,
    )  # fmt: skip
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


def htpasswd_line(username: str, password: str) -> str:
    """One htpasswd entry with a bcrypt hash (the only kind distribution accepts)."""
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{username}:{hashed}\n"


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class RegistryImage:
    """A single-platform image pushed to a registry, and what was pushed."""

    registry: Registry
    repo: str
    tag: str
    #: ``docker://HOST/repo:tag``
    ref: str
    #: ``docker://HOST/repo@sha256:...``
    digest_ref: str
    #: The image as built on disk: expected manifest, config and layer bytes.
    image: BuiltImage


@dataclass(frozen=True)
class RegistryIndex:
    """A multi-platform index pushed to a registry, and what was pushed."""

    registry: Registry
    repo: str
    tag: str
    ref: str
    #: Digest reference of the index itself.
    digest_ref: str
    index: MultiPlatformImage


class Registry:
    """A ``docker-registry serve`` process on 127.0.0.1, owned by the tests.

    ``tls`` serves HTTPS with a certificate signed by a fresh CA, found as
    ``cert_dir/ca.crt`` (a directory for skopeo's ``--cert-dir``). ``auth`` (needs
    ``tls``) requires ``username``/``password`` through htpasswd basic auth.
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        root: Path,
        *,
        tls: bool = False,
        auth: bool = False,
        binary: str | None = None,
        skopeo: str = "skopeo",
        username: str = "tester",
        password: str | None = None,
    ) -> None:
        if auth and not tls:
            raise ValueError("basic auth is only set up over TLS")
        self.root = Path(root)
        self.tls = tls
        self.auth = auth
        self.binary = binary or find_registry_binary() or DEFAULT_BINARY
        self.skopeo = skopeo
        self.scheme = "https" if tls else "http"
        self.username: str | None = username if auth else None
        self.password: str | None = (password or "pw-" + secrets.token_hex(12)) if auth else None
        self.storage = self.root / "storage"
        self.config_path = self.root / "config.yml"
        self.log_path = self.root / "registry.log"
        self.cert_dir: Path | None = None
        self._server_cert: tuple[Path, Path] | None = None
        self._htpasswd: Path | None = None
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` (valid once started)."""
        if self.port is None:
            raise RegistryError("the registry is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:PORT``."""
        return f"{self.scheme}://{self.host}"

    @property
    def pid(self) -> int | None:
        """Pid of the running registry process, if any."""
        return self._proc.pid if self._proc is not None else None

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        if self.tls and self._server_cert is None:
            ca, cert, key = make_certificates(self.root / "pki")
            self.cert_dir = self.root / "certs.d"
            self.cert_dir.mkdir(exist_ok=True)
            # Only the CA: a *.key without its *.cert makes containers/image fail.
            shutil.copyfile(ca, self.cert_dir / "ca.crt")
            self._server_cert = (cert, key)
        if self.auth and self._htpasswd is None:
            assert self.username is not None and self.password is not None
            self._htpasswd = self.root / "htpasswd"
            self._htpasswd.write_text(htpasswd_line(self.username, self.password))

    def _config(self, port: int) -> dict[str, object]:
        http: dict[str, object] = {
            "addr": f"127.0.0.1:{port}",
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self._server_cert is not None:
            cert, key = self._server_cert
            http["tls"] = {"certificate": str(cert), "key": str(key)}
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
            "health": {"storagedriver": {"enabled": False}},
        }
        if self._htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "test-registry", "path": str(self._htpasswd)}}
        return config

    def start(self) -> Registry:
        """Start the registry on a free port and wait until ``GET /v2/`` answers."""
        if self._proc is not None:
            return self
        self._prepare()
        failures: list[str] = []
        for _ in range(_START_ATTEMPTS):
            port = _free_port()
            # JSON is YAML: no YAML writer needed.
            self.config_path.write_text(json.dumps(self._config(port), indent=2))
            self.port = port
            with open(self.log_path, "ab") as log:
                log.write(f"--- starting on port {port}\n".encode())
                log.flush()
                self._proc = subprocess.Popen(
                    [self.binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=self.root,
                    preexec_fn=(
                        _die_with_parent
                        if threading.current_thread() is threading.main_thread()
                        else None
                    ),
                )
            with _RUNNING_LOCK:
                _RUNNING.add(self)
            problem = self._wait_ready()
            if problem is None:
                return self
            failures.append(f"port {port}: {problem}")
            self.stop()
        self.port = None
        raise RegistryError(
            f"docker-registry did not start: {'; '.join(failures)}\n{self.log_tail()}"
        )

    def _wait_ready(self) -> str | None:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return f"exited with status {self._proc.returncode}"
            try:
                status, headers, _ = self.request("GET", "/v2/", authenticate=False, timeout=2)
            except (OSError, http.client.HTTPException) as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.05)
                continue
            # Another server may have taken the port in the meantime: check it is ours.
            if status in (200, 401) and "registry/2.0" in headers.get(
                "docker-distribution-api-version", ""
            ):
                return None
            return f"unexpected answer {status} from /v2/"
        return f"not ready after {_START_TIMEOUT}s ({last})"

    def stop(self) -> None:
        """Terminate the registry, kill it after 5 s, and wait for it. Idempotent."""
        proc, self._proc = self._proc, None
        with _RUNNING_LOCK:
            _RUNNING.discard(self)
        if proc is None:
            return
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 30.0)):
            if proc.poll() is not None:
                break
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                continue
        proc.wait()

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        kind = "auth" if self.auth else "tls" if self.tls else "plain"
        where = self.host if self.port is not None else "not started"
        return f"<Registry {kind} {where} pid={self.pid}>"

    def log_tail(self, size: int = 4000) -> str:
        """The end of the registry's log file."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-size:].decode(errors="replace")

    # ------------------------------------------------------------------ HTTP

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting this registry's CA (None for plain HTTP)."""
        if self.cert_dir is None:
            return None
        return ssl.create_default_context(cafile=str(self.cert_dir / "ca.crt"))

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        *,
        authenticate: bool = True,
        timeout: float = 10,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request: ``(status, lower-cased headers, body)``."""
        assert self.port is not None
        conn: http.client.HTTPConnection
        if self.tls:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=timeout, context=self.ssl_context()
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        all_headers = dict(headers or {})
        if authenticate and self.auth:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            all_headers["Authorization"] = f"Basic {token}"
        try:
            conn.request(method, path, headers=all_headers)
            response = conn.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            conn.close()

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        """``(bytes, media type, Docker-Content-Digest)`` of a stored manifest or index."""
        status, headers, body = self.request(
            "GET", f"/v2/{repo}/manifests/{reference}", {"Accept": MANIFEST_ACCEPT}
        )
        if status != 200:
            raise RegistryError(f"GET manifest {repo}:{reference}: HTTP {status} {body[:200]!r}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if headers.get("docker-content-digest", digest) != digest:
            raise RegistryError(f"registry digest {headers['docker-content-digest']} != {digest}")
        return body, headers.get("content-type", ""), digest

    def manifest_digest(self, repo: str, reference: str) -> str:
        """Digest of the manifest (or index) stored under a tag or digest."""
        return self.get_manifest(repo, reference)[2]

    # ------------------------------------------------------------------ references and pushes

    def ref(self, repo: str, tag: str) -> str:
        """``docker://HOST/repo:tag``."""
        return f"docker://{self.host}/{repo}:{tag}"

    def digest_ref(self, repo: str, digest: str) -> str:
        """``docker://HOST/repo@sha256:...``."""
        return f"docker://{self.host}/{repo}@{digest}"

    def pinned_ref(self, repo: str, tag: str) -> str:
        """The digest reference of what ``repo:tag`` currently points at."""
        return self.digest_ref(repo, self.manifest_digest(repo, tag))

    def _dest_options(self) -> list[str]:
        options = []
        if self.tls:
            assert self.cert_dir is not None
            options += ["--dest-cert-dir", str(self.cert_dir)]
        else:
            options.append("--dest-tls-verify=false")
        if self.auth:
            options += ["--dest-creds", f"{self.username}:{self.password}"]
        else:
            options.append("--dest-no-creds")
        return options

    def push(self, source_ref: str, repo: str, tag: str, *extra: str) -> str:
        """``skopeo copy --preserve-digests SOURCE docker://HOST/repo:tag``; returns that.

        ``--preserve-digests`` keeps skopeo from compressing uncompressed layers on
        the way into a registry, so the manifest stored is the source's, byte for byte.
        """
        dest = self.ref(repo, tag)
        run_skopeo(
            "copy", "--quiet", "--preserve-digests", *self._dest_options(), *extra,
            source_ref, dest, skopeo=self.skopeo,
        )  # fmt: skip
        return dest

    def push_index(self, source_ref: str, repo: str, tag: str) -> str:
        """Push a multi-platform index and every image it lists (``skopeo copy --all``)."""
        return self.push(source_ref, repo, tag, "--all")

    def push_image(self, image: BuiltImage, repo: str, tag: str) -> RegistryImage:
        """Push a built image and check that the registry stores its manifest unchanged."""
        ref = self.push(image.ref, repo, tag)
        body, _, digest = self.get_manifest(repo, tag)
        if body != image.manifest:
            raise RegistryError(f"skopeo copy changed the manifest of {image.ref}")
        return RegistryImage(self, repo, tag, ref, self.digest_ref(repo, digest), image)

    def push_index_image(self, index: MultiPlatformImage, repo: str, tag: str) -> RegistryIndex:
        """Push a multi-platform image and check that the index is stored unchanged."""
        ref = self.push_index(index.ref, repo, tag)
        body, _, digest = self.get_manifest(repo, tag)
        if body != index.index:
            raise RegistryError(f"skopeo copy --all changed the index of {index.ref}")
        return RegistryIndex(self, repo, tag, ref, self.digest_ref(repo, digest), index)
