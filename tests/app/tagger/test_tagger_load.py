"""Loading the two published layouts, and clear failures for broken model directories."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from app.tagger import ModelLoadError, TimmTagger
from app.tagger.vocab import load_pixai_vocabulary
from tests.support.paths import shared_path
from tests.support.tiny_models import (
    CHARACTER_TAGS,
    GENERAL_TAGS,
    RATING_TAGS,
    TINY_DIM,
    TINY_SIZE,
    build_tiny_pixai,
    direct_forward,
)


def copy_model(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(source, target)
    return target


def load(directory: Path) -> TimmTagger:
    tagger = TimmTagger(directory, device="cpu")
    tagger.load()
    return tagger


def test_pixai_layout_loads(tiny_pixai_dir: Path) -> None:
    tagger = load(tiny_pixai_dir)
    assert tagger.info.family == "pixai"
    assert tagger.info.embedding_dim == TINY_DIM
    assert tagger.info.num_tags == len(GENERAL_TAGS) + len(CHARACTER_TAGS)
    assert tagger.vocab.names[: len(GENERAL_TAGS)] == tuple(GENERAL_TAGS)
    assert tagger.vocab.group(0) == "general"
    assert tagger.vocab.group(len(GENERAL_TAGS)) == "character"
    assert tagger.vocab.char_to_copyrights["hu_tao_(genshin_impact)"] == ("genshin_impact",)
    assert tagger.preprocess.size == TINY_SIZE


def test_wd_layout_loads(tiny_wd_dir: Path) -> None:
    tagger = load(tiny_wd_dir)
    assert tagger.info.family == "wd"
    assert [tagger.vocab.group(i) for i in range(4)] == ["rating"] * 4
    assert tagger.vocab.names[:4] == tuple(RATING_TAGS)
    assert tagger.preprocess.channel_order == "BGR"


@pytest.mark.parametrize("fixture", ["tiny_pixai_dir", "tiny_wd_dir"])
def test_predict_equals_a_direct_timm_forward(fixture: str, request: pytest.FixtureRequest) -> None:
    directory: Path = request.getfixturevalue(fixture)
    tagger = load(directory)
    batch = torch.randn(3, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(5))
    prediction = tagger.predict(batch)
    probs, embedding = direct_forward(directory, batch)
    np.testing.assert_allclose(prediction.probs, probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prediction.embeddings, embedding, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(prediction.embeddings, axis=1), 1.0, atol=1e-5)


def test_ref_feat_shape_from_config_changes_the_output(
    tiny_pixai_dir: Path, tmp_path: Path
) -> None:
    """timm's default ref_feat_shape silently changes every output: the config must win."""
    directory = copy_model(tiny_pixai_dir, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    batch = torch.randn(1, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(1))
    tagger = load(directory)
    with_config = tagger.predict(batch).embeddings
    rope = tagger.network.encoder.rope.get_embed()
    assert np.array_equal(with_config, load(directory).predict(batch).embeddings)
    del config["model_args"]["ref_feat_shape"]
    (directory / "config.json").write_text(json.dumps(config))
    default = load(directory)
    # The RoPE tables are not in the weights: only the config can set them right.
    assert (default.network.encoder.rope.get_embed() - rope).abs().max() > 0.5
    assert np.abs(with_config - default.predict(batch).embeddings).max() > 1e-6


def test_pixai_without_config_uses_the_wd_eva02_large_architecture(
    tiny_pixai_dir: Path, tmp_path: Path
) -> None:
    directory = copy_model(tiny_pixai_dir, tmp_path)
    (directory / "config.json").unlink()
    with pytest.raises(
        ModelLoadError, match="head takes 32-d features but eva02_large_patch14_448 gives 1024-d"
    ):
        load(directory)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("model_v0.9.pth", "looks like a PixAI v0.9 model but lacks model_v0.9.pth"),
        ("tags_v0.9_13k.json", "looks like a PixAI v0.9 model but lacks tags_v0.9_13k.json"),
    ],
)
def test_missing_pixai_files(
    tiny_pixai_dir: Path, tmp_path: Path, remove: str, message: str
) -> None:
    directory = copy_model(tiny_pixai_dir, tmp_path)
    (directory / remove).unlink()
    with pytest.raises(ModelLoadError, match=message):
        load(directory)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("model.safetensors", "looks like a WD v3 model but lacks model.safetensors"),
        ("selected_tags.csv", "looks like a WD v3 model but lacks selected_tags.csv"),
    ],
)
def test_missing_wd_files(tiny_wd_dir: Path, tmp_path: Path, remove: str, message: str) -> None:
    directory = copy_model(tiny_wd_dir, tmp_path)
    (directory / remove).unlink()
    with pytest.raises(ModelLoadError, match=message):
        load(directory)


def test_missing_and_empty_directories(tmp_path: Path) -> None:
    with pytest.raises(
        ModelLoadError, match="does not exist; download one with 'sagashi model fetch"
    ):
        load(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="holds no known model: expected PixAI v0.9"):
        load(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelLoadError, match="is not a directory"):
        load(tmp_path / "file")


def test_tags_file_that_disagrees_with_the_head(tiny_pixai_dir: Path, tmp_path: Path) -> None:
    directory = copy_model(tiny_pixai_dir, tmp_path)
    tags = json.loads((directory / "tags_v0.9_13k.json").read_text())
    tags["tag_map"]["extra_tag"] = len(tags["tag_map"])
    (directory / "tags_v0.9_13k.json").write_text(json.dumps(tags))
    with pytest.raises(
        ModelLoadError, match="lists 17 tags but the checkpoint's head has 16 outputs"
    ):
        load(directory)


def test_selected_tags_that_disagree_with_the_head(tiny_wd_dir: Path, tmp_path: Path) -> None:
    directory = copy_model(tiny_wd_dir, tmp_path)
    with (directory / "selected_tags.csv").open("a", newline="") as handle:
        csv.writer(handle).writerow([9999, "extra", 0, 1])
    with pytest.raises(
        ModelLoadError, match="lists 21 tags but the checkpoint's head has 20 outputs"
    ):
        load(directory)


def test_wrong_checkpoint_shapes_pixai(tiny_pixai_dir: Path, tmp_path: Path) -> None:
    directory = copy_model(tiny_pixai_dir, tmp_path)
    state = torch.load(directory / "model_v0.9.pth", weights_only=True)
    state["0.blocks.0.mlp.fc1.weight"] = torch.zeros(3, 3)
    del state["0.fc_norm.weight"]
    state["0.surprise"] = torch.zeros(1)
    torch.save(state, directory / "model_v0.9.pth")
    with pytest.raises(ModelLoadError) as info:
        load(directory)
    message = str(info.value)
    assert "checkpoint does not fit the architecture" in message
    assert "1 missing" in message
    assert "1 unexpected (e.g. 0.surprise)" in message
    assert "0.blocks.0.mlp.fc1.weight (3, 3)" in message


def test_wrong_checkpoint_shapes_wd(tiny_wd_dir: Path, tmp_path: Path) -> None:
    directory = copy_model(tiny_wd_dir, tmp_path)
    state = load_file(directory / "model.safetensors")
    state["pos_embed"] = torch.zeros(1, 5, TINY_DIM)
    save_file(state, directory / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"1 with wrong shape \(e.g. pos_embed \(1, 5, 32\)"):
        load(directory)


def test_config_num_classes_disagrees(tiny_wd_dir: Path, tmp_path: Path) -> None:
    directory = copy_model(tiny_wd_dir, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["num_classes"] = 10861
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ModelLoadError, match="head has 20 outputs but config.json says num_classes 10861"
    ):
        load(directory)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a pickle", "not a loadable torch checkpoint"),
        (b"", "not a loadable torch checkpoint"),
    ],
)
def test_garbage_pth(tiny_pixai_dir: Path, tmp_path: Path, content: bytes, message: str) -> None:
    directory = copy_model(tiny_pixai_dir, tmp_path)
    (directory / "model_v0.9.pth").write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load(directory)


def test_pth_that_is_not_a_state_dict(tiny_pixai_dir: Path, tmp_path: Path) -> None:
    directory = copy_model(tiny_pixai_dir, tmp_path)
    torch.save({"model": {"a": 1}}, directory / "model_v0.9.pth")
    with pytest.raises(ModelLoadError, match=r"expected a plain state_dict \(name -> tensor\)"):
        load(directory)
    torch.save({"0.x": torch.zeros(1)}, directory / "model_v0.9.pth")
    with pytest.raises(
        ModelLoadError, match="not a PixAI checkpoint \\(no 2-d '1.head.0.weight' tensor\\)"
    ):
        load(directory)


def test_garbage_safetensors(tiny_wd_dir: Path, tmp_path: Path) -> None:
    directory = copy_model(tiny_wd_dir, tmp_path)
    (directory / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load(directory)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{", "unreadable config.json"),
        ('{"num_classes": 3}', "not a timm pretrained config"),
        ('{"architecture": "no_such_net"}', "cannot build architecture 'no_such_net'"),
        (
            '{"architecture": "eva02_tiny_patch14_224", "model_args": {"bogus": 1}}',
            "config model_args rejected by eva02_tiny_patch14_224",
        ),
        (
            '{"architecture": "eva02_tiny_patch14_224", "pretrained_cfg": {"input_size": [3, 4]}}',
            "input_size must be \\[3, N, N\\]",
        ),
    ],
)
def test_bad_config(tiny_pixai_dir: Path, tmp_path: Path, config: str, message: str) -> None:
    directory = copy_model(tiny_pixai_dir, tmp_path)
    (directory / "config.json").write_text(config)
    with pytest.raises(ModelLoadError, match=message):
        load(directory)


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"tag_split": {"gen_tag_count": 1}}, "no 'tag_map' object"),
        ({"tag_map": {"a": 0}}, "no integer 'tag_split.gen_tag_count'"),
        ({"tag_map": {"a": 0, "b": 0}, "tag_split": {"gen_tag_count": 1}}, "each once; 'b' has 0"),
        ({"tag_map": {"a": 0, "b": 5}, "tag_split": {"gen_tag_count": 1}}, "indices must be 0..1"),
        ({"tag_map": {"a": 0}, "tag_split": {"gen_tag_count": 7}}, "gen_tag_count 7 outside 0..1"),
    ],
)
def test_bad_pixai_tags_file(tmp_path: Path, tags: dict[str, object], message: str) -> None:
    path = tmp_path / "tags.json"
    path.write_text(json.dumps(tags))
    with pytest.raises(ModelLoadError, match=message):
        load_pixai_vocabulary(path, None)


def test_bad_selected_tags_category(tiny_wd_dir: Path, tmp_path: Path) -> None:
    directory = copy_model(tiny_wd_dir, tmp_path)
    text = (directory / "selected_tags.csv").read_text().replace(",1girl,0,", ",1girl,3,")
    (directory / "selected_tags.csv").write_text(text)
    with pytest.raises(ModelLoadError, match="selected_tags.csv:6: category '3' is not 0, 4 or 9"):
        load(directory)


def test_loading_never_touches_the_network(
    tiny_pixai_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access during model load")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    load(tiny_pixai_dir)


def test_seeds_give_different_models(tmp_path: Path) -> None:
    a = load(build_tiny_pixai(tmp_path / "a", seed=1))
    b = load(build_tiny_pixai(tmp_path / "b", seed=2))
    batch = torch.zeros(1, 3, TINY_SIZE, TINY_SIZE)
    assert not np.allclose(a.predict(batch).probs, b.predict(batch).probs)


def test_real_vocabularies_load() -> None:
    from app.tagger.vocab import load_wd_vocabulary

    pixai = load_pixai_vocabulary(shared_path("tags", "pixai_v0.9_tags_v0.9_13k.json"), None)
    assert len(pixai) == 13461
    assert len(pixai.indices("general")) == 9740
    assert len(pixai.indices("character")) == 3721
    wd = load_wd_vocabulary(shared_path("tags", "wd_v3_selected_tags.csv"))
    assert len(wd) == 10861
    assert [len(wd.indices(g)) for g in ("rating", "general", "character")] == [4, 8106, 2751]
    assert wd.names[:4] == ("general", "sensitive", "questionable", "explicit")
