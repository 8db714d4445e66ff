#!/usr/bin/env python3
"""A fake ``skopeo experimental-image-proxy`` for tests.

It speaks the wire protocol described in docs/protocol.md at any protocol
version from 0.2.3 to 0.2.8, serves ``oci:DIR[:TAG]`` references from a real OCI image
layout on disk, and can inject faults that a real skopeo only shows against a flaky
registry.  The client runs it in place of skopeo::

    python tests/support/fakeproxy.py --protocol 0.2.8 [fake options] [skopeo global options]
        experimental-image-proxy [skopeo proxy options]

with one end of a ``SOCK_SEQPACKET`` socketpair as stdin (or as ``--sockfd N``).

Fake options (accepted before or after ``experimental-image-proxy``):

``--protocol X.Y.Z``
    version returned by Initialize; methods newer than it get "unknown method: M",
    and replies carry ``error_code`` only from 0.2.8 (default 0.2.8).
``--log FILE``
    append one line per received request, ``METHOD JSON-ARGS``, flushed at once.
``--raw-blob-error {retryable,other,EPIPE}``
    GetRawBlob streams half of the blob, then writes that error to the error pipe.
``--blob-extra-bytes N``
    GetBlob streams N zero bytes more than the blob has.
``--raw-blob-extra-bytes N``
    GetRawBlob streams N zero bytes more than the blob has.
``--stall-blob``
    GetBlob and GetRawBlob workers write half of the blob, then block forever
    without closing anything.
``--unknown-size``
    GetBlob and GetRawBlob reply with value -1 instead of the size.
``--fail-blob``
    GetBlob workers write half of the blob, then fail as skopeo's do when the
    registry resets the connection: the write end stays open until FinishPipe,
    whose reply carries the error (with code "retryable" from 0.2.8).
``--die-on METHOD``
    upon receiving METHOD, write "fake proxy dying" to stderr and exit with status 3
    (repeatable).
``--bad-reply KIND``
    answer the first OpenImage with a malformed reply (the image is opened anyway);
    KIND is one of BAD_REPLY_KINDS below.
``--manifest-digest {instance,index}``
    value of GetManifest for a reference that resolves through an image index:
    the digest of the chosen per-platform manifest (``instance``, default: what
    skopeo 1.9.3 and current upstream actually return) or of the index (``index``,
    what skopeo's man page says; docs/protocol.md, Methods, explains the difference).

Skopeo options are accepted with Go flag syntax (``--flag value``, ``--flag=value``,
bare booleans, ``--bool=false``): global options before or after the subcommand, proxy
options only after it; anything else exits with skopeo's "unknown flag" message.
``--sockfd``, ``--shared-blob-dir``, ``--override-os``, ``--override-arch``,
``--override-variant`` and ``--debug`` have an effect; the rest are ignored.

Behaviour copied from skopeo 1.9.3 (observed) and upstream's proxy.go: pipe ids are the
write end's fd number; the manifest behind a reference is read and resolved to a platform
lazily, at the first GetManifest / GetConfig / GetFullConfig / GetLayerInfo*; GetFullConfig
and GetConfig re-serialise the configuration the way Go's encoding/json does; GetBlob
checks the size, then the digest (the digest error wins); error messages are skopeo's.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

MAX_MSG_SIZE = 32 * 1024
MAX_JSON_INT = (1 << 53) - 1
CHUNK = 64 * 1024
EPIPE_MESSAGE = "write |1: broken pipe"
DIE_MESSAGE = "fake proxy dying"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_V2S2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V2S1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

#: The protocol version that introduced each method.
METHOD_SINCE: dict[str, tuple[int, int, int]] = {
    "Initialize": (0, 2, 1),
    "OpenImage": (0, 2, 1),
    "CloseImage": (0, 2, 1),
    "GetManifest": (0, 2, 1),
    "GetConfig": (0, 2, 1),
    "GetBlob": (0, 2, 1),
    "FinishPipe": (0, 2, 1),
    "Shutdown": (0, 2, 1),
    "GetFullConfig": (0, 2, 3),
    "OpenImageOptional": (0, 2, 4),
    "GetLayerInfo": (0, 2, 5),
    "GetLayerInfoPiped": (0, 2, 7),
    "GetRawBlob": (0, 2, 8),
}
ERROR_CODE_SINCE = (0, 2, 8)

BAD_REPLY_KINDS = (
    "notjson",  # a packet that is not JSON
    "not-object",  # valid JSON, but an array
    "missing-field",  # {"success": true} and nothing else
    "wrong-type",  # every field has the wrong JSON type
    "fd-without-pipeid",  # success, pipeid 0, one fd attached
    "pipeid-without-fd",  # success, pipeid 12345, no fd attached
    "two-fds",  # success, pipeid 0, two fds attached
    "oversize",  # a valid reply padded with spaces past 32 KiB
    "unknown-error-code",  # failure with error_code "bogus-code" (at any version)
    "zero-handle",  # success with value 0 (never a valid handle)
)
RAW_BLOB_ERRORS = ("retryable", "other", "EPIPE")

KNOWN_TRANSPORTS = (
    "containers-storage",
    "dir",
    "docker",
    "docker-archive",
    "docker-daemon",
    "oci",
    "oci-archive",
    "ostree",
    "sif",
    "tarball",
)
GO_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
    "mips64": "mips64",
}
#: Variants of an architecture, most capable first (as in containers/image).
ARCH_VARIANTS = {"arm": ["v8", "v7", "v6", "v5"], "arm64": ["v8"]}

FlagKind = str  # "bool" | "str" | "int" | "list"
FAKE_FLAGS: dict[str, FlagKind] = {
    "protocol": "str",
    "log": "str",
    "raw-blob-error": "str",
    "blob-extra-bytes": "int",
    "raw-blob-extra-bytes": "int",
    "stall-blob": "bool",
    "unknown-size": "bool",
    "fail-blob": "bool",
    "die-on": "list",
    "bad-reply": "str",
    "manifest-digest": "str",
}
GLOBAL_FLAGS: dict[str, FlagKind] = {
    "debug": "bool",
    "policy": "str",
    "insecure-policy": "bool",
    "registries.d": "str",
    "override-os": "str",
    "override-arch": "str",
    "override-variant": "str",
    "tmpdir": "str",
    "command-timeout": "str",
    "user-agent-prefix": "str",
    "require-signed": "bool",
    "tls-details": "str",
}
PROXY_FLAGS: dict[str, FlagKind] = {
    "authfile": "str",
    "no-creds": "bool",
    "creds": "str",
    "username": "str",
    "password": "str",
    "registry-token": "str",
    "cert-dir": "str",
    "tls-verify": "bool",
    "decryption-key": "list",
    "shared-blob-dir": "str",
    "daemon-host": "str",
    "sockfd": "int",
}
SUBCOMMAND = "experimental-image-proxy"


# --------------------------------------------------------------------------- helpers


class ProxyError(Exception):
    """An error reported to the client; ``code`` becomes ``error_code`` from 0.2.8."""

    def __init__(self, message: str, code: str = "other") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def go_json(value: Any) -> str:
    """Serialise like Go's encoding/json: compact, UTF-8, HTML characters escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def go_quote(text: str) -> str:
    """Approximate Go's %q for the strings that appear in messages."""
    return json.dumps(text, ensure_ascii=False)


def go_type(value: Any) -> str:
    """Name a decoded JSON value's type as Go's %T would (decoding into ``any``)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"


def os_error_message(op: str, path: str, exc: OSError) -> str:
    """Format an OSError the way Go's *PathError prints."""
    reason = exc.strerror or str(exc)
    return f"{op} {path}: {reason[:1].lower()}{reason[1:]}"


def parse_version(text: str) -> tuple[int, int, int]:
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"invalid protocol version {text!r}, expected X.Y.Z")
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def parse_uint64(value: Any) -> int:
    """Validate a JSON number the way skopeo's parseUint64 does (including its quirks)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProxyError(f"expecting numeric, not {go_type(value)}")
    if value > MAX_JSON_INT:
        raise ProxyError(f"out of range integer for numeric {float(value):f}")
    # Go's uint64(float64) truncates toward zero and wraps negative values.
    return int(value) % (1 << 64)


def parse_digest(text: str) -> tuple[str, str]:
    """Split and validate a digest like go-digest's Parse; return (algorithm, hex)."""
    alg, sep, hexpart = text.partition(":")
    if not sep or not alg or not hexpart:
        raise ProxyError("invalid checksum digest format")
    lengths = {"sha256": 64, "sha384": 96, "sha512": 128}
    if alg not in lengths:
        raise ProxyError("unsupported digest algorithm")
    if len(hexpart) != lengths[alg]:
        raise ProxyError("invalid checksum digest length")
    if any(c not in "0123456789abcdef" for c in hexpart):
        raise ProxyError("invalid checksum digest format")
    return alg, hexpart


def parse_go_bool(flag: str, text: str) -> bool:
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    fatal(
        f'invalid argument "{text}" for "--{flag}" flag: '
        f'strconv.ParseBool: parsing "{text}": invalid syntax'
    )


def logrus_line(level: str, msg: str) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"time={go_quote(stamp)} level={level} msg={go_quote(msg)}\n"


def fatal(msg: str) -> NoReturn:
    """Exit as skopeo does on a fatal error (logrus.Fatal: status 1)."""
    sys.stderr.write(logrus_line("fatal", msg))
    sys.stderr.flush()
    os._exit(1)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:CHUNK])
        view = view[written:]


def close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


# --------------------------------------------------------------------------- options


@dataclass
class Options:
    protocol: tuple[int, int, int] = (0, 2, 8)
    protocol_text: str = "0.2.8"
    log: str | None = None
    raw_blob_error: str | None = None
    blob_extra_bytes: int = 0
    raw_blob_extra_bytes: int = 0
    stall_blob: bool = False
    unknown_size: bool = False
    fail_blob: bool = False
    die_on: set[str] = field(default_factory=set)
    bad_reply: str | None = None
    manifest_digest: str = "instance"
    debug: bool = False
    override_os: str | None = None
    override_arch: str | None = None
    override_variant: str | None = None
    shared_blob_dir: str | None = None
    sockfd: int = 0


def parse_flags(
    args: list[str], allowed: dict[str, FlagKind], values: dict[str, Any], *, subcommand: bool
) -> None:
    """Parse Go (pflag) style long options into ``values``; positionals are refused."""
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            if subcommand:
                fatal(f'unknown command "{arg}" for "skopeo {SUBCOMMAND}"')
            fatal(f'unknown command "{arg}" for "skopeo"')
        name, has_value, value = arg[2:].partition("=")
        kind = allowed.get(name)
        if kind is None:
            fatal(f"unknown flag: --{name}")
        if kind == "bool":
            values[name] = parse_go_bool(name, value) if has_value else True
            continue
        if not has_value:
            if i >= len(args):
                fatal(f"flag needs an argument: --{name}")
            value = args[i]
            i += 1
        if kind == "int":
            try:
                values[name] = int(value, 0)
            except ValueError:
                fatal(f'invalid argument "{value}" for "--{name}" flag: parse error')
        elif kind == "list":
            values.setdefault(name, []).append(value)
        else:
            values[name] = value


def parse_options(argv: list[str]) -> Options:
    if SUBCOMMAND not in argv:
        fatal(f"fakeproxy: expected the {SUBCOMMAND} subcommand")
    split = argv.index(SUBCOMMAND)
    values: dict[str, Any] = {}
    parse_flags(argv[:split], {**FAKE_FLAGS, **GLOBAL_FLAGS}, values, subcommand=False)
    parse_flags(
        argv[split + 1 :], {**FAKE_FLAGS, **GLOBAL_FLAGS, **PROXY_FLAGS}, values, subcommand=True
    )

    opts = Options()
    if "protocol" in values:
        try:
            opts.protocol = parse_version(values["protocol"])
        except ValueError as exc:
            fatal(str(exc))
        opts.protocol_text = values["protocol"]
    opts.log = values.get("log")
    opts.raw_blob_error = values.get("raw-blob-error")
    if opts.raw_blob_error is not None and opts.raw_blob_error not in RAW_BLOB_ERRORS:
        fatal(f"--raw-blob-error must be one of {', '.join(RAW_BLOB_ERRORS)}")
    opts.blob_extra_bytes = values.get("blob-extra-bytes", 0)
    opts.raw_blob_extra_bytes = values.get("raw-blob-extra-bytes", 0)
    opts.stall_blob = values.get("stall-blob", False)
    opts.unknown_size = values.get("unknown-size", False)
    opts.fail_blob = values.get("fail-blob", False)
    opts.die_on = set(values.get("die-on", []))
    opts.bad_reply = values.get("bad-reply")
    if opts.bad_reply is not None and opts.bad_reply not in BAD_REPLY_KINDS:
        fatal(f"--bad-reply must be one of {', '.join(BAD_REPLY_KINDS)}")
    opts.manifest_digest = values.get("manifest-digest", "instance")
    if opts.manifest_digest not in ("instance", "index"):
        fatal("--manifest-digest must be instance or index")
    opts.debug = values.get("debug", False)
    opts.override_os = values.get("override-os")
    opts.override_arch = values.get("override-arch")
    opts.override_variant = values.get("override-variant")
    opts.shared_blob_dir = values.get("shared-blob-dir")
    opts.sockfd = values.get("sockfd", 0)
    return opts


# --------------------------------------------------------------------------- OCI layout


@dataclass
class Layout:
    """An OCI image layout directory (and where its blobs live)."""

    path: str
    blob_dir: str

    def blob_path(self, digest: str) -> str:
        alg, hexpart = parse_digest(digest)
        return os.path.join(self.blob_dir, alg, hexpart)

    def read_blob(self, digest: str) -> bytes:
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ProxyError(os_error_message("open", path, exc)) from None

    def read_index(self) -> dict[str, Any]:
        path = os.path.join(self.path, "index.json")
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ProxyError(os_error_message("open", path, exc)) from None
        try:
            index = json.loads(raw)
        except ValueError as exc:
            raise ProxyError(f"parsing {path}: {exc}") from None
        if not isinstance(index, dict):
            raise ProxyError(f"parsing {path}: not a JSON object")
        return index


class ImageNotFound(ProxyError):
    """containers/image's oci ImageNotFoundError: OpenImageOptional answers 0 for it."""


@dataclass
class Resolved:
    """The manifest an image handle resolved to."""

    top_digest: str
    digest: str
    raw: bytes
    manifest: dict[str, Any]


@dataclass
class Image:
    layout: Layout
    descriptor: dict[str, Any]
    resolved: Resolved | None = None


@dataclass
class ActivePipe:
    """A FinishPipe-style pipe: the write end stays open until FinishPipe."""

    wfd: int
    thread: threading.Thread | None = None
    error: ProxyError | None = None


def wanted_platform(opts: Options) -> tuple[str, str, str | None]:
    os_name = opts.override_os or "linux"
    machine = platform.machine()
    arch = (
        opts.override_arch
        or GO_ARCH.get(machine)
        or ("arm" if machine.startswith("arm") else machine)
    )
    variant = opts.override_variant
    if variant is None and opts.override_arch is None and arch == "arm" and machine[4:5].isdigit():
        variant = "v" + machine[4]
    return os_name, arch, variant


def normalize_variant(arch: str, variant: str) -> str:
    if arch == "arm64" and variant == "v8":
        return ""
    return variant


def choose_instance(index: dict[str, Any], opts: Options) -> dict[str, Any]:
    """Pick the index entry for our platform, like containers/image's ChooseInstance."""
    os_name, arch, variant = wanted_platform(opts)
    order = ARCH_VARIANTS.get(arch, [])
    if variant is not None:
        variants = order[order.index(variant) :] if variant in order else [variant]
    else:
        variants = ["", *order]
    manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    for want in variants:
        for desc in manifests:
            plat = desc.get("platform")
            if not isinstance(plat, dict):
                continue
            if (
                plat.get("os") == os_name
                and plat.get("architecture") == arch
                and normalize_variant(arch, plat.get("variant") or "")
                == normalize_variant(arch, want)
            ):
                return desc
    for desc in manifests:
        if desc.get("platform") is None:
            return desc
    raise ProxyError(
        f"no image found in image index for architecture {arch}, "
        f"variant {go_quote(variant or '')}, OS {os_name}"
    )


def manifest_type(desc: dict[str, Any], parsed: dict[str, Any]) -> str:
    return str(desc.get("mediaType") or parsed.get("mediaType") or "")


# ------------------------------------------------------- Go-style config re-serialisation

_OMIT = object()


def _go_fields(
    obj: Any, fields: list[tuple[str, bool, Callable[[Any], Any] | None]]
) -> dict[str, Any]:
    """Rebuild a JSON object the way a Go struct would marshal it (known fields only)."""
    src = obj if isinstance(obj, dict) else {}
    out: dict[str, Any] = {}
    for name, omitempty, convert in fields:
        value = src.get(name, _OMIT)
        if value is _OMIT or value is None:
            if omitempty:
                continue
            value = convert(None) if convert else ""
        elif convert is not None:
            value = convert(value)
        if omitempty and value in ("", 0, False, [], {}):
            continue
        out[name] = value
    return out


def _sorted_map(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: value[k] for k in sorted(value)}
    return value


def _go_image_config(value: Any) -> Any:
    return _go_fields(
        value,
        [
            ("User", True, None),
            ("ExposedPorts", True, _sorted_map),
            ("Env", True, None),
            ("Entrypoint", True, None),
            ("Cmd", True, None),
            ("Volumes", True, _sorted_map),
            ("WorkingDir", True, None),
            ("Labels", True, _sorted_map),
            ("StopSignal", True, None),
            ("ArgsEscaped", True, None),
        ],
    )


def _go_rootfs(value: Any) -> Any:
    return _go_fields(value, [("type", False, None), ("diff_ids", False, lambda v: v)])


def _go_history(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    return [
        _go_fields(
            entry,
            [
                ("created", True, None),
                ("created_by", True, None),
                ("author", True, None),
                ("comment", True, None),
                ("empty_layer", True, None),
            ],
        )
        for entry in value
    ]


def go_oci_config(config: Any) -> dict[str, Any]:
    """Mimic json.Marshal(imgspecv1.Image) after json.Unmarshal of ``config``."""
    return _go_fields(
        config,
        [
            ("created", True, None),
            ("author", True, None),
            ("architecture", False, None),
            ("os", False, None),
            ("os.version", True, None),
            ("os.features", True, None),
            ("variant", True, None),
            ("config", False, _go_image_config),
            ("rootfs", False, _go_rootfs),
            ("history", True, _go_history),
        ],
    )


# --------------------------------------------------------------------------- the server


Reply = tuple[Any, int, list[int]]  # value, pipeid, fds to send (and then close)


class FakeProxy:
    def __init__(self, opts: Options, sock: socket.socket) -> None:
        self.opts = opts
        self.sock = sock
        self.initialized = False
        self.image_serial = 0
        self.images: dict[int, Image] = {}
        self.pipes: dict[int, ActivePipe] = {}
        self.bad_reply_pending = opts.bad_reply is not None
        self.log_file = open(opts.log, "a", encoding="utf-8") if opts.log else None  # noqa: SIM115

    # ---------------------------------------------------------------- plumbing

    def debug(self, msg: str) -> None:
        if self.opts.debug:
            sys.stderr.write(logrus_line("debug", msg))
            sys.stderr.flush()

    def log_request(self, line: str) -> None:
        if self.log_file is not None:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def exit(self, status: int) -> NoReturn:
        if self.log_file is not None:
            self.log_file.flush()
        sys.stderr.flush()
        os._exit(status)

    def serve(self) -> NoReturn:
        while True:
            try:
                data, ancdata, flags, _ = self.sock.recvmsg(MAX_MSG_SIZE, socket.CMSG_SPACE(16 * 4))
            except (ConnectionResetError, BrokenPipeError):
                self.exit(0)
            except OSError as exc:
                fatal(f"reading socket: {exc}")
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(payload) - len(payload) % 4
                    for i in range(0, usable, 4):
                        close_quietly(int.from_bytes(payload[i : i + 4], sys.byteorder))
            if not data:
                self.debug("end of file on the socket")
                self.exit(0)
            self.handle_packet(data, truncated=bool(flags & socket.MSG_TRUNC))

    def handle_packet(self, data: bytes, *, truncated: bool) -> None:
        method = ""
        value: Any = None
        pipeid = 0
        fds: list[int] = []
        error: ProxyError | None = None
        try:
            method, args = self.parse_request(data, truncated)
        except ProxyError as exc:
            self.log_request(f"<invalid request> {data[:200]!r}")
            error = exc
        else:
            self.log_request(f"{method} {json.dumps(args)}")
            self.debug(f"Executing method {method}")
            if method in self.opts.die_on:
                sys.stderr.write(DIE_MESSAGE + "\n")
                self.exit(3)
            if method == "Shutdown" and self.has_method(method):
                self.debug("terminating")
                self.exit(0)
            try:
                value, pipeid, fds = self.dispatch(method, args)
            except ProxyError as exc:
                error = exc
        if method == "OpenImage" and self.bad_reply_pending:
            self.bad_reply_pending = False
            self.send_bad_reply(value if error is None else 1)
            for fd in fds:
                close_quietly(fd)
            return
        self.send_reply(value, pipeid, fds, error)

    def parse_request(self, data: bytes, truncated: bool) -> tuple[str, list[Any]]:
        if truncated:
            raise ProxyError("invalid request: unexpected end of JSON input")

        def reject_constant(name: str) -> NoReturn:
            raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")

        try:
            req = json.loads(data, parse_constant=reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProxyError(f"invalid request: {exc}") from None
        if not isinstance(req, dict):
            raise ProxyError(
                f"invalid request: json: cannot unmarshal {json_kind(req)} "
                "into Go value of type main.request"
            )
        method = req.get("method")
        if method is None:
            method = ""
        if not isinstance(method, str):
            raise ProxyError(
                f"invalid request: json: cannot unmarshal {json_kind(method)} "
                "into Go struct field request.method of type string"
            )
        args = req.get("args")
        if args is None:
            args = []
        if not isinstance(args, list):
            raise ProxyError(
                f"invalid request: json: cannot unmarshal {json_kind(args)} "
                "into Go struct field request.args of type []interface {}"
            )
        return method, args

    def reply_object(self, value: Any, pipeid: int, error: ProxyError | None) -> dict[str, Any]:
        obj: dict[str, Any] = {"success": error is None, "value": value, "pipeid": pipeid}
        if error is not None:
            obj["value"] = None
            obj["pipeid"] = 0
        if self.opts.protocol >= ERROR_CODE_SINCE:
            obj["error_code"] = "" if error is None else error.code
        obj["error"] = "" if error is None else error.message
        return obj

    def send_packet(self, data: bytes, fds: list[int]) -> None:
        try:
            if fds:
                socket.send_fds(self.sock, [data], fds)
            else:
                self.sock.send(data)
        except OSError as exc:
            fatal(f"writing to socket: {exc}")
        finally:
            for fd in fds:
                close_quietly(fd)

    def send_reply(self, value: Any, pipeid: int, fds: list[int], error: ProxyError | None) -> None:
        if error is not None:
            for fd in fds:
                close_quietly(fd)
            fds = []
        obj = self.reply_object(value, pipeid, error)
        self.debug(f"Sending reply: {obj}")
        self.send_packet(go_json(obj).encode(), fds)

    def send_bad_reply(self, handle: Any) -> None:
        kind = self.opts.bad_reply
        fds: list[int] = []
        obj = self.reply_object(handle, 0, None)
        if kind == "notjson":
            data = b"this is not JSON {"
        elif kind == "not-object":
            data = go_json([True, handle, 0, ""]).encode()
        elif kind == "missing-field":
            data = go_json({"success": True}).encode()
        elif kind == "wrong-type":
            wrong: dict[str, Any] = {"success": "true", "value": str(handle), "pipeid": "0"}
            if self.opts.protocol >= ERROR_CODE_SINCE:
                wrong["error_code"] = 0
            wrong["error"] = 0
            data = go_json(wrong).encode()
        elif kind in ("fd-without-pipeid", "two-fds"):
            for _ in range(1 if kind == "fd-without-pipeid" else 2):
                r, w = os.pipe()
                os.close(w)
                fds.append(r)
            data = go_json(obj).encode()
        elif kind == "pipeid-without-fd":
            obj["pipeid"] = 12345
            data = go_json(obj).encode()
        elif kind == "oversize":
            data = go_json(obj).encode() + b" " * (MAX_MSG_SIZE + 1024)
        elif kind == "unknown-error-code":
            bogus = {
                "success": False,
                "value": None,
                "pipeid": 0,
                "error_code": "bogus-code",
                "error": "fake error with an unknown error_code",
            }
            data = go_json(bogus).encode()
        else:  # zero-handle
            obj["value"] = 0
            data = go_json(obj).encode()
        self.debug(f"Sending bad reply ({kind})")
        self.send_packet(data, fds)

    def has_method(self, method: str) -> bool:
        since = METHOD_SINCE.get(method)
        return since is not None and self.opts.protocol >= since

    # ---------------------------------------------------------------- dispatch

    def dispatch(self, method: str, args: list[Any]) -> Reply:
        if not self.has_method(method):
            raise ProxyError(f"unknown method: {method}")
        if method == "FinishPipe":  # skopeo does not check Initialize for it
            return self.finish_pipe(args)
        if method == "Initialize":
            return self.initialize(args)
        if not self.initialized:
            raise ProxyError("client error: must invoke Initialize")
        handler: Callable[[list[Any]], Reply] = {
            "OpenImage": self.open_image,
            "OpenImageOptional": self.open_image_optional,
            "CloseImage": self.close_image,
            "GetManifest": self.get_manifest,
            "GetFullConfig": self.get_full_config,
            "GetConfig": self.get_config,
            "GetBlob": self.get_blob,
            "GetRawBlob": self.get_raw_blob,
            "GetLayerInfo": self.get_layer_info,
            "GetLayerInfoPiped": self.get_layer_info_piped,
        }[method]
        return handler(args)

    def initialize(self, args: list[Any]) -> Reply:
        if args:
            raise ProxyError("invalid request, expecting zero arguments")
        if self.initialized:
            raise ProxyError("already initialized")
        self.initialized = True
        return self.opts.protocol_text, 0, []

    def open_image(self, args: list[Any], *, allow_not_found: bool = False) -> Reply:
        if len(args) != 1:
            raise ProxyError("invalid request, expecting one argument")
        ref = args[0]
        if not isinstance(ref, str):
            raise ProxyError(f"expecting string imageref, not {go_type(ref)}")
        try:
            image = self.open_reference(ref)
        except ImageNotFound:
            if allow_not_found:
                return 0, 0, []
            raise
        self.image_serial += 1
        self.images[self.image_serial] = image
        return self.image_serial, 0, []

    def open_image_optional(self, args: list[Any]) -> Reply:
        return self.open_image(args, allow_not_found=True)

    def open_reference(self, ref: str) -> Image:
        transport, sep, rest = ref.partition(":")
        if not sep:
            raise ProxyError(
                f"Invalid image name {go_quote(ref)}, expected colon-separated transport:reference"
            )
        if transport not in KNOWN_TRANSPORTS:
            raise ProxyError(
                f"Invalid image name {go_quote(ref)}, unknown transport {go_quote(transport)}"
            )
        if transport != "oci":
            return self.open_other_transport(transport, rest)
        directory, _, tag = rest.partition(":")
        directory = os.path.normpath(directory) if directory else ""
        blob_dir = self.opts.shared_blob_dir or os.path.join(directory, "blobs")
        layout = Layout(directory, blob_dir)
        index = layout.read_index()
        manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
        if not tag:
            if len(manifests) != 1:
                raise ProxyError("more than one image in oci, choose an image")
            return Image(layout, manifests[0])
        for desc in manifests:
            if desc.get("mediaType") not in (OCI_MANIFEST, OCI_INDEX):
                continue
            annotations = desc.get("annotations") or {}
            if isinstance(annotations, dict) and annotations.get(REF_NAME_ANNOTATION) == tag:
                return Image(layout, desc)
        raise ImageNotFound(f"no descriptor found for reference {go_quote(tag)}")

    def open_other_transport(self, transport: str, rest: str) -> NoReturn:
        if transport in ("docker-archive", "oci-archive", "dir"):
            path = rest.split(":", 1)[0]
            if not os.path.exists(path):
                try:
                    os.stat(path)
                except OSError as exc:
                    message = os_error_message("open", path, exc)
                    raise ProxyError(f"opening file {go_quote(path)}: {message}") from None
        if transport == "docker":
            if not rest.startswith("//"):
                raise ProxyError(
                    f"Invalid image name {go_quote(transport + ':' + rest)}, "
                    f"docker: image reference {rest} does not start with {go_quote('//')}"
                )
            host = rest[2:].split("/", 1)[0]
            raise ProxyError(
                f"pinging container registry {host}: Get {go_quote(f'https://{host}/v2/')}: "
                f"dial tcp: lookup {host}: no such host (fakeproxy serves oci: only)"
            )
        raise ProxyError(f"fakeproxy: the {transport}: transport is not supported (oci: only)")

    def parse_image_id(self, value: Any) -> Image:
        # skopeo 1.9.3 (0.2.3) words these two errors differently from later versions.
        old_skopeo = self.opts.protocol < METHOD_SINCE["OpenImageOptional"]
        if old_skopeo and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ProxyError(f"expecting integer imageid, not {go_type(value)}")
        image_id = parse_uint64(value)
        if image_id == 0 and not old_skopeo:
            raise ProxyError("Invalid imageid value of zero")
        image = self.images.get(image_id)
        if image is None:
            raise ProxyError(f"no image {image_id}")
        return image

    def close_image(self, args: list[Any]) -> Reply:
        if len(args) != 1:
            raise ProxyError("invalid request, expecting one argument")
        image = self.parse_image_id(args[0])
        for key, value in list(self.images.items()):
            if value is image:
                del self.images[key]
        return None, 0, []

    def resolve(self, image: Image) -> Resolved:
        if image.resolved is not None:
            return image.resolved
        desc = image.descriptor
        top_digest = str(desc.get("digest", ""))
        raw = image.layout.read_blob(top_digest)
        parsed = self.parse_manifest(raw)
        digest = top_digest
        mtype = manifest_type(desc, parsed)
        if mtype in (OCI_INDEX, DOCKER_LIST):
            instance = choose_instance(parsed, self.opts)
            digest = str(instance.get("digest", ""))
            raw = image.layout.read_blob(digest)
            parsed = self.parse_manifest(raw)
            mtype = manifest_type(instance, parsed)
        if mtype in DOCKER_V2S1:
            raise ProxyError(f"unsupported legacy manifest MIME type: {mtype}")
        if mtype != OCI_MANIFEST:
            raise ProxyError(f"unsupported manifest MIME type: {mtype}")
        image.resolved = Resolved(top_digest, digest, raw, parsed)
        return image.resolved

    @staticmethod
    def parse_manifest(raw: bytes) -> dict[str, Any]:
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise ProxyError(f"parsing manifest: {exc}") from None
        if not isinstance(parsed, dict):
            raise ProxyError("parsing manifest: not a JSON object")
        return parsed

    def read_config(self, image: Image) -> dict[str, Any]:
        resolved = self.resolve(image)
        config_desc = resolved.manifest.get("config") or {}
        raw = image.layout.read_blob(str(config_desc.get("digest", "")))
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise ProxyError(f"parsing config: {exc}") from None
        return go_oci_config(config)

    def layer_infos(self, image: Image) -> list[dict[str, Any]]:
        layers = self.resolve(image).manifest.get("layers") or []
        return [
            {
                "digest": layer.get("digest", ""),
                "size": layer.get("size", 0),
                "media_type": layer.get("mediaType", ""),
            }
            for layer in layers
            if isinstance(layer, dict)
        ]

    def one_image_arg(self, args: list[Any], message: str) -> Image:
        if len(args) != 1:
            raise ProxyError(message)
        return self.parse_image_id(args[0])

    def get_manifest(self, args: list[Any]) -> Reply:
        image = self.one_image_arg(args, "invalid request, expecting one argument")
        resolved = self.resolve(image)
        value = resolved.top_digest if self.opts.manifest_digest == "index" else resolved.digest
        return self.return_bytes(value, resolved.raw)

    def get_full_config(self, args: list[Any]) -> Reply:
        image = self.one_image_arg(args, "invalid request, expecting: [imgid]")
        return self.return_bytes(None, go_json(self.read_config(image)).encode())

    def get_config(self, args: list[Any]) -> Reply:
        image = self.one_image_arg(args, "invalid request, expecting: [imgid]")
        config = self.read_config(image).get("config", {})
        return self.return_bytes(None, go_json(config).encode())

    def get_layer_info(self, args: list[Any]) -> Reply:
        image = self.one_image_arg(args, f"found {len(args)} args, expecting (imgid)")
        return self.layer_infos(image), 0, []

    def get_layer_info_piped(self, args: list[Any]) -> Reply:
        image = self.one_image_arg(args, f"found {len(args)} args, expecting (imgid)")
        return self.return_bytes(None, go_json(self.layer_infos(image)).encode())

    # ---------------------------------------------------------------- pipes

    def alloc_pipe(self, work: Callable[[int], None]) -> tuple[int, int]:
        """Start a FinishPipe-style worker; return (read end, pipeid)."""
        rfd, wfd = os.pipe()
        pipe = ActivePipe(wfd)

        def run() -> None:
            try:
                work(wfd)
            except BrokenPipeError:
                pipe.error = ProxyError(EPIPE_MESSAGE, "EPIPE")
            except ProxyError as exc:
                pipe.error = exc
            except OSError as exc:
                pipe.error = ProxyError(os_error_message("write", "|1", exc))
            except Exception as exc:  # a bug in the fake: make it visible to the client
                pipe.error = ProxyError(f"fakeproxy internal error: {exc!r}")

        pipe.thread = threading.Thread(target=run, name=f"pipe-{wfd}", daemon=True)
        self.pipes[wfd] = pipe
        pipe.thread.start()
        return rfd, wfd

    def return_bytes(self, value: Any, data: bytes) -> Reply:
        rfd, pipeid = self.alloc_pipe(lambda wfd: write_all(wfd, data))
        return value, pipeid, [rfd]

    def open_blob(self, image: Image, digest: Any) -> tuple[str, str, str, int]:
        if not isinstance(digest, str):
            raise ProxyError("expecting string blobid")
        alg, hexpart = parse_digest(digest)
        path = image.layout.blob_path(digest)
        try:
            size = os.stat(path).st_size
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ProxyError(os_error_message("open", path, exc)) from None
        return path, alg, hexpart, size

    def stream_blob(
        self, wfd: int, path: str, extra: int, on_data: Callable[[bytes], None] | None = None
    ) -> int:
        """Copy a blob file (plus ``extra`` zero bytes) to ``wfd``; honour --stall-blob."""
        total = os.stat(path).st_size
        stall_at = total // 2 if self.opts.stall_blob or self.opts.fail_blob else None
        written = 0
        with open(path, "rb") as f:
            while True:
                limit = CHUNK if stall_at is None else min(CHUNK, stall_at - written)
                chunk = f.read(limit) if limit > 0 else b""
                if not chunk:
                    break
                if on_data is not None:
                    on_data(chunk)
                write_all(wfd, chunk)
                written += len(chunk)
        if self.opts.fail_blob:
            # skopeo keeps the pipe open after a failed source until FinishPipe.
            raise ProxyError(
                "read tcp 127.0.0.1:40000->127.0.0.1:5000: read: connection reset by peer",
                "retryable",
            )
        if stall_at is not None:
            threading.Event().wait()  # stall forever, keeping every fd open
        if extra > 0:
            padding = b"\0" * extra
            if on_data is not None:
                on_data(padding)
            write_all(wfd, padding)
            written += extra
        return written

    def get_blob(self, args: list[Any]) -> Reply:
        if len(args) != 3:
            raise ProxyError(f"found {len(args)} args, expecting (imgid, digest, size)")
        image = self.parse_image_id(args[0])
        if not isinstance(args[1], str):
            raise ProxyError("expecting string blobid")
        expected = parse_uint64(args[2])
        path, alg, hexpart, size = self.open_blob(image, args[1])
        digest = args[1]

        def work(wfd: int) -> None:
            hasher = hashlib.new(alg)
            count = self.stream_blob(wfd, path, self.opts.blob_extra_bytes, hasher.update)
            error = None
            if count != expected:
                error = ProxyError(f"expected {expected} bytes in blob, got {count}")
            if hasher.hexdigest() != hexpart:
                error = ProxyError(f"corrupted blob, expecting {digest}")
            if error is not None:
                raise error

        rfd, pipeid = self.alloc_pipe(work)
        return (-1 if self.opts.unknown_size else size), pipeid, [rfd]

    def get_raw_blob(self, args: list[Any]) -> Reply:
        if len(args) != 2:
            raise ProxyError(f"found {len(args)} args, expecting (imgid, digest)")
        image = self.parse_image_id(args[0])
        path, _, _, size = self.open_blob(image, args[1])
        digest = args[1]
        rfd, wfd = os.pipe()
        err_r, err_w = os.pipe()

        def work() -> None:
            error: ProxyError | None = None
            try:
                injected = self.opts.raw_blob_error
                if injected is None:
                    self.stream_blob(wfd, path, self.opts.raw_blob_extra_bytes)
                else:
                    with open(path, "rb") as f:
                        part = f.read(size // 2)
                    write_all(wfd, part)
                    error = injected_error(injected, digest, len(part))
            except BrokenPipeError:
                error = ProxyError(EPIPE_MESSAGE, "EPIPE")
            except OSError as exc:
                error = ProxyError(os_error_message("read", path, exc))
            except ProxyError as exc:
                error = exc
            finally:
                try:
                    if error is not None:
                        message = {"code": error.code, "message": error.message}
                        write_all(err_w, go_json(message).encode())
                except OSError:
                    pass
                close_quietly(wfd)
                close_quietly(err_w)

        threading.Thread(target=work, name=f"rawblob-{wfd}", daemon=True).start()
        return (-1 if self.opts.unknown_size else size), 0, [rfd, err_r]

    def finish_pipe(self, args: list[Any]) -> Reply:
        if len(args) != 1:
            raise ProxyError("invalid request, expecting one argument")
        pipeid = parse_uint64(args[0]) & 0xFFFFFFFF
        pipe = self.pipes.get(pipeid)
        if pipe is None:
            raise ProxyError(f"finishpipe: no active pipe {pipeid}")
        if pipe.thread is not None:
            pipe.thread.join()
        self.debug("Completed pipe goroutine")
        close_quietly(pipe.wfd)
        del self.pipes[pipeid]
        if pipe.error is not None:
            raise pipe.error
        return None, 0, []


def injected_error(kind: str, digest: str, offset: int) -> ProxyError:
    if kind == "EPIPE":
        return ProxyError(EPIPE_MESSAGE, "EPIPE")
    if kind == "retryable":
        return ProxyError(
            f"reading blob {digest}: read tcp 127.0.0.1:40000->127.0.0.1:5000: "
            f"read: connection reset by peer (fakeproxy: injected after {offset} bytes)",
            "retryable",
        )
    return ProxyError(f"reading blob {digest}: fakeproxy: injected error after {offset} bytes")


def json_kind(value: Any) -> str:
    """Name a JSON value's kind as Go's UnmarshalTypeError does."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


def fake_skopeo(protocol: str, *options: str) -> list[str]:
    """A ``skopeo_cmd`` that runs this fake at ``protocol`` with extra fake options."""
    return [sys.executable, os.path.abspath(__file__), "--protocol", protocol, *options]


def main(argv: list[str]) -> NoReturn:
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    opts = parse_options(argv)
    try:
        sock = socket.socket(fileno=opts.sockfd)
    except OSError as exc:
        fatal(f"socket on fd {opts.sockfd}: {exc}")
    if sock.type != socket.SOCK_SEQPACKET:
        fatal(f"fd {opts.sockfd} is not a SOCK_SEQPACKET socket")
    FakeProxy(opts, sock).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
