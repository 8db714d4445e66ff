"""Unit tests of containers-policy.json decoding and scope matching (``_policy``).

Nothing here touches the system: paths are resolved by a table the tests give.
The scope rules are those of containers-policy.json(5) and containers/image: the
reference's own identity first, then its namespaces from the most specific, then
the transport's ``""`` scope, then the global ``default``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from containers_image_proxy._policy import decode_policy, enforced_types, requirements_for
from containers_image_proxy._policy_document import (
    InsecureAcceptAnything,
    Reject,
    SignedBy,
    SigstoreSigned,
)
from containers_image_proxy._reference import parse_docker_name
from containers_image_proxy.errors import ConfigurationError

ACCEPT: dict[str, Any] = {"type": "insecureAcceptAnything"}
REJECT: dict[str, Any] = {"type": "reject"}
GPG: dict[str, Any] = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"}
DIGEST = "sha256:" + "ab" * 32
IMAGE_ID = "cd" * 32


def policy(transports: dict[str, Any] | None = None, default: Any = None) -> bytes:
    document: dict[str, Any] = {"default": default or [REJECT]}
    if transports is not None:
        document["transports"] = transports
    return json.dumps(document).encode()


def label(scope: str) -> list[dict[str, Any]]:
    """A requirement list that says which scope it came from (its keyPath)."""
    return [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": f"/{scope or 'EMPTY'}"}]


def no_links(path: str) -> str | None:
    """A resolver for a file system without symlinks, relative to /cwd."""
    return path if path.startswith("/") else f"/cwd/{path}"


def chosen(transports: dict[str, Any], reference: str, resolve: Any = no_links) -> list[str | None]:
    """The scopes ``requirements_for`` picks; None is the global default."""
    decoded = decode_policy(policy(transports), "test.json")
    return [match.scope for match in requirements_for(decoded, reference, resolve)]


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def test_decodes_the_documented_example() -> None:
    data = {
        "default": [REJECT],
        "transports": {
            "docker": {
                "docker.io/openshift": [ACCEPT],
                "*.temporary-project.example.com": [ACCEPT],
                "hostname:5000/myns/sigstore": [
                    {"type": "sigstoreSigned", "keyPath": "/p.pub"},
                ],
                "hostname:5000/myns/fulcio": [
                    {
                        "type": "sigstoreSigned",
                        "fulcio": {
                            "caPath": "/f.crt",
                            "oidcIssuer": "https://github.com/login/oauth",
                            "subjectEmail": "a@example.com",
                        },
                        "rekorPublicKeyPath": "/rekor.pub",
                        "signedIdentity": {"type": "matchRepository"},
                    }
                ],
                "private-mirror:5000/vendor-mirror": [
                    {
                        **GPG,
                        "signedIdentity": {
                            "type": "remapIdentity",
                            "prefix": "private-mirror:5000/vendor-mirror",
                            "signedPrefix": "vendor.example.com",
                        },
                    }
                ],
            },
            "dir": {"": [ACCEPT]},
        },
    }
    decoded = decode_policy(json.dumps(data).encode(), "p.json")
    assert decoded.default == (Reject(),)
    docker = decoded.transports["docker"]
    assert docker["docker.io/openshift"] == (InsecureAcceptAnything(),)
    sigstore = docker["hostname:5000/myns/fulcio"][0]
    assert isinstance(sigstore, SigstoreSigned) and sigstore.fulcio is not None
    assert sigstore.fulcio.oidc_issuer == "https://github.com/login/oauth"
    signed = docker["private-mirror:5000/vendor-mirror"][0]
    assert isinstance(signed, SignedBy) and signed.key_path == "/k.gpg"


def test_key_data_is_base64() -> None:
    data = policy(default=[{"type": "signedBy", "keyType": "GPGKeys", "keyData": "aGVsbG8="}])
    requirement = decode_policy(data, "p.json").default[0]
    assert isinstance(requirement, SignedBy) and requirement.key_data == b"hello"


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (b"", "p.json"),
        (b"{not json", "p.json"),
        (b"[]", "p.json"),
        (b'{"transports": {}}', "default"),
        (b'{"default": []}', "must not be empty"),
        (b'{"default": [{"type": "reject"}], "extra": 1}', "extra"),
        (b'{"default": [{"type": "reject", "keyPath": "/x"}]}', "keyPath"),
        (b'{"default": [{"type": "acceptIfSunny"}]}', "acceptIfSunny"),
        (b'{"default": [{"type": "reject"}], "default": [{"type": "insecureAcceptAnything"}]}',
         "duplicated key 'default'"),
        (b'{"default": [{"type": "signedBy", "keyType": "GPGKeys"}]}', "exactly one of"),
        (b'{"default": [{"type": "signedBy", "keyType": "X509", "keyPath": "/k"}]}', "keyType"),
        (b'{"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/a",'
         b' "keyData": "aGk="}]}', "exactly one of"),
        (b'{"default": [{"type": "sigstoreSigned"}]}', "exactly one of"),
        (b'{"default": [{"type": "sigstoreSigned", "keyPath": "/a",'
         b' "rekorPublicKeyPath": "/r", "rekorPublicKeyData": "aGk="}]}', "at most one of"),
        (b'{"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/a",'
         b' "signedIdentity": {"type": "matchEverything"}}]}', "matchEverything"),
        (b'{"default": [{"type": "reject"}], "transports": {"docker": {"x": []}}}',
         "must not be empty"),
    ],
)  # fmt: skip
def test_malformed_policy_names_the_file(document: bytes, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=r"invalid signature policy /etc/p\.json") as info:
        decode_policy(document, "/etc/p.json")
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("transport", "scope"),
    [
        ("oci", "relative/path"),
        ("oci", "/"),
        ("oci", "/a/../b"),
        ("oci", "/a/"),
        ("oci-archive", "/a//b"),
        ("dir", "a"),
        ("dir", "/"),
        ("sif", "/a/./b"),
        ("docker-archive", "/some/file.tar"),
        ("tarball", "/x"),
        ("docker-daemon", DIGEST),
        ("containers-storage", "no-store-spec"),
        ("containers-storage", "[relative@x]"),
        ("containers-storage", "[@/var/lib]"),
        ("containers-storage", "[overlay@/var/lib]busybox@notanid"),
    ],
)
def test_invalid_scopes_make_the_policy_invalid(transport: str, scope: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid scope"):
        decode_policy(policy({transport: {scope: [ACCEPT]}}), "p.json")


@pytest.mark.parametrize(
    ("transport", "scope"),
    [
        ("docker", "anything/goes"),
        ("oci", "/srv/images"),
        ("dir", "/srv"),
        ("docker-daemon", "docker.io/library/busybox"),
        ("containers-storage", "[overlay@/var/lib/containers/storage]"),
        ("containers-storage", "[/var/lib/containers/storage]"),
        ("containers-storage", f"[vfs@/s]docker.io/library/busybox:latest@{IMAGE_ID}"),
        ("containers-storage", f"[vfs@/s]docker.io/library/busybox@{DIGEST}@{IMAGE_ID}"),
        ("some-future-transport", "whatever"),
    ],
)
def test_valid_scopes(transport: str, scope: str) -> None:
    decode_policy(policy({transport: {scope: [ACCEPT], "": [REJECT]}}), "p.json")


# --------------------------------------------------------------------------
# Docker references
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("busybox", "docker.io/library/busybox"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox"),
        ("someone/tool", "docker.io/someone/tool"),
        ("quay.io/fedora/fedora:40", "quay.io/fedora/fedora:40"),
        ("localhost/x", "localhost/x"),
        ("localhost:5000/x/y:t", "localhost:5000/x/y:t"),
        ("127.0.0.1:5000/a", "127.0.0.1:5000/a"),
        ("[::1]:5000/a", "[::1]:5000/a"),
        (f"example.com/a@{DIGEST}", f"example.com/a@{DIGEST}"),
        (f"example.com/a:t@{DIGEST}", f"example.com/a:t@{DIGEST}"),
        ("Example.COM/a", "Example.COM/a"),
    ],
)
def test_docker_names_expand(text: str, expanded: str) -> None:
    name = parse_docker_name(text)
    assert name is not None and str(name) == expanded


@pytest.mark.parametrize(
    "text",
    ["", "UPPER/case", "example.com/Repo", "a b", "x:", "example.com/a@sha256:abc", "ab" * 32,
     "example.com/" + "a" * 300, "example.com/a/", "example.com//a"],
)  # fmt: skip
def test_invalid_docker_names(text: str) -> None:
    assert parse_docker_name(text) is None


# --------------------------------------------------------------------------
# Scope matching: docker:
# --------------------------------------------------------------------------

DOCKER_SCOPES = {
    scope: label(scope)
    for scope in [
        "",
        "registry.example.com",
        "registry.example.com/ns",
        "registry.example.com/ns/repo",
        "registry.example.com/ns/repo:1.0",
        f"registry.example.com/ns/repo@{DIGEST}",
        "*.example.com",
        "*.com",
        "localhost:5000",
        "localhost:5000/team/app:v2",
        "docker.io/library",
        "docker.io/library/busybox",
    ]
}


@pytest.mark.parametrize(
    ("reference", "scope"),
    [
        # The most specific scope wins: tag, then repository, namespace, host.
        ("docker://registry.example.com/ns/repo:1.0", "registry.example.com/ns/repo:1.0"),
        (f"docker://registry.example.com/ns/repo@{DIGEST}",
         f"registry.example.com/ns/repo@{DIGEST}"),
        ("docker://registry.example.com/ns/repo:2.0", "registry.example.com/ns/repo"),
        ("docker://registry.example.com/ns/repo", "registry.example.com/ns/repo"),
        ("docker://registry.example.com/ns/other:1.0", "registry.example.com/ns"),
        ("docker://registry.example.com/ns/deeper/repo", "registry.example.com/ns"),
        ("docker://registry.example.com/elsewhere", "registry.example.com"),
        # A missing tag means :latest.
        ("docker://registry.example.com/ns/repo:latest", "registry.example.com/ns/repo"),
        # *. wildcards: subdomains of the host, whatever the port, most specific first.
        ("docker://mirror.example.com/x", "*.example.com"),
        ("docker://a.b.example.com:8443/x", "*.example.com"),
        ("docker://other.com/x", "*.com"),
        ("docker://example.com/x", "*.com"),
        # A port is part of the host scope, and stops at the host.
        ("docker://localhost:5000/team/app:v2", "localhost:5000/team/app:v2"),
        ("docker://localhost:5000/team/app:v3", "localhost:5000"),
        ("docker://localhost/x", ""),
        # Short names are looked up in their fully expanded form.
        ("docker://busybox", "docker.io/library/busybox"),
        ("docker://library/busybox:1.0", "docker.io/library/busybox"),
        ("docker://alpine", "docker.io/library"),
        ("docker://someone/tool", ""),
        ("docker://example.org/x", ""),
    ],
)  # fmt: skip
def test_docker_scopes(reference: str, scope: str) -> None:
    assert chosen({"docker": DOCKER_SCOPES}, reference) == [scope]


def test_wildcard_does_not_match_the_domain_itself() -> None:
    scopes = {"*.example.com": label("w")}
    assert chosen({"docker": scopes}, "docker://example.com/x") == [None]
    assert chosen({"docker": scopes}, "docker://a.example.com/x") == ["*.example.com"]
    assert chosen({"docker": scopes}, "docker://a.example.community/x") == [None]


def test_transport_default_then_global_default() -> None:
    assert chosen({"docker": {"": label("")}}, "docker://quay.io/a") == [""]
    assert chosen({"docker": {"quay.io": label("q")}}, "docker://ghcr.io/a") == [None]
    assert chosen({"oci": {"": label("")}}, "docker://quay.io/a") == [None]
    assert chosen({}, "docker://quay.io/a") == [None]


def test_scopes_are_per_transport() -> None:
    # A docker scope does not apply to the same name in docker-daemon, and back.
    transports = {"docker": {"docker.io/library/busybox": label("d")}}
    assert chosen(transports, "docker-daemon:busybox:latest") == [None]
    assert chosen(transports, "docker://busybox") == ["docker.io/library/busybox"]


def test_docker_daemon_scopes() -> None:
    scopes = {"docker.io/library/busybox:latest": label("t"), "*.io": label("w"), "": label("")}
    assert chosen({"docker-daemon": scopes}, "docker-daemon:busybox:latest") == [
        "docker.io/library/busybox:latest"
    ]
    assert chosen({"docker-daemon": scopes}, "docker-daemon:quay.io/x:1") == ["*.io"]
    # An image ID has only the transport's default scope.
    assert chosen({"docker-daemon": scopes}, f"docker-daemon:{DIGEST}") == [""]


# --------------------------------------------------------------------------
# Scope matching: path transports
# --------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["oci", "oci-archive"])
def test_oci_scopes_are_paths_and_their_parents(transport: str) -> None:
    scopes = {"/srv/images": label("a"), "/srv/images/special": label("b"), "": label("")}
    assert chosen({transport: scopes}, f"{transport}:/srv/images/special:tag") == [
        "/srv/images/special"
    ]
    assert chosen({transport: scopes}, f"{transport}:/srv/images/x/y:tag") == ["/srv/images"]
    assert chosen({transport: scopes}, f"{transport}:/srv/images") == ["/srv/images"]
    # A path prefix is not a parent directory.
    assert chosen({transport: scopes}, f"{transport}:/srv/imagesX:t") == [""]
    # The image name or tag after the path is not part of the identity.
    assert chosen({transport: scopes}, f"{transport}:/srv/images/special") == [
        "/srv/images/special"
    ]


@pytest.mark.parametrize("transport", ["dir", "sif"])
def test_dir_scopes_are_paths_and_their_parents(transport: str) -> None:
    scopes = {"/srv": label("a"), "/srv/x/img": label("b")}
    assert chosen({transport: scopes}, f"{transport}:/srv/x/img") == ["/srv/x/img"]
    assert chosen({transport: scopes}, f"{transport}:/srv/y/img") == ["/srv"]
    assert chosen({transport: scopes}, f"{transport}:/opt/img") == [None]


def test_paths_are_matched_after_resolution() -> None:
    links = {"relative/layout": "/srv/images/layout", "/link/to/x": "/srv/images/x"}
    scopes = {"/srv/images": label("a"), "/link": label("b")}

    def resolve(path: str) -> str | None:
        return links.get(path, path)

    assert chosen({"oci": scopes}, "oci:relative/layout:t", resolve) == ["/srv/images"]
    assert chosen({"oci": scopes}, "oci:/link/to/x", resolve) == ["/srv/images"]
    assert chosen({"dir": scopes}, "dir:/link/to/x", resolve) == ["/srv/images"]


def test_unresolvable_path_considers_every_scope() -> None:
    scopes = {"/srv/images": label("a"), "/srv/other": label("b")}
    assert chosen({"oci": scopes}, "oci:/nowhere:t", lambda _path: None) == [
        "/srv/images",
        "/srv/other",
        None,
    ]


@pytest.mark.parametrize("transport", ["docker-archive", "tarball"])
def test_only_the_default_scope(transport: str) -> None:
    assert chosen({transport: {"": label("")}}, f"{transport}:/a.tar:x/y:1") == [""]
    assert chosen({transport: {}}, f"{transport}:/a.tar") == [None]


# --------------------------------------------------------------------------
# Scope matching: containers-storage:
# --------------------------------------------------------------------------

STORE = "[overlay@/var/lib/containers/storage]"
STORAGE_SCOPES = {
    f"{STORE}docker.io/library/busybox:latest": label("tag"),
    f"{STORE}docker.io/library/busybox": label("repo"),
    f"{STORE}docker.io/library": label("ns"),
    f"{STORE}quay.io": label("host"),
    STORE: label("store"),
    "[/var/lib/containers/storage]": label("root"),
    "[vfs@/srv/storage]": label("vfs"),
}


@pytest.mark.parametrize(
    ("reference", "scope"),
    [
        (f"containers-storage:{STORE}busybox", f"{STORE}docker.io/library/busybox:latest"),
        (f"containers-storage:{STORE}busybox:1.0", f"{STORE}docker.io/library/busybox"),
        (f"containers-storage:{STORE}busybox:latest@{IMAGE_ID}",
         f"{STORE}docker.io/library/busybox:latest"),
        (f"containers-storage:{STORE}alpine", f"{STORE}docker.io/library"),
        (f"containers-storage:{STORE}quay.io/a/b", f"{STORE}quay.io"),
        (f"containers-storage:{STORE}ghcr.io/a", STORE),
        (f"containers-storage:{STORE}{IMAGE_ID}", STORE),
        ("containers-storage:[btrfs@/var/lib/containers/storage]ghcr.io/a",
         "[/var/lib/containers/storage]"),
        ("containers-storage:[vfs@/srv/storage+/run/x:opt=1]a", "[vfs@/srv/storage]"),
        ("containers-storage:[vfs@/elsewhere]a", None),
    ],
)  # fmt: skip
def test_storage_scopes(reference: str, scope: str | None) -> None:
    assert chosen({"containers-storage": STORAGE_SCOPES}, reference) == [scope]


def test_storage_without_a_store_considers_every_store() -> None:
    # The store comes from storage.conf: every store a scope names may be it.
    found = chosen({"containers-storage": STORAGE_SCOPES}, "containers-storage:quay.io/x")
    assert sorted(found, key=str) == sorted(
        [f"{STORE}quay.io", "[/var/lib/containers/storage]", "[vfs@/srv/storage]", None], key=str
    )


def test_storage_short_id_considers_every_scope() -> None:
    found = chosen({"containers-storage": STORAGE_SCOPES}, f"containers-storage:{STORE}abc123")
    assert set(found) == {*STORAGE_SCOPES, None}


# --------------------------------------------------------------------------
# Unknown transports and unparseable references
# --------------------------------------------------------------------------


def test_unparseable_reference_considers_every_scope_of_its_transport() -> None:
    scopes = {"quay.io": label("q"), "ghcr.io": label("g")}
    assert chosen({"docker": scopes}, "docker://Not A Reference") == ["quay.io", "ghcr.io", None]
    assert chosen({"docker": {**scopes, "": label("")}}, "docker:missing-slashes") == [
        "quay.io",
        "ghcr.io",
        "",
    ]


def test_unknown_transport_and_no_transport() -> None:
    assert chosen({"future": {"x": label("x")}}, "future:whatever") == ["x", None]
    assert chosen({"docker": DOCKER_SCOPES}, "no-colon-at-all") == [None]


# --------------------------------------------------------------------------
# What is enforced
# --------------------------------------------------------------------------


def test_enforced_types() -> None:
    data = policy(
        {
            "docker": {
                "open.example.com": [ACCEPT],
                "signed.example.com": [ACCEPT, GPG, REJECT],
                "sigstore.example.com": [{"type": "sigstoreSigned", "keyPath": "/k.pub"}],
            }
        },
        default=[ACCEPT],
    )
    decoded = decode_policy(data, "p.json")

    def kinds(reference: str) -> list[str]:
        return enforced_types(requirements_for(decoded, reference, no_links))

    assert kinds("docker://open.example.com/a") == []
    assert kinds("docker://anything.else/a") == []
    assert kinds("oci:/srv/x:t") == []
    assert kinds("docker://signed.example.com/a") == ["signedBy", "reject"]
    assert kinds("docker://sigstore.example.com/a") == ["sigstoreSigned"]


def test_describe_names_the_section() -> None:
    decoded = decode_policy(policy({"docker": {"quay.io": [GPG], "": [ACCEPT]}}), "p.json")
    (match,) = requirements_for(decoded, "docker://quay.io/a", no_links)
    assert match.describe() == 'transports.docker["quay.io"]'
    (match,) = requirements_for(decoded, "oci:/x", no_links)
    assert match.describe() == "default"
