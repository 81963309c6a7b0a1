"""The HTTP API: POST /predict, POST /feedback, GET /healthz, GET /metrics (OpenAPI at /docs).

Requests never touch the store on the prediction path: predictions come from the Predictor's current
model, logs go to the LogBuffer, and both swap and flush in background threads. The one request that reads
the store (feedback on a prediction this process did not log) gives up after `serve.store_patience_s`: a busy
store, like a full feedback buffer, is a 503 with Retry-After, never a 500 or a request held for minutes.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from core.config import ServeConfig
from core.serve.logbuffer import LogBuffer, LogFull
from core.serve.metrics import Metrics
from core.serve.predictor import Predictor
from core.serve.tokens import Tokens
from core.store import LOCK_TIMEOUT_S, Store, StoreBusy, utcnow
from core.workspace import Workspace


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(description="the texts to classify, each non-empty")


class Prediction(BaseModel):
    id: str = Field(description="quote this id in POST /feedback to correct the prediction")
    label: str
    confidence: float
    abstained: bool = Field(description="the scaffold routes this one to a person (confidence under its bar)")
    model_version: str
    scaffold_version: str


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: StrictStr = Field(description="a prediction id from POST /predict")
    label: StrictStr = Field(description="the correct label, one of the workspace's labels")
    actor: StrictStr | None = Field(None, description="who corrected it, as the client says; recorded beside the "
                                                      "token's name, which is what the audit log trusts")


class FeedbackResponse(BaseModel):
    id: str
    label: str
    status: str = Field("recorded", description="recorded as a candidate sample: the next curation verifies it "
                                                "and the data review shows it")


@dataclass(frozen=True)
class ServerWorkspace(Workspace):
    """The workspace as the server sees it: every store call gives up after `patience_s` (StoreBusy)."""
    patience_s: float = LOCK_TIMEOUT_S

    @property
    def store(self) -> Store:
        return Store(self.db, self.patience_s)


def _patiently(start):
    # Before the port is bound nobody waits on the server: starting waits for a busy store as long as the
    # CLI does, not the few seconds a request does.
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            return start()
        except StoreBusy:
            if time.monotonic() > deadline:
                raise


@dataclass
class Service:
    """The server's moving parts, started before the first request and closed after the last."""
    ws: Workspace
    cfg: ServeConfig
    predictor: Predictor = field(init=False)
    logs: LogBuffer = field(init=False)
    tokens: Tokens = field(init=False)
    metrics: Metrics = field(default_factory=Metrics)
    labels: frozenset[str] = frozenset()

    def __post_init__(self):
        self.ws = ServerWorkspace(self.ws.root, self.cfg.store_patience_s)
        self.predictor = Predictor(self.ws, self.cfg.poll_s, self.cfg.torch_threads)
        self.logs = LogBuffer(self.ws.store, self.cfg, self.ws.root / "serve-rejected")
        self.tokens = Tokens(self.ws, self.cfg.poll_s)

    def start(self) -> "Service":
        self.labels = frozenset(_patiently(self.ws.store.labels))
        # loads production now: a workspace without one fails before binding a port
        _patiently(self.predictor.start)
        _patiently(self.tokens.start)
        self.logs.start()
        return self

    def close(self) -> None:
        self.predictor.close()
        self.tokens.close()
        self.logs.close()  # every logged request reaches the store


class BodyGuard:
    """Pure ASGI: refuses bodies over the limit before they reach a handler, and counts every response.
    The body is read here whole (it is small by definition) so a chunked upload is limited too."""

    def __init__(self, app, max_bytes: int, metrics: Metrics):
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            declared = int(dict(scope["headers"]).get(b"content-length", b"0"))
        except ValueError:
            return await self._refuse(scope, counted_send, 400, "bad Content-Length header")
        if declared > self.max_bytes:
            return await self._refuse(scope, counted_send, 413, self._too_large(declared))
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(scope, counted_send, 413, self._too_large(len(body)))
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, counted_send)
        self.metrics.request(scope["path"], status["code"])

    def _too_large(self, size: int) -> str:
        return f"request body too large: {size:,} bytes, at most {self.max_bytes:,}"

    async def _refuse(self, scope, send, code: int, message: str) -> None:
        await JSONResponse({"detail": message}, status_code=code)(scope, None, send)
        self.metrics.request(scope["path"], code)


def _validation_message(err: RequestValidationError) -> tuple[int, str]:
    first = err.errors()[0]
    if first["type"] == "json_invalid":
        return 400, "request body is not valid JSON"
    where = ".".join(str(p) for p in first["loc"] if p != "body")
    if first["type"] == "missing":
        return 422, f"missing field '{where}'"
    if first["type"] == "extra_forbidden":
        return 422, f"unknown field '{where}'"
    return 422, f"{where or 'body'}: {first['msg']}"


def create_app(service: Service) -> FastAPI:
    cfg, predictor, logs, metrics = service.cfg, service.predictor, service.logs, service.metrics
    app = FastAPI(title="Evolab", summary="The production classifier of an Evolab workspace",
                  version="1")
    app.add_middleware(BodyGuard, max_bytes=cfg.max_body_bytes, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        code, message = _validation_message(err)
        return JSONResponse({"detail": message}, status_code=code)

    @app.exception_handler(StoreBusy)
    @app.exception_handler(LogFull)
    async def _busy(request: Request, err: Exception):
        return JSONResponse({"detail": f"{err}; try again in {cfg.retry_after_s} s"}, status_code=503,
                            headers={"Retry-After": str(cfg.retry_after_s)})

    def check_texts(texts: list[str]) -> None:
        if not texts:
            raise HTTPException(422, "texts is empty: send at least one text")
        if len(texts) > cfg.max_texts:
            raise HTTPException(413, f"too many texts: {len(texts)}, at most {cfg.max_texts} per request")
        for i, text in enumerate(texts):
            if not text.strip():
                raise HTTPException(422, f"texts[{i}] is empty")
            if len(text) > cfg.max_text_chars:
                raise HTTPException(413, f"texts[{i}] has {len(text):,} characters, at most {cfg.max_text_chars:,}")

    def token_name(request: Request, required: bool) -> str | None:
        """The name of the API token the request carries (`Authorization: Bearer TOKEN`); 401 without one."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        name = service.tokens.name_for(token.strip()) if scheme.lower() == "bearer" else None
        if required and name is None:
            raise HTTPException(401, "this endpoint needs an API token: `Authorization: Bearer TOKEN` "
                                     "(an approver makes one with `python -m core tokens add NAME`)",
                                headers={"WWW-Authenticate": "Bearer"})
        return name

    @app.post("/predict", response_model=PredictResponse)
    def predict(body: PredictRequest, request: Request) -> PredictResponse:
        """Classify texts with the production model; each prediction gets an id for feedback."""
        token_name(request, cfg.predict_requires_token)
        check_texts(body.texts)
        t0 = time.perf_counter()
        results = predictor.predict(body.texts)
        latency_ms = (time.perf_counter() - t0) * 1000
        at = utcnow()
        rows = [{"id": uuid.uuid4().hex, "at": at, "text": text, "latency_ms": latency_ms, **r}
                for text, r in zip(body.texts, results)]
        logs.add_predictions(rows)
        metrics.predicted(len(rows), latency_ms)
        return PredictResponse(predictions=[Prediction(**row) for row in rows])

    @app.post("/feedback", response_model=FeedbackResponse)
    def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
        """A person's correction of a prediction (API token required): a candidate sample for the next curation,
        which verifies it, and a finding ranked first in the next diagnosis."""
        sender = token_name(request, required=True)
        if body.label not in service.labels:
            raise HTTPException(422, f"unknown label '{body.label}'")
        if not logs.knows(body.id):
            raise HTTPException(404, f"unknown prediction id '{body.id}'")
        actor = f"token:{sender}" + (f" ({body.actor})" if body.actor else "")
        logs.add_feedback({"prediction_id": body.id, "label": body.label, "at": utcnow(), "actor": actor})
        metrics.corrected()
        return FeedbackResponse(id=body.id, label=body.label)

    @app.get("/healthz")
    def healthz() -> dict:
        serving = predictor.serving
        return {"status": "ok", "model_version": serving.model_version,
                "scaffold_version": serving.scaffold_version, "hot_swaps": predictor.swap.swaps,
                "swap_error": predictor.swap.last_error, "pending_logs": logs.pending(),
                "store_busy": logs.busy()}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        """Requests by path and status, texts and feedback counted, /predict latency, what is served."""
        serving = predictor.serving
        return metrics.render({"hot_swaps_total": predictor.swap.swaps, "log_pending_rows": logs.pending(),
                               "log_flushed_rows_total": logs.flushed_predictions + logs.flushed_feedback,
                               "log_dropped_rows_total": logs.dropped,
                               "log_refused_feedback_total": logs.refused_feedback,
                               "log_set_aside_batches_total": logs.set_aside_batches,
                               "log_set_aside_rows_total": logs.set_aside_rows,
                               "store_busy": int(logs.busy())},
                              {"model_version": serving.model_version,
                               "scaffold_version": serving.scaffold_version})

    return app
