"""The ``http.request`` built-in: one HTTP request through httpx.

Failures are sorted by whether trying again can help: 5xx responses, connection errors and
timeouts are retryable (``HTTP5xx``, ``ConnectError``, ``Timeout``); 4xx responses are not
(``HTTP4xx``). Redirects are not followed (a 3xx is a result). GET, HEAD and OPTIONS are LOW
risk, idempotent and claim ``http:<scheme>://<host>:<port>`` for reading; other methods are
MEDIUM, not idempotent, and claim it for writing. Proxy settings come from the environment.
"""

from __future__ import annotations

import codecs
import re
import time
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from buddy.errors import RetryableToolError, ToolError, ToolTimeoutError
from buddy.models import ResourceClaim, Risk
from buddy.tools import ToolContext, tool
from buddy.tools.builtin.basic import DEFAULT_RETRY, MAX_TEXT_BYTES, time_budget

Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class HttpArgs(BaseModel):
    """``method``; ``url`` (http or https); ``headers``; a body as ``json`` (any JSON value) or
    ``body`` (text), not both; ``timeout_s``: seconds for the whole request, up to an hour."""

    # ``json`` would shadow ``BaseModel.json``: the field is ``json_``, spelled ``json`` outside.
    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    method: Method = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    json_: Any = Field(default=None, alias="json")
    body: str | None = None
    timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        try:
            url = httpx.URL(v)
        except httpx.InvalidURL as e:
            raise ValueError(f"not a valid URL: {e}") from None
        if url.scheme not in _DEFAULT_PORTS or not url.host:
            raise ValueError("url must be http:// or https:// with a host")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _TOKEN_RE.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP token")
            if not value.isascii() or any(c in value for c in "\r\n\0"):
                raise ValueError(f"header {name!r}: value must be ASCII without line breaks")
        return v

    @model_validator(mode="after")
    def _one_body(self) -> HttpArgs:
        if self.json_ is not None and self.body is not None:
            raise ValueError("give json or body, not both")
        return self


class HttpResult(BaseModel):
    """``status``; response ``headers`` (repeated ones joined with ", "); ``body``: text, at most
    64 KiB of the response; ``elapsed_ms``: wall time of the request in milliseconds."""

    status: int
    headers: dict[str, str]
    body: str
    elapsed_ms: float


def origin(url: str) -> str:
    """``<scheme>://<host>:<port>`` of ``url``, the port made explicit."""
    u = httpx.URL(url)
    port = u.port or _DEFAULT_PORTS.get(u.scheme, 0)
    host = f"[{u.host}]" if ":" in u.host else u.host
    return f"{u.scheme}://{host.lower()}:{port}"


def _risk_of(args: HttpArgs) -> Risk:
    return Risk.LOW if args.method in SAFE_METHODS else Risk.MEDIUM


def _idempotent_of(args: HttpArgs) -> bool:
    return args.method in SAFE_METHODS


def _resources(args: HttpArgs, workdir: Path) -> list[ResourceClaim]:
    mode: Literal["read", "write"] = "read" if args.method in SAFE_METHODS else "write"
    return [ResourceClaim(name=f"http:{origin(args.url)}", mode=mode)]


def _build(client: httpx.Client, args: HttpArgs) -> httpx.Request:
    return client.build_request(
        args.method,
        args.url,
        headers=args.headers,
        json=args.json_,
        content=args.body,
    )


def _mock(args: HttpArgs) -> HttpResult:
    """Synthetic result: status 200, no headers, empty body, 0 ms; nothing is sent."""
    return HttpResult(status=200, headers={}, body="", elapsed_ms=0.0)


def _dry_run(args: HttpArgs, ctx: ToolContext) -> dict[str, Any]:
    with httpx.Client() as client:
        request = _build(client, args)
    content = request.content
    return {
        "method": args.method,
        "url": str(request.url),
        "headers": dict(request.headers),
        "json": args.json_,
        "body": content[:MAX_TEXT_BYTES].decode("utf-8", errors="replace") if content else None,
        "timeout_s": args.timeout_s,
    }


def _read_body(response: httpx.Response, until: float) -> str:
    """At most 64 KiB of the body as text; raises ``httpx.ReadTimeout`` once ``until`` (monotonic) passes."""
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) >= MAX_TEXT_BYTES:
            break
        if time.monotonic() > until:
            raise httpx.ReadTimeout("the response body was still arriving at the time limit")
    encoding = response.charset_encoding or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        encoding = "utf-8"
    return bytes(data[:MAX_TEXT_BYTES]).decode(encoding, errors="replace")


@tool(
    "http.request",
    args=HttpArgs,
    result=HttpResult,
    description="Send one HTTP request and return status, headers and body.",
    risk=Risk.MEDIUM,
    idempotent=False,
    timeout_of=lambda a: a.timeout_s,
    timeout_s=30.0,
    retry=DEFAULT_RETRY,
    resources=_resources,
    mock=_mock,
    dry_run=_dry_run,
    risk_of=_risk_of,
    idempotent_of=_idempotent_of,
)
def http_request(args: HttpArgs, ctx: ToolContext) -> HttpResult:
    """Send the request; at most 64 KiB of the response body is read.

    The time limit is ``args.timeout_s`` or what is left of ``ctx.deadline``, whichever is sooner.
    httpx applies it to each phase (connect, send, each read); reading the body also stops once
    it has passed since the request was sent.
    Raises :class:`RetryableToolError` for a 5xx (``HTTP5xx``), a connection failure
    (``ConnectError``) or ``args.timeout_s`` passing (``Timeout``); :class:`ToolTimeoutError`
    when the call's deadline passes; :class:`ToolError` for a 4xx (``HTTP4xx``).
    """
    limit, deadline_binds = time_budget(ctx, args.timeout_s)
    try:
        with httpx.Client(timeout=limit, follow_redirects=False) as client:
            request = _build(client, args)
            start = time.monotonic()
            response = client.send(request, stream=True)
            try:
                body = _read_body(response, start + limit)
            finally:
                response.close()
    except httpx.TimeoutException as e:
        msg = f"{args.method} {args.url}: no answer within {limit:.3g} s ({type(e).__name__})"
        if deadline_binds:
            raise ToolTimeoutError(msg + ", the call's deadline") from None
        raise RetryableToolError(msg, error_type="Timeout") from None
    except httpx.UnsupportedProtocol as e:
        raise ToolError(f"{args.method} {args.url}: {e}", error_type="InvalidURL") from None
    except httpx.TransportError as e:
        raise RetryableToolError(
            f"{args.method} {args.url}: {type(e).__name__}: {e}", error_type="ConnectError"
        ) from None
    except httpx.InvalidURL as e:
        raise ToolError(f"{args.method} {args.url}: {e}", error_type="InvalidURL") from None
    elapsed_ms = (time.monotonic() - start) * 1000.0
    status = response.status_code
    if status >= 500:
        raise RetryableToolError(
            f"{args.method} {args.url}: HTTP {status}: {body[:500]}", error_type="HTTP5xx"
        )
    if status >= 400:
        raise ToolError(f"{args.method} {args.url}: HTTP {status}: {body[:500]}", error_type="HTTP4xx")
    return HttpResult(status=status, headers=dict(response.headers), body=body, elapsed_ms=elapsed_ms)
