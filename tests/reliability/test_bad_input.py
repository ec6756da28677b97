"""Bad user input: every command answers a wrong key, type, path, prompt or run family with one line, ``error: ...``,
naming the bad thing and what to do, and exit status 2, never a traceback; a prompt too long is cut with one warning.
Hypothesis fuzzes the config parser and the prompt path: a config or a ConfigError, token ids or a ValueError."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import unicodedata
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multimodal.config import ConfigError, apply_overrides, load_yaml
from multimodal.tokenizers import ClipTokenizer, check_prompts
from tests.conftest import REPO, TINY_CLIP, tiny_recipe, train_recipe, write_recipe
from tests.pipelines.test_unclip import tiny_pipeline
from training.config import TrainConfig

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
LONG = " ".join(f"word{i}" for i in range(40))  # 80 tokens: far past the tiny pipeline's context of 8
GATO_ARGS = {"dim": 32, "depth": 1, "heads": 2, "context_length": 48, "patch_channels": 8, "patch_groups": 4}
PRIOR_ARGS = {"embed_dim": 32, "text_width": 32, "text_context": 16, "width": 32, "depth": 1, "heads": 2}


@pytest.fixture(scope="module")
def paths(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny run of each family (ViT classifier, CLIP, GATO, 2 steps each), a saved unCLIP pipeline, recipes and
    the odd files the cases point at; returns the strings the cases' arguments are formatted with."""
    root = tmp_path_factory.mktemp("bad-input")
    train_recipe(root, tiny_recipe(tiny_shapes, root / "vit", train={"steps": 2, "checkpoint_every": 0}))
    clip = tiny_recipe(tiny_shapes, root / "clip", train={"steps": 2, "checkpoint_every": 0}, task={"name": "clip"})
    train_recipe(root, {**clip, "model": TINY_CLIP})
    gato = tiny_recipe(tiny_shapes, root / "gato", train={"steps": 2, "checkpoint_every": 0, "eval_every": 0})
    gato["task"] = {"name": "gato", "mixture": {str(tiny_shapes): 1.0}, "eval_samples": 4}
    gato["model"] = {"name": "gato_nano", "args": GATO_ARGS}
    gato["data"].update(batch_size=4, num_workers=0, shuffle_buffer=8)
    gato["data"].pop("label")
    train_recipe(root, gato)
    tiny_pipeline().save_pretrained(root / "pipe")
    (root / "stack").mkdir()  # an unCLIP run root whose prior/ is a CLIP run
    (root / "stack" / "prior").symlink_to(root / "clip")
    (root / "stack" / "decoder").symlink_to(root / "clip")
    write_recipe(root / "recipe.yaml", tiny_recipe(tiny_shapes, root / "never"))
    prior = tiny_recipe(tiny_shapes, root / "never-prior", task={"name": "unclip_prior", "clip": str(root / "vit")})
    write_recipe(root / "prior-on-vit.yaml", {**prior, "model": {"name": "unclip_prior_nano", "args": PRIOR_ARGS}})
    (root / "broken.yaml").write_text("optim:\n  lr: [1,\ntrain:\n  steps: 3\n")
    (root / "loop.yaml").write_text("run: &r {name: *r}\n")
    (root / "configs").mkdir()
    (root / "configs" / "a.yaml").write_text("{}\n")
    (root / "configs" / "b.yaml").write_text("{}\n")
    (root / "out-dir").mkdir()
    card = yaml.safe_load(tiny_shapes.read_text())
    return {
        "root": str(root),
        **{name: str(root / name) for name in ("vit", "clip", "gato", "pipe", "stack", "configs", "out-dir")},
        "recipe": str(root / "recipe.yaml"),
        "shard": str(Path(card["root"]) / "train" / "000000.tar"),
        "shards": card["root"],
    }


# name -> (module, arguments, the one line on stderr; "..." at its end: the line starts so)
CASES = {
    "unknown_key": (
        "training.train", ["{recipe}", "optim.lrr=0.1"],
        "error: unknown config key 'optim.lrr'; did you mean 'optim.lr'?",
    ),
    "misplaced_key": (
        "training.train", ["{recipe}", "train.lr=0.1"],
        "error: unknown config key 'train.lr'; did you mean 'optim.lr'?",
    ),
    "wrong_type": (
        "training.train", ["{recipe}", "train.steps=many"],
        "error: config key 'train.steps' expects an integer, got 'many'",
    ),
    "non_finite_number": (
        "training.train", ["{recipe}", "optim.weight_decay=.nan"],
        "error: config key 'optim.weight_decay' expects a finite number, got nan",
    ),
    "value_for_a_section": (
        "training.train", ["{recipe}", "optim=3"],
        "error: config key 'optim' is a section; give it a mapping, got 3",
    ),
    "wrong_literal": (
        "training.train", ["{recipe}", "train.precision=bf61"],
        "error: config key 'train.precision' must be one of 'no', 'bf16', 'fp16', got 'bf61'; did you mean 'bf16'?",
    ),
    "malformed_override": (
        "training.train", ["{recipe}", "optim.lr"],
        "error: override 'optim.lr' must look like key.sub=value",
    ),
    "deeply_nested_override": (
        "training.train", ["{recipe}", "optim.lr=" + "[" * 2000 + "]" * 2000],
        "error: the override of 'optim.lr' nests too deeply; configs are a few levels of mappings and lists",
    ),
    "impossible_model_size": (
        "training.train", ["{recipe}", "model.args.dim=-1"],
        "error: model 'vitc_nano_patch8_32' with args {'depth': 2, 'dim': -1, 'drop_path_rate': 0.1, 'heads': 2, "
        "'stem_width': 16, 'num_classes': 36, 'img_size': 32}: ...",  # as resolved against the data
    ),
    "missing_recipe": (
        "training.train", ["{root}/nope.yaml"],
        "error: config file '{root}/nope.yaml' does not exist; pass a YAML file, e.g. configs/vit/shapes.yaml",
    ),
    "recipe_is_a_directory": (
        "training.train", ["{configs}"],
        "error: config file '{configs}' is a directory; pass one of its YAML files (a.yaml, b.yaml)",
    ),
    "recipe_is_binary": (
        "training.train", ["{vit}/model.safetensors"],
        "error: {vit}/model.safetensors is not UTF-8 text, so not a YAML file; pass a .yaml recipe or card",
    ),
    "recipe_is_broken_yaml": (
        "training.train", ["{root}/broken.yaml"],
        "error: {root}/broken.yaml is not valid YAML: expected ',' or ']', but got ':' at line 4, column 8",
    ),
    "recipe_refers_to_itself": (
        "training.train", ["{root}/loop.yaml"],
        "error: {root}/loop.yaml holds a YAML alias inside its own anchor (&a [*a]); write the value out",
    ),
    "missing_dataset_card": (
        "training.train", ["{recipe}", "data.dataset={root}/missing.yaml"],
        "error: data.dataset={root}/missing.yaml: dataset card '{root}/missing.yaml' does not exist",
    ),
    "dataset_card_is_a_shard": (
        "training.train", ["{recipe}", "data.dataset={shard}"],
        "error: dataset 'data' has no labels, which a classification task needs; set data.dataset to an image folder "
        "with class subfolders or a card that declares labels (see datasets/README.md)",
    ),
    "prior_on_a_classifier": (
        "training.train", ["{root}/prior-on-vit.yaml"],
        "error: {vit} is an image-classifier run (model vitc_nano_patch8_32; for eval.classify), not a CLIP run: "
        "pass a run of configs/clip/*.yaml",
    ),
    "run_directory_is_a_file": (
        "training.train", ["{recipe}", "run.out_dir={vit}/model.safetensors"],
        "error: run directory {vit}/model.safetensors is a file; choose another run.name or run.out_dir",
    ),
    "empty_prompt": (
        "multimodal.generate", ["--checkpoint", "{pipe}", ""],
        "error: prompt 1 is empty; give it some words, e.g. 'a red circle'",
    ),
    "whitespace_prompt": (
        "multimodal.generate", ["--checkpoint", "{pipe}", "a red circle", " \t "],
        "error: prompt 2 is only whitespace (' \\t '); give it some words, e.g. 'a red circle'",
    ),
    "control_character_prompt": (
        "multimodal.generate", ["--checkpoint", "{pipe}", "\x01\x1b[2J"],
        "error: prompt 1 ('\\x01\\x1b[2J') holds a control character, '\\x01', at position 0; remove it",
    ),
    "prompt_with_nothing_to_read": (
        "multimodal.generate", ["--checkpoint", "{pipe}", "\ufeff"],
        "error: prompt 1 ('\\ufeff') has no words the tokenizer reads; give it some, e.g. 'a red circle'",
    ),
    "missing_pipeline": (
        "multimodal.generate", ["--checkpoint", "{root}/nope", "a red circle"],
        "error: checkpoint '{root}/nope' does not exist; pass an unCLIP run root (the folder holding prior/ and "
        "decoder/ runs) or a saved pipeline (model_index.json)",
    ),
    "classifier_given_to_generate": (
        "multimodal.generate", ["--checkpoint", "{vit}", "a red circle"],
        "error: {vit} is an image-classifier run (model vitc_nano_patch8_32; for eval.classify), not an unCLIP run "
        "root (the folder holding prior/ and decoder/ runs) or a saved pipeline (model_index.json)",
    ),
    "clip_run_as_the_prior_of_a_stack": (
        "multimodal.generate", ["--checkpoint", "{stack}", "a red circle"],
        "error: {stack}/prior is a CLIP run (model clip_nano; for eval.zeroshot or eval.retrieval), not an unCLIP "
        "prior run: pass a run of configs/unclip/*-prior.yaml",
    ),
    "grid_path_is_a_directory": (
        "multimodal.generate", ["--checkpoint", "{pipe}", "a red circle", "--out", "{out-dir}"],
        "error: --out {out-dir} is a directory; give a file path inside it",
    ),
    "classifier_given_to_control": (
        "eval.control", ["--checkpoint", "{vit}"],
        "error: {vit} is an image-classifier run (model vitc_nano_patch8_32; for eval.classify), not a GATO run: "
        "pass a run of configs/gato/*.yaml",
    ),
    "clip_given_to_caption": (
        "eval.caption", ["--checkpoint", "{clip}"],
        "error: {clip} is a CLIP run (model clip_nano; for eval.zeroshot or eval.retrieval), not a GATO run: "
        "pass a run of configs/gato/*.yaml",
    ),
    "clip_given_to_classify": (
        "eval.classify", ["--checkpoint", "{clip}"],
        "error: {clip} is a CLIP run (model clip_nano; for eval.zeroshot or eval.retrieval), not an image-classifier "
        "run: pass a run of configs/vit/*.yaml, configs/vision/*.yaml",
    ),
    "gato_given_to_classify": (
        "eval.classify", ["--checkpoint", "{gato}"],
        "error: {gato} is a GATO run (model gato_nano; for eval.control or eval.caption), not an image-classifier "
        "run: pass a run of configs/vit/*.yaml, configs/vision/*.yaml",
    ),
    "classifier_given_to_zeroshot": (
        "eval.zeroshot", ["--checkpoint", "{vit}"],
        "error: {vit} is an image-classifier run (model vitc_nano_patch8_32; for eval.classify), not a CLIP run: "
        "pass a run of configs/clip/*.yaml",
    ),
    "gato_given_to_retrieval": (
        "eval.retrieval", ["--checkpoint", "{gato}"],
        "error: {gato} is a GATO run (model gato_nano; for eval.control or eval.caption), not a CLIP run: "
        "pass a run of configs/clip/*.yaml",
    ),
    "clip_as_the_judge": (
        "eval.generation", ["--checkpoint", "{pipe}", "--judge", "{clip}", "--device", "cpu"],
        "error: {clip} is a CLIP run (model clip_nano; for eval.zeroshot or eval.retrieval), not an image-classifier "
        "run: pass a run of configs/vit/*.yaml, configs/vision/*.yaml",
    ),
    "missing_checkpoint": (
        "eval.classify", ["--checkpoint", "{root}/nope"],
        "error: checkpoint '{root}/nope' does not exist; pass a run directory, e.g. runs/vit-shapes",
    ),
    "weights_file_as_the_checkpoint": (
        "eval.classify", ["--checkpoint", "{vit}/model.safetensors"],
        "error: {vit}/model.safetensors is not a run directory: it has no config.yaml; pass the folder a training run "
        "wrote (e.g. runs/vit-shapes) or one of its checkpoints/step-* folders",
    ),
    "shard_as_the_dataset": (
        "eval.classify", ["--checkpoint", "{vit}", "--dataset", "{shard}"],
        "error: dataset 'data' has no label 'color_shape': it has no labels at all "
        "(a card declares them under labels:, see datasets/README.md)",
    ),
    "shard_folder_as_the_dataset": (
        "eval.classify", ["--checkpoint", "{vit}", "--dataset", "{shards}"],
        "error: dataset 'data' has no label 'color_shape': it has no labels at all "
        "(a card declares them under labels:, see datasets/README.md)",
    ),
    "result_path_is_a_directory": (
        "eval.classify", ["--checkpoint", "{vit}", "--out", "{out-dir}"],
        "error: --out {out-dir} is a directory; give a file path inside it",
    ),
}  # fmt: skip

# Runs each (module, args) as ``python -m module args`` does (runpy, __main__), in one process, so the ~35 cases
# cost one import of torch and the suite; prints each case's exit status, stdout and stderr as JSON after a marker.
DRIVER = r"""
import contextlib, io, json, runpy, sys, traceback, warnings
warnings.filterwarnings("ignore", category=RuntimeWarning, module="runpy")  # a module already imported by another
results = []
for module, args in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [module, *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
            rc = 1
    results.append({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})
print("\n@@results@@" + json.dumps(results))
"""


def _format(text: str, paths: dict[str, str]) -> str:
    for key, value in paths.items():
        text = text.replace("{" + key + "}", value)
    return text


@pytest.fixture(scope="module")
def cli(paths: dict[str, str]) -> dict[str, dict]:
    """Every case's exit status, stdout and stderr; beside them, in a process of its own, the generate CLI given a
    long prompt (cut, one warning) and one given bytes that are not UTF-8 (an argument only a real argv can hold)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    grid = f"{paths['root']}/long.png"
    real = {
        "long_prompt": [sys.executable, "-m", "multimodal.generate", "--checkpoint", paths["pipe"], LONG,
                        "--n", "1", "--steps", "1", "--no-upsample", "--out", grid, "--device", "cpu"],
        "undecodable_prompt": [sys.executable, "-m", "multimodal.generate", "--checkpoint", paths["pipe"],
                               "a red circle", b"a \xff\xfe circle"],
    }  # fmt: skip
    procs = {
        name: subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, cmd in real.items()
    }
    cases = [(module, [_format(a, paths) for a in args]) for module, args, _ in CASES.values()]
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER], cwd=REPO, env=env, input=json.dumps(cases), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert driver.returncode == 0 and "@@results@@" in driver.stdout, driver.stderr[-3000:]
    results = dict(zip(CASES, json.loads(driver.stdout.split("@@results@@")[-1]), strict=True))
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = {"rc": proc.returncode, "stdout": stdout.decode(), "stderr": stderr.decode()}
    results["long_prompt"]["grid"] = grid
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_status_2(cli: dict, paths: dict[str, str], case: str) -> None:
    got, expected = cli[case], _format(CASES[case][2], paths)
    assert "Traceback" not in got["stderr"], got["stderr"]
    assert got["rc"] == 2, got
    lines = got["stderr"].splitlines()
    assert len(lines) == 1, got["stderr"]
    if expected.endswith("..."):
        assert lines[0].startswith(expected[:-3]), lines[0]
    else:
        assert lines[0] == expected


def test_refused_runs_write_nothing(cli: dict, paths: dict[str, str]) -> None:
    assert not Path(paths["root"], "never").exists() and not Path(paths["root"], "never-prior").exists()
    assert sorted(p.name for p in Path(paths["out-dir"]).iterdir()) == []


def test_undecodable_bytes_in_a_real_argv_are_named(cli: dict) -> None:
    got = cli["undecodable_prompt"]
    assert got["rc"] == 2 and "Traceback" not in got["stderr"]
    assert got["stderr"].splitlines() == [
        "error: prompt 2 ('a \\udcff\\udcfe circle') holds an undecodable byte, '\\udcff', at position 2; remove it"
    ]


def test_a_long_prompt_is_cut_with_one_warning_and_generates(cli: dict) -> None:
    got = cli["long_prompt"]
    assert got["rc"] == 0, got["stderr"]
    progress = re.compile(r"^Loading pipeline components\.\.\.: +\d+%")  # diffusers' tqdm bar, \r-separated
    assert [line for line in got["stderr"].splitlines() if line and not progress.match(line)] == [
        "warning: prompt 1 ('word0 word1 word2 word3 word4 word5 word6 wor...') is longer than the 6 tokens the text "
        "encoder reads; it was cut before 'word 3 word 4 word 5 word 6 word 7 word 8 wor...'"
    ]
    assert "1 prompt(s) x 1 images of 8 px" in got["stdout"] and Path(got["grid"]).is_file()


def test_prompt_checks_name_the_prompt_and_the_fault() -> None:
    with pytest.raises(ValueError, match=r"^prompt 1 \('\\x00\\x01\\x1b\[2J'\) holds a control character, '\\x00', "):
        check_prompts(["\x00\x01\x1b[2J"])
    with pytest.raises(ValueError, match=r"^no prompts given; pass at least one text prompt"):
        check_prompts([])
    with pytest.raises(ValueError, match=r"^prompt 2 is not a string: 3$"):
        check_prompts(["a red circle", 3])
    assert check_prompts("a red circle") == ["a red circle"]
    assert check_prompts(["tabs\tand\nnewlines are whitespace"]) == ["tabs\tand\nnewlines are whitespace"]


def test_a_long_prompt_through_the_pipeline_is_cut_like_open_clip_and_still_generates() -> None:
    pipe = tiny_pipeline()
    with pytest.warns(UserWarning, match=r"^prompt 1 \('word0 .*is longer than the 6 tokens the text encoder reads; "):
        tokens = ClipTokenizer(8).encode_prompts([LONG])
    assert torch.equal(tokens, ClipTokenizer(8)([LONG]))  # the cut open_clip.tokenize makes
    assert tokens[0].tolist() == [49406, 2653, 271, 2653, 272, 2653, 273, 49407]  # sot, "word0 word1 word2", eot
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = pipe(LONG, num_inference_steps=1, upsample=False, output_type="pt",
                      generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert [str(w.message).split(" is ")[0] for w in caught if w.category is UserWarning] == [
        "prompt 1 ('word0 word1 word2 word3 word4 word5 word6 wor...')"
    ]
    assert images.shape == (1, 3, 8, 8) and torch.isfinite(images).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a prompt that fits warns nothing
        ClipTokenizer(8).encode_prompts(["a red circle"])


# --- property-based: the config parser -------------------------------------------------------------------------------

BASE = tiny_recipe(Path("tiny-shapes.yaml"), Path("runs/never"))
KEYS = sorted(TrainConfig().flat()) + [f"model.args.{k}" for k in ("dim", "depth", "heads", "mlp", "norm", "pool")]
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
YAML_ODDITIES = [
    "", "~", "null", "[", "]", "{", "}", "{a: 1}", "[1, [2, [3]]]", "&a [*a]", "*a", "!!python/object:os.system",
    "!!binary aGk=", "2020-01-01", ".inf", "-.nan", "0x1f", "1_000", "1e400", "99999999999999999999", "yes", "off",
    "'", '"', ": x", "- a", "? a", "%YAML 1.1", "---", "a: b: c", "\t", "\x00", "\ufeff", "[" * 1500 + "]" * 1500,
    "1" + "0" * 400, "9" * 5000, ".nan", "[.inf, 1]",
]  # fmt: skip
SCALARS = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(), st.booleans(), st.none(), TEXT, st.sampled_from(YAML_ODDITIES)
)
KEY = st.one_of(
    st.sampled_from(KEYS),
    TEXT,
    st.builds(lambda k, s: k + s, st.sampled_from(KEYS), st.sampled_from(["", ".", "..", "x", ".x", "[0]", " "])),
)
OVERRIDE = st.one_of(st.builds(lambda k, v: f"{k}={v}", KEY, SCALARS), TEXT)


@FUZZ
@given(st.lists(OVERRIDE, max_size=4))
def test_fuzzed_overrides_give_a_config_or_a_config_error(overrides: list[str]) -> None:
    try:
        cfg = TrainConfig.from_dict(apply_overrides(BASE, overrides))
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert isinstance(cfg, TrainConfig) and TrainConfig.from_dict(cfg.to_dict()) == cfg


YAML_VALUES = st.recursive(
    st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.booleans(), st.none(), TEXT),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.one_of(TEXT, st.sampled_from(KEYS)), inner, max_size=4)
    ),
    max_leaves=12,
)
SECTIONS = st.dictionaries(
    st.sampled_from(["run", "task", "model", "data", "optim", "train", "resume", "lr", "optim.lr"]),
    st.one_of(YAML_VALUES, st.dictionaries(st.sampled_from([k.split(".", 1)[-1] for k in KEYS]), YAML_VALUES)),
    max_size=4,
)
DOCUMENTS = st.one_of(
    st.builds(lambda d: yaml.safe_dump(d, allow_unicode=True), SECTIONS),
    st.builds(lambda d: yaml.safe_dump(d), YAML_VALUES),
    st.lists(
        st.sampled_from(
            [*YAML_ODDITIES, "run:", "  name: x", "optim: {lr: 1}", "train:\n  steps: -1", "run: &a {name: *a}"]
        )
    ).map("\n".join),
    st.text(max_size=40),
)


@FUZZ
@given(DOCUMENTS)
def test_fuzzed_yaml_recipes_give_a_config_or_a_config_error(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzzed.yaml"
    path.write_text(text)
    try:
        cfg = TrainConfig.from_dict(load_yaml(path))
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert isinstance(cfg, TrainConfig)


MODEL_ARGS = st.dictionaries(
    st.sampled_from(["dim", "depth", "heads", "patch_size", "img_size", "num_classes", "mlp_ratio", "norm", "mlp"]),
    st.one_of(st.integers(-3, 40), st.floats(-2, 8), st.sampled_from(["rms", "swiglu", "moe", "x", None, [], [8, 8]])),
    max_size=3,
)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")  # dim=0 and the like
@settings(max_examples=100, deadline=None, database=None)
@given(st.sampled_from(["vitc_nano_patch8_32", "clip_nano", "gato_nano"]), MODEL_ARGS)
def test_fuzzed_model_arguments_are_checked_without_a_traceback(name: str, args: dict) -> None:
    cfg = TrainConfig.from_dict({"model": {"name": name, "args": args}})
    try:
        cfg.check_model()
    except ConfigError as e:
        assert "\n" not in str(e)


# --- property-based: the prompt path ---------------------------------------------------------------------------------

PROMPTS = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=60),
    st.text(st.sampled_from(" \t\n\r\x0b\x0c\x85\u2028\u3000\x00\x01\x1b\x7f\ufeff\u200bab[]2J é😀"), max_size=12),
    st.builds(" ".join, st.lists(st.sampled_from(["a", "red", "circle", "above", "ﬀ", "\x1b[0m", "&amp;"]))),
)


@FUZZ
@given(PROMPTS)
def test_fuzzed_prompts_give_token_ids_or_a_named_error(text: str) -> None:
    tokenizer = ClipTokenizer(16)
    control = any(unicodedata.category(c) in ("Cc", "Cs") and not c.isspace() for c in text)
    bad = not text.strip() or control or not tokenizer.encode(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tokens = tokenizer.encode_prompts([text])
        except ValueError as e:
            assert bad and str(e).startswith("prompt 1 ") and "\n" not in str(e)
            return
    assert not bad
    assert tokens.dtype == torch.long and tokens.shape == (1, 16)
    row = tokens[0].tolist()
    end = row.index(tokenizer.eot_token_id)
    assert row[0] == tokenizer.sot_token_id and end >= 2 and not any(row[end + 1 :])
    assert all(0 <= t < tokenizer.sot_token_id for t in row[1:end])
    assert len(caught) == (len(tokenizer.encode(text)) > 14)
