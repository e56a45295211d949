"""Who may use the dashboard, and which requests may change anything.

Authentication (when a token or a user and password is set) covers every path,
``/metrics`` and the static files included:

- a token is accepted as ``Authorization: Bearer <token>``, or once as
  ``?token=<token>``, which answers with a redirect that sets an HttpOnly,
  SameSite=Strict cookie holding a keyed hash of the token (never the token);
- basic authentication is HTTP's own (``Authorization: Basic``).

Every action is a POST that must carry the page's CSRF token (a keyed hash made
from a secret drawn when the dashboard starts, so it changes on each restart),
and whose ``Origin``, when the browser sends one, must be this dashboard's.
Without authentication the dashboard only answers requests whose ``Host`` is a
loopback name, so a web page cannot reach it through DNS rebinding either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskq.dashboard.options import DashboardOptions, is_loopback

COOKIE = "taskq_dashboard"


class Guard:
    """The checks of one dashboard process (see module docstring)."""

    def __init__(self, options: DashboardOptions) -> None:
        self.options = options
        self._secret = secrets.token_bytes(32)
        self.csrf_token = self._sign("csrf")

    def _sign(self, text: str) -> str:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()

    def _cookie_value(self) -> str:
        return self._sign("session:" + (self.options.token or ""))

    def refusal(self, request: Request) -> Response | None:
        """None when ``request`` may go on, else the response that refuses it."""
        options = self.options
        if not options.authenticated:
            host = (request.headers.get("host") or "").rsplit(":", 1)[0]
            if not is_loopback(host or "localhost"):
                return PlainTextResponse(
                    f"This dashboard answers only to loopback host names, not {host!r}: it "
                    "has no authentication. Start it with --token or --basic-auth to reach "
                    "it under another name.",
                    status_code=421,
                )
            return None
        if options.token:
            return self._token_refusal(request, options.token)
        return self._basic_refusal(request)

    def _token_refusal(self, request: Request, token: str) -> Response | None:
        given = request.query_params.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _unauthorized("Wrong token.")
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(query)}" if query else "")
            response = RedirectResponse(target, 303)
            response.set_cookie(
                COOKIE, self._cookie_value(), httponly=True, samesite="strict", path="/"
            )
            return response
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            if hmac.compare_digest(bearer[7:].strip().encode(), token.encode()):
                return None
            return _unauthorized("Wrong token.")
        cookie = request.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), self._cookie_value().encode()):
            return None
        return _unauthorized(
            "This dashboard needs its token: open it once as /?token=<token>, or send "
            "'Authorization: Bearer <token>'."
        )

    def _basic_refusal(self, request: Request) -> Response | None:
        assert self.options.basic_auth is not None
        user, password = self.options.basic_auth
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                given = base64.b64decode(header[6:].strip()).decode("utf-8")
            except ValueError:
                given = ""
            name, _, secret = given.partition(":")
            same_user = hmac.compare_digest(name.encode(), user.encode())
            if hmac.compare_digest(secret.encode(), password.encode()) and same_user:
                return None
        response = _unauthorized("Wrong or missing user name and password.")
        response.headers["WWW-Authenticate"] = 'Basic realm="taskq dashboard", charset="UTF-8"'
        return response

    def csrf_refusal(self, request: Request, form_token: str | None) -> Response | None:
        """None when a POST carries this page's CSRF token and, if the browser named
        its origin, comes from this dashboard."""
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            return _forbidden(f"Refused a request from another site ({origin}).")
        if not form_token or not hmac.compare_digest(form_token, self.csrf_token):
            return _forbidden(
                "The form's CSRF token is missing or stale (the dashboard restarted?): "
                "reload the page and try again."
            )
        return None


def _unauthorized(message: str) -> Response:
    return PlainTextResponse(message, status_code=401)


def _forbidden(message: str) -> Response:
    return PlainTextResponse(message, status_code=403)


#: Headers on every response: scripts and styles from the dashboard only (an
#: injected tag would not run), no framing (clickjacking), no MIME sniffing.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class GuardMiddleware:
    """Runs ``Guard.refusal`` before every HTTP request and adds ``SECURITY_HEADERS``
    to every response (pure ASGI, so the live stream is not buffered)."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        refusal = self.guard.refusal(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)
