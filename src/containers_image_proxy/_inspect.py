"""What ``containers-image-proxy inspect`` prints: ``skopeo inspect``'s report.

Pure: everything here works on the bytes the image proxy returned and does no I/O.
:func:`skopeo_inspect` builds the object ``skopeo inspect`` prints, with the same
keys in the same order and the same values wherever the proxy can know them;
:func:`go_json` writes it as skopeo does (Go's ``json.MarshalIndent`` with four
spaces), :func:`render_template` fills the ``{{.Field}}`` templates of
``--format`` and :func:`inspect_table` gives the human-readable layout.

Where the proxy cannot know skopeo's value, the key stays with skopeo's empty value:

- ``RepoTags`` is always ``[]`` (skopeo lists a registry's tags with a separate
  registry request; ``skopeo inspect --no-tags`` prints ``[]`` too).
- ``Digest`` of a multi-platform image is the digest of the platform's manifest the
  proxy chose; skopeo shows the index's digest.
- For a Docker schema 2 source the proxy only returns the OCI conversion: fields the
  conversion drops (``docker_version``) read ``""``, and ``Labels``/``Env`` that are
  empty in the original read ``null``. Layer media types are mapped back from the
  conversion's OCI types to the Docker types they were converted from.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any, Final

from ._reference import docker_reference_name
from .errors import InvalidDocumentError, TemplateError
from .oci import DOCKER_LAYER_FROM_OCI, Digest

__all__ = [
    "SKOPEO_KEYS",
    "InspectedImage",
    "TemplateError",
    "check_template",
    "go_json",
    "go_time_string",
    "inspect_table",
    "is_json_format",
    "manifest_converted",
    "raw_config_note",
    "raw_manifest_note",
    "render_template",
    "skopeo_inspect",
    "source_layer_media_type",
]

#: The keys of ``skopeo inspect``'s report, in its order (``Name`` only when known).
SKOPEO_KEYS: Final = (
    "Name",
    "Digest",
    "RepoTags",
    "Created",
    "DockerVersion",
    "Labels",
    "Architecture",
    "Os",
    "Layers",
    "LayersData",
    "Env",
)

#: What Go's ``time.Time`` zero value looks like in JSON: skopeo's ``Created`` for a
#: Docker schema 2 configuration without a creation time.
_GO_ZERO_TIME: Final = "0001-01-01T00:00:00Z"


# --------------------------------------------------------------------------
# The proxy's answers
# --------------------------------------------------------------------------


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidDocumentError(f"invalid {what}: malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidDocumentError(f"invalid {what}: not a JSON object")
    return value


def _go_field(obj: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """Look ``name`` up as Go's JSON decoder does: exact key first, then any case."""
    if name in obj:
        return True, obj[name]
    folded = name.casefold()
    for key, value in obj.items():
        if key.casefold() == folded:
            return True, value
    return False, None


def manifest_converted(digest: Digest, manifest: bytes) -> bool:
    """Return whether the proxy returned ``manifest`` converted (the source is Docker schema 2).

    The proxy gives the original manifest's digest and, for an OCI source, the
    original bytes; only a converted manifest hashes to something else.
    """
    return not digest.matches(manifest)


def source_layer_media_type(media_type: str, converted: bool) -> str:
    """Return the source's layer media type: the Docker one an OCI type was converted from."""
    if not converted:
        return media_type
    return DOCKER_LAYER_FROM_OCI.get(media_type, media_type)


@dataclasses.dataclass(frozen=True)
class InspectedImage:
    """What the proxy told about an image, as ``inspect`` needs it.

    ``digest`` and ``manifest`` are GetManifest's answer, ``config`` GetFullConfig's
    (the OCI configuration), and ``original_config`` the configuration blob as the
    source stores it, when the proxy can serve it (OCI sources; None otherwise).
    """

    reference: str
    digest: Digest
    manifest: bytes
    config: bytes
    original_config: bytes | None = None

    @property
    def converted(self) -> bool:
        """Whether ``manifest`` is the proxy's OCI conversion of a Docker schema 2 one."""
        return manifest_converted(self.digest, self.manifest)

    @property
    def manifest_digest(self) -> Digest:
        """The digest of the manifest bytes the proxy returned."""
        return Digest.from_bytes(self.manifest, self.digest.algorithm)


def _layers_data(manifest: Mapping[str, Any], converted: bool) -> list[dict[str, Any]]:
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise InvalidDocumentError("invalid manifest: no list of layers")
    data = []
    for layer in layers:
        if not isinstance(layer, dict):
            raise InvalidDocumentError("invalid manifest: a layer is not a JSON object")
        annotations = layer.get("annotations")
        if isinstance(annotations, dict):
            annotations = dict(sorted(annotations.items()))
        elif annotations is not None:
            raise InvalidDocumentError("invalid manifest: layer annotations are not an object")
        data.append(
            {
                "MIMEType": source_layer_media_type(str(layer.get("mediaType", "")), converted),
                "Digest": str(layer.get("digest", "")),
                "Size": layer.get("size", 0),
                "Annotations": annotations,
            }
        )
    return data


def _empty_in_original(original: Mapping[str, Any] | None, key: str) -> Any:
    """Return ``{}``/``[]`` when the original configuration has ``key`` empty, else None.

    The proxy re-serialises configurations and leaves empty ``Labels`` and ``Env``
    out; skopeo reads the original and shows them empty rather than ``null``.
    """
    if original is None:
        return None
    found, section = _go_field(original, "config")
    if not found or not isinstance(section, dict):
        return None
    found, value = _go_field(section, key)
    if found and isinstance(value, dict | list) and not value:
        return type(value)()
    return None


def _config_fields(
    config: Mapping[str, Any], original: Mapping[str, Any] | None, converted: bool
) -> dict[str, Any]:
    """Return ``Created``, ``DockerVersion``, ``Labels`` and ``Env`` as skopeo shows them."""
    section = config.get("config")
    if not isinstance(section, dict):
        section = {}
    created = config.get("created")
    if created is None and converted:
        created = _GO_ZERO_TIME
    docker_version = ""
    if original is not None:
        found, value = _go_field(original, "docker_version")
        if found and isinstance(value, str):
            docker_version = value
    labels = section.get("Labels")
    labels = (
        dict(sorted(labels.items()))
        if isinstance(labels, dict)
        else _empty_in_original(original, "Labels")
    )
    env = section.get("Env")
    if not isinstance(env, list):
        env = _empty_in_original(original, "Env")
    return {"Created": created, "DockerVersion": docker_version, "Labels": labels, "Env": env}


def skopeo_inspect(image: InspectedImage) -> dict[str, Any]:
    """Return the object ``skopeo inspect`` prints for ``image``, keys in skopeo's order.

    ``Name`` is present only when the reference carries a Docker reference (as
    skopeo omits it). See the module documentation for the values the proxy
    cannot know.

    Raises:
        InvalidDocumentError: the manifest or a configuration is not a JSON object.
    """
    manifest = _json_object(image.manifest, "manifest")
    config = _json_object(image.config, "image configuration")
    original = (
        _json_object(image.original_config, "image configuration")
        if image.original_config is not None
        else None
    )
    fields = _config_fields(config, original, image.converted)
    layers_data = _layers_data(manifest, image.converted)
    output: dict[str, Any] = {}
    name = docker_reference_name(image.reference)
    if name is not None:
        output["Name"] = name
    output.update(
        {
            "Digest": str(image.digest),
            "RepoTags": [],
            "Created": fields["Created"],
            "DockerVersion": fields["DockerVersion"],
            "Labels": fields["Labels"],
            "Architecture": str(config.get("architecture", "")),
            "Os": str(config.get("os", "")),
            "Layers": [layer["Digest"] for layer in layers_data],
            "LayersData": layers_data,
            "Env": fields["Env"],
        }
    )
    return output


# --------------------------------------------------------------------------
# Output formats
# --------------------------------------------------------------------------

#: Characters Go's encoding/json escapes inside strings that Python's does not.
_GO_ESCAPES: Final = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def go_json(value: object) -> str:
    """Return ``value`` as Go's ``json.MarshalIndent(value, "", "    ")`` writes it, plus a newline.

    Non-ASCII characters are written as they are, and ``<``, ``>``, ``&``, U+2028
    and U+2029 as ``\\u`` escapes (those characters only occur inside strings).
    """
    return json.dumps(value, indent=4, ensure_ascii=False).translate(_GO_ESCAPES) + "\n"


_JSON_FORMAT = re.compile(r"\s*(?:json|\{\{\s*json\s*\.?\s*\}\})\s*")


def is_json_format(text: str) -> bool:
    """Return whether ``--format text`` asks for the JSON report (``json`` or ``{{json .}}``)."""
    return _JSON_FORMAT.fullmatch(text) is not None


_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_FIELD_ACTION = re.compile(r"\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*")
_TEMPLATE_FIELDS: Final = tuple(key for key in SKOPEO_KEYS if key != "LayersData")
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?(?:(Z)|([+-])(\d{2}):(\d{2}))"
)


def go_time_string(text: str | None) -> str:
    """Return a JSON time as Go's ``time.Time.String`` prints it (what templates show).

    ``2024-01-01T00:00:00Z`` becomes ``2024-01-01 00:00:00 +0000 UTC``; an offset
    other than zero is shown as Go shows a zone without a name (``+0200 +0200``).
    """
    if text is None:
        return "<nil>"
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise TemplateError(f"cannot show the time {text!r} in a template")
    date, clock, fraction, utc, sign, hours, minutes = match.groups()
    shown = f"{date} {clock}{fraction or ''}"
    if utc or (hours == "00" and minutes == "00"):
        return f"{shown} +0000 UTC"
    offset = f"{sign}{hours}{minutes}"
    return f"{shown} {offset} {offset}"


def _go_print(key: str, value: Any) -> str:
    """Return ``value`` as Go's ``fmt.Print`` shows skopeo's field ``key``."""
    if key == "Created":
        return go_time_string(value)
    if key in ("Labels",):
        items = sorted((value or {}).items())
        return "map[" + " ".join(f"{k}:{v}" for k, v in items) + "]"
    if isinstance(value, list) or key in ("RepoTags", "Layers", "Env"):
        return "[" + " ".join(str(item) for item in value or ()) + "]"
    return "" if value is None else str(value)


def _parse_template(template: str) -> list[tuple[str, str | None]]:
    """Return ``template`` as (literal text, field or None) pairs; raises :class:`TemplateError`."""
    parts: list[tuple[str, str | None]] = []
    position = 0
    for match in _ACTION.finditer(template):
        literal = template[position : match.start()]
        position = match.end()
        field = _FIELD_ACTION.fullmatch(match[1])
        if field is None:
            raise TemplateError(
                f"unsupported template action {match[0]!r}: only {{{{.Field}}}} is"
                " supported (or --format json, piped to jq)"
            )
        if field[1] not in _TEMPLATE_FIELDS:
            raise TemplateError(
                f"unknown template field {field[1]!r}: use one of {', '.join(_TEMPLATE_FIELDS)}"
            )
        parts.append((literal, field[1]))
    rest = template[position:]
    if "{{" in rest or "}}" in rest:
        raise TemplateError(f"unbalanced braces in the template {template!r}")
    parts.append((rest, None))
    return parts


def check_template(template: str) -> None:
    """Raise :class:`TemplateError` unless :func:`render_template` can fill ``template``."""
    _parse_template(template)


def render_template(template: str, report: Mapping[str, Any]) -> str:
    """Fill a ``--format`` template as ``skopeo inspect --format`` does.

    Supported: literal text, ``\\t`` for a tab, and ``{{.Field}}`` for the report's
    fields except ``LayersData``; a newline is added unless the result ends with
    one. Anything else (functions, pipelines, ``range``) raises :class:`TemplateError`.
    """
    out = []
    for literal, key in _parse_template(template):
        out.append(literal.replace("\\t", "\t"))
        if key is not None:
            out.append(_go_print(key, report.get(key)))
    text = "".join(out)
    return text if text.endswith("\n") else text + "\n"


def raw_manifest_note(reference: str, digest: Digest, printed: Digest) -> str:
    """Return what ``inspect --raw`` says on standard error when the manifest was converted."""
    return (
        f"{reference} has a Docker schema 2 manifest, which the image proxy only returns"
        f" converted to OCI: printing the conversion (its digest: {printed}); the original"
        f" manifest's digest, shown by inspect as Digest, is {digest}"
    )


def raw_config_note(reference: str, digest: Digest, printed: Digest) -> str:
    """Return what ``inspect --raw --config`` says on standard error for a converted image."""
    return (
        f"{reference} has a Docker schema 2 manifest, whose original configuration the"
        f" image proxy cannot return: printing its OCI conversion (its digest: {printed});"
        f" the original manifest's digest, shown by inspect as Digest, is {digest}"
    )


def inspect_table(image: InspectedImage, report: Mapping[str, Any]) -> str:
    """Return the human-readable layout of ``inspect --format table``."""
    from rich.filesize import decimal as human_size

    config = _json_object(image.config, "image configuration")
    platform = "/".join(
        str(part)
        for part in (config.get("os"), config.get("architecture"), config.get("variant"))
        if part
    )
    lines = []
    if "Name" in report:
        lines.append(f"Name:        {report['Name']}")
    lines.append(f"Digest:      {report['Digest']}")
    if image.converted:
        lines.append(f"Converted:   Docker schema 2, shown as OCI {image.manifest_digest}")
    layers: list[Mapping[str, Any]] = report["LayersData"]
    total = sum(int(layer["Size"]) for layer in layers)
    lines += [
        f"Platform:    {platform or '-'}",
        f"Created:     {report['Created'] or '-'}",
        f"Layers:      {len(layers)} ({human_size(total)})",
    ]
    for layer in layers:
        lines.append(f"  {layer['Digest']}  {human_size(layer['Size']):>9}  {layer['MIMEType']}")
    labels: Mapping[str, str] = report["Labels"] or {}
    lines.append("Labels:" + ("" if labels else "      -"))
    lines += [f"  {key}={value}" for key, value in labels.items()]
    env: list[str] = report["Env"] or []
    lines.append("Env:" + ("" if env else "         -"))
    lines += [f"  {item}" for item in env]
    return "\n".join(lines) + "\n"
