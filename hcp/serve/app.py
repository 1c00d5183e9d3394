"""The HTTP API and the page, as a FastAPI app over a `Service`.

Statuses: 400 the request cannot be read (bad JSON, wrong fields, bad upload); 401 a token is required and
missing or wrong; 403 a tokenless server asked by a name not its own, or written to from another origin's page,
or a review under another reviewer than the token's; 404 (a review or a queue that is not there); 409 the batch
is busy or its results file is another model's; 413 the body is over the limit; 422 read but not ratable
(empty, too long for the context: the CLI's messages) or a review the training data checks refuse; 502 the model
gave no valid rating after its retries; 503 with Retry-After the backend is down or the queue is full. Every
error is `{"detail": one line, "reason": kind}` and never quotes the request.
"""

# No `from __future__ import annotations` here: FastAPI reads the annotation of /reviews' body, a model built
# from the rubric inside create_app, at the time the route is declared.

import asyncio
import json
import logging
import secrets
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Match
from starlette.staticfiles import StaticFiles

from hcp import __version__
from hcp.errors import BackendError, ContextOverflowError, DataError, HcpError, InvalidOutputError
from hcp.evidence import PROBLEMS as EVIDENCE_PROBLEMS
from hcp.evidence import turns
from hcp.rubric import normalize_transcript
from hcp.serve.batches import NAME, NAME_RULE, BadRequestError, BatchJob, ConflictError, batch_name, read_upload
from hcp.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from hcp.serve.review_queue import score_result
from hcp.serve.reviewers import NAME as REVIEWER_NAME
from hcp.serve.reviewers import NAME_RULE as REVIEWER_NAME_RULE
from hcp.serve.reviewers import ReviewerError
from hcp.serve.reviews import UNNAMED, ReviewError, UnknownReviewError
from hcp.serve.scheduler import Cancelled, QueueFullError
from hcp.serve.service import Service

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
DISCONNECT_POLL = 0.25  # seconds between looks at whether a waiting client is still there
MAX_DETAIL_CHARS = 1000  # hcp's messages are shorter; a bound all the same
# Paths that carry no data and need no token: the page, its assets, the API's description.
PUBLIC_PATHS = {"/", "/docs", "/openapi.json", "/favicon.ico"}
PUBLIC_PREFIXES = ("/static/", "/docs-assets/")
# The page runs only its own script and style, and talks only to this server.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "form-action 'none'; base-uri 'none'; frame-ancestors 'none'")

# An error's class -> (status, reason); the first match wins, so subclasses come first.
ERROR_STATUS: tuple[tuple[type[HcpError], int, str], ...] = (
    (QueueFullError, 503, "queue_full"),
    (ConflictError, 409, "conflict"),
    (BadRequestError, 400, "bad_request"),
    (ReviewerError, 403, "reviewer"),
    (UnknownReviewError, 404, "not_found"),
    (ReviewError, 422, "invalid_review"),
    (ContextOverflowError, 422, "too_long"),
    (InvalidOutputError, 502, "invalid_output"),
    (BackendError, 503, "backend"),
    (DataError, 422, "invalid_data"),
    (HcpError, 422, "error"),
)
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}  # they change nothing on the server
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}  # the names a tokenless server answers to, with its port
HTTP_REASONS = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


class ErrorBody(BaseModel):
    detail: str = Field(description="One line: what was wrong and what to do. Never quotes the request.")
    reason: str = Field(description="The kind of failure, as counted in hcp_failures_total.")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    transcript: str = Field(description="The consultation, e.g. 'RD: ... Patient: ...'.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Sampling seed (default: the server's).")


class TurnLines(BaseModel):
    speaker: str = Field(description="The speaker's label, normalised (case folded)")
    first_line: int = Field(description="The line the turn starts on (1-based, as a quote's `line`)")
    last_line: int = Field(description="Its last line: the line before the next turn's, or the transcript's last")


def transcript_turns(transcript: str) -> list[dict[str, Any]]:
    """The turns of a transcript as a rating's quotes are checked against them (hcp.evidence's parse of the text
    the model read), with the lines each spans: the page marks a quoted turn from these, with no parser of its
    own. Turns written on one line share it."""
    text = normalize_transcript(transcript)
    found = turns(text)
    next_starts = [turn.line for turn in found[1:]] + [text.count("\n") + 2]  # the last turn ends the text
    return [{"speaker": turn.speaker, "first_line": turn.line, "last_line": max(turn.line, after - 1)}
            for turn, after in zip(found, next_starts, strict=False)]


class BatchItem(BaseModel):
    """A JSON list's item, for the API's description: the list is read as the JSONL file it would be, by the
    reader of uploads, so that an item means what the same line of an uploaded file means."""

    id: str | int | None = Field(None, description="Kept in the results (a number as its text); default: an id "
                                 "made from the transcript.")
    transcript: str


BATCH_LIST = TypeAdapter(list[Any])  # of transcripts or of objects: checked item by item
JSON_KINDS = {bool: "true or false", int: "a number", float: "a number", list: "a list", type(None): "null"}
BATCH_NAME = PathParam(pattern=f"^{NAME.pattern}$", max_length=80, description=f"The batch's name: {NAME_RULE}")


def error(status: int, detail: str, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    detail = " ".join(detail.split())
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[: MAX_DETAIL_CHARS - 1] + "…"
    return JSONResponse({"detail": detail, "reason": reason}, status_code=status, headers=headers)


def describe(errors: list[Any]) -> str:
    """A validation error in one line: where and what, never the value given (it may be patient text)."""
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON ({first.get('msg', '')}) — send a JSON object"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    if not raw.strip():
        raise BadRequestError("the body is empty — send a JSON object, e.g. {\"transcript\": \"RD: ... Patient: ...\"}")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise BadRequestError(describe(exc.errors(include_input=False))) from None


JSON_UPLOAD = "request.jsonl"  # what a JSON list is read as


class Stop:
    """The end of a batch's run; `reason` says why it stopped early."""

    reason: str | None = None


def line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def create_app(service: Service) -> FastAPI:
    settings, rubric, metrics = service.settings, service.rubric, service.metrics
    app = FastAPI(
        title="hcp", version=__version__, docs_url=None, redoc_url=None,
        description="Rate how a healthcare provider talks with a patient, on the rubric, with a local model. "
                    "Send `Authorization: Bearer TOKEN` when the server was started with a token.",
    )
    bearer = HTTPBearer(auto_error=False, description="The server's --token (or HCP_API_TOKEN), when it has one.")
    auth = [] if settings.token is None else [Security(bearer)]  # documents the scheme; Guard checks it

    rating_model = rubric.rating_model
    score_response = create_model(
        "ScoreResult", rating=(rating_model, ...), overall=(float, ...), model=(str, ...), backend=(str, ...),
        prompt_tokens=(int, ...), output_tokens=(int, ...), seconds=(float, ...), attempts=(int, ...),
        model_note=(str | None, Field(None, description="Set when the model is no rater (the embedded test model)")),
        model_version=(str | None, Field(None, description="The model version that rated: the current one, or the "
                                        "canary for its share of transcripts (a registry's 'NAME:N')")),
        # The score distribution and what follows from it (README "Confidence and needs_review"), null where the
        # backend gave none: declared so that a review's `original` keeps them, for a threshold calibrated on
        # reviews (hcp evaluate --target-agreement on the reviews file and the model's ratings beside it).
        distribution=(dict[str, dict[str, float]] | None, Field(None, description="Per dimension, each score's "
                                                                "probability where the score was written")),
        expected=(dict[str, float] | None, Field(None, description="Per dimension, the probability-weighted score")),
        confidence=(dict[str, float] | None, Field(None, description="Per dimension, the chosen score's "
                                                   "probability")),
        overall_expected=(float | None, Field(None, description="The overall score's expectation")),
        overall_interval=(list[float] | None, Field(None, description="The overall score's central interval")),
        needs_review=(bool | None, Field(None, description="A person should look at this rating")),
        review_reasons=(list[str], Field([], description="Why ('low_confidence:<dimension>', ...)")),
        transcript_turns=(list[TurnLines], Field([], description="The transcript's turns, as the quotes were "
                                                 "checked against them (lines of the transcript, trimmed)")))
    review_request = create_model(
        "ReviewRequest", __config__=ConfigDict(extra="forbid"),
        transcript=(str, Field(description="The transcript that was rated.")),
        review=(rating_model, Field(description="The reviewer's rating: the model's, corrected.")),
        original=(score_response, Field(description="The model's result as /score returned it.")),
        reviewer=(str | None, Field(None, description="The reviewer's name where the server has no reviewer tokens "
                                    f"({REVIEWER_NAME_RULE}); with a reviewer's token, the token's reviewer "
                                    "(another name here is refused). Default: 'unnamed'.")),
        pick=(str | None, Field(None, pattern="^(random|priority)$", description="How the review queue picked the "
                                "transcript (/queue/next's `pick`), for the audit log.")),
    )
    adjudication_request = create_model(
        "AdjudicationRequest", __config__=ConfigDict(extra="forbid"),
        review=(rating_model, Field(description="The adjudicated rating: the transcript's consensus record.")),
        reviewer=(str | None, Field(None, description="Who adjudicates, as for /reviews.")),
    )
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": text} for code, text in (
            (400, "The request cannot be read"), (401, "A token is required"),
            (403, "A tokenless server asked by another name (Host), or a write from another origin's page"),
            (413, "The body is over the limit"),
            (422, "Not ratable: empty, or too long for the context"),
            (503, "The backend is down or the queue is full (see Retry-After)"))}

    # --- errors -------------------------------------------------------------------------------------------

    @app.exception_handler(HcpError)
    async def hcp_error(_request: Request, exc: HcpError) -> JSONResponse:
        status, reason = next((s, r) for cls, s, r in ERROR_STATUS if isinstance(exc, cls))
        metrics.failures.labels(reason).inc()
        headers = {"Retry-After": str(settings.retry_after)} if status == 503 else None
        return error(status, str(exc), reason, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.failures.labels("bad_request").inc()
        return error(400, describe(list(exc.errors())), "bad_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = HTTP_REASONS.get(exc.status_code, "http")
        metrics.failures.labels(reason).inc()
        return error(exc.status_code, str(exc.detail), reason, exc.headers)

    # --- rating -------------------------------------------------------------------------------------------

    async def result_of(future: Future, request: Request) -> Any:
        """Wait for a queued job; if the client goes away first, cancel the job (if it has not started)."""
        waiting = asyncio.wrap_future(future)
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL)
            if done:
                return waiting.result()
            if await request.is_disconnected():
                future.cancel()
                waiting.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
                raise Cancelled

    @app.post("/score", tags=["rating"], dependencies=auth, responses={200: {"model": score_response}, **errors,
              502: {"model": ErrorBody, "description": "No valid rating after the retries"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": ScoreRequest.model_json_schema()}}}})
    async def score(request: Request) -> JSONResponse:
        """Rate one transcript. The answer is what `hcp score --json` prints, and the transcript's turns as the
        quotes were checked against them (`transcript_turns`: speaker, first and last line).

        Example: `curl -X POST http://127.0.0.1:8000/score -d '{"transcript": "RD: ... Patient: ..."}'`
        (the body is read as JSON whatever its content type, so curl's default form type works too)."""
        body = parse_body(ScoreRequest, await request.body())
        try:
            result = (await result_of(service.score(body.transcript, body.seed), request)).to_json()
        except Cancelled:
            metrics.failures.labels("client_gone").inc()
            return error(499, "the client closed the request before the rating was done", "client_gone")
        metrics.rated("score", result)
        return JSONResponse({**result, "transcript_turns": transcript_turns(body.transcript)})

    @app.get("/rubric", tags=["rating"], dependencies=auth, responses=errors)
    async def get_rubric() -> dict[str, Any]:
        """The rubric the model rates on: dimensions with weights, descriptions and level descriptors; the
        system prompt and the rating's JSON schema; `evidence`: the schema key of each dimension's quotes (empty
        when the rubric asks for none), and what each quote check's `problem` code means."""
        return {
            "digest": rubric.digest, "score_min": rubric.score_min, "score_max": rubric.score_max,
            "dimensions": [{"name": d.name, "weight": round(d.weight, 6), "description": d.description,
                            "levels": {str(k): v for k, v in sorted(d.levels.items())}} for d in rubric.dimensions],
            "system_prompt": rubric.system_prompt, "schema": rubric.json_schema,
            "evidence": {"keys": rubric.evidence_keys, "problems": EVIDENCE_PROBLEMS},
        }

    @app.get("/health", tags=["service"], dependencies=auth, responses=errors)
    async def health() -> dict[str, Any]:
        """The backend and model, whether a rating would be accepted now, and the queue."""
        return service.health()

    @app.get("/metrics", tags=["service"], dependencies=auth,
             responses={200: {"content": {METRICS_CONTENT_TYPE: {}}, "description": "Prometheus text format"},
                        **errors})
    async def get_metrics() -> Response:
        """Prometheus metrics: requests, failures by reason, latency histograms, tokens, the queue."""
        return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    # --- batches ------------------------------------------------------------------------------------------

    @app.post("/batch", tags=["batch"], dependencies=auth, responses={
        200: {"description": "One JSON line per transcript (a record of `hcp batch`'s results file), in the order "
                             "they complete; the records already rated come first. A last line with status "
                             "'stopped' says why a batch stopped early.",
              "content": {"application/x-ndjson": {}}},
        409: {"model": ErrorBody, "description": "The batch is busy, or its results are another model's"}, **errors},
        openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary", "description": "A .jsonl or .csv file"}}}},
            "application/json": {"schema": {"type": "array", "items": {"anyOf": [
                BatchItem.model_json_schema(), {"type": "string"}]}}}}}})
    async def batch(request: Request,
                    name: str | None = Query(None, pattern=f"^{NAME.pattern}$", max_length=80,
                                             description="Name of the batch (its results file; give it to add "
                                             "to a batch); default: the upload's file name (else 'batch') and a "
                                             "digest of its content"),
                    retry_failed: bool = Query(False, description="Rate again the transcripts that failed before")
                    ) -> StreamingResponse:
        """Rate many transcripts: a JSONL or CSV upload (multipart field `file`), or a JSON list of
        `{"id", "transcript"}` objects or of transcripts. Resumable: sending the same batch again (the same
        file, or the same `name`) rates only what its results file does not hold yet. Headers: X-HCP-Batch (the
        name), X-HCP-Total (transcripts), X-HCP-Done (already in the results file, streamed first)."""
        data, filename = await read_batch_body(request)
        inputs = await run_in_threadpool(read_upload, data, filename, settings.work_dir)
        name = batch_name(name, filename if filename != JSON_UPLOAD else None, data)
        service.batches.claim(name)
        try:
            job = await run_in_threadpool(service.batches.prepare, name, inputs, retry_failed)
        except BaseException:
            service.batches.release(name)
            raise
        headers = {"X-HCP-Batch": name, "X-HCP-Total": str(job.total), "X-HCP-Done": str(len(job.done)),
                   "Cache-Control": "no-store"}
        return StreamingResponse(stream_batch(job, request), media_type="application/x-ndjson", headers=headers)

    def stream_batch(job: BatchJob, request: Request) -> AsyncIterator[bytes]:
        """Start rating `job` in a thread of its own now (so that its name is released when it ends, whatever
        the client does), and return the stream of its records."""
        loop = asyncio.get_running_loop()
        records: asyncio.Queue[dict[str, Any] | Stop] = asyncio.Queue()

        def put(item: dict[str, Any] | Stop) -> None:
            try:
                loop.call_soon_threadsafe(records.put_nowait, item)
            except RuntimeError:  # the loop is closed: the server is shutting down
                job.cancel()

        def on_record(record: dict[str, Any]) -> None:
            metrics.rated("batch", record)
            put(record)

        def work() -> None:
            stop = Stop()
            try:
                service.batches.run(job, on_record)
            except HcpError as exc:  # the backend failed again and again: the batch stops
                stop.reason = str(exc)
            except Exception as exc:  # a bug: its message may hold data
                log.error("batch %s stopped by %s:\n%s", job.name, type(exc).__name__,
                          "".join(traceback.format_tb(exc.__traceback__)))
                stop.reason = f"internal error ({type(exc).__name__}) — see the server's log"
            finally:
                service.batches.release(job.name)
                put(stop)

        async def stream() -> AsyncIterator[bytes]:
            finished = False
            try:
                for record in job.done:
                    yield line(record)
                while True:
                    try:
                        item = await asyncio.wait_for(records.get(), DISCONNECT_POLL)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        continue
                    if isinstance(item, Stop):
                        finished = True
                        if item.reason:
                            yield line({"status": "stopped", "reason": item.reason})
                        return
                    yield line(item)
            finally:
                # Starlette cancels this generator when the client goes away (or it saw that itself, above):
                # start nothing more for it.
                if not finished:
                    metrics.failures.labels("client_gone").inc()
                    job.cancel()

        threading.Thread(target=work, name=f"hcp-batch-{job.name}", daemon=True).start()
        return stream()

    @app.get("/batch/{name}/results.jsonl", tags=["batch"], dependencies=auth,
             responses={200: {"content": {"application/x-ndjson": {}}}, 404: {"model": ErrorBody}, **errors})
    async def batch_jsonl(name: str = BATCH_NAME) -> Response:
        """A batch's results file, as `hcp batch` writes it (JSONL, newest record per id last): the records it
        holds at the time of the request, whole, even while the batch is still adding to it."""
        existing_results(name)
        data = await run_in_threadpool(service.batches.results_snapshot, name)
        return download(data, "application/x-ndjson", f"{name}.jsonl")

    @app.get("/batch/{name}/results.csv", tags=["batch"], dependencies=auth,
             responses={200: {"content": {"text/csv": {}}}, 404: {"model": ErrorBody}, **errors})
    async def batch_csv(name: str = BATCH_NAME) -> Response:
        """A batch's results as CSV, one row per id, as `hcp batch --format csv` writes it."""
        existing_results(name)
        data = await run_in_threadpool(service.batches.csv_snapshot, name)
        return download(data, "text/csv", f"{name}.csv")

    def existing_results(name: str) -> Path:
        path = service.batches.results_path(name)
        if not path.is_file():
            raise StarletteHTTPException(404, f"no batch named {name!r} — send it to POST /batch first")
        return path

    # --- reviews ------------------------------------------------------------------------------------------

    @app.post("/reviews", tags=["reviews"], dependencies=auth, responses={
        422: {"model": ErrorBody, "description": "The review is not valid training data"}, **errors})
    async def save_review(request: Request, body: review_request) -> dict[str, Any]:  # type: ignore[valid-type]
        """Save a reviewer's corrected rating as a training example in the reviews file (keyed by the
        transcript's content id: saving again replaces it), with the model's original rating beside it."""
        review, original = body.review.model_dump(), body.original.model_dump()  # type: ignore[attr-defined]
        reviewer = reviewer_of(service, request, body.reviewer)  # type: ignore[attr-defined]
        return await run_in_threadpool(service.reviews.save, body.transcript, review, original,  # type: ignore
                                       reviewer, body.pick)  # type: ignore[attr-defined]

    @app.get("/reviews/agreement", tags=["reviews"], dependencies=auth, responses=errors)
    async def review_agreement() -> dict[str, Any]:
        """How far the model's original ratings agree with the reviewers' so far: `hcp evaluate`'s metrics
        per dimension and overall (exact, within one, MAE, Spearman, Pearson, QWK) against each transcript's
        consensus (the training file), and the command that computes them from the files; `reviewers`: the same
        against each reviewer; `between`: the reviewers' agreement with each other (`hcp data agreement`'s
        alpha, mean pairwise QWK, exact and within-one, with bootstrap intervals), once two have reviewed the
        same transcripts; `versions`: the consensus against each model version's ratings, with 95% bootstrap
        intervals; `shadow` (with --shadow): the shadow version's agreement with the versions users saw."""
        return await run_in_threadpool(service.agreement)

    add_reviewer_routes(app, service, adjudication_request, auth, errors)

    # --- the page and the docs ----------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    app.mount("/static", PageFiles(directory=STATIC), name="static")
    docs_assets = swagger_assets()
    if docs_assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=docs_assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if docs_assets is None:  # the swagger-ui-bundle package is missing: Swagger UI from its CDN
            return get_swagger_ui_html(openapi_url="/openapi.json", title="hcp API")
        return get_swagger_ui_html(openapi_url="/openapi.json", title="hcp API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["X-HCP-Batch", "X-HCP-Total", "X-HCP-Done", "Retry-After"])
    app.add_middleware(Guard, service=service, routes=app.router.routes)
    return app



REVIEW_ID = PathParam(pattern=r"^[A-Za-z0-9._-]{1,80}$", description="The transcript's id in the reviews (its content "
                      "id: 12 hex digits)")
SIGNED_IN = "reviewer"  # the key of the request's state that holds the reviewer its token signed in


def signed_in_reviewer(request: Request) -> str | None:
    """The reviewer whose token this request carries (set by Guard), or None."""
    return request.scope.get("state", {}).get(SIGNED_IN)


def reviewer_of(service: Service, request: Request, given: str | None) -> str:
    """Whose review a request saves: the reviewer its token signs in (a body naming another is refused); on a
    server without reviewer tokens, the name the client gives (the page asks once per tab), else 'unnamed'."""
    signed_in = signed_in_reviewer(request)
    if signed_in is not None:
        if given not in (None, signed_in):
            raise ReviewerError(f"this token is {signed_in}'s, and what it saves is recorded as theirs — leave out "
                                "'reviewer', or sign in with that reviewer's own token")
        return signed_in
    if service.registry is not None:
        raise ReviewerError("reviews on this server are by named reviewers, each with a token of their own — sign "
                            "in with yours ('hcp serve add-reviewer NAME' gives one), not the server's --token")
    if given is None:
        return UNNAMED
    if not REVIEWER_NAME.fullmatch(given):
        raise BadRequestError(f"reviewer {given[:40]!r}: use {REVIEWER_NAME_RULE}")
    return given


def add_reviewer_routes(app: FastAPI, service: Service, adjudication_request: Any, auth: list[Any],
                        errors: dict[int | str, dict[str, Any]]) -> None:
    """The routes of several reviewers: who is signed in, the disputed transcripts and their adjudication, and
    the review queue."""
    reviews = service.reviews

    @app.get("/reviewers/me", tags=["reviews"], dependencies=auth, responses=errors)
    async def me(request: Request) -> dict[str, Any]:
        """Who this request reviews as: `reviewer`, the reviewer its token signs in (null where the client names
        its reviewer: the page asks once per tab); `by_token`, whether this server signs reviewers in by their
        own tokens; `queue`, whether it has a review queue (/queue/next)."""
        return {"reviewer": signed_in_reviewer(request), "by_token": service.registry is not None,
                "queue": service.review_queue is not None}

    @app.get("/reviews/disputed", tags=["reviews"], dependencies=auth, responses=errors)
    async def disputed() -> dict[str, Any]:
        """The transcripts whose reviewers are 2 points or more apart on a dimension (`hcp data agreement`'s
        adjudication list): id, the dimensions in dispute, each reviewer's scores of them, whether adjudicated.
        A disputed transcript is left out of the training file until it is adjudicated."""
        return {"disputed": await run_in_threadpool(reviews.disputed)}

    @app.get("/reviews/{ident}", tags=["reviews"], dependencies=auth,
             responses={404: {"model": ErrorBody}, **errors})
    async def side_by_side(ident: str = REVIEW_ID) -> dict[str, Any]:
        """A reviewed transcript with every reviewer's rating of it side by side, the model's, a proposal (each
        score the median, the text of the reviewer closest to it) and the adjudicated rating if any."""
        return await run_in_threadpool(reviews.side_by_side, ident)

    @app.post("/reviews/{ident}/adjudicate", tags=["reviews"], dependencies=auth, responses={
        404: {"model": ErrorBody}, 422: {"model": ErrorBody, "description": "Not valid training data"}, **errors})
    async def adjudicate(request: Request, body: adjudication_request,  # type: ignore[valid-type]
                         ident: str = REVIEW_ID) -> dict[str, Any]:
        """Save the adjudicated rating of a reviewed transcript: it becomes the transcript's record in the
        training file (its consensus), whatever the reviewers' own ratings say; saving again replaces it."""
        reviewer = reviewer_of(service, request, body.reviewer)  # type: ignore[attr-defined]
        review = body.review.model_dump()  # type: ignore[attr-defined]
        return await run_in_threadpool(reviews.adjudicate, ident, review, reviewer)

    def open_queue() -> Any:
        if service.review_queue is None:
            raise StarletteHTTPException(404, "this server has no review queue — start hcp serve with --queue-from "
                                         "RESULTS --queue-input INPUT")
        return service.review_queue

    @app.get("/queue", tags=["reviews"], dependencies=auth, responses={404: {"model": ErrorBody}, **errors})
    async def queue_progress(request: Request, reviewer: str | None = Query(None, max_length=40, description=(
            "The reviewer's name, where the server has no reviewer tokens (as for /reviews)"))) -> dict[str, Any]:
        """How much of the review queue this reviewer has reviewed (picks nothing)."""
        queue = open_queue()
        name = reviewer_of(service, request, reviewer)
        return {"reviewer": name, "progress": queue.progress(await run_in_threadpool(reviews.reviewed_by, name))}

    @app.get("/queue/next", tags=["reviews"], dependencies=auth, responses={404: {"model": ErrorBody}, **errors})
    async def queue_next(request: Request, reviewer: str | None = Query(None, max_length=40, description=(
            "The reviewer's name, where the server has no reviewer tokens (as for /reviews)"))) -> dict[str, Any]:
        """The next transcript for this reviewer to review: the ratings flagged `needs_review` and of lowest
        confidence first, a share of random picks among them (`pick`: 'priority' or 'random'), never one they
        reviewed; `result` is the rating as /score gives it (send it back as the review's `original`, with
        `pick`); `progress`: how many of the queue this reviewer has reviewed. `done` once none is left."""
        queue = open_queue()
        name = reviewer_of(service, request, reviewer)
        reviewed = await run_in_threadpool(reviews.reviewed_by, name)
        item, pick = queue.next(reviewed)
        progress = queue.progress(reviewed)
        if item is None:
            return {"done": True, "reviewer": name, "progress": progress}
        result = {**score_result(item), "transcript_turns": transcript_turns(item.transcript)}
        return {"done": False, "reviewer": name, "id": item.id, "pick": pick, "transcript": item.transcript,
                "result": result, "progress": progress}


async def read_batch_body(request: Request) -> tuple[bytes, str]:
    """(file bytes, file name) of a multipart upload, or a JSON list turned into JSONL."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequestError("multipart upload without a file — send the .jsonl or .csv file in the field "
                                  "'file'")
        return await upload.read(), upload.filename or "upload.jsonl"
    if content_type not in ("", "application/json"):
        raise BadRequestError(f"content type {content_type[:60]!r}: send a .jsonl or .csv file as multipart/form-data "
                              "(field 'file'), or a JSON list of transcripts")
    raw = await request.body()
    try:
        items = BATCH_LIST.validate_json(raw)
    except ValidationError as exc:
        raise BadRequestError(describe(exc.errors(include_input=False))) from None
    for number, item in enumerate(items, start=1):
        if not isinstance(item, str | dict):
            raise BadRequestError(f"item {number} of the list is {JSON_KINDS.get(type(item), 'not text')} — give "
                                  "each transcript as text, or as an object with 'transcript' (and 'id')")
    rows = [{"transcript": i} if isinstance(i, str) else i for i in items]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"), JSON_UPLOAD


class PageFiles(StaticFiles):
    """The page's files, each under the page's Content-Security-Policy: /static/index.html is the page too."""

    async def get_response(self, path: str, scope: dict) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = PAGE_CSP
        return response


def download(data: bytes, media_type: str, filename: str) -> Response:
    """A file to save, served from memory: its length is that of the bytes sent (a file on disk may grow between
    the size in the headers and the last byte read). `filename` is a batch name: no quote or path in it."""
    return Response(data, media_type=media_type, headers={
        "Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"})


def swagger_assets() -> Path | None:
    """Swagger UI's files from the swagger-ui-bundle package, so that /docs works offline."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(str(swagger_ui_path))
    return path if (path / "swagger-ui-bundle.js").is_file() else None


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class Refusal:
    """A request turned away before its body is read: the status, the failure's reason, one line."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        self.reason = reason
        self.response = error(status, detail, reason, headers)


def header(scope: dict, name: bytes) -> bytes:
    """A request header's value (the first, if repeated), or b''. ASGI servers give names in lower case."""
    return next((value for key, value in scope["headers"] if key == name), b"")


def replay(body: bytes, receive: Callable[[], Awaitable[dict]]) -> Callable[[], Awaitable[dict]]:
    """A `receive` that gives the body read already, then whatever the client does next (a disconnect)."""
    delivered = False

    async def receive_again() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


class Guard:
    """ASGI middleware in front of every request: who may ask (the Host and Origin rules of a tokenless server,
    the bearer token of one with a token), the body limit, and the request metrics.

    It runs before any body is parsed, so a request without its token gets 401 whatever it sends, and one over
    the limit gets 413 as soon as its bytes pass the limit. Recent FastAPI has a `max_body_size` of its own, but
    it answers a bare 'Content Too Large' that names neither the limit nor the flag that sets it, and older
    FastAPI, which the serve extra allows, has none.

    With a reviewers file (`--reviewers`), a reviewer's own token is a token too, and signs that reviewer in
    (`sign_in`: the request's state holds their name; the server's --token signs no one in).

    A server without a token is one on loopback, and only the user's own programs and pages may use it: a
    request must name it by an address it serves (`Host`: stops DNS rebinding, where a web page's own name is
    made to point at 127.0.0.1), and a write from a web page (POST) must come from this server's own page or an
    origin `--cors-origin` names (a form or `text/plain` POST from any site needs no CORS preflight).
    """

    def __init__(self, app: ASGIApp, service: Service, routes: list[Any]) -> None:
        self.app, self.service, self.routes = app, service, routes
        settings = service.settings
        self.token = None if settings.token is None else settings.token.encode()
        self.registry = service.registry  # reviewers with tokens of their own, or None
        self.guarded = self.token is not None or self.registry is not None
        self.cors_origins = {origin.encode() for origin in settings.cors_origins}
        listening = f"[{settings.host}]" if ":" in settings.host else settings.host
        self.host_names = sorted({*LOOPBACK_HOSTS, listening.lower()})

    def route_of(self, scope: dict) -> str:
        """The path template of the route a request goes to (its path, with another method: a 405)."""
        partial = "other"
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "other")
            if match == Match.PARTIAL and partial == "other":
                partial = getattr(route, "path", "other")
        return partial

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics, settings = self.service.metrics, self.service.settings
        route, started, status = self.route_of(scope), time.perf_counter(), [0]  # 0: no response yet

        async def send_recording(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"no-referrer"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            if self.registry is not None:
                await self.sign_in(scope)
            refusal = self.refusal(scope)
            if refusal is not None:
                metrics.failures.labels(refusal.reason).inc()
                await refusal.response(scope, receive, send_recording)
                return
            receive = await self.limited(scope, receive, send_recording, settings.max_body)
            if receive is None:
                return
            await self.app(scope, receive, send_recording)
        except Exception as exc:  # a bug: answered here, so that neither Starlette nor uvicorn logs its message
            await self.unexpected(exc, scope, route, receive, send_recording, started=status[0] != 0)
        finally:
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"  # a label of few values
            metrics.requests.labels(route, method, str(status[0] or 500)).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - started)

    def refusal(self, scope: dict) -> Refusal | None:
        """Why this request may not go further (before its body is read), or None."""
        if not self.guarded:
            host, hosts = header(scope, b"host").lower(), self.hosts(scope)
            if host not in hosts:
                return Refusal(403, "bad_host", "this server answers only to "
                               f"{', '.join(h.decode() for h in hosts)} (another name may be a web page "
                               "rebinding its own name to this machine) — open it at one of those; a server reached by "
                               "another name needs --token")
            if scope["method"] not in SAFE_METHODS and self.cross_origin(scope, host):
                return Refusal(403, "cross_origin", "a write from a web page of another origin — only this "
                               "server's own page may send it, or an origin hcp serve was started with "
                               "(--cors-origin)")
            return None
        if self.preflight(scope) or self.public(scope["path"]) or self.authorized(scope):
            return None
        whose = "a reviewer's token (hcp serve add-reviewer) or " if self.registry is not None else ""
        return Refusal(401, "unauthorized", "this server needs its bearer token — send 'Authorization: Bearer "
                       f"TOKEN' ({whose}the token hcp serve was started with)", {"WWW-Authenticate": "Bearer"})

    def hosts(self, scope: dict) -> list[bytes]:
        """The Host values that name this server: its loopback names with the port it is reached on."""
        port = (scope.get("server") or (None, None))[1]
        names = [name.encode() for name in self.host_names]
        if port in (None, 80):
            return names + [name + b":80" for name in names]
        return [name + f":{port}".encode() for name in names]

    def cross_origin(self, scope: dict, host: bytes) -> bool:
        """Whether a browser says this request comes from a page of another origin than this server's (and not
        one --cors-origin allows). Programs such as curl send neither header: they are the user's own."""
        origin = header(scope, b"origin")
        if origin in self.cors_origins:
            return False
        site = header(scope, b"sec-fetch-site")
        if site and site not in (b"same-origin", b"none"):  # same-site is another port of this machine, too
            return True
        return bool(origin) and origin.lower() != b"http://" + host

    @staticmethod
    def preflight(scope: dict) -> bool:
        """A browser's CORS preflight: it never carries the token, and asks only whether the real request may
        come; CORSMiddleware answers it for the origins --cors-origin names, and no other."""
        return scope["method"] == "OPTIONS" and bool(header(scope, b"access-control-request-method"))

    async def unexpected(self, exc: Exception, scope: dict, route: str, receive: Callable[[], Awaitable[dict]],
                         send: Callable[[dict], Awaitable[None]], started: bool) -> None:
        """Log a bug by its type and frames only (its message may quote data: a pydantic error quotes its
        input), and answer 500 unless the response has begun."""
        frames = "".join(traceback.format_tb(exc.__traceback__))
        log.error("unexpected %s in %s %s:\n%s", type(exc).__name__, scope["method"], route, frames)
        self.service.metrics.failures.labels("internal").inc()
        if not started:
            await error(500, f"internal error ({type(exc).__name__}) — see the server's log",
                        "internal")(scope, receive, send)

    @staticmethod
    def public(path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)

    def authorized(self, scope: dict) -> bool:
        """'Authorization: Bearer TOKEN', the scheme in any case (RFC 9110 makes it case-insensitive)."""
        if scope.get("state", {}).get(SIGNED_IN) is not None:
            return True
        scheme, _, given = header(scope, b"authorization").partition(b" ")
        return (scheme.lower() == b"bearer" and self.token is not None
                and secrets.compare_digest(given.strip(), self.token))

    async def sign_in(self, scope: dict) -> None:
        """Put the reviewer a bearer token signs in into the request's state (off the event loop: the first
        check of a token is a scrypt). The server's own --token signs no reviewer in."""
        scope.setdefault("state", {}).pop(SIGNED_IN, None)  # only this server says who signed in
        scheme, _, given = header(scope, b"authorization").partition(b" ")
        given = given.strip()
        if scheme.lower() != b"bearer" or not given or self.registry is None:
            return
        if self.token is not None and secrets.compare_digest(given, self.token):
            return
        name = await run_in_threadpool(self.registry.reviewer_of, given)
        if name is not None:
            scope["state"][SIGNED_IN] = name

    async def limited(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                      send: Callable[[dict], Awaitable[None]], limit: int) -> Callable[[], Awaitable[dict]] | None:
        """`receive` for a body within the limit, or None once a 413 has been sent. The body is read here and
        its bytes counted as they arrive, whatever Content-Length or Transfer-Encoding say (a request may carry
        both, in any case): a Content-Length over the limit only refuses it sooner."""
        async def too_large() -> None:
            self.service.metrics.failures.labels("too_large").inc()
            await error(413, f"the request body is over the limit of {limit} bytes — send less at once, or start "
                        "hcp serve with a higher --max-body-mb", "too_large")(scope, receive, send)

        length = header(scope, b"content-length")
        if length and (not length.isdigit() or int(length) > limit):
            await too_large()
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: the app sees it on its next receive
                return receive
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await too_large()
                return None
            if not message.get("more_body", False):
                return replay(b"".join(chunks), receive)
