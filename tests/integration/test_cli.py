"""The ``containers-image-proxy`` command, run as a user would: as a subprocess."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import termios
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from containers_image_proxy import ImageProxy, cli
from containers_image_proxy.cli import (
    EXIT_AUTH,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_SPAWN,
    EXIT_USAGE,
    EXIT_VERIFICATION,
    PASSWORD_ENV,
)
from tests.support import hostile_layers
from tests.support.images import BuiltImage, MultiPlatformImage, run_skopeo
from tests.support.registry import Registry, RegistryImage

pytestmark = pytest.mark.usefixtures("no_leaks")

CLI = [sys.executable, "-m", "containers_image_proxy"]
PREFIX = "containers-image-proxy: error: "


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (PASSWORD_ENV, "CONTAINERS_IMAGE_PROXY_DEBUG", "FORCE_COLOR", "NO_COLOR")
    }
    env.update(extra)
    return env


def run_cli(
    *args: str | Path, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLI, *map(str, args)],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=env if env is not None else cli_env(),
        timeout=60,
        check=False,
    )


def ok(*args: str | Path, stdin: bytes | None = None) -> bytes:
    proc = run_cli(*args, stdin=stdin)
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    return proc.stdout


def assert_fails(proc: subprocess.CompletedProcess[bytes], code: int, *words: str) -> str:
    """The command failed with ``code`` and said so in one line, without a traceback."""
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    lines = err.splitlines()
    if code == EXIT_USAGE:  # argparse: a usage line, then the error
        assert lines[-1].startswith("containers-image-proxy"), err
        assert "error: " in lines[-1]
    else:
        assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    for word in words:
        assert word in lines[-1], err
    return lines[-1]


def layers_of(image: BuiltImage) -> list[dict[str, object]]:
    return [
        {"digest": digest, "size": size, "media_type": media_type}
        for digest, size, media_type, _ in image.layers
    ]


# --------------------------------------------------------------------------- reading


def test_manifest_and_config_bytes(oci_image: BuiltImage) -> None:
    with ImageProxy() as proxy, proxy.open_image(oci_image.ref) as image:
        _, manifest = proxy.fetch_manifest_raw_oci(image)
        config = proxy.fetch_config_raw(image)
    assert ok("manifest", oci_image.ref) == manifest == oci_image.manifest
    assert ok("config", oci_image.ref) == config


def test_layers(oci_image: BuiltImage) -> None:
    lines = ok("layers", oci_image.ref).decode().splitlines()
    assert lines == [f"{d} {size} {mt}" for d, size, mt, _ in oci_image.layers]
    assert json.loads(ok("layers", "--json", oci_image.ref)) == layers_of(oci_image)


def test_blob_to_file_and_stdout(oci_image: BuiltImage, tmp_path: Path) -> None:
    digest, _, _, data = oci_image.layers[0]
    out = tmp_path / "layer"
    assert ok("blob", oci_image.ref, digest, "-o", out) == b""
    assert out.read_bytes() == data
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind
    assert ok("blob", oci_image.ref, digest) == data
    # The config is a blob of the manifest too; a bare hex digest means sha256.
    encoded = oci_image.config_digest.split(":")[1]
    assert ok("blob", oci_image.ref, encoded) == oci_image.config


def test_blob_output_files(oci_image: BuiltImage, tmp_path: Path) -> None:
    """-o follows a symbolic link, keeps an existing file's mode, writes devices directly."""
    digest, _, _, data = oci_image.layers[0]
    target = tmp_path / "target"
    target.write_bytes(b"old")
    target.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert ok("blob", oci_image.ref, digest, "-o", link) == b""
    assert link.is_symlink() and target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]
    assert ok("blob", oci_image.ref, digest, "-o", "/dev/null") == b""


def test_platform_picks_from_an_index(oci_index_image: MultiPlatformImage) -> None:
    arm64 = oci_index_image.images["linux/arm64/v8"]
    data = json.loads(ok("--platform", "linux/arm64", "inspect", oci_index_image.ref))
    assert (data["Os"], data["Architecture"]) == ("linux", "arm64")
    assert data["Digest"] == arm64.manifest_digest
    assert data["Layers"] == arm64.layer_digests
    assert (
        "Platform:    linux/arm64/v8"
        in ok("--platform", "linux/arm64", "inspect", "--format", "table", oci_index_image.ref)
        .decode()
        .splitlines()
    )
    # Options are also accepted after the command.
    args = ("layers", "--json", "--override-os", "linux", "--override-arch", "amd64")
    amd64 = oci_index_image.images["linux/amd64"]
    assert json.loads(ok(*args, oci_index_image.ref)) == layers_of(amd64)


# --------------------------------------------------------------------------- pull


def test_pull(oci_image: BuiltImage, skopeo: str, tmp_path: Path) -> None:
    dest = tmp_path / "layout"
    proc = run_cli("pull", "--json", "--tag", "v1", "--jobs", "2", oci_image.ref, dest)
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert result["manifest_digest"] == result["source_digest"] == oci_image.manifest_digest
    assert result["tag"] == "v1"
    assert set(result["fetched"]) == set(oci_image.blobs)
    assert result["bytes_fetched"] == sum(len(blob) for blob in oci_image.blobs.values())
    # Not a terminal: only the summary line, no progress display.
    (summary,) = proc.stderr.decode().splitlines()
    assert summary.startswith(f"Pulled {oci_image.manifest_digest} into oci:{dest}:v1")
    assert "fetched 3 blobs" in summary and "skipped 0" in summary

    inspected = json.loads(run_skopeo("inspect", f"oci:{dest}:v1", skopeo=skopeo).stdout)
    assert inspected["Digest"] == oci_image.manifest_digest
    assert inspected["Layers"] == oci_image.layer_digests
    archive = tmp_path / "image.tar"
    run_skopeo("copy", "--quiet", f"oci:{dest}:v1", f"docker-archive:{archive}", skopeo=skopeo)
    config = json.loads(run_skopeo("inspect", "--config", f"docker-archive:{archive}").stdout)
    assert config["rootfs"]["diff_ids"] == oci_image.diff_ids

    again = json.loads(ok("pull", "--json", "--tag", "v1", oci_image.ref, dest))
    assert again["fetched"] == [] and again["bytes_fetched"] == 0
    assert set(again["skipped"]) == set(oci_image.blobs)
    assert again["manifest_digest"] == oci_image.manifest_digest


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        select.select([fd], [], [], 30)
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_pull_progress_in_a_terminal(big_layers_image: BuiltImage, tmp_path: Path) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    with subprocess.Popen(
        [*CLI, "pull", big_layers_image.ref, str(tmp_path / "layout")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=cli_env(TERM="xterm-256color"),
    ) as proc:
        os.close(slave)
        try:
            drawn = _read_all(master)
        finally:
            os.close(master)
        assert proc.wait(60) == EXIT_OK, drawn
    assert b"\x1b[" in drawn  # drawn with terminal escapes
    assert "━".encode() in drawn  # rich's bars
    assert b"100%" in drawn and b"MB/s" in drawn
    assert b"total" in drawn
    assert big_layers_image.layers[0][0].split(":")[1][:12].encode() in drawn
    assert b"Pulled " + big_layers_image.manifest_digest.encode() in drawn


def test_blob_progress_forced(big_layers_image: BuiltImage, tmp_path: Path) -> None:
    digest, _, _, data = big_layers_image.layers[1]
    out = tmp_path / "blob"
    proc = run_cli("--progress", "blob", big_layers_image.ref, digest, "-o", out)
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    assert out.read_bytes() == data
    assert b"100%" in proc.stderr and digest.split(":")[1][:12].encode() in proc.stderr
    quiet = run_cli("pull", "--quiet", big_layers_image.ref, tmp_path / "layout")
    assert quiet.returncode == EXIT_OK and quiet.stderr == b""


# --------------------------------------------------------------------------- failures


def test_unknown_transport(oci_image: BuiltImage) -> None:
    assert_fails(run_cli("inspect", "nosuch:thing"), EXIT_USAGE, "unknown transport")


def test_missing_image(tmp_path: Path) -> None:
    assert_fails(run_cli("inspect", f"oci:{tmp_path}/none:latest"), EXIT_NOT_FOUND)
    assert_fails(run_cli("pull", f"oci:{tmp_path}/none:x", tmp_path / "d"), EXIT_NOT_FOUND)


def test_blob_not_in_manifest(oci_image: BuiltImage) -> None:
    digest = "sha256:" + "0" * 64
    proc = run_cli("blob", oci_image.ref, digest)
    assert_fails(proc, EXIT_NOT_FOUND, digest, "not in the manifest")
    assert proc.stdout == b""


def test_unwritable_destinations(oci_image: BuiltImage, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_bytes(b"x")
    assert_fails(run_cli("pull", oci_image.ref, a_file), EXIT_OUTPUT, "not a directory")
    assert_fails(run_cli("pull", oci_image.ref, a_file / "sub"), EXIT_OUTPUT)
    digest = oci_image.layer_digests[0]
    assert_fails(run_cli("blob", oci_image.ref, digest, "-o", tmp_path), EXIT_OUTPUT)
    proc = run_cli("blob", oci_image.ref, digest, "-o", a_file / "sub")
    assert_fails(proc, EXIT_OUTPUT)
    assert a_file.read_bytes() == b"x"
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [*CLI, "manifest", oci_image.ref], stdout=full, stderr=subprocess.PIPE, timeout=60
        )
    assert_fails(proc, EXIT_OUTPUT, "standard output")


def test_corrupted_blob(corrupted_image: BuiltImage, tmp_path: Path) -> None:
    digest = corrupted_image.layer_digests[0]
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "blob"
    assert_fails(run_cli("blob", corrupted_image.ref, digest, "-o", out), EXIT_VERIFICATION)
    assert list(out.parent.iterdir()) == []  # neither the file nor a temporary one
    assert_fails(run_cli("pull", corrupted_image.ref, tmp_path / "layout"), EXIT_VERIFICATION)


def test_skopeo_missing(oci_image: BuiltImage) -> None:
    proc = run_cli("--skopeo", "/nonexistent/skopeo", "inspect", oci_image.ref)
    assert_fails(proc, EXIT_SPAWN, "/nonexistent/skopeo")
    proc = run_cli("inspect", "--skopeo", shutil.which("true") or "/bin/true", oci_image.ref)
    assert_fails(proc, EXIT_SPAWN)


@pytest.mark.parametrize(
    "args",
    [
        ["--platform", "linux/arm64", "--override-arch", "amd64", "inspect", "oci:x"],
        ["inspect", "--platform", "linux/arm64", "--override-os", "linux", "oci:x"],
        ["--platform", "linux", "inspect", "oci:x"],
        ["--override-variant", "v8", "inspect", "oci:x"],
        ["--authfile", "/a.json", "--no-creds", "inspect", "oci:x"],
        ["--password-stdin", "inspect", "oci:x"],
        ["--tls-verify", "maybe", "inspect", "oci:x"],
        ["pull", "--jobs", "0", "oci:x", "d"],
        ["blob", "oci:x", "md5:abc"],
        ["nosuchcommand"],
        [],
    ],
)
def test_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(args) == EXIT_USAGE
    assert "error: " in capsys.readouterr().err


def test_usage_error_subprocess() -> None:
    proc = run_cli("--platform", "linux/arm64", "--override-arch", "amd64", "inspect", "oci:x")
    assert_fails(proc, EXIT_USAGE, "--platform", "--override-arch")


@pytest.mark.parametrize("option", ["--password", "--password=hunter2", "--creds"])
def test_password_on_the_command_line_is_rejected(option: str) -> None:
    proc = run_cli("--username", "me", option, "hunter2", "inspect", "oci:x")
    assert_fails(proc, EXIT_USAGE, "not accepted")
    assert b"hunter2" not in proc.stderr


def test_closed_stdout_pipe(big_layers_image: BuiltImage) -> None:
    digest = big_layers_image.layer_digests[0]
    with subprocess.Popen(
        [*CLI, "blob", big_layers_image.ref, digest],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert len(proc.stdout.read(10)) == 10
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(60) == EXIT_ERROR
    assert err == b""


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = run_cli("--debug", "inspect", f"oci:{tmp_path}/none")
    assert proc.returncode == EXIT_NOT_FOUND
    err = proc.stderr.decode()
    assert "Traceback" in err and "ImageNotFoundError" in err
    assert "skopeo" in err  # debug logging
    assert err.splitlines()[-1].startswith(PREFIX)


# --------------------------------------------------------------------------- options


def test_options_map_to_the_config() -> None:
    args = cli.parse_args(
        [
            "--cert-dir",
            "/certs",
            "--tls-verify=false",
            "--decryption-key",
            "a",
            "--insecure-policy",
            "pull",
            "--decryption-key",
            "b",
            "--platform",
            "linux/arm/v7",
            "--skopeo",
            "/opt/skopeo",
            "--debug",
            "--jobs",
            "8",
            "oci:x",
            "dest",
        ]
    )
    config = cli.make_config(args, None)
    assert config.certificate_directory == "/certs"
    assert config.insecure_skip_tls_verification is True
    assert list(config.decryption_keys or ()) == ["a", "b"]
    assert config.insecure_policy and config.debug
    assert (config.override_os, config.override_arch, config.override_variant) == (
        "linux",
        "arm",
        "v7",
    )
    assert list(config.skopeo_cmd or ()) == ["/opt/skopeo"]
    assert args.jobs == 8
    for value, insecure in [("true", None), ("false", True), ("False", True)]:
        for form in (["--tls-verify", value], [f"--tls-verify={value}"]):
            config = cli.make_config(cli.parse_args([*form, "inspect", "oci:x"]), None)
            assert config.insecure_skip_tls_verification is insecure
    args = cli.parse_args(["--no-creds", "--policy", "/p.json", "layers", "oci:x"])
    config = cli.make_config(args, None)
    assert config.auth_anonymous and config.policy == "/p.json"


def test_help_and_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == cli.PROG]
    assert entry.value == "containers_image_proxy.cli:main"
    assert cli.main(["--help"]) == EXIT_OK
    help_text = capsys.readouterr().out
    for code, meaning in [(EXIT_NOT_FOUND, "not found"), (EXIT_SPAWN, "skopeo")]:
        assert any(
            line.strip().startswith(str(code)) and meaning in line
            for line in help_text.splitlines()
        )
    script = Path(sys.executable).with_name(cli.PROG)
    if not script.exists():
        found = shutil.which(cli.PROG)
        if found is None:
            pytest.skip("the console script is not installed (pip install -e .)")
        script = Path(found)
    proc = subprocess.run([script, "--help"], capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0 and b"exit status" in proc.stdout


# --------------------------------------------------------------------------- credentials


@pytest.fixture(scope="module")
def private_image(auth_registry: Registry, oci_image: BuiltImage) -> RegistryImage:
    return auth_registry.push_image(oci_image, "private/cli", "v1")


def test_credentials(auth_registry: Registry, private_image: RegistryImage) -> None:
    assert auth_registry.username is not None and auth_registry.password is not None
    certs = ("--cert-dir", str(auth_registry.cert_dir))
    digest = private_image.image.manifest_digest
    proc = run_cli(*certs, "--no-creds", "inspect", "--json", private_image.ref)
    assert_fails(proc, EXIT_AUTH)
    user = ("--username", auth_registry.username)
    proc = run_cli(
        *certs,
        *user,
        "--password-stdin",
        "inspect",
        "--json",
        private_image.ref,
        stdin=auth_registry.password.encode() + b"\n",
    )
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    assert json.loads(proc.stdout)["Digest"] == digest
    proc = run_cli(
        *certs,
        *user,
        "layers",
        private_image.ref,
        env=cli_env(**{PASSWORD_ENV: auth_registry.password}),
    )
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    proc = run_cli(*certs, *user, "--password-stdin", "inspect", private_image.ref, stdin=b"no\n")
    assert_fails(proc, EXIT_AUTH)
    # Not a terminal, no --password-stdin, no environment: no way to ask.
    assert_fails(run_cli(*certs, *user, "inspect", private_image.ref), EXIT_USAGE, PASSWORD_ENV)


def test_unpack(oci_image: BuiltImage, tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    proc = run_cli("unpack", "--json", oci_image.ref, dest)
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert [layer["digest"] for layer in result["layers"]] == oci_image.layer_digests
    assert [layer["diff_id"] for layer in result["layers"]] == oci_image.diff_ids
    for layer in oci_image.source_layers:
        for name, data in layer.files.items():
            assert (dest / name).read_bytes() == data
    # A destination that is not empty is refused, with the output exit code.
    again = run_cli("unpack", oci_image.ref, dest)
    assert again.returncode == EXIT_OUTPUT
    assert b"not empty" in again.stderr and b"Traceback" not in again.stderr


def test_unpack_refuses_a_hostile_layer(tmp_path: Path, skopeo: str) -> None:
    image = hostile_layers.build(
        tmp_path / "layout",
        hostile_layers.layer(
            hostile_layers.symlink("x", "/etc"), hostile_layers.file("x/passwd", b"owned")
        ),
    )
    proc = run_cli("unpack", image.ref, tmp_path / "rootfs")
    assert proc.returncode == EXIT_VERIFICATION
    assert proc.stderr.count(b"\n") == 1 and b"symlink" in proc.stderr
