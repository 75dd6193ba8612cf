"""`imgclf serve RUN`: a run's model behind a JSON API and a page, on 127.0.0.1 unless told otherwise.

Routes: `POST /predict` (multipart image files -> label, confidence and top-k per image), `GET /health`,
`GET /model` (classes, task, sizes, the run's metrics, the limits) and the page at `/` with its script and
style under `/static/` (nothing from a CDN). FastAPI on uvicorn: the stack the style guide names, with
multipart parsing (python-multipart) and an event loop that keeps taking requests while a `Batcher`
thread runs the model. Uploads decode in threads off the event loop (`uploads.decode_upload`, the steps
of `imgclf predict`), then join other requests' images in one forward pass.

A bad file is that file's answer, not the request's, as `imgclf predict` skips a bad file and predicts the
rest: a request with good and bad files gets a 200 whose `predictions` keep the order of the uploads, a bad
file's entry `{"file", "error", "status"}` in place of its prediction. Only when nothing can be predicted is
the answer a 4xx with a one-line JSON body `{"error": "..."}`, and the server goes on: 400 for a file that
is not a decodable image (empty, truncated, not an image), a request without files or a body the multipart
parser cannot read, 413 (Content Too Large) for a file over `max_mb`, an image over PIL's pixel limit, and
more than `max_files` files in one request: the content is more than the server takes, and the client may
send it again in smaller requests (the page does so), which is what 413 tells it. A lone bad file answers
as before (its status, `{"error"}` alone); several files that are all bad answer their common status (else
400) with every file's error in `error` and, one entry per file, in `predictions`.

The server's output is its own: the banner lines (`imgclf serve: ...`) and one line per request, which for a
refusal ends with the reason. python_multipart's logger is routed into that format (`route_library_logs`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ..data.targets import describe_targets
from ..errors import UserError
from ..infer.predictor import Prediction, Predictor
from ..rundir import read_json
from .batcher import Batcher
from .settings import ServeSettings
from .uploads import UploadError, check_size, decode_upload, megabytes

HERE = Path(__file__).parent
MULTIPART_OVERHEAD = 64 * 1024  # per file: part headers and boundaries, generously


def model_info(run: str | Path, predictor: Predictor, settings: ServeSettings) -> dict[str, Any]:
    """What `GET /model` answers: the run's name, classes, task, sizes, scalar metrics and the limits."""
    run = Path(run)
    metrics_file = run / "metrics.json"
    metrics = read_json(metrics_file) if metrics_file.is_file() else {}
    info = {
        "run": run.name, "arch": predictor.meta.get("arch"), "task": predictor.task, "classes": predictor.classes,
        "size": predictor.size, "presize": predictor.presize, "device": str(predictor.device),
        "backend": getattr(predictor, "backend", "eager"),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        "limits": {**asdict(settings), "max_bytes": settings.max_bytes},
    }
    if predictor.task == "multi_label":
        info["threshold"] = predictor.threshold
    return info


def prediction_json(p: Prediction, k: int, task: str) -> dict[str, Any]:
    """One image's answer; JSON has no NaN, so a regression's confidence is null."""
    out: dict[str, Any] = {"file": p.path, "label": p.label,
                           "confidence": None if math.isnan(p.confidence) else p.confidence}
    if task == "regression":
        out["value"] = p.value
    else:
        out["topk"] = [{"label": c, "prob": q} for c, q in p.topk(k)]
    if task == "multi_label":
        out["tags"] = p.tags
    return out


def one_line(message: object) -> str:
    return " ".join(str(message).split())


def refused_json(name: str, e: UploadError) -> dict[str, Any]:
    """A bad file's entry among the predictions of a request that had good ones too."""
    return {"file": name, "error": one_line(e.message), "status": e.status}


def _error(request: Request, status: int, message: str, **extra: Any) -> JSONResponse:
    """A refusal: `{"error": one line, **extra}`; the line also goes to the request's log line."""
    request.state.error = one_line(message)
    return JSONResponse({"error": request.state.error, **extra}, status_code=status)


def _decode(name: str, data: bytes | UploadError, size: int) -> torch.Tensor | UploadError:
    """An upload's presized tensor, or the `UploadError` that refuses this one file."""
    if isinstance(data, UploadError):
        return data
    try:
        return decode_upload(data, size, name)
    except UploadError as e:
        return e


def _all_refused(request: Request, refused: list[tuple[str, UploadError]]) -> JSONResponse:
    """Nothing to predict: a lone file's refusal as it is; several files' common status (else 400), every error
    in one line and, per file, in `predictions` (so a client can show each file its own reason)."""
    if len(refused) == 1:
        return _error(request, refused[0][1].status, refused[0][1].message)
    statuses = {e.status for _, e in refused}
    status = statuses.pop() if len(statuses) == 1 else 400
    return _error(request, status, f"all {len(refused)} files refused: " + "; ".join(e.message for _, e in refused),
                  predictions=[refused_json(name, e) for name, e in refused])


def create_app(run: str | Path, predictor: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving `predictor` (the model of `run`); run it with uvicorn or `serve()`."""
    import jinja2

    s = settings or ServeSettings()
    batcher = Batcher(predictor, s.max_batch, s.max_wait_ms)
    info = model_info(run, predictor, s)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    page = env.get_template("index.html").render(run=info["run"], settings=s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title=f"imgclf: {info['run']}", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, e: UploadError) -> JSONResponse:
        return _error(request, e.status, e.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return _error(request, e.status_code, e.detail)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> JSONResponse:
        return _error(request, 500, f"{type(e).__name__}: {e}")

    @app.middleware("http")
    async def log_request(request: Request, call_next):
        """One line per request: time, client, method, path, status, images predicted and refused, milliseconds,
        and for a refusal (of the request or of some of its files) the reason."""
        t0 = time.perf_counter()
        response = await call_next(request)
        n = getattr(request.state, "n_images", None)
        refused = getattr(request.state, "n_refused", 0)
        error = getattr(request.state, "error", None)
        client = request.client.host if request.client else "-"
        print(f"{time.strftime('%H:%M:%S')} {client} {request.method} {request.url.path} {response.status_code}"
              + (f" {n} image(s)" if n is not None else "") + (f" {refused} refused" if refused else "")
              + f" {1000 * (time.perf_counter() - t0):.1f} ms" + (f": {error}" if error else ""), flush=True)
        return response

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **batcher.stats}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        return info

    @app.post("/predict", response_model=None)
    async def predict(request: Request) -> dict[str, Any] | JSONResponse:
        k = _topk(request, s.topk, len(predictor.classes))
        with batcher.coming():
            files = await _read_files(request, s)
            images = await asyncio.gather(*(asyncio.to_thread(_decode, name, data, predictor.presize)
                                            for name, data in files))
        refused = [(name, x) for (name, _), x in zip(files, images, strict=True) if isinstance(x, UploadError)]
        good = [x for x in images if isinstance(x, torch.Tensor)]
        request.state.n_images, request.state.n_refused = len(good), len(refused)
        if not good:
            return _all_refused(request, refused)
        if refused:  # the request's log line names them
            request.state.error = one_line("; ".join(e.message for _, e in refused))
        preds = iter(await batcher.predict(torch.stack(good)))
        return {"predictions": [prediction_json(replace(next(preds), path=name), k, predictor.task)
                                if isinstance(x, torch.Tensor) else refused_json(name, x)
                                for (name, _), x in zip(files, images, strict=True)]}

    return app


def _topk(request: Request, default: int, n_classes: int) -> int:
    raw = request.query_params.get("topk")
    if raw is None:
        return min(default, n_classes)
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:  # isdigit alone takes "²", which int() refuses
        raise UploadError(400, f"topk={raw}: must be a whole number >= 1")
    return min(int(raw), n_classes)


async def _read_files(request: Request, s: ServeSettings) -> list[tuple[str, bytes | UploadError]]:
    """(name, bytes) of each uploaded file, or (name, UploadError) for a file that is empty or too large (not
    read); the whole request is refused early when it is too large, malformed, or has no files."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UploadError(400, "send the images as multipart/form-data file fields (e.g. curl -F files=@a.jpg)")
    length = request.headers.get("content-length")
    if length is None:
        raise UploadError(411, "a Content-Length header is required")
    if not (length.isascii() and length.isdigit()):
        raise UploadError(400, f"Content-Length {length!r} is not a number")
    limit = s.max_files * (s.max_bytes + MULTIPART_OVERHEAD)
    if int(length) > limit:
        raise UploadError(413, f"request of {megabytes(int(length))} is over the limit of {s.max_files} files "
                               f"of {megabytes(s.max_bytes)}")
    try:
        form = await request.form(max_files=s.max_files, max_fields=s.max_files + 8)
    except ClientDisconnect:  # the client left mid-upload: one line in the log, not a traceback
        raise UploadError(400, "the client disconnected before the upload was complete") from None
    except HTTPException as e:  # starlette's words for a part count over max_files
        if str(e.detail).startswith("Too many files"):
            raise UploadError(413, f"too many files: at most {s.max_files} per request (--max-files)") from None
        if e.status_code == 400:  # starlette's "Invalid multipart data." over the parser's own words
            raise UploadError(400, f"cannot read the multipart/form-data body: {_parse_error(e)}") from None
        raise
    try:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise UploadError(400, "no image files in the request (multipart/form-data file fields)")
        files: list[tuple[str, bytes | UploadError]] = []
        for i, up in enumerate(uploads):
            name = up.filename or f"file {i + 1}"
            try:
                check_size(name, up.size, s.max_bytes)
            except UploadError as e:  # this file's answer; the others are still predicted
                files.append((name, e))
                continue
            files.append((name, await up.read()))
        return files
    finally:
        await form.close()


def _parse_error(e: HTTPException) -> str:
    """The parser's words under starlette's 400 `Invalid multipart data.`: starlette raises it while handling its
    own MultiPartException, raised `from` python_multipart's error (`Expected boundary character 45, got 103 at
    index 2`); only `from` links are followed below that (a KeyError in the context is not the reason)."""
    inner = e.__cause__ or e.__context__
    while inner is not None and inner.__cause__ is not None:
        inner = inner.__cause__
    return one_line(inner or e.detail)


LIBRARY_LOGGERS = ("python_multipart", "multipart")  # python-multipart's module name from 0.0.13, and before


class ServerLogHandler(logging.Handler):
    """A library's log record as one of the server's lines: `HH:MM:SS imgclf serve: LOGGER: message`."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            when = time.strftime("%H:%M:%S", time.localtime(record.created))
            print(f"{when} imgclf serve: {record.name}: {one_line(self.format(record))}", flush=True)
        except Exception:  # noqa: BLE001 - logging's own contract: a handler never raises
            self.handleError(record)


def route_library_logs() -> None:
    """Give python_multipart's logger a place in the server's output. Left alone, Python's last-resort handler
    printed its warning for each malformed body to stderr, bare, beside the request's line (`Expected boundary
    character 45, got 103 at index 2`). That warning repeats the error the parser raises, which the client's 400
    and the request's log line now carry, so warnings are dropped; its errors (a spooled upload it cannot write)
    print in the server's format. Idempotent: `serve()` may run more than once in a process."""
    for name in LIBRARY_LOGGERS:
        log = logging.getLogger(name)
        log.setLevel(logging.ERROR)
        log.propagate = False
        if not any(isinstance(h, ServerLogHandler) for h in log.handlers):
            log.addHandler(ServerLogHandler())


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one), or a UserError saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror} (pick another --port or --host)") from None
    return sock


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          settings: ServeSettings | None = None, **load_kwargs: Any) -> None:
    """Serve the model of `run` until Ctrl+C (or SIGTERM); prints its address, then one line per request."""
    import uvicorn

    from ..infer import load_model

    sock = bind(host, port)  # first: a taken port fails before the model loads
    try:
        predictor = load_model(run, device=device, **load_kwargs)
        predictor.predict_batch(torch.zeros(1, 3, predictor.presize, predictor.presize, dtype=torch.uint8))  # warm
        app = create_app(run, predictor, settings)
        bound_host, bound_port = sock.getsockname()[:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        what = describe_targets(predictor.task, predictor.classes)
        print(f"imgclf serve: {Path(run)} ({predictor.meta.get('arch')}, {what}) on {predictor.device}", flush=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"imgclf serve: listening on {host}: reachable from other machines", flush=True)
        print(f"imgclf serve: http://{url_host}:{bound_port}/ (Ctrl+C to stop)", flush=True)
        route_library_logs()
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        server.run(sockets=[sock])
    finally:
        sock.close()
