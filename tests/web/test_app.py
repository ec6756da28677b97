"""The web demo's API on a tiny unCLIP pipeline: generation (N PNGs, the pipeline's own images for a seed, one job at a
time), zero-shot (the probabilities of multimodal.pipelines.zeroshot) and a one-line 4xx for each kind of bad input."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

import multimodal
from multimodal.data.transforms import ImageTransform
from multimodal.pipelines.zeroshot import ZeroShotClassifier
from multimodal.runs import write_run
from multimodal.web.__main__ import is_loopback
from multimodal.web.__main__ import main as web_main
from multimodal.web.app import TEMPLATES, Limits, create_app, load_demo
from tests.conftest import REPO, TINY_CLIP
from tests.pipelines.test_unclip import tiny_pipeline

LABELS = ["red circle", "blue square", "green star"]
IMAGE_SIZE = 16  # the tiny pipeline's upsampler: 8 px decoded, 16 px out


def save_tiny_unclip(path: Path) -> Path:
    """A saved tiny unCLIP pipeline (prior, decoder, upsampler; 16 px images): what ``--unclip`` takes."""
    tiny_pipeline().save_pretrained(path)
    return path


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def red_circle(size: int = 48) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).ellipse((8, 8, size - 8, size - 8), fill="red")
    return image


@pytest.fixture(scope="module")
def unclip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_unclip(tmp_path_factory.mktemp("web") / "unclip")


@pytest.fixture(scope="module")
def app(unclip_dir: Path):
    return create_app(load_demo(unclip_dir), limits=Limits(max_images=6))


@pytest.fixture
def client(app, offline) -> TestClient:
    return TestClient(app)


def wait(client: TestClient, job: dict, timeout: float = 60.0) -> dict:
    """Poll the job until it is no longer running."""
    deadline = time.monotonic() + timeout
    while job["state"] == "running":
        assert time.monotonic() < deadline, f"job still running after {timeout} s: {job}"
        time.sleep(0.02)
        job = client.get(f"/api/jobs/{job['job']}").json()
    return job


def generate(client: TestClient, **body) -> dict:
    response = client.post("/api/generate", json={"prompt": "a red circle", "steps": 2, **body})
    assert response.status_code == 202, response.json()
    return wait(client, response.json())


def fetch_images(client: TestClient, job: dict) -> list[bytes]:
    out = []
    for url in job["images"]:
        response = client.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        out.append(response.content)
    return out


def test_page_and_info(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'id="gen-form"' in page.text and 'id="zs-form"' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from outside: no CDN, no web fonts
    assert client.get("/static/demo.js").status_code == 200
    info = client.get("/api/info").json()
    assert info["image_size"] == IMAGE_SIZE and info["stages"] == ["prior", "decoder", "upsampler"]
    assert info["limits"]["max_images"] == 6 and info["search"] is False and info["busy"] is False


def test_generation_gives_n_pngs_the_pipelines_own_for_the_seed(client: TestClient, app) -> None:
    job = generate(client, n=3, seed=7, guidance=2.5, prior_guidance=3.0)
    assert job["state"] == "done" and job["error"] is None and len(job["images"]) == 3
    # the sampler's progress was counted: the last stage's steps, all of them
    assert (job["stage"], job["step"], job["steps"], job["progress"]) == ("upsampler", 2, 2, 1.0)
    images = [Image.open(io.BytesIO(data)) for data in fetch_images(client, job)]
    assert all(im.format == "PNG" and im.size == (IMAGE_SIZE, IMAGE_SIZE) and im.mode == "RGB" for im in images)

    pipe = app.state.demo.pipe
    assert not {"step", "set_timesteps"} & set(vars(pipe.decoder_scheduler))  # the step counter is gone again
    expected = pipe(
        "a red circle", num_images_per_prompt=3, prior_guidance_scale=3.0, decoder_guidance_scale=2.5,
        num_inference_steps=2, generator=torch.Generator().manual_seed(7),
    ).images  # fmt: skip
    assert all(np.array_equal(np.asarray(got), np.asarray(want)) for got, want in zip(images, expected, strict=True))

    again = generate(client, n=3, seed=7, guidance=2.5, prior_guidance=3.0)
    assert fetch_images(client, again) == fetch_images(client, job)
    other = generate(client, n=3, seed=8, guidance=2.5, prior_guidance=3.0)
    assert fetch_images(client, other) != fetch_images(client, job)


def test_progress_is_the_samplers_stage_and_step_while_it_runs(
    client: TestClient, app, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = app.state.demo.pipe.decoder_scheduler
    step = type(scheduler).step
    reached, release = threading.Event(), threading.Event()
    calls = []

    def held_step(self, *args, **kwargs):  # the decoder's third step waits until the test has looked
        if self is scheduler:
            calls.append(1)
            if len(calls) == 3:
                reached.set()
                assert release.wait(30)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(type(scheduler), "step", held_step)
    started = client.post("/api/generate", json={"prompt": "a red circle", "n": 1, "steps": 4})
    assert started.status_code == 202 and reached.wait(30)
    job = client.get(f"/api/jobs/{started.json()['job']}").json()
    release.set()
    assert (job["state"], job["stage"], job["step"], job["steps"], job["images"]) == ("running", "decoder", 2, 4, [])
    assert job["progress"] == round((1 + 2 / 4) / 3, 4)  # the prior done, half the decoder, no upsampler yet
    assert wait(client, job)["state"] == "done"


def test_one_generation_at_a_time(client: TestClient, app, monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = app.state.demo.pipe
    release, entered = threading.Event(), threading.Event()
    prior_sample = pipe.prior.sample

    def held_sample(*args, **kwargs):
        entered.set()
        assert release.wait(30)
        return prior_sample(*args, **kwargs)

    monkeypatch.setattr(pipe.prior, "sample", held_sample)
    first = client.post("/api/generate", json={"prompt": "a red circle", "n": 1, "steps": 2})
    assert first.status_code == 202 and entered.wait(30)
    busy = client.post("/api/generate", json={"prompt": "a blue star", "n": 1, "steps": 2})
    assert busy.status_code == 409
    assert busy.json()["error"].startswith("busy: another generation is running")
    assert client.get("/api/info").json()["busy"] is True
    release.set()
    assert wait(client, first.json())["state"] == "done"
    assert generate(client, n=1)["state"] == "done"  # free again


def test_a_failed_generation_is_one_line_on_the_job_and_frees_the_demo(
    client: TestClient, app, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("decoder out of memory\nsecond line")

    monkeypatch.setattr(app.state.demo.pipe.decoder, "sample", broken)
    job = generate(client, n=1)
    assert job["state"] == "failed" and job["images"] == []
    assert job["error"] == "generation failed: decoder out of memory second line"
    monkeypatch.undo()
    assert generate(client, n=1)["state"] == "done"


def reference_probs(model, preprocess, image: Image.Image, labels: list[str]) -> list[float]:
    """README's zero-shot recipe: ZeroShotClassifier over the run's preprocessing, softmax."""
    classifier = ZeroShotClassifier(model, multimodal.get_tokenizer(model), labels, list(TEMPLATES))
    return classifier(preprocess(image).unsqueeze(0)).softmax(dim=-1)[0].tolist()


def zeroshot(client: TestClient, image: bytes, labels: str, name: str = "circle.png"):
    return client.post("/api/zeroshot", files={"image": (name, image, "image/png")}, data={"labels": labels})


def test_zeroshot_with_the_unclip_runs_clip_matches_the_pipeline(client: TestClient, app) -> None:
    image = red_circle()
    response = zeroshot(client, png_bytes(image), " red circle, blue square ,green star,")
    assert response.status_code == 200, response.json()
    result = response.json()
    assert result["labels"] == LABELS
    assert sum(result["probs"]) == pytest.approx(1.0, abs=1e-6)
    encoder = app.state.demo.pipe.clip
    preprocess = ImageTransform(image_size=32, mean=encoder.config.mean, std=encoder.config.std)
    assert result["probs"] == pytest.approx(reference_probs(encoder.clip, preprocess, image, LABELS), abs=1e-6)
    # any format PIL reads, any size and mode
    jpeg = zeroshot(client, png_bytes(image.convert("L").resize((70, 50)), "JPEG"), "red circle, blue square")
    assert jpeg.status_code == 200 and sum(jpeg.json()["probs"]) == pytest.approx(1.0, abs=1e-6)


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIP run folder of TINY_CLIP (random weights): what ``--clip`` takes."""
    torch.manual_seed(1)
    model = multimodal.create_model(TINY_CLIP["name"], **TINY_CLIP["args"])
    config = {
        "task": {"name": "clip"},
        "model": TINY_CLIP,
        "data": {"image_size": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]},
    }
    return write_run(tmp_path_factory.mktemp("web") / "clip", config, model)


def test_zeroshot_with_a_clip_run(unclip_dir: Path, clip_run: Path, tmp_path: Path, offline) -> None:
    client = TestClient(create_app(load_demo(unclip_dir, clip=clip_run)))
    assert client.get("/api/info").json()["sources"]["clip"] == str(clip_run)
    image = red_circle(40)
    result = zeroshot(client, png_bytes(image), ", ".join(LABELS)).json()
    assert sum(result["probs"]) == pytest.approx(1.0, abs=1e-6)
    loaded, preprocess = multimodal.load_model_and_transforms(clip_run)
    assert result["probs"] == pytest.approx(reference_probs(loaded, preprocess, image, LABELS), abs=1e-6)
    vit = write_run(
        tmp_path / "vit", {"task": {"name": "classification"}, "model": {"name": "vit_x"}}, torch.nn.Linear(2, 2)
    )
    with pytest.raises(
        ValueError, match=r"vit is an image-classifier run \(model vit_x; for eval.classify\), not a CLIP run"
    ):
        load_demo(unclip_dir, clip=vit)


def test_search_by_text_and_by_image_gives_the_indexs_hits(
    unclip_dir: Path, clip_run: Path, tmp_path: Path, offline
) -> None:
    pytest.importorskip("faiss", reason="the embedding index needs faiss-cpu (multimodal.evaluation.index)")
    from eval.index import main as index_main
    from multimodal.evaluation.index import EmbeddingIndex

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (colour, box) in enumerate([("red", (4, 4, 28, 28)), ("blue", (8, 2, 30, 20)), ("green", (0, 10, 20, 30))]):
        image = Image.new("RGB", (32, 32), "white")
        ImageDraw.Draw(image).ellipse(box, fill=colour)
        image.save(folder / f"{i}-{colour}.png")
    assert index_main(["build", "--checkpoint", str(clip_run), "--dataset", str(folder), "--out",
                       str(tmp_path / "index"), "--workers", "0"]) == 0  # fmt: skip
    client = TestClient(create_app(load_demo(unclip_dir, clip=clip_run, index=tmp_path / "index")))
    assert client.get("/api/info").json()["search"] is True
    index = EmbeddingIndex.load(tmp_path / "index")

    by_text = client.post("/api/search", data={"text": "a red circle", "k": "2"}).json()["hits"]
    assert [{k: v for k, v in hit.items() if k != "image"} for hit in by_text] == [
        asdict(hit) for hit in index.query_text(["a red circle"], 2)[0]
    ]
    query = red_circle(32)
    by_image = client.post("/api/search", files={"image": ("q.png", png_bytes(query), "image/png")}).json()["hits"]
    expected = index.query_image([query], 8)[0]
    assert [(h["rank"], h["key"]) for h in by_image] == [(h.rank, h.key) for h in expected] and len(expected) == 3
    assert [h["score"] for h in by_image] == pytest.approx([h.score for h in expected], abs=1e-6)
    for hit in by_image:  # each hit's own image file, served by key
        response = client.get(hit["image"])
        assert response.status_code == 200 and response.content == (folder / hit["key"]).read_bytes()

    both = client.post("/api/search", data={"text": "x"}, files={"image": ("q.png", png_bytes(query), "image/png")})
    cases = [
        (both, 400, "give a text or an image to search with, not both"),
        (client.post("/api/search", data={"text": "  "}), 400,
         "nothing to search with: type a text or choose an image"),
        (client.post("/api/search", data={"text": "x", "k": "0"}), 400,
         "the number of results must be from 1 to 50, got 0"),
        (client.get("/api/index/image", params={"key": "/etc/passwd"}), 404,
         "the index has no image file for key '/etc/passwd'"),
    ]  # fmt: skip
    for response, status, message in cases:
        assert (response.status_code, response.json()) == (status, {"error": message})


BAD_GENERATIONS = [
    ({"prompt": ""}, "the prompt is empty: type what to draw, e.g. 'a red circle'"),
    ({"prompt": "   "}, "the prompt is empty: type what to draw, e.g. 'a red circle'"),
    ({"n": 1}, "the prompt is empty: type what to draw, e.g. 'a red circle'"),
    ({"prompt": "a red circle", "n": 7}, "the number of images must be from 1 to 6, got 7"),
    ({"prompt": "a red circle", "n": 0}, "the number of images must be from 1 to 6, got 0"),
    ({"prompt": "a red circle", "n": "two"}, "the number of images must be a whole number from 1 to 6, got 'two'"),
    ({"prompt": "a red circle", "n": 2.5}, "the number of images must be a whole number from 1 to 6, got 2.5"),
    ({"prompt": "a red circle", "guidance": 0.5}, "the guidance scale must be from 1 to 20, got 0.5"),
    ({"prompt": "a red circle", "guidance": 25}, "the guidance scale must be from 1 to 20, got 25"),
    ({"prompt": "a red circle", "guidance": "nan"}, "the guidance scale must be a number from 1 to 20, got nan"),
    ({"prompt": "a red circle", "prior_guidance": 0}, "the prior's guidance scale must be from 1 to 20, got 0"),
    ({"prompt": "a red circle", "seed": -1}, "the seed must be from 0 to 4294967295, got -1"),
    ({"prompt": "a red circle", "seed": 2**32}, "the seed must be from 0 to 4294967295, got 4294967296"),
    ({"prompt": "a red circle", "steps": 101}, "the number of steps must be from 1 to 100, got 101"),
    (
        {"prompt": "a\x07bell"},
        "the prompt ('a\\x07bell') holds a control character, '\\x07', at position 1; remove it",
    ),
    ({"prompt": "x" * 301}, "the prompt is 301 characters long; keep it to 300"),
    (
        {"prompt": "a red circle", "size": 64},
        "unknown field 'size'; the fields are prompt, n, guidance, prior_guidance, steps, seed",
    ),
    (["a red circle"], 'send a JSON object, e.g. {"prompt": "a red circle", "n": 4}'),
]


@pytest.mark.parametrize(("body", "message"), BAD_GENERATIONS, ids=range(len(BAD_GENERATIONS)))
def test_bad_generation_requests_are_one_line_400s(client: TestClient, body, message: str) -> None:
    response = client.post("/api/generate", json=body)
    assert (response.status_code, response.json()) == (400, {"error": message})
    assert client.get("/api/info").json()["busy"] is False  # nothing was started


NO_LABELS = "no labels: type the classes to choose from, separated by commas, e.g. 'red circle, blue star'"
NOT_AN_IMAGE = "{!r} is not an image this demo reads (PNG, JPEG, GIF, BMP, WebP): choose an image file"


def test_more_bad_requests(client: TestClient) -> None:
    circle = png_bytes(red_circle())
    cases = [
        (client.post("/api/generate", content=b"{prompt", headers={"content-type": "application/json"}), 400,
         "the request body is not valid JSON"),
        (zeroshot(client, circle, ""), 400, NO_LABELS),
        (zeroshot(client, circle, " , ,"), 400, NO_LABELS),
        (zeroshot(client, circle, "a, b, a"), 400, "the label 'a' is given twice; give each class once"),
        (zeroshot(client, b"not an image at all", "a, b", name="notes.txt"), 415, NOT_AN_IMAGE.format("notes.txt")),
        (zeroshot(client, circle[:60], "a, b", name="cut.png"), 415, NOT_AN_IMAGE.format("cut.png")),
        (zeroshot(client, b"", "a, b", name="empty.png"), 415, NOT_AN_IMAGE.format("empty.png")),
        (client.post("/api/zeroshot", data={"labels": "a, b"}), 400, "no image: choose an image file to upload"),
        (client.post("/api/search", data={"text": "a red circle"}), 404,
         "no index to search: start the demo with --index DIR"),
        (client.get("/api/jobs/0123"), 404, "no job '0123': it never was, or it is older than the last 16"),
    ]  # fmt: skip
    for response, status, message in cases:
        assert (response.status_code, response.json()) == (status, {"error": message})


def test_too_large_an_image_is_refused_before_decoding(unclip_dir: Path, offline) -> None:
    client = TestClient(create_app(load_demo(unclip_dir), limits=Limits(max_pixels=1000, max_upload_mb=1)))
    response = zeroshot(client, png_bytes(red_circle(40)), "a, b", name="big.png")
    assert (response.status_code, response.json()) == (
        413,
        {"error": "'big.png' is 40x40 pixels; choose an image of at most 1,000 pixels"},
    )
    response = zeroshot(client, b"\0" * (2**20 + 1), "a, b", name="huge.png")  # the file alone is over the limit
    assert (response.status_code, response.json()) == (
        413,
        {"error": "'huge.png' is over 1 MB; choose a smaller image"},
    )
    response = zeroshot(client, b"\0" * (2**20 + 2**17), "a, b", name="huge.png")  # so is the whole request
    assert (response.status_code, response.json()) == (
        413,
        {"error": "the request is over 1 MB; choose a smaller image"},
    )


def test_cli_refuses_a_remote_host_without_the_flag(capsys: pytest.CaptureFixture) -> None:
    assert web_main(["--unclip", "nowhere", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --host 0.0.0.0 is not this machine's loopback") and "--allow-remote" in err
    hosts = ("127.0.0.1", "localhost", "::1", "127.0.0.2", "0.0.0.0", "10.0.0.1", "example.org")
    assert [is_loopback(h) for h in hosts] == [True, True, True, True, False, False, False]
    assert web_main(["--unclip", "nowhere", "--port", "70000"]) == 2
    assert capsys.readouterr().err == "error: --port must be from 1 to 65535, got 70000\n"


def test_help_loads_no_web_library() -> None:
    script = """
import contextlib, sys
from multimodal.web.__main__ import main
with contextlib.suppress(SystemExit):
    main(["--help"])
print(sorted(m for m in ("torch", "fastapi", "uvicorn", "multimodal.web.app") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--unclip UNCLIP" in done.stdout and "(default: 7860)" in done.stdout
    assert done.stdout.strip().endswith("[]")
