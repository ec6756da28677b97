"""CLIP on a researcher's own image-text WebDataset shards, as img2dataset writes them: the shipped recipe trains in
one command without a card, and every recipe setting the shards cannot serve is adapted with a warning naming its
config key."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import yaml

from tests.conftest import REPO, run_cli, train_recipe
from tests.data.test_cards import write_img2dataset_shards

RECIPE = REPO / "configs" / "clip" / "shapes.yaml"
CAPTIONS = (
    "dataset 'mywds' has no alternative captions (captions_key), so data.caption_sampling=random trains on each "
    "sample's .txt caption; set data.caption_sampling=fixed to silence this"
)
ZEROSHOT = (
    "dataset 'mywds' has no split 'test' or 'heldout' with labels, so there is no zero-shot evaluation during "
    "training (task.zeroshot_splits, data.eval_split, data.label); set task.zeroshot_splits=[] data.eval_split=null "
    "to silence this"
)
SMALL = (
    "dataset 'mywds' split 'train' has 24 samples, fewer than one batch of 128 (data.batch_size x 1 process): every "
    "batch repeats samples about 5 times; lower data.batch_size"
)
QUICK = ["data.num_workers=0", "train.log_with=[]", "train.progress=false"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """2 shards x 12 samples (jpg, txt, json) with their _stats.json, in a folder named mywds."""
    root = tmp_path_factory.mktemp("user") / "mywds"
    write_img2dataset_shards(root, shards=2, per_shard=12)
    return root


def recipe() -> dict:
    return yaml.safe_load(RECIPE.read_text())


def test_the_clip_recipe_trains_on_a_folder_of_shards_in_one_command(shards, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "-m", "training.train", str(RECIPE), f"data.dataset={shards}", f"run.out_dir={out}", "train.steps=4",
        "data.batch_size=8", "train.log_every=1", *QUICK, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert f"warning: {CAPTIONS}" in lines and f"warning: {ZEROSHOT}" in lines  # one line each, no source location
    assert "fewer than one batch" not in proc.stderr
    assert (out / "model.safetensors").stat().st_size > 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert abs(losses[0] - math.log(8)) < 0.5  # a batch of 8 pairs, nothing learnt yet: about ln 8
    results = json.loads((out / "results.json").read_text())
    assert (results["step"], results["samples"]) == (4, 32)
    assert results["data"] == {"skipped_samples": 0, "by_source": {}, "unreadable_shards": {}}
    assert not any(k.startswith("eval/") for k in results)
    data = yaml.safe_load((out / "config.yaml").read_text())
    assert (data["data"]["caption_sampling"], data["data"]["eval_split"], data["task"]["zeroshot_splits"]) == (
        "fixed",
        None,
        [],
    )  # what was adapted is what the run directory records


def test_the_recipe_batch_of_128_against_24_samples_warns(shards, tmp_path):
    with pytest.warns(UserWarning) as record:
        results = train_recipe(tmp_path, recipe(), [f"data.dataset={shards}", f"run.out_dir={tmp_path / 'r'}",
                                                    "train.steps=1", *QUICK])  # fmt: skip
    messages = [str(w.message) for w in record]
    assert SMALL in messages and CAPTIONS in messages and ZEROSHOT in messages
    assert (results["step"], results["samples"]) == (1, 128)


def test_the_silenced_recipe_warns_of_nothing(shards, tmp_path):
    overrides = [f"data.dataset={shards}", f"run.out_dir={tmp_path / 'r'}", "train.steps=1", "data.batch_size=24",
                 "data.caption_sampling=fixed", "task.zeroshot_splits=[]", "data.eval_split=null", *QUICK]  # fmt: skip
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert train_recipe(tmp_path, recipe(), overrides)["samples"] == 24
    assert not [w for w in record if "dataset 'mywds'" in str(w.message)]


def test_a_brace_pattern_of_shards_trains_and_the_card_image_key_is_honoured(tmp_path):
    root = tmp_path / "mywds"
    write_img2dataset_shards(root, shards=2, per_shard=12)
    write_img2dataset_shards(root, shards=1, per_shard=12, ext="png", start=2)  # 00002.tar: .png members only
    one_pass = ["train.steps=1", "data.shuffle_buffer=0", *QUICK]  # one step of a whole epoch, in shard order
    pattern = f"{root}/{{00000..00001}}.tar"
    with pytest.warns(UserWarning) as record:
        results = train_recipe(tmp_path, recipe(), [f"data.dataset={pattern}", f"run.out_dir={tmp_path / 'a'}",
                                                    "data.batch_size=24", *one_pass])  # fmt: skip
    assert [str(w.message) for w in record if w.category is UserWarning] == [CAPTIONS, ZEROSHOT]
    assert results["samples"] == 24 and results["data"]["skipped_samples"] == 0

    splits = {"train": {"shards": "{00000..00002}.tar", "num_samples": 36}}
    card = {"name": "mywds", "root": str(root), "image_key": "jpg", "text_key": "txt", "splits": splits}
    (tmp_path / "mywds.yaml").write_text(yaml.safe_dump(card))
    with pytest.warns(UserWarning) as record:
        overrides = [f"data.dataset={tmp_path / 'mywds.yaml'}", f"run.out_dir={tmp_path / 'b'}", "data.batch_size=36"]
        results = train_recipe(tmp_path, recipe(), [*overrides, *one_pass])
    assert [str(w.message) for w in record if w.category is UserWarning] == [CAPTIONS, ZEROSHOT]
    assert results["samples"] == 24  # the .png members of 00002.tar are not read: its 12 samples are skipped
    assert results["data"]["by_source"] == {"mywds/00002.tar (missing image)": 12}


def test_a_labelled_card_is_evaluated_on_the_splits_and_label_it_has(tiny_shapes, tmp_path):
    from training.config import TrainConfig
    from training.tasks import ClipTask

    card = yaml.safe_load(tiny_shapes.read_text())
    del card["splits"]["heldout"], card["labels"]["color_shape"]
    path = tmp_path / "no-heldout.yaml"
    path.write_text(yaml.safe_dump(card))
    with pytest.warns(UserWarning) as record:
        task = ClipTask(TrainConfig.load(RECIPE, [f"data.dataset={path}"]))
    assert [str(w.message) for w in record] == [
        "dataset 'tiny-shapes' has no label 'color_shape', so zero-shot evaluation uses its label 'color' "
        "(data.label); set data.label=color to silence this",
        "dataset 'tiny-shapes' has no split 'heldout', so zero-shot evaluation during training covers 'test' only "
        "(task.zeroshot_splits); set task.zeroshot_splits=[test] to silence this",
    ]
    resolved = task.resolve()
    assert (resolved.data.label, resolved.task.zeroshot_splits, resolved.data.caption_sampling) == (
        "color",
        ("test",),
        "random",
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert ClipTask(resolved).splits == ["test"]  # the resolved recipe, as the trainer rebuilds it
    assert not [w for w in record if "tiny-shapes" in str(w.message)]
    with pytest.raises(ValueError, match=r"^dataset 'tiny-shapes' has no split 'val'; set data.train_split to one "):
        ClipTask(TrainConfig.load(RECIPE, [f"data.dataset={path}", "data.train_split=val"]))


def test_a_dataset_that_cannot_be_read_is_an_error_naming_data_dataset(tmp_path):
    pattern = f"{tmp_path}/mywds/{{00000..00003}}.tar"
    write_img2dataset_shards(tmp_path / "mywds", shards=2, per_shard=2)
    proc = run_cli("-m", "training.train", str(RECIPE), f"data.dataset={pattern}", f"run.out_dir={tmp_path / 'r'}")
    assert proc.returncode == 2 and not (tmp_path / "r").exists()
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: data.dataset={pattern}: 2 of the 4 shards of '{pattern}' do not exist, "
        f"e.g. {tmp_path}/mywds/00002.tar; check the folder and the brace range"
    )
