import io
import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from multimodal.data import SampleDecoder
from multimodal.data.stream import DecodeError
from multimodal.data.transforms import (
    MAX_ASPECT,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    collate,
    resize_center_crop,
    to_rgb,
)

CAPTIONS = ["a red circle", "a photo of a red circle", "a large red circle", "a red circle at the top"]


def _png(rgb=(200, 30, 30), size=16, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), rgb).save(buf, format="PNG")
    return buf.getvalue()


def _sample(key="s0", epoch=0, **meta) -> dict:
    meta = {"label": 3, "captions": CAPTIONS, **meta}
    return {"__key__": key, "__epoch__": epoch, "png": _png(), "txt": b"fixed  caption\n", "json": json.dumps(meta)}


def test_image_is_resized_normalised_rgb():
    dec = SampleDecoder(image_size=8, label_key="label", text_key="txt", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    out = dec(_sample())
    assert out["image"].shape == (3, 8, 8)
    expected = (torch.tensor([200, 30, 30]) / 255 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    torch.testing.assert_close(out["image"][:, 4, 4], expected.float(), atol=1e-5, rtol=0)
    assert out["label"] == 3
    assert out["text"] == "fixed caption"  # whitespace collapsed


@pytest.mark.parametrize("size", [31, 32, 224])
def test_resize_center_crop_is_torchvisions_resize_then_center_crop_pixel_for_pixel(size):
    from torchvision import transforms as T

    reference = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])
    rng = np.random.default_rng(size)
    shapes = [(w, h) for w in (1, 7, 20, 33, 37, 64, 101) for h in (5, 32, 47, 53, 96)] + [(640, 480), (333, 500)]
    for w, h in shapes:
        if max(w, h) > MAX_ASPECT * min(w, h):
            continue
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert np.array_equal(np.asarray(resize_center_crop(img, size)), np.asarray(reference(img))), (w, h)


def test_resize_center_crop_cuts_a_sliver_to_its_centre_first():
    sliver = np.zeros((1, 10_000, 3), dtype=np.uint8)
    sliver[0, 5_000 - 32 : 5_000 + 32] = 255  # white at the centre, black elsewhere
    out = resize_center_crop(Image.fromarray(sliver), 16)
    assert out.size == (16, 16) and np.asarray(out).mean() > 200  # its centre 64 px, not a 160,000 px long resize


def test_to_rgb_composites_alpha_on_white_and_rescales_16_bit():
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    grey16 = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert to_rgb(grey16).getpixel((0, 0)) == (255, 255, 255)


def test_random_caption_is_one_of_the_list_reproducible_and_redrawn_each_epoch():
    dec = SampleDecoder(image_size=8, text_key="txt", captions_key="captions", seed=1)
    draws = [dec(_sample(epoch=e))["text"] for e in range(40)]
    assert set(draws) <= set(CAPTIONS)
    assert len(set(draws)) == len(CAPTIONS)  # 40 epochs draw every caption
    assert draws == [dec(_sample(epoch=e))["text"] for e in range(40)]  # same (seed, epoch, key), same caption
    other_seed = SampleDecoder(image_size=8, text_key="txt", captions_key="captions", seed=2)
    assert draws != [other_seed(_sample(epoch=e))["text"] for e in range(40)]
    counts = Counter(dec(_sample(key=f"k{i}"))["text"] for i in range(2000))
    assert min(counts.values()) > 400  # uniform over the four: 500 each


def test_random_caption_does_not_change_the_augmentation():
    plain = SampleDecoder(image_size=12, augment="crop_flip", seed=3)
    with_captions = SampleDecoder(image_size=12, augment="crop_flip", seed=3, captions_key="captions")
    for epoch in range(5):
        assert torch.equal(plain(_sample(epoch=epoch))["image"], with_captions(_sample(epoch=epoch))["image"])


@pytest.mark.parametrize(
    "meta, detail",
    [
        ({"captions": []}, "non-empty list"),
        ({"captions": "a red circle"}, "non-empty list"),
        ({"captions": [1]}, "strings"),
    ],
)
def test_bad_caption_lists_are_decode_errors(meta, detail):
    dec = SampleDecoder(image_size=8, captions_key="captions")
    with pytest.raises(DecodeError, match="missing caption") as err:
        dec(_sample(**meta))
    assert detail in str(err.value.args)
    sample = _sample()
    del sample["json"]
    with pytest.raises(DecodeError, match="missing caption"):
        dec(sample)
    with pytest.raises(DecodeError, match="empty caption"):
        dec(_sample(captions=["   "]))


def test_collate_stacks_images_and_labels_keeps_text_lists():
    dec = SampleDecoder(image_size=8, label_key="label", text_key="txt")
    batch = collate([dec(_sample(key=f"k{i}")) for i in range(3)])
    assert batch["image"].shape == (3, 3, 8, 8)
    assert batch["label"].tolist() == [3, 3, 3]
    assert batch["text"] == ["fixed caption"] * 3
    assert batch["key"] == ["k0", "k1", "k2"]


def _square_png(size: int = 32) -> bytes:
    """A white square filling the middle half of a black image."""
    img = Image.new("RGB", (size, size), (0, 0, 0))
    img.paste((255, 255, 255), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _ink_box(image: torch.Tensor) -> tuple[int, int]:
    """Height and width of the bounding box of the bright pixels of a decoded image (mean 0.5, std 0.5)."""
    rows, cols = torch.nonzero(image.mean(0) > 0.0, as_tuple=True)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def test_rts_distortion_rotates_scales_and_moves_the_image_on_the_canvas_of_the_same_border_colour():
    dec = SampleDecoder(image_size=32, distort="rts", mean=(0.5,) * 3, std=(0.5,) * 3, seed=0)
    plain = SampleDecoder(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)({"__key__": "k", "png": _square_png()})[
        "image"
    ]
    assert _ink_box(plain) == (16, 16)
    boxes, centres, corners = [], [], []
    for i in range(200):
        image = dec({"__key__": f"k{i}", "png": _square_png()})["image"]
        assert image.shape == (3, 32, 32)
        boxes.append(max(_ink_box(image)))
        rows, cols = torch.nonzero(image.mean(0) > 0.0, as_tuple=True)
        centres.append((rows.float().mean().item(), cols.float().mean().item()))
        corners.append(image[:, 0, 0])
    # the square's side 16 px becomes 32 / 1.5 * (0.7..1.2) / 2 = 7.5..12.8 px, up to sqrt(2) wider when turned
    assert min(boxes) >= 7 and max(boxes) <= 19 and max(boxes) - min(boxes) >= 6
    rows, cols = zip(*centres, strict=True)
    assert np.ptp(rows) >= 8 and np.ptp(cols) >= 8  # placed anywhere the image (2/3 of the canvas) fits
    torch.testing.assert_close(torch.stack(corners), torch.full((200, 3), -1.0))  # the black border continues


def test_rts_distortion_is_redrawn_each_epoch_in_training_and_fixed_by_the_key_for_a_test_set():
    sample = lambda epoch: {"__key__": "k", "__epoch__": epoch, "png": _square_png()}  # noqa: E731
    train = SampleDecoder(image_size=32, distort="rts", seed=1)
    epochs = [train(sample(e))["image"] for e in range(3)]
    assert not torch.equal(epochs[0], epochs[1]) and torch.equal(epochs[0], train(sample(0))["image"])
    tests = [SampleDecoder(image_size=32, distort="rts", fixed_distortion=True, seed=s) for s in (1, 2)]
    fixed = [dec(sample(e))["image"] for dec in tests for e in range(3)]
    assert all(torch.equal(fixed[0], f) for f in fixed)  # every epoch, whatever the run's seed
    assert not torch.equal(fixed[0], tests[0]({"__key__": "other", "png": _square_png()})["image"])


def test_rts_canvas_takes_the_border_median_so_ink_on_the_border_does_not_tint_it():
    img = Image.new("RGB", (16, 16), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 3, 16))  # a stroke along the left edge: 3/4 of the border stays black
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    dec = SampleDecoder(image_size=32, distort="rts", mean=(0.5,) * 3, std=(0.5,) * 3)
    corners = [
        dec({"__key__": f"k{i}", "png": buf.getvalue()})["image"][:, [0, 0, -1, -1], [0, -1, 0, -1]] for i in range(20)
    ]
    assert sum(bool((c == -1).all()) for c in corners) >= 15  # black canvas (a corner may hold the turned stroke)
