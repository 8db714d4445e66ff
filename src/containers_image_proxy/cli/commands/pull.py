"""``pull REF DEST``: store the image in an OCI image layout."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.filesize import decimal as human_size

from ... import pull
from ..._tags import parse_destination
from ...config import ImageProxyConfig
from ...events import PullResult
from ...oci import encode
from ..options import positive_int
from ..output import print_json, summary
from ..progress import progress_display, pull_events, retried, retries_json
from ..status import EXIT_OK, EXIT_USAGE, CliError
from . import Command

__all__ = ["COMMAND", "pull_notes", "pull_result_json"]


def pull_result_json(result: PullResult) -> dict[str, Any]:
    """What ``pull --json`` prints."""
    return {
        "reference": result.reference,
        "dest": str(result.dest),
        "tag": result.tag,
        "manifest_digest": str(result.manifest_digest),
        "source_digest": str(result.source_digest),
        "fetched": [str(d) for d in result.fetched],
        "skipped": [str(d) for d in result.skipped],
        "bytes_fetched": result.bytes_fetched,
        "tag_origin": result.tag_origin,
        "rewritten": result.rewritten,
        "retries": retries_json(result.retries),
        "manifest": json.loads(encode(result.manifest)),
    }


def pull_notes(result: PullResult) -> list[str]:
    """What the pull summary adds about the tag and the manifest stored."""
    notes = []
    if result.tag_origin == "image":
        notes.append(f"tagged {result.tag}, the image's own tag")
    elif result.tag_origin == "default":
        notes.append(f"tagged {result.tag}: the source names no tag")
    if result.rewritten:
        notes.append(
            f"layer descriptors corrected to match the bytes; source manifest"
            f" {result.source_digest}"
        )
    elif result.source_digest != result.manifest_digest:
        notes.append(f"converted to OCI from source manifest {result.source_digest}")
    return notes


def run(args: argparse.Namespace, config: ImageProxyConfig) -> int:
    """Fetch the image into the layout, with progress and a summary on standard error."""
    try:
        parse_destination(args.dest, args.tag)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    with progress_display(args) as progress:
        result = pull(
            args.reference,
            args.dest,
            tag=args.tag,
            config=config,
            jobs=args.jobs,
            progress=pull_events(args, progress),
        )
    where = f"oci:{result.dest}" + (f":{result.tag}" if result.tag else "")
    blobs = "blob" if len(result.fetched) == 1 else "blobs"
    summary(
        args,
        f"Pulled {result.manifest_digest} into {where}: fetched {len(result.fetched)} {blobs}"
        f" ({human_size(result.bytes_fetched)}), skipped {len(result.skipped)}"
        + "".join(f"\n  {note}" for note in pull_notes(result))
        + retried(result.retries),
    )
    if args.json:
        print_json(pull_result_json(result))
    return EXIT_OK


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dest", metavar="DEST", help="OCI layout directory (created if needed), or oci:DIR[:TAG]"
    )
    parser.add_argument(
        "--tag",
        metavar="TAG",
        help="tag in DEST (default: the reference's tag, else the image's own, else latest)",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        metavar="N",
        type=positive_int,
        default=6,
        help="blobs fetched at once (default: 6, as skopeo copy)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


COMMAND = Command(
    name="pull",
    summary="store the image in an OCI image layout",
    description="Fetch the image into the OCI image layout DEST, usable as oci:DEST:TAG. Blobs"
    " already there are not fetched again. Layers are stored as the source serves them,"
    " labelled with the media type their bytes prove: where that corrects the proxy's"
    " manifest, the layout gets a corrected manifest that names the source's manifest"
    " digest. Progress (on a terminal, or with --progress) and a summary go to standard"
    " error.",
    run=run,
    arguments=" DEST",
    add_arguments=_add_arguments,
)
