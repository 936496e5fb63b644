"""The 422's words (keel.http.validation): every bad field of a body, each as a sentence for a person."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest
from msgspec import Meta

from keel.http.validation import sentence, split_path, struct_errors
from keel.types import NO_NUL


class Inner(msgspec.Struct):
    size: Annotated[int, Meta(ge=1, le=9)]


class Thing(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=2, max_length=4, pattern="^[a-z]+$", description="2 to 4 of a-z")]
    inner: Inner
    note: Annotated[str, Meta(pattern=NO_NUL)] = ""

    def __post_init__(self) -> None:
        if self.name == "bad":
            raise ValueError("That name is reserved. - at `$.name`")


def test_every_field_is_named() -> None:
    errors = struct_errors(Thing, {"inner": {"size": 0}, "note": "a\x00", "extra": 1}, ["body"])
    assert {tuple(e["loc"]): e["msg"] for e in errors} == {
        ("body", "extra"): "This field is not allowed.",
        ("body", "name"): "This field is required.",
        ("body", "inner", "size"): "Must be at least 1.",
        ("body", "note"): "The text must not contain NUL (\\u0000) characters.",
    }


def test_the_structs_own_checks_run_too() -> None:
    assert struct_errors(Thing, {"name": "bad", "inner": {"size": 1}}, ["body"]) == [
        {"loc": ["body", "name"], "msg": "That name is reserved."}
    ]
    # ... beside another field's error, without repeating a field already reported
    errors = struct_errors(Thing, {"name": "bad", "inner": {"size": 99}}, ["body"])
    assert [e["loc"] for e in errors] == [["body", "inner", "size"], ["body", "name"]]


def test_a_body_that_is_not_an_object() -> None:
    assert struct_errors(Thing, [1], ["body"]) == [{"loc": ["body"], "msg": "Must be an object, not an array."}]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Expected `str`, got `int`", "Must be a string, not an integer."),
        ("Expected `int | null`, got `str`", "Must be an integer or null, not a string."),
        ("Expected `str` of length >= 1", "Must not be empty."),
        ("Expected `str` of length <= 4", "Must be at most 4 characters long."),
        ("Expected `int` <= 100", "Must be at most 100."),
        ("Expected `str` matching regex '^[a-z]+$'", "Has a form that is not allowed."),
        ("Invalid enum value 'x'", "Must be one of the allowed values, not 'x'."),
        ("Invalid UUID", "Must be a UUID."),
        ("Invalid RFC 3339 encoded datetime", "Invalid RFC 3339 encoded datetime."),
    ],
)
def test_sentences(message: str, expected: str) -> None:
    assert sentence(message) == expected


def test_a_pattern_reads_as_its_description() -> None:
    assert sentence("Expected `str` matching regex '^[a-z]+$'", "2 to 4 of a-z") == "Must be 2 to 4 of a-z."


def test_split_path() -> None:
    assert split_path("Expected `int`, got `str` - at `$.items[2].size`") == (
        "Expected `int`, got `str`",
        ["items", 2, "size"],
    )
    assert split_path("no path") == ("no path", [])
