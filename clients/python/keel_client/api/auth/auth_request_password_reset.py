from http import HTTPStatus
from typing import Any

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.mail_accepted import MailAccepted
from ...models.password_reset_request import PasswordResetRequest
from ...models.problem_details import ProblemDetails
from ...models.validation_problem import ValidationProblem
from ...types import UNSET, Response, Unset


def _get_kwargs(
    *,
    body: PasswordResetRequest,
    x_request_id: str | Unset = UNSET,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    if not isinstance(x_request_id, Unset):
        headers["X-Request-ID"] = x_request_id

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/api/v2/auth/password-reset",
    }

    _kwargs["json"] = body.to_dict()

    headers["Content-Type"] = "application/json"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> MailAccepted | ProblemDetails | ValidationProblem | None:
    if response.status_code == 202:
        response_202 = MailAccepted.from_dict(response.json())

        return response_202

    if response.status_code == 400:
        response_400 = ProblemDetails.from_dict(response.json())

        return response_400

    if response.status_code == 413:
        response_413 = ProblemDetails.from_dict(response.json())

        return response_413

    if response.status_code == 415:
        response_415 = ProblemDetails.from_dict(response.json())

        return response_415

    if response.status_code == 422:
        response_422 = ValidationProblem.from_dict(response.json())

        return response_422

    if response.status_code == 429:
        response_429 = ProblemDetails.from_dict(response.json())

        return response_429

    if response.status_code == 503:
        response_503 = ProblemDetails.from_dict(response.json())

        return response_503

    if client.raise_on_unexpected_status:
        raise errors.UnexpectedStatus(response.status_code, response.content)
    else:
        return None


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[MailAccepted | ProblemDetails | ValidationProblem]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient | Client,
    body: PasswordResetRequest,
    x_request_id: str | Unset = UNSET,
) -> Response[MailAccepted | ProblemDetails | ValidationProblem]:
    """Ask for a password reset mail

     Mail a single-use reset token, valid 30 minutes, to the account with this address. The answer is the
    same, in similar time, whether or not an account has it; past the auth policy's budget for one
    address,
    nothing more is mailed to it, and the answer is still 202.

    Args:
        x_request_id (str | Unset):
        body (PasswordResetRequest):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[MailAccepted | ProblemDetails | ValidationProblem]
    """

    kwargs = _get_kwargs(
        body=body,
        x_request_id=x_request_id,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient | Client,
    body: PasswordResetRequest,
    x_request_id: str | Unset = UNSET,
) -> MailAccepted | ProblemDetails | ValidationProblem | None:
    """Ask for a password reset mail

     Mail a single-use reset token, valid 30 minutes, to the account with this address. The answer is the
    same, in similar time, whether or not an account has it; past the auth policy's budget for one
    address,
    nothing more is mailed to it, and the answer is still 202.

    Args:
        x_request_id (str | Unset):
        body (PasswordResetRequest):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        MailAccepted | ProblemDetails | ValidationProblem
    """

    return sync_detailed(
        client=client,
        body=body,
        x_request_id=x_request_id,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient | Client,
    body: PasswordResetRequest,
    x_request_id: str | Unset = UNSET,
) -> Response[MailAccepted | ProblemDetails | ValidationProblem]:
    """Ask for a password reset mail

     Mail a single-use reset token, valid 30 minutes, to the account with this address. The answer is the
    same, in similar time, whether or not an account has it; past the auth policy's budget for one
    address,
    nothing more is mailed to it, and the answer is still 202.

    Args:
        x_request_id (str | Unset):
        body (PasswordResetRequest):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[MailAccepted | ProblemDetails | ValidationProblem]
    """

    kwargs = _get_kwargs(
        body=body,
        x_request_id=x_request_id,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient | Client,
    body: PasswordResetRequest,
    x_request_id: str | Unset = UNSET,
) -> MailAccepted | ProblemDetails | ValidationProblem | None:
    """Ask for a password reset mail

     Mail a single-use reset token, valid 30 minutes, to the account with this address. The answer is the
    same, in similar time, whether or not an account has it; past the auth policy's budget for one
    address,
    nothing more is mailed to it, and the answer is still 202.

    Args:
        x_request_id (str | Unset):
        body (PasswordResetRequest):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        MailAccepted | ProblemDetails | ValidationProblem
    """

    return (
        await asyncio_detailed(
            client=client,
            body=body,
            x_request_id=x_request_id,
        )
    ).parsed
