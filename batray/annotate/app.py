"""The annotation web app (the paper's Fig. 1): a FastAPI JSON API and the static page that uses it.

Scripts authenticate with `Authorization: Bearer TOKEN`; the browser trades the token for an
HttpOnly, SameSite=Strict session cookie (`POST /api/session`) with the same rights. Every request
to /api without a valid token or session is refused with 401. Bad requests get a 4xx with a one-line
`detail` (every integer is range-checked, ids to SQLite's signed 64 bits); an unexpected failure is
a JSON 500 without a traceback. A label's 201 is sent only after its transaction committed, and
only for a task `/api/next` handed to that annotator (admins may send `"override": true`).

Bodies are limited per route (`BodyLimit`: 413 from Content-Length or while the body streams in,
before the token is looked up): `/api/labels` takes `annotate.max_body_bytes`, the other routes a
few KiB. `HEAD` answers like `GET` without a body on the pages and /healthz.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from sqlalchemy import delete, select

from batray.annotate.agreement import agreement_summary
from batray.annotate.db import BrowserSession, Database, User, hash_token
from batray.annotate.store import Conflict, NotFound, Store
from batray.http_limits import BodyLimit

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "batray_session"

# The page loads only its own script and style: even if some text reached the DOM as HTML, an
# injected <script> or inline handler (<img onerror=...>) would not run.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


SMALL_BODY_BYTES = 4096  # a sign-in or a skip is a few dozen bytes

# Database ids: SQLite stores signed 64-bit integers, so larger values would overflow in the driver.
TaskId = Annotated[StrictInt, Field(ge=1, le=2**63 - 1)]


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelIn(StrictBody):
    task_id: TaskId
    acceptable_left: StrictBool
    acceptable_right: StrictBool
    helpfulness: Literal["left_better", "right_better", "both_good", "both_bad"]
    comment: str | None = Field(default=None, max_length=5000)
    override: StrictBool = False  # admins only: label a task that was not handed to them (recorded)


class SkipIn(StrictBody):
    task_id: TaskId


class LoginIn(StrictBody):
    token: str = Field(min_length=1, max_length=200)


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    is_admin: bool


def _one_line(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        if err.get("type") == "json_invalid":
            return "the body is not valid JSON"
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(db: Database, lease_minutes: float = 30.0, max_body_bytes: int = 64 * 1024) -> FastAPI:
    store = Store(db, lease_minutes=lease_minutes)
    app = FastAPI(title="batray annotate", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limits={"/api/labels": max_body_bytes}, default=SMALL_BODY_BYTES,
                       error_body=lambda message: {"detail": message})
    app.state.db = db

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": f"malformed request: {_one_line(exc)}"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server log has the details"},
                            status_code=500)

    def annotator(request: Request) -> Annotator:
        """The caller from a bearer token or a session cookie; 401 otherwise."""
        auth = request.headers.get("authorization")
        with db.read() as s:
            if auth is not None:
                scheme, _, token = auth.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise HTTPException(401, "Authorization header must be 'Bearer TOKEN'")
                user = s.scalar(select(User).where(User.token_hash == hash_token(token.strip())))
            elif (key := request.cookies.get(COOKIE)) is not None:
                user = s.scalar(
                    select(User).join(BrowserSession, BrowserSession.user_id == User.id)
                    .where(BrowserSession.key_hash == hash_token(key))
                )
            else:
                raise HTTPException(401, "not signed in: send 'Authorization: Bearer TOKEN' or sign in on the page")
            if user is None:
                raise HTTPException(401, "invalid token or expired session")
            return Annotator(user.id, user.name, user.is_admin)

    def admin(who: Annotator = Depends(annotator)) -> Annotator:
        if not who.is_admin:
            raise HTTPException(403, "admin only: create an admin token with `batray annotate add-user NAME --admin`")
        return who

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    def healthz() -> dict:
        return {"ok": True}

    @app.post("/api/session")
    def login(body: LoginIn, request: Request, response: Response) -> dict:
        key = secrets.token_urlsafe(32)
        with db.write() as s, s.begin():
            user = s.scalar(select(User).where(User.token_hash == hash_token(body.token.strip())))
            if user is None:
                raise HTTPException(401, "unknown token")
            s.add(BrowserSession(key_hash=hash_token(key), user_id=user.id))
            me = {"name": user.name, "admin": user.is_admin}
        response.set_cookie(COOKIE, key, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                            max_age=30 * 24 * 3600, path="/")
        return me

    @app.delete("/api/session", status_code=204)
    def logout(request: Request) -> Response:
        if (key := request.cookies.get(COOKIE)) is not None:
            with db.write() as s, s.begin():
                s.execute(delete(BrowserSession).where(BrowserSession.key_hash == hash_token(key)))
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/api/me")
    def me(who: Annotator = Depends(annotator)) -> dict:
        return {"name": who.name, "admin": who.is_admin}

    @app.get("/api/next")
    def next_task(who: Annotator = Depends(annotator)):
        task = store.next_task(who.id)
        return Response(status_code=204) if task is None else task

    @app.post("/api/labels", status_code=201)
    def post_label(body: LabelIn, who: Annotator = Depends(annotator)) -> dict:
        if body.override and not who.is_admin:
            raise HTTPException(403, "override is for admins: label the task /api/next gives you")
        try:
            label_id = store.submit(who.id, body.task_id, body.acceptable_left, body.acceptable_right,
                                    body.helpfulness, body.comment, override=body.override)
        except NotFound as e:
            raise HTTPException(404, str(e)) from None
        except Conflict as e:
            raise HTTPException(409, str(e)) from None
        return {"label_id": label_id, "task_id": body.task_id}

    @app.delete("/api/labels/last")
    def undo_last(who: Annotator = Depends(annotator)) -> dict:
        try:
            return store.undo_last(who.id)
        except NotFound as e:
            raise HTTPException(404, str(e)) from None

    @app.post("/api/skip")
    def skip(body: SkipIn, who: Annotator = Depends(annotator)) -> dict:
        try:
            store.skip(who.id, body.task_id)
        except NotFound as e:
            raise HTTPException(404, str(e)) from None
        except Conflict as e:
            raise HTTPException(409, str(e)) from None
        return {"skipped": body.task_id}

    @app.get("/api/progress")
    def progress(who: Annotator = Depends(annotator)) -> dict:
        return store.progress(who.id)

    @app.get("/api/admin/summary")
    def admin_summary(_who: Annotator = Depends(admin)) -> dict:
        return {**store.summary(), "agreement": agreement_summary(db)}

    @app.api_route("/", methods=["GET", "HEAD"])
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @app.api_route("/admin", methods=["GET", "HEAD"])
    def admin_page() -> FileResponse:
        return FileResponse(STATIC / "admin.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
