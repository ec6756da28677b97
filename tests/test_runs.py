"""multimodal.runs opens runs: an unCLIP pipeline from a stack of runs, the CLIP embeddings a CLIP run caches
and the tokenizer a GATO run saved."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from multimodal import create_model, load_unclip_pipeline
from multimodal.data import load_card
from multimodal.data.embeddings import weights_fingerprint
from multimodal.pipelines.unclip import ClipEncoder, UnclipPipeline
from multimodal.runs import cached_clip_embeddings, load_gato_tokenizer
from multimodal.runs import write_run as write_run_folder
from multimodal.tokenizers import ClipTokenizer, SubsetTokenizer
from multimodal.tokenizers.gato import TOKENIZER_FILE, GatoTokenizer
from tests.pipelines.test_unclip import CLIP_ARGS

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
PRIOR_ARGS = {"embed_dim": 16, "text_width": 24, "text_context": 8, "width": 32, "depth": 1, "heads": 2}
DECODER_ARGS = {"image_size": 8, "embed_dim": 16, "text_width": 24, "block_out_channels": [16, 32],
                "attention": [False, True], "context_dim": 16, "num_image_tokens": 2}  # fmt: skip
UPSAMPLER_ARGS = {"image_size": 16, "scale": 2, "crop_size": 8, "block_out_channels": [16, 32]}


def write_run(path: Path, model: nn.Module, name: str, args: dict[str, Any], **sections: Any) -> Path:
    """A run directory as training writes one: config.yaml (task, model, ...) and model.safetensors."""
    return write_run_folder(path, {"model": {"name": name, "args": args}, **sections}, model)


def write_stack(root: Path, *, upsampler: bool = True) -> dict[str, nn.Module]:
    """An unCLIP run root (prior/, decoder/, upsampler/) whose prior names a CLIP run beside it; the models written."""
    torch.manual_seed(0)
    models = {
        "clip": create_model("clip_nano", **CLIP_ARGS),
        "prior": create_model("unclip_prior_nano", **PRIOR_ARGS),
        "decoder": create_model("unclip_decoder_nano", **DECODER_ARGS),
        "upsampler": create_model("unclip_upsampler_nano", **UPSAMPLER_ARGS),
    }
    clip = write_run(root.parent / "clip", models["clip"], "clip_nano", CLIP_ARGS,
                     task={"name": "clip"}, data={"image_size": 32, "mean": MEAN, "std": STD})  # fmt: skip
    write_run(root / "prior", models["prior"], "unclip_prior_nano", PRIOR_ARGS,
              task={"name": "unclip_prior", "clip": str(clip)})  # fmt: skip
    write_run(
        root / "decoder", models["decoder"], "unclip_decoder_nano", DECODER_ARGS, task={"name": "unclip_decoder"}
    )
    if upsampler:
        write_run(root / "upsampler", models["upsampler"], "unclip_upsampler_nano", UPSAMPLER_ARGS,
                  task={"name": "unclip_upsampler"})  # fmt: skip
    return models


def cache_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def images(pipe: UnclipPipeline) -> torch.Tensor:
    return pipe(["a red circle", "a blue star"], num_inference_steps=2, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images  # fmt: skip


@pytest.mark.parametrize("upsampler", [True, False])
def test_pipeline_from_runs_equals_the_pipeline_of_its_models(tmp_path, upsampler):
    models = write_stack(tmp_path / "stack", upsampler=upsampler)
    pipe = load_unclip_pipeline(tmp_path / "stack", sampler="ddim")
    encoder = ClipEncoder(model="clip_nano", model_args=CLIP_ARGS, mean=tuple(MEAN), std=tuple(STD))
    encoder.clip.load_state_dict(models["clip"].state_dict())
    stages = [models[k].eval() for k in ("prior", "decoder")] + [models["upsampler"].eval() if upsampler else None]
    expected = UnclipPipeline.from_components(encoder.eval(), *stages, sampler="ddim")
    assert (pipe.upsampler is None) is not upsampler
    assert type(pipe.decoder_scheduler).__name__ == "DDIMScheduler"
    assert not pipe.clip.training and not pipe.prior.training
    assert torch.equal(images(pipe), images(expected))


def test_pipeline_from_runs_given_one_by_one_and_its_errors(tmp_path):
    write_stack(tmp_path / "stack", upsampler=False)
    root = tmp_path / "stack"
    pipe = load_unclip_pipeline(prior=root / "prior", decoder=root / "decoder", clip=tmp_path / "clip")
    assert torch.equal(images(pipe), images(load_unclip_pipeline(root)))
    with pytest.raises(ValueError, match=r"no decoder run: train configs/unclip/\*-decoder.yaml first"):
        load_unclip_pipeline(prior=root / "prior")
    with pytest.raises(ValueError, match="no prior run"):
        load_unclip_pipeline(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not an unCLIP decoder run"):
        load_unclip_pipeline(prior=root / "prior", decoder=tmp_path / "clip")


def test_clip_embeddings_are_cached_in_the_run_until_its_weights_change(tmp_path, tiny_shapes):
    card = load_card(tiny_shapes)
    torch.manual_seed(0)
    clip = create_model("clip_nano", **CLIP_ARGS)
    run = write_run(tmp_path / "clip", clip, "clip_nano", CLIP_ARGS,
                    task={"name": "clip"}, data={"image_size": 32, "mean": MEAN, "std": STD})  # fmt: skip
    first = cached_clip_embeddings(run, card, "heldout")
    path = run / "embeddings" / "tiny-shapes-heldout.safetensors"
    meta = cache_metadata(path)
    assert {k: meta[k] for k in ("weights_sha256", "version", "dataset", "split")} == {
        "weights_sha256": weights_fingerprint(run / "model.safetensors"), "version": "1", "dataset": "tiny-shapes",
        "split": "heldout",
    }  # fmt: skip
    assert len(first) == 32 and first.tokens.shape[-1] == 8
    torch.testing.assert_close(first.image_embeds.norm(dim=-1), torch.ones(32))
    written = path.stat().st_mtime_ns
    again = cached_clip_embeddings(run, card, "heldout")
    assert path.stat().st_mtime_ns == written and torch.equal(again.image_embeds, first.image_embeds)

    state = load_file(run / "model.safetensors")
    state = {k: v + 0.1 if k.startswith("visual.") and v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(run / "model.safetensors"))
    changed = cached_clip_embeddings(run, card, "heldout")
    assert changed.keys == first.keys and not torch.allclose(changed.image_embeds, first.image_embeds)
    assert cache_metadata(path)["weights_sha256"] == weights_fingerprint(run / "model.safetensors")


def _embed_and_note(run: Path, card_dir: Path, builds: Path) -> None:
    import multimodal.runs

    compute = multimodal.runs.compute_clip_embeddings

    def noted(*args: Any, **kwargs: Any) -> Any:
        with open(builds, "a") as f:
            f.write("built\n")
        return compute(*args, **kwargs)

    multimodal.runs.compute_clip_embeddings = noted
    cached_clip_embeddings(run, load_card(card_dir), "heldout")


def test_two_processes_asking_for_the_same_embeddings_build_them_once(tmp_path, tiny_shapes):
    torch.manual_seed(0)
    clip = create_model("clip_nano", **CLIP_ARGS)
    run = write_run(tmp_path / "clip", clip, "clip_nano", CLIP_ARGS,
                    task={"name": "clip"}, data={"image_size": 32, "mean": MEAN, "std": STD})  # fmt: skip
    builds = tmp_path / "builds.txt"
    spawn = multiprocessing.get_context("spawn")  # a fork of a process that ran torch can deadlock in its thread pool
    procs = [spawn.Process(target=_embed_and_note, args=(run, tiny_shapes, builds)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert builds.read_text() == "built\n"  # the second waited for the first's cache and read it
    assert len(cached_clip_embeddings(run, load_card(tiny_shapes), "heldout")) == 32


def test_gato_tokenizer_of_a_run_is_the_one_it_saved(tmp_path):
    run = tmp_path / "gato"
    (run / "checkpoints" / "step-2").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"task": {"name": "gato"}}))
    saved = GatoTokenizer(SubsetTokenizer.from_texts(["a red circle", "a blue square"]), text_vocab_size=1024)
    saved.save(run / TOKENIZER_FILE)
    model = SimpleNamespace(
        cfg=SimpleNamespace(text_vocab_size=1024, num_bins=saved.num_bins, patch_size=saved.patch_size)
    )
    for path in (run, run / "checkpoints" / "step-2"):  # the run or one of its checkpoints
        got = load_gato_tokenizer(path, model)
        assert repr(got) == repr(saved) and got.text.encode("a blue circle") == saved.text.encode("a blue circle")
    model.cfg.text_vocab_size = 2048
    with pytest.raises(ValueError, match=r"vocabulary layout \(text 2048, .* does not match the tokenizer's \(1024"):
        load_gato_tokenizer(run, model)
    (run / TOKENIZER_FILE).unlink()  # a run that saved none: open_clip's whole BPE
    with pytest.raises(ValueError, match=r"vocabulary layout \(text 2048, .* does not match the tokenizer's \(49408"):
        load_gato_tokenizer(run, model)
    model.cfg.text_vocab_size = 49408
    assert isinstance(load_gato_tokenizer(run, model).text, ClipTokenizer)


def test_write_run_writes_a_loadable_run_or_nothing(tmp_path):
    from multimodal.runs import load_checkpoint

    model = create_model("clip_nano", **CLIP_ARGS)
    config = {"task": {"name": "clip"}, "model": {"name": "clip_nano", "args": CLIP_ARGS}}
    extra = tmp_path / "notes.txt"
    extra.write_text("kept")
    run = write_run_folder(tmp_path / "run", config, model, files=[extra])
    assert (run / "notes.txt").read_text() == "kept"
    loaded = load_checkpoint(run)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    with pytest.raises(FileExistsError, match="choose a new --out folder"):
        write_run_folder(run, config, model)
    with pytest.raises(FileNotFoundError):  # a file to copy in is missing: no run, no leftover
        write_run_folder(tmp_path / "broken", config, model, files=[tmp_path / "missing.txt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run"]
