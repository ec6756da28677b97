"""The web demo's FastAPI app: one page (``static/``) over a JSON API to a loaded unCLIP pipeline, the CLIP that
classifies, and optionally an embedding index.

    GET  /                       the page
    GET  /api/info               limits, defaults, what was loaded, whether the search panel is there
    POST /api/generate           JSON {prompt, n, guidance, prior_guidance, steps, seed} -> 202 {"job": id}
    GET  /api/jobs/{id}          state, sampler stage and step, image URLs once done
    GET  /api/jobs/{id}/{i}.png  one generated image, at the pipeline's own size
    POST /api/zeroshot           form: image (file), labels ("red circle, blue square") -> labels, probabilities
    POST /api/search             form: text or image (file), k -> the index's hits
    GET  /api/index/image?key=K  the image file of a hit, when the index was built from a folder of images

Bad input is answered with a 4xx and ``{"error": "one line"}`` that the page shows; anything else that fails is a
500 with a one-line message (the traceback goes to the server's log, never to the page). One generation runs at a
time, in a background thread the page polls; asking for another meanwhile is a 409 that says the demo is busy.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import torch
from fastapi import Body, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException
from torch import nn

from ..cli import one_line
from ..data.transforms import ImageTransform
from ..evaluation.index import IMAGE_SUFFIXES, EmbeddingIndex, Hit
from ..generate import load_pipeline
from ..pipelines.unclip import UnclipPipeline
from ..pipelines.zeroshot import ZeroShotClassifier
from ..runs import get_tokenizer, load_model_and_transforms, read_run_config
from ..tokenizers import ClipTokenizer, check_prompts

__all__ = ["TEMPLATES", "Demo", "GenerateRequest", "InputError", "Limits", "create_app", "load_demo"]

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
TEMPLATES = ("a {}.", "a photo of a {}.")  # zero-shot prompt templates; {} is the label
MAX_SEED = 2**32 - 1


class InputError(ValueError):
    """Bad input from the page: answered with HTTP ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_images: int = 16
    max_steps: int = 100
    max_guidance: float = 20.0
    max_labels: int = 64
    max_k: int = 50
    max_upload_mb: int = 10
    max_pixels: int = 40_000_000
    max_prompt_chars: int = 300
    keep_jobs: int = 16  # finished generations whose images stay fetchable


@dataclass
class Demo:
    """What the app serves: the unCLIP pipeline, the CLIP that classifies (with its tokenizer and preprocessing),
    optionally an embedding index to search, and where each came from."""

    pipe: UnclipPipeline
    clip: nn.Module
    tokenizer: ClipTokenizer
    preprocess: ImageTransform
    index: EmbeddingIndex | None = None
    templates: tuple[str, ...] = TEMPLATES
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        """The side of the pipeline's images: the upsampler's when it has one, else the decoder's."""
        stage = self.pipe.upsampler if self.pipe.upsampler is not None else self.pipe.decoder
        return int(stage.config.image_size)


def load_demo(
    unclip: str | Path,
    *,
    clip: str | Path | None = None,
    index: str | Path | None = None,
    device: str | torch.device = "cpu",
    templates: Sequence[str] = TEMPLATES,
) -> Demo:
    """The models of a :class:`Demo`: the pipeline of ``unclip`` (an unCLIP run root or a saved pipeline, as
    ``multimodal.generate`` takes), the CLIP run ``clip`` for zero-shot (default: the pipeline's own CLIP, with its
    normalisation at its image tower's size) and the embedding index folder ``index``."""
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"every template must contain '{{}}' where the label goes, e.g. 'a photo of a {{}}.'; got "
                         f"{list(templates)}")  # fmt: skip
    if clip is not None:
        read_run_config(clip, task="clip")  # another kind of run: a message that says what it is, before any loading
    pipe = load_pipeline(unclip).to(device)
    sources = {"unclip": str(unclip)}
    if clip is None:
        model = pipe.clip.clip
        cfg = pipe.clip.config
        preprocess = ImageTransform(image_size=model.cfg.vision.img_size, mean=cfg.mean, std=cfg.std)
        sources["clip"] = f"the CLIP of {unclip}"
    else:
        model, preprocess = load_model_and_transforms(clip, device=device)
        sources["clip"] = str(clip)
    loaded_index = None
    if index is not None:
        loaded_index = EmbeddingIndex.load(index, device=str(device))
        sources["index"] = f"{index} ({len(loaded_index)} images)"
    return Demo(pipe, model, get_tokenizer(model), preprocess, loaded_index, tuple(templates), sources)


# -- requests ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerateRequest:
    """One text-to-image request, checked against :class:`Limits`."""

    prompt: str
    n: int = 4
    guidance: float = 3.0  # the decoder's classifier-free guidance, as multimodal.generate's --decoder-guidance
    prior_guidance: float = 4.0
    steps: int = 25
    seed: int = 0

    @classmethod
    def parse(cls, body: Any, limits: Limits) -> GenerateRequest:
        """A request from the page's JSON object; a missing field takes its default, a bad one is an InputError."""
        if not isinstance(body, dict):
            raise InputError('send a JSON object, e.g. {"prompt": "a red circle", "n": 4}')
        unknown = sorted(set(body) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(f"unknown field {unknown[0]!r}; the fields are {', '.join(f.name for f in fields(cls))}")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty: type what to draw, e.g. 'a red circle'")
        if len(prompt) > limits.max_prompt_chars:
            raise InputError(f"the prompt is {len(prompt)} characters long; keep it to {limits.max_prompt_chars}")
        try:
            check_prompts([prompt])
        except ValueError as e:
            raise InputError(str(e).replace("prompt 1", "the prompt", 1)) from None
        return cls(
            prompt=prompt.strip(),
            n=_whole(body, "n", cls.n, 1, limits.max_images, "the number of images"),
            guidance=_number(body, "guidance", cls.guidance, 1.0, limits.max_guidance, "the guidance scale"),
            prior_guidance=_number(
                body, "prior_guidance", cls.prior_guidance, 1.0, limits.max_guidance, "the prior's guidance scale"
            ),
            steps=_whole(body, "steps", cls.steps, 1, limits.max_steps, "the number of steps"),
            seed=_whole(body, "seed", cls.seed, 0, MAX_SEED, "the seed"),
        )


def _whole(body: dict[str, Any], key: str, default: int, lo: int, hi: int, what: str) -> int:
    """``body[key]`` (default when missing or blank) as a whole number in [lo, hi]: a JSON number or its text."""
    value = body.get(key, default)
    if isinstance(value, str):
        value = value.strip() or default
        with contextlib.suppress(ValueError):
            value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{what} must be a whole number from {lo} to {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise InputError(f"{what} must be from {lo} to {hi}, got {value}")
    return value


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float, what: str) -> float:
    """``body[key]`` (default when missing or blank) as a finite number in [lo, hi]: a JSON number or its text."""
    value = body.get(key, default)
    if isinstance(value, str):
        value = value.strip() or default
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{what} must be a number from {lo:g} to {hi:g}, got {value!r}")
    if not lo <= value <= hi:
        raise InputError(f"{what} must be from {lo:g} to {hi:g}, got {value:g}")
    return float(value)


def parse_labels(text: str, limits: Limits) -> list[str]:
    """Comma-separated class names -> a list (blank entries dropped); none, too many or a repeated one is an
    InputError."""
    labels = [label.strip() for label in text.split(",") if label.strip()]
    if not labels:
        raise InputError(
            "no labels: type the classes to choose from, separated by commas, e.g. 'red circle, blue star'"
        )
    if len(labels) > limits.max_labels:
        raise InputError(f"{len(labels)} labels; give at most {limits.max_labels}")
    repeated = next((label for i, label in enumerate(labels) if label in labels[:i]), None)
    if repeated is not None:
        raise InputError(f"the label {repeated!r} is given twice; give each class once")
    try:
        check_prompts(labels)
    except ValueError as e:
        raise InputError(str(e).replace("prompt", "label", 1)) from None
    return labels


def read_image(upload: UploadFile | None, limits: Limits) -> Image.Image:
    """The uploaded file as a decoded PIL image; no file, an empty or oversized one, or one that is not an image PIL
    reads is an InputError."""
    if upload is None or not upload.filename:
        raise InputError("no image: choose an image file to upload")
    limit = limits.max_upload_mb * 2**20
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{upload.filename!r} is over {limits.max_upload_mb} MB; choose a smaller image", 413)
    not_an_image = InputError(
        f"{upload.filename!r} is not an image this demo reads (PNG, JPEG, GIF, BMP, WebP): choose an image file", 415
    )
    if not data:
        raise not_an_image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height <= limits.max_pixels:  # the header alone tells; decode only what fits
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{upload.filename!r} has too many pixels; choose a smaller image", 413) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise not_an_image from None
    if image.width * image.height > limits.max_pixels:
        raise InputError(
            f"{upload.filename!r} is {image.width}x{image.height} pixels; choose an image of at most "
            f"{limits.max_pixels:,} pixels",
            413,
        )
    return image


# -- generation jobs ---------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One generation: its request, where the sampler is (stage, step), and the PNG images once done."""

    id: str
    request: GenerateRequest
    stages: tuple[str, ...]
    state: str = "running"  # running, done or failed
    stage: str = ""
    stage_index: int = 0
    step: int = 0
    steps: int = 0
    images: list[bytes] = field(default_factory=list)
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    seconds: float | None = None

    @property
    def progress(self) -> float:
        """The fraction of the sampler's steps done, each stage counting as much as another."""
        if self.state == "done":
            return 1.0
        within = self.step / self.steps if self.steps else 0.0
        return (self.stage_index + within) / len(self.stages)

    def describe(self) -> str:
        """Where the sampler is, e.g. "decoder step 12/25"."""
        return f"{self.stage} step {self.step}/{self.steps}" if self.stage else "starting"

    def as_json(self) -> dict[str, Any]:
        """What ``GET /api/jobs/{id}`` answers."""
        return {
            "job": self.id,
            "state": self.state,
            "stage": self.stage,
            "stages": list(self.stages),
            "step": self.step,
            "steps": self.steps,
            "progress": round(self.progress, 4),
            "seconds": round(self.seconds if self.seconds is not None else time.monotonic() - self.started, 2),
            "error": self.error,
            "images": [f"/api/jobs/{self.id}/{i}.png" for i in range(len(self.images))],
            "request": asdict(self.request),
        }


class Generations:
    """Runs one generation at a time in a background thread; keeps the last ``keep`` jobs for the page to fetch."""

    def __init__(self, pipe: UnclipPipeline, *, keep: int = 16) -> None:
        self.pipe = pipe
        self.keep = keep
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.running: Job | None = None
        self._lock = threading.Lock()

    def start(self, request: GenerateRequest) -> Job:
        """Start ``request`` in the background; while another one runs, an InputError (409) saying so."""
        if not self._lock.acquire(blocking=False):
            where = f" ({self.running.describe()})" if self.running is not None else ""
            raise InputError(f"busy: another generation is running{where}; try again when it finishes", 409)
        job = Job(id=secrets.token_hex(8), request=request, stages=sampling_stages(self.pipe))
        self.jobs[job.id] = job
        while len(self.jobs) > self.keep:
            self.jobs.popitem(last=False)
        self.running = job
        try:
            threading.Thread(target=self._run, args=(job,), name=f"generate-{job.id}", daemon=True).start()
        except BaseException:
            self.running = None
            self._lock.release()
            raise
        return job

    def _run(self, job: Job) -> None:
        request = job.request
        try:
            with _count_steps(self.pipe, job):
                images = self.pipe(
                    request.prompt,
                    num_images_per_prompt=request.n,
                    prior_guidance_scale=request.prior_guidance,
                    decoder_guidance_scale=request.guidance,
                    num_inference_steps=request.steps,
                    generator=torch.Generator().manual_seed(request.seed),
                ).images
            job.images = [_png(image) for image in images]
            job.state = "done"
        except Exception as e:  # a failed job is reported on the page; the traceback goes to the log
            logger.exception("generation %s failed", job.id)
            job.error = f"generation failed: {one_line(e)}"
            job.state = "failed"
        finally:
            job.seconds = time.monotonic() - job.started
            self.running = None
            self._lock.release()


def sampling_stages(pipe: UnclipPipeline) -> tuple[str, ...]:
    """The sampling stages a generation runs through: the prior, the decoder and the upsampler when there is one."""
    return ("prior", "decoder") + (("upsampler",) if pipe.upsampler is not None else ())


@contextlib.contextmanager
def _count_steps(pipe: UnclipPipeline, job: Job) -> Iterator[None]:
    """Within it, each stage's scheduler reports to ``job`` as it starts (its number of timesteps) and steps."""
    schedulers = {
        "prior": pipe.prior_scheduler,
        "decoder": pipe.decoder_scheduler,
        "upsampler": pipe.upsampler_scheduler,
    }
    patched = []
    try:
        for index, name in enumerate(job.stages):
            _report(schedulers[name], job, name, index)
            patched.append(schedulers[name])
        yield
    finally:
        for scheduler in patched:  # back to the class's own methods
            del scheduler.set_timesteps, scheduler.step


def _report(scheduler: Any, job: Job, stage: str, index: int) -> None:
    """Shadow ``scheduler``'s ``set_timesteps`` and ``step`` with ones that also move ``job`` along."""
    set_timesteps, step = scheduler.set_timesteps, scheduler.step

    def set_timesteps_and_report(*args: Any, **kwargs: Any) -> Any:
        out = set_timesteps(*args, **kwargs)
        job.stage, job.stage_index, job.step, job.steps = stage, index, 0, len(scheduler.timesteps)
        return out

    def step_and_report(*args: Any, **kwargs: Any) -> Any:
        out = step(*args, **kwargs)
        job.step += 1
        return out

    scheduler.set_timesteps, scheduler.step = set_timesteps_and_report, step_and_report


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- zero-shot and search ----------------------------------------------------------------------------------------


@torch.no_grad()
def classify(demo: Demo, image: Image.Image, labels: Sequence[str]) -> list[float]:
    """The probability of each label for ``image``: softmax over the zero-shot logits of ``ZeroShotClassifier``."""
    classifier = ZeroShotClassifier(demo.clip, demo.tokenizer, labels, demo.templates)
    device = next(demo.clip.parameters()).device
    logits = classifier(demo.preprocess(image).unsqueeze(0).to(device))  # (1, C)
    return logits.softmax(dim=-1)[0].tolist()


def image_file(path: str | None) -> Path | None:
    """``path`` when it is an image file on this machine (an index of an image folder records them), else None."""
    if path and Path(path).suffix.lower() in IMAGE_SUFFIXES and Path(path).is_file():
        return Path(path)
    return None


def _hit_json(hit: Hit) -> dict[str, Any]:
    """A search hit as JSON: rank, score, key, caption, label, path, and the URL of its image when it has a file."""
    image = f"/api/index/image?key={quote(hit.key)}" if image_file(hit.path) else None
    return {**asdict(hit), "image": image}


# -- the app -----------------------------------------------------------------------------------------------------


def create_app(demo: Demo, *, limits: Limits = Limits()) -> FastAPI:
    """The FastAPI app of the demo (``uvicorn.run(create_app(load_demo(run)))`` serves it)."""
    app = FastAPI(title="multimodal demo", docs_url=None, redoc_url=None, openapi_url=None)
    generations = Generations(demo.pipe, keep=limits.keep_jobs)
    app.state.demo, app.state.generations, app.state.limits = demo, generations, limits
    paths: dict[str, str | None] = {}  # key -> image file of the index's items, filled on first use
    _add_error_handlers(app)

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next: Any) -> Response:
        """A body over the upload limit (and room for the form around it) is refused before it is read."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limits.max_upload_mb * 2**20 + 2**16:
            message = f"the request is over {limits.max_upload_mb} MB; choose a smaller image"
            return JSONResponse({"error": message}, status_code=413)
        return await call_next(request)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        defaults = {f.name: f.default for f in fields(GenerateRequest) if f.name != "prompt"}
        return {
            "limits": {**asdict(limits), "min_guidance": 1.0, "max_seed": MAX_SEED},
            "defaults": {**defaults, "n": min(defaults["n"], limits.max_images)},
            "image_size": demo.image_size,
            "stages": list(sampling_stages(demo.pipe)),
            "templates": list(demo.templates),
            "sources": demo.sources,
            "search": demo.index is not None,
            "busy": generations.running is not None,
        }

    @app.post("/api/generate", status_code=202)
    def generate(body: Annotated[Any, Body()] = None) -> dict[str, Any]:
        return generations.start(GenerateRequest.parse(body, limits)).as_json()

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        return _job(generations, job_id).as_json()

    @app.get("/api/jobs/{job_id}/{index}.png")
    def job_image(job_id: str, index: int) -> Response:
        images = _job(generations, job_id).images
        if not 0 <= index < len(images):
            raise InputError(f"job {job_id} has no image {index} (it has {len(images)})", 404)
        return Response(images[index], media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/zeroshot")
    def zeroshot(
        image: Annotated[UploadFile | None, File()] = None, labels: Annotated[str, Form()] = ""
    ) -> dict[str, Any]:
        names = parse_labels(labels, limits)
        probs = classify(demo, read_image(image, limits), names)
        return {"labels": names, "probs": probs, "templates": list(demo.templates)}

    @app.post("/api/search")
    def search(
        text: Annotated[str, Form()] = "",
        k: Annotated[str, Form()] = "8",
        image: Annotated[UploadFile | None, File()] = None,
    ) -> dict[str, Any]:
        if demo.index is None:
            raise InputError("no index to search: start the demo with --index DIR", 404)
        top = _whole({"k": k}, "k", 8, 1, limits.max_k, "the number of results")
        has_image = image is not None and bool(image.filename)
        if text.strip() and has_image:
            raise InputError("give a text or an image to search with, not both")
        if text.strip():
            hits = demo.index.query_text([text.strip()], top)[0]
        elif has_image:
            hits = demo.index.query_image([read_image(image, limits)], top)[0]
        else:
            raise InputError("nothing to search with: type a text or choose an image")
        return {"hits": [_hit_json(hit) for hit in hits]}

    @app.get("/api/index/image")
    def index_image(key: str) -> FileResponse:
        if demo.index is None:
            raise InputError("no index: start the demo with --index DIR", 404)
        if not paths:  # the index's own files only: a key it does not hold is a 404, never a path on this machine
            paths.update(zip(demo.index.items["key"], demo.index.items["path"], strict=True))
        path = image_file(paths.get(key))
        if path is None:
            raise InputError(f"the index has no image file for key {key!r}", 404)
        return FileResponse(path)

    return app


def _job(generations: Generations, job_id: str) -> Job:
    job = generations.jobs.get(job_id)
    if job is None:
        raise InputError(f"no job {job_id!r}: it never was, or it is older than the last {generations.keep}", 404)
    return job


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": "one line"}``: bad input with its 4xx, anything else a 500 (traceback to the log)."""

    @app.exception_handler(InputError)
    def input_error(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return JSONResponse({"error": "the request body is not valid JSON"}, status_code=400)
        where = ".".join(str(part) for part in first.get("loc", ())[1:])
        message = one_line(first.get("msg", "invalid request"))
        return JSONResponse({"error": f"bad request: {where + ': ' if where else ''}{message}"}, status_code=400)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": one_line(str(exc.detail))}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    def server_error(request: Request, exc: Exception) -> JSONResponse:  # the server logs the traceback itself
        message = f"internal error ({type(exc).__name__}: {one_line(exc)[:200]}); the server's log has the details"
        return JSONResponse({"error": message}, status_code=500)
