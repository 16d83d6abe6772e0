"""The MCP Python SDK's client, unmodified, against `mandate gateway`.

Driven by test/python.test.mjs: it prints one JSON object a line on stdout.
`{"event": "authorize", "url": ...}` asks the test to have the person consent
in chromium; the browser then lands on this script's own redirect listener.
The last line is `{"event": "result", ...}` with what happened, which the test
asserts on (or `{"event": "error", ...}`).

Usage: client.py <mcp-url> <mode> [--cimd URL] [--port N]
  mode "dcr":  dynamic registration (RFC 7591), the whole flow with a refresh
  mode "cimd": a client metadata document URL (--cimd) as client_id, list and call
  --port:      the redirect listener's port (default: any free one)
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

import anyio
import httpx2
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from mcp.shared.exceptions import MCPError


# Every HTTP request the SDK made, with its answer's status (reported on failure too).
REQUESTS: list[dict[str, object]] = []


START = time.monotonic()


def ms_since_start() -> int:
    return int((time.monotonic() - START) * 1000)


def emit(**obj: object) -> None:
    print(json.dumps(obj), flush=True)


class Listener:
    """A loopback HTTP server standing for the redirect_uri."""

    def __init__(self, port: int = 0) -> None:
        self.hits: queue.Queue[dict[str, str | None]] = queue.Queue()
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                u = urlparse(self.path)
                if u.path == "/favicon.ico":
                    self.send_response(404)
                    self.end_headers()
                    return
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                hits.put({"path": u.path, **q})
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(b"<!doctype html><title>MCP client</title><h1>Back at the Python MCP client</h1>")

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", port), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_port}/callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, timeout: float = 60) -> dict[str, str | None]:
        return self.hits.get(timeout=timeout)


class Memory:
    """TokenStorage in memory; keeps every token set it was given."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None
        self.history: list[OAuthToken] = []

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.history.append(tokens)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def text_of(result: object) -> str:
    return "\n".join(c.text for c in getattr(result, "content", []) if getattr(c, "type", None) == "text")


async def call(client: Client, name: str, arguments: dict[str, object]) -> dict[str, object]:
    """A tool call, as data: its text, or the JSON-RPC error."""
    try:
        r = await client.call_tool(name, arguments)
        return {"ok": True, "is_error": bool(r.is_error), "text": text_of(r), "types": [c.type for c in r.content]}
    except MCPError as e:
        return {"ok": False, "code": e.code, "message": e.message, "data": e.data}


async def main() -> None:
    url, mode, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    opts = dict(zip(rest[::2], rest[1::2]))
    cimd = opts.get("--cimd")
    listener = Listener(int(opts.get("--port", "0")))
    storage = Memory()
    requests = REQUESTS
    authorizations: list[str] = []
    callbacks: list[dict[str, str | None]] = []

    async def redirect_handler(authorization_url: str) -> None:
        authorizations.append(authorization_url)
        emit(event="authorize", url=authorization_url, redirect_uri=listener.uri)

    async def callback_handler() -> AuthorizationCodeResult:
        hit = await anyio.to_thread.run_sync(listener.wait)
        callbacks.append(hit)
        return AuthorizationCodeResult(code=hit.get("code") or "", state=hit.get("state"), iss=hit.get("iss"))

    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name=f"MCP Python SDK ({mode})",
            redirect_uris=[listener.uri],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        client_metadata_url=cimd,
    )

    async def log_request(request: httpx2.Request) -> None:
        body = request.content.decode("utf-8", "replace") if request.method == "POST" else None
        requests.append(
            {"method": request.method, "url": str(request.url), "body": (body or "")[:400], "at": ms_since_start()}
        )

    async def log_response(response: httpx2.Response) -> None:
        for r in reversed(requests):
            if r["url"] == str(response.request.url) and "status" not in r:
                r["status"] = response.status_code
                r["answered_at"] = ms_since_start()
                r["www_authenticate"] = response.headers.get("www-authenticate")
                break

    result: dict[str, object] = {"event": "result", "mode": mode}
    timeout = httpx2.Timeout(30, read=300)
    # No connection is reused: the gateway closes a connection after a 401
    # without `Connection: close`, so the SDK's next request (the metadata,
    # at once) sometimes goes out on a socket being closed and fails with
    # "Server disconnected without sending a response" (test/python.test.mjs,
    # the todo about Connection: close).
    limits = httpx2.Limits(max_keepalive_connections=0)
    async with httpx2.AsyncClient(
        auth=provider,
        timeout=timeout,
        limits=limits,
        event_hooks={"request": [log_request], "response": [log_response]},
    ) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            tools = await client.list_tools()
            result["tools"] = sorted(t.name for t in tools.tools)
            result["echo"] = await call(client, "echo", {"message": f"hello from Python ({mode})"})
            if mode == "dcr":
                result["get_env"] = await call(client, "get-env", {})
                result["get_sum"] = await call(client, "get-sum", {"a": 40, "b": 2})
                # Refresh: wait out the access token (its expires_in), then call again.
                first = storage.tokens
                assert first is not None
                result["first_token"] = first.model_dump(mode="json")
                await anyio.sleep((first.expires_in or 0) + 1)
                result["after_refresh"] = await call(client, "echo", {"message": "after the refresh"})
                result["image"] = await call(client, "get-tiny-image", {})
    result["client_info"] = storage.client.model_dump(mode="json") if storage.client else None
    result["tokens"] = [t.model_dump(mode="json") for t in storage.history]
    result["authorizations"] = authorizations
    result["callbacks"] = callbacks
    result["requests"] = requests
    emit(**result)


if __name__ == "__main__":
    try:
        anyio.run(main)
    except BaseException as e:  # noqa: BLE001
        emit(event="error", error=repr(e), traceback=traceback.format_exc(), requests=REQUESTS)
        sys.exit(1)
