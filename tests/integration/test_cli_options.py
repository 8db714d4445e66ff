"""Options spelled as skopeo spells them, and help that shows shared options once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from containers_image_proxy import cli
from containers_image_proxy.cli import EXIT_OK, EXIT_USAGE
from tests.support.images import BuiltImage, run_skopeo
from tests.support.registry import Registry, RegistryImage

CLI = [sys.executable, "-m", "containers_image_proxy"]
#: Every option all commands share, as help spells it.
SHARED = [
    "--authfile PATH",
    "--no-creds[=BOOL]",
    "--username USER",
    "--password-stdin[=BOOL]",
    "--cert-dir PATH",
    "--tls-verify[=BOOL]",
    "--decryption-key KEY",
    "--platform OS/ARCH[/VARIANT]",
    "--override-os OS",
    "--override-arch ARCH",
    "--override-variant VARIANT",
    "--policy PATH",
    "--insecure-policy[=BOOL]",
    "--require-signed[=BOOL]",
    "--registries.d DIR",
    "--stall-timeout DURATION",
    "--probe-interval DURATION",
    "--retry-times N",
    "--retry-delay DURATION",
    "--skopeo PATH",
    "--debug[=BOOL]",
    "-q, --quiet",
    "--progress",
]
COMMANDS = ["inspect", "manifest", "config", "layers", "blob", "pull", "unpack"]


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CONTAINERS_IMAGE_PROXY_DEBUG"}
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        timeout=60,
        check=False,
    )


# --------------------------------------------------------------------------- boolean flags


@pytest.mark.parametrize(
    ("argv", "insecure"),
    [
        (["--tls-verify", "inspect", "oci:x"], None),
        (["inspect", "--tls-verify", "oci:x"], None),
        (["inspect", "oci:x", "--tls-verify"], None),
        (["--tls-verify=false", "inspect", "oci:x"], True),
        (["inspect", "--tls-verify=false", "oci:x"], True),
        (["--tls-verify=true", "inspect", "oci:x"], None),
        (["--tls-verify=FALSE", "inspect", "oci:x"], True),
        # As earlier versions of this command: a following true or false is the value.
        (["--tls-verify", "false", "inspect", "oci:x"], True),
        (["inspect", "--tls-verify", "true", "oci:x"], None),
        # The last one given wins, before or after the command.
        (["--tls-verify=false", "inspect", "--tls-verify", "oci:x"], None),
    ],
)
def test_bare_tls_verify_takes_no_argument(argv: list[str], insecure: bool | None) -> None:
    args = cli.parse_args(argv)
    assert (args.command, args.reference) == ("inspect", "oci:x")
    assert cli.make_config(args, None).insecure_skip_tls_verification is insecure


@pytest.mark.parametrize(
    ("flag", "field"),
    [
        ("--no-creds", "auth_anonymous"),
        ("--insecure-policy", "insecure_policy"),
        ("--require-signed", "require_signed"),
        ("--debug", "debug"),
    ],
)
def test_boolean_flags_take_optional_values(flag: str, field: str) -> None:
    for where in ("before", "after"):
        for form, value in ((flag, True), (f"{flag}=true", True), (f"{flag}=false", False)):
            argv = [form, "layers", "oci:x"] if where == "before" else ["layers", form, "oci:x"]
            args = cli.parse_args(argv)
            assert args.reference == "oci:x"
            assert getattr(cli.make_config(args, None), field) is value, (argv, field)


def test_command_flags_take_optional_values() -> None:
    args = cli.parse_args(["inspect", "--raw", "-n", "oci:x"])
    assert (args.raw, args.config, args.no_tags, args.reference) == (True, False, True, "oci:x")
    args = cli.parse_args(["inspect", "--raw=false", "--config=true", "oci:x"])
    assert (args.raw, args.config) == (False, True)
    args = cli.parse_args(["--username", "me", "--password-stdin", "inspect", "oci:x"])
    assert args.password_stdin is True and args.reference == "oci:x"


@pytest.mark.parametrize(
    "argv",
    [
        ["--tls-verify=maybe", "inspect", "oci:x"],
        ["--tls-verify=", "inspect", "oci:x"],
        ["inspect", "--raw=sometimes", "oci:x"],
        ["--tls-verify", "maybe", "inspect", "oci:x"],  # "maybe" is no command
        ["inspect", "--tls-verify"],  # the reference is missing, not taken
    ],
)
def test_bad_boolean_values_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == EXIT_USAGE
    assert "error: " in capsys.readouterr().err


def test_arguments_after_double_dash_stay_arguments() -> None:
    args = cli.parse_args(["pull", "oci:x", "--", "--tls-verify"])
    assert args.dest == "--tls-verify" and args.tls_verify is None


@pytest.fixture(scope="module")
def secured(tls_registry: Registry, oci_image: BuiltImage) -> RegistryImage:
    return tls_registry.push_image(oci_image, "options/tls", "v1")


def test_bare_tls_verify_as_skopeo_reads_it(
    tls_registry: Registry, secured: RegistryImage, skopeo: str
) -> None:
    """The same command line, bare flag before the reference, works for skopeo and here."""
    certs = ("--cert-dir", str(tls_registry.cert_dir))
    theirs = json.loads(
        run_skopeo("inspect", *certs, "--tls-verify", secured.ref, skopeo=skopeo).stdout
    )
    proc = run_cli("inspect", *certs, "--tls-verify", secured.ref)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert json.loads(proc.stdout)["Digest"] == theirs["Digest"] == secured.image.manifest_digest
    # Verification on, without the CA: refused (the bare flag means true).
    proc = run_cli("inspect", "--tls-verify", secured.ref)
    assert proc.returncode != EXIT_OK and "--cert-dir" in proc.stderr


def test_tls_verify_false_as_skopeo_reads_it(
    plain_registry: Registry, oci_image: BuiltImage, skopeo: str
) -> None:
    image = plain_registry.push_image(oci_image, "options/plain", "v1")
    theirs = json.loads(
        run_skopeo("inspect", "--tls-verify=false", image.ref, skopeo=skopeo).stdout
    )
    proc = run_cli("inspect", "--tls-verify=false", image.ref)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert json.loads(proc.stdout)["Digest"] == theirs["Digest"]


@pytest.mark.parametrize(
    "option",
    ["--password", "--creds", "--src-creds", "--src-password", "--registry-token"],
)
def test_secrets_on_the_command_line_are_refused(option: str) -> None:
    for argv in (
        [f"{option}=hunter2", "inspect", "oci:x"],
        [option, "hunter2", "inspect", "oci:x"],
        ["inspect", option, "hunter2", "oci:x"],
    ):
        proc = run_cli(*argv)
        assert proc.returncode == EXIT_USAGE, proc.stderr
        assert "is not accepted" in proc.stderr and "hunter2" not in proc.stderr


# --------------------------------------------------------------------------- help


def option_lines(text: str, option: str) -> list[str]:
    """The lines of ``text`` that list ``option`` as help lists options."""
    listed = re.compile(rf"  {re.escape(option)}(?:\s\s|$)")
    return [line for line in text.splitlines() if listed.match(line)]


def help_of(*argv: str) -> str:
    proc = run_cli(*argv)
    assert proc.returncode == EXIT_OK, proc.stderr
    return proc.stdout


def test_shared_options_are_shown_once() -> None:
    main_help = help_of("--help")
    options = help_of("help", "options")
    for text in (main_help, options):
        for option in SHARED:
            shown = option_lines(text, option)
            assert len(shown) == 1, (option, shown)
    for command in COMMANDS:
        assert any(line.split()[:1] == [command] for line in main_help.splitlines()), command


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_is_short(command: str) -> None:
    text = help_of(command, "--help")
    assert text == help_of("help", command)
    assert len(text.splitlines()) <= 25, text
    assert "help options" in text
    for option in SHARED:
        assert option_lines(text, option) == [], option


def test_shared_options_are_accepted_after_every_command(tmp_path: Path) -> None:
    for command, extra in [("inspect", []), ("pull", ["d"]), ("unpack", ["d"]),
                           ("blob", ["sha256:" + "0" * 64])]:  # fmt: skip
        args = cli.parse_args(
            [command, "--authfile", "/a.json", "--retry-times", "1", "-q", "oci:x", *extra]
        )
        config = cli.make_config(args, None)
        assert (config.authfile, config.retry_times, args.display) == ("/a.json", 1, "quiet")


def test_help_of_an_unknown_topic(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["help", "nosuch"]) == EXIT_USAGE
    assert "invalid choice" in capsys.readouterr().err
