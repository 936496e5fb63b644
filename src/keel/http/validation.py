"""What a 422 says (SPEC §2): every invalid or missing field of a body, each with a sentence for a person.

msgspec stops at a body's first error. That keeps the happy path at one decode, so the rest are found here, on the
error path only: each field of the body's struct is converted on its own, missing and unknown members are named,
and the struct's own `__post_init__` checks run when the fields themselves pass.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from keel.types import NO_NUL, NO_NUL_MESSAGE

Location = list[str | int]
_SUFFIX: Final = re.compile(r"^(.*?) - at `\$(.*)`$", re.DOTALL)
_TYPE_NAMES: Final = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "object": "an object",
    "array": "an array",
    "null": "null",
    "uuid": "a UUID",
    "datetime": "an RFC 3339 timestamp",
}
_SENTENCES: Final = (
    (re.compile(r"^Object missing required field `(.+)`$"), "This field is required."),
    (re.compile(r"^Object contains unknown field `(.+)`$"), "This field is not allowed."),
    (re.compile(r"^Expected `str` of length >= 1$"), "Must not be empty."),
    (re.compile(r"^Expected `str` of length >= (\d+)$"), "Must be at least {0} characters long."),
    (re.compile(r"^Expected `str` of length <= (\d+)$"), "Must be at most {0} characters long."),
    (re.compile(r"^Expected `(?:int|float)` >= (-?\d+)$"), "Must be at least {0}."),
    (re.compile(r"^Expected `(?:int|float)` <= (-?\d+)$"), "Must be at most {0}."),
    (re.compile(r"^Expected `array` of length <= (\d+)$"), "Must have at most {0} items."),
    (re.compile(r"^Invalid enum value (.+)$"), "Must be one of the allowed values, not {0}."),
    (re.compile(r"^Invalid UUID$"), "Must be a UUID."),
)
_WRONG_TYPE: Final = re.compile(r"^Expected `([^`]+)`, got `([^`]+)`$")
_PATTERN: Final = re.compile(r"^Expected `str` matching regex '(.*)'$", re.DOTALL)


def split_path(message: str) -> tuple[str, Location]:
    """msgspec's "<message> - at `$.a[0].b`" as ("<message>", ["a", 0, "b"])."""
    match = _SUFFIX.match(message)
    if match is None:
        return message, []
    text, path = match.groups()
    parts: Location = []
    for segment in path.replace("[", ".[").split("."):
        if segment.startswith("[") and segment.endswith("]") and segment[1:-1].isdigit():
            parts.append(int(segment[1:-1]))
        elif segment:
            parts.append(segment)
    return text, parts


def sentence(message: str, description: str | None = None) -> str:
    """msgspec's words for a broken rule, as a sentence for a person; `description` explains a pattern."""
    if (pattern := _PATTERN.match(message)) is not None:
        if pattern.group(1) == NO_NUL.replace("\\", "\\\\"):
            return f"The text {NO_NUL_MESSAGE}."
        return f"Must be {description}." if description else "Has a form that is not allowed."
    if (wrong := _WRONG_TYPE.match(message)) is not None:
        expected, got = wrong.groups()
        names = " or ".join(_TYPE_NAMES.get(part.strip(), part.strip()) for part in expected.split("|"))
        return f"Must be {names}, not {_TYPE_NAMES.get(got, got)}."
    for regex, template in _SENTENCES:
        if (match := regex.match(message)) is not None:
            return template.format(*match.groups())
    return message if message.endswith(".") else f"{message}."


def _description(annotation: Any) -> str | None:
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, msgspec.Meta) and meta.description:
            return str(meta.description)
    return None


def struct_errors(struct: type[msgspec.Struct], raw: object, prefix: Location) -> list[dict[str, Any]]:
    """Every error of `raw` as a `struct`, each {"loc", "msg"}; empty if it converts (it never does, here)."""
    if not isinstance(raw, dict):
        try:
            msgspec.convert(raw, struct)
        except msgspec.ValidationError as exc:
            return [error(str(exc), prefix)]
        return []
    errors: list[dict[str, Any]] = []
    fields = msgspec.structs.fields(struct)
    names = {field.encode_name for field in fields}
    config = struct.__struct_config__
    for key in raw:
        if config.forbid_unknown_fields and key not in names:
            errors.append({"loc": [*prefix, key], "msg": "This field is not allowed."})
    values: dict[str, Any] = {}
    for field in fields:
        if field.encode_name not in raw:
            if field.required:
                errors.append({"loc": [*prefix, field.encode_name], "msg": "This field is required."})
            continue
        try:
            values[field.name] = msgspec.convert(raw[field.encode_name], field.type)
        except msgspec.ValidationError as exc:
            errors.append(error(str(exc), [*prefix, field.encode_name], _description(field.type)))
    if hasattr(struct, "__post_init__"):
        # the struct's own checks (an email's syntax) see the converted fields, and the raw value of the others
        arguments = {
            field.name: values[field.name] if field.name in values else raw.get(field.encode_name)
            for field in fields
            if field.name in values or field.encode_name in raw or field.required
        }
        try:
            struct(**arguments)
        except (ValueError, TypeError, AttributeError) as exc:
            found = error(str(exc), prefix)
            # kept when it names a field not already reported, or when it is the only error
            if not errors or (found["loc"] != prefix and found["loc"] not in [e["loc"] for e in errors]):
                errors.append(found)
    return errors


def error(message: str, prefix: Location, description: str | None = None) -> dict[str, Any]:
    """One {"loc", "msg"} entry from a msgspec message, its path appended to `prefix`."""
    text, path = split_path(message)
    return {"loc": [*prefix, *path], "msg": sentence(text, description)}
