from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define

T = TypeVar("T", bound="UserCreate")


@_attrs_define
class UserCreate:
    """
    Attributes:
        username (str): 3 to 32 of A-Z a-z 0-9 _ . - (full-width look-alikes are refused, not folded)
        email (str): an email address (RFC 5322 dot-atom syntax, a public domain: no IP literals, quoted local parts or
            special-use domains such as .local and .test); stored with its domain lower-cased (email-validator's normal
            form)
        password (str): 8 to 128 characters; never truncated
    """

    username: str
    email: str
    password: str

    def to_dict(self) -> dict[str, Any]:
        username = self.username

        email = self.email

        password = self.password

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "username": username,
                "email": email,
                "password": password,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        username = d.pop("username")

        email = d.pop("email")

        password = d.pop("password")

        user_create = cls(
            username=username,
            email=email,
            password=password,
        )

        return user_create
