"""The example chat page at /examples/chat (KEEL_ENV=development only): what a new user opens to see keel work.

Plain files in keel/http/static/examples, inside the package so an installed keel serves them too. The page's own
CSP allows only its own script, style and connections (its WebSocket included), on top of the edge's headers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from litestar import Router, get
from litestar.params import FromPath
from litestar.response import Response

from keel.errors import NotFound

FILES: Final = Path(__file__).parent / "static" / "examples"
PAGE_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_TYPES: Final = {"chat.js": "text/javascript", "chat.css": "text/css"}


def _file(name: str, media_type: str) -> Response[bytes]:
    # read per request: a development page, edited while the server runs
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP}
    return Response((FILES / name).read_bytes(), media_type=media_type, headers=headers)


@get("/chat", include_in_schema=False, sync_to_thread=False)
def chat_page() -> Response[bytes]:
    return _file("chat.html", "text/html")


@get("/{name:str}", include_in_schema=False, sync_to_thread=False)
def chat_asset(name: FromPath[str]) -> Response[bytes]:
    media_type = _TYPES.get(name)
    if media_type is None:
        raise NotFound(f"There is no example file {name!r}.")
    return _file(name, media_type)


def examples_router() -> Router:
    return Router(path="/examples", route_handlers=[chat_page, chat_asset])
