from http import HTTPStatus
from typing import Any
from uuid import UUID

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.problem_details import ProblemDetails
from ...models.validation_problem import ValidationProblem
from ...types import UNSET, Response, Unset


def _get_kwargs(
    *,
    channel: list[UUID],
    ticket: str | Unset = UNSET,
    last_event_id_query: str | Unset = UNSET,
    last_event_id_header: str | Unset = UNSET,
    x_request_id: str | Unset = UNSET,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    if not isinstance(last_event_id_header, Unset):
        headers["Last-Event-ID"] = last_event_id_header

    if not isinstance(x_request_id, Unset):
        headers["X-Request-ID"] = x_request_id

    params: dict[str, Any] = {}

    json_channel = []
    for channel_item_data in channel:
        channel_item = str(channel_item_data)
        json_channel.append(channel_item)

    params["channel"] = json_channel

    params["ticket"] = ticket

    params["last_event_id"] = last_event_id_query

    params = {k: v for k, v in params.items() if v is not UNSET and v is not None}

    _kwargs: dict[str, Any] = {
        "method": "get",
        "url": "/events",
        "params": params,
    }

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> ProblemDetails | ValidationProblem | str | None:
    if response.status_code == 200:
        response_200 = response.text
        return response_200

    if response.status_code == 400:
        response_400 = ProblemDetails.from_dict(response.json())

        return response_400

    if response.status_code == 401:
        response_401 = ProblemDetails.from_dict(response.json())

        return response_401

    if response.status_code == 403:
        response_403 = ProblemDetails.from_dict(response.json())

        return response_403

    if response.status_code == 404:
        response_404 = ProblemDetails.from_dict(response.json())

        return response_404

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
) -> Response[ProblemDetails | ValidationProblem | str]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    channel: list[UUID],
    ticket: str | Unset = UNSET,
    last_event_id_query: str | Unset = UNSET,
    last_event_id_header: str | Unset = UNSET,
    x_request_id: str | Unset = UNSET,
) -> Response[ProblemDetails | ValidationProblem | str]:
    """Follow channels as Server-Sent Events

     A `text/event-stream` of every new message in the channels named by `channel`. Each message is
    `event: message` with the Message JSON as `data:` and an `id:` holding the stream's position in
    every channel it follows (`<channel id>:<seq>` pairs joined by `,`). The stream opens with `retry:`
    and that position, and sends a `: keep-alive` comment every 15 s. Reconnecting with `Last-Event-ID`
    (as EventSource does by itself) resumes every channel in it with nothing missed and nothing twice.

    Authenticate with a bearer token, a ticket from the tickets endpoint (`?ticket=`, single use), or a
    browser session cookie from this server's origin or a CORS origin. Opening a stream counts against
    the rate limit, and one user holds at most KEEL_MAX_STREAMS_PER_USER streams and WebSockets per
    instance.

    Args:
        channel (list[UUID]):
        ticket (str | Unset):
        last_event_id_query (str | Unset):
        last_event_id_header (str | Unset):
        x_request_id (str | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ProblemDetails | ValidationProblem | str]
    """

    kwargs = _get_kwargs(
        channel=channel,
        ticket=ticket,
        last_event_id_query=last_event_id_query,
        last_event_id_header=last_event_id_header,
        x_request_id=x_request_id,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient,
    channel: list[UUID],
    ticket: str | Unset = UNSET,
    last_event_id_query: str | Unset = UNSET,
    last_event_id_header: str | Unset = UNSET,
    x_request_id: str | Unset = UNSET,
) -> ProblemDetails | ValidationProblem | str | None:
    """Follow channels as Server-Sent Events

     A `text/event-stream` of every new message in the channels named by `channel`. Each message is
    `event: message` with the Message JSON as `data:` and an `id:` holding the stream's position in
    every channel it follows (`<channel id>:<seq>` pairs joined by `,`). The stream opens with `retry:`
    and that position, and sends a `: keep-alive` comment every 15 s. Reconnecting with `Last-Event-ID`
    (as EventSource does by itself) resumes every channel in it with nothing missed and nothing twice.

    Authenticate with a bearer token, a ticket from the tickets endpoint (`?ticket=`, single use), or a
    browser session cookie from this server's origin or a CORS origin. Opening a stream counts against
    the rate limit, and one user holds at most KEEL_MAX_STREAMS_PER_USER streams and WebSockets per
    instance.

    Args:
        channel (list[UUID]):
        ticket (str | Unset):
        last_event_id_query (str | Unset):
        last_event_id_header (str | Unset):
        x_request_id (str | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ProblemDetails | ValidationProblem | str
    """

    return sync_detailed(
        client=client,
        channel=channel,
        ticket=ticket,
        last_event_id_query=last_event_id_query,
        last_event_id_header=last_event_id_header,
        x_request_id=x_request_id,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    channel: list[UUID],
    ticket: str | Unset = UNSET,
    last_event_id_query: str | Unset = UNSET,
    last_event_id_header: str | Unset = UNSET,
    x_request_id: str | Unset = UNSET,
) -> Response[ProblemDetails | ValidationProblem | str]:
    """Follow channels as Server-Sent Events

     A `text/event-stream` of every new message in the channels named by `channel`. Each message is
    `event: message` with the Message JSON as `data:` and an `id:` holding the stream's position in
    every channel it follows (`<channel id>:<seq>` pairs joined by `,`). The stream opens with `retry:`
    and that position, and sends a `: keep-alive` comment every 15 s. Reconnecting with `Last-Event-ID`
    (as EventSource does by itself) resumes every channel in it with nothing missed and nothing twice.

    Authenticate with a bearer token, a ticket from the tickets endpoint (`?ticket=`, single use), or a
    browser session cookie from this server's origin or a CORS origin. Opening a stream counts against
    the rate limit, and one user holds at most KEEL_MAX_STREAMS_PER_USER streams and WebSockets per
    instance.

    Args:
        channel (list[UUID]):
        ticket (str | Unset):
        last_event_id_query (str | Unset):
        last_event_id_header (str | Unset):
        x_request_id (str | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ProblemDetails | ValidationProblem | str]
    """

    kwargs = _get_kwargs(
        channel=channel,
        ticket=ticket,
        last_event_id_query=last_event_id_query,
        last_event_id_header=last_event_id_header,
        x_request_id=x_request_id,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    channel: list[UUID],
    ticket: str | Unset = UNSET,
    last_event_id_query: str | Unset = UNSET,
    last_event_id_header: str | Unset = UNSET,
    x_request_id: str | Unset = UNSET,
) -> ProblemDetails | ValidationProblem | str | None:
    """Follow channels as Server-Sent Events

     A `text/event-stream` of every new message in the channels named by `channel`. Each message is
    `event: message` with the Message JSON as `data:` and an `id:` holding the stream's position in
    every channel it follows (`<channel id>:<seq>` pairs joined by `,`). The stream opens with `retry:`
    and that position, and sends a `: keep-alive` comment every 15 s. Reconnecting with `Last-Event-ID`
    (as EventSource does by itself) resumes every channel in it with nothing missed and nothing twice.

    Authenticate with a bearer token, a ticket from the tickets endpoint (`?ticket=`, single use), or a
    browser session cookie from this server's origin or a CORS origin. Opening a stream counts against
    the rate limit, and one user holds at most KEEL_MAX_STREAMS_PER_USER streams and WebSockets per
    instance.

    Args:
        channel (list[UUID]):
        ticket (str | Unset):
        last_event_id_query (str | Unset):
        last_event_id_header (str | Unset):
        x_request_id (str | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ProblemDetails | ValidationProblem | str
    """

    return (
        await asyncio_detailed(
            client=client,
            channel=channel,
            ticket=ticket,
            last_event_id_query=last_event_id_query,
            last_event_id_header=last_event_id_header,
            x_request_id=x_request_id,
        )
    ).parsed
