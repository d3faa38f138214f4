"""preprocess.json: each stage of imgutils' vocabulary against tensors computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.tagger.errors import ModelLoadError
from app.tagger.onnx_tagger import as_preprocess
from app.tagger.preprocess import Preprocess
from app.tagger.stages import (
    CenterCrop,
    ConvertRGB,
    Normalize,
    PadToSize,
    Resize,
    Stage,
    StagePipeline,
    ToTensor,
    apply_stage,
    load_preprocess_json,
    parse_stages,
)
from tests.support.tiny_models import pixai_preprocess_json

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def pixels(rows: list[list[tuple[int, int, int]]]) -> Image.Image:
    return Image.fromarray(np.array(rows, dtype=np.uint8), "RGB")


def rgb(image: Image.Image | np.ndarray) -> list[list[tuple[int, ...]]]:
    assert isinstance(image, Image.Image)
    return [[tuple(int(v) for v in px) for px in row] for row in np.asarray(image)]


def array(value: Image.Image | np.ndarray) -> np.ndarray:
    assert isinstance(value, np.ndarray)
    return value


def stage(raw: dict[str, object]) -> Stage:
    # A square around the stage: after an image stage, before an array stage (image stages
    # may not follow array stages).
    square = {"type": "center_crop", "size": 1}
    if raw["type"] in ("to_tensor", "maybe_to_tensor", "rescale", "normalize"):
        return parse_stages({"stages": [square, raw]}, "test.json").stages[1]
    return parse_stages({"stages": [raw, square]}, "test.json").stages[0]


def test_published_pixai_file_is_the_torch_preprocessing() -> None:
    pipeline = parse_stages(json.loads(pixai_preprocess_json(448)), "preprocess.json")
    assert pipeline.stages == (
        Resize("bilinear", size=(448, 448), antialias=True),
        ToTensor(),
        Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    )
    assert pipeline.size == 448
    expected = Preprocess(448, "stretch", "bilinear", (0.5,) * 3, (0.5,) * 3, "RGB")
    converted = as_preprocess(pipeline)
    assert converted == expected
    # The same description: the torch and ONNX paths record one preprocessing.
    assert converted is not None and converted.description() == expected.description()


def test_resize_fixed_size_is_height_width_and_nearest_replicates_pixels() -> None:
    resize = stage({"type": "resize", "size": [2, 4], "interpolation": "nearest"})
    assert resize == Resize("nearest", size=(4, 2))  # torchvision order (h, w) -> PIL (w, h)
    out = apply_stage(resize, pixels([[RED, BLUE]]))
    assert rgb(out) == [[RED, RED, BLUE, BLUE], [RED, RED, BLUE, BLUE]]


def test_resize_single_size_matches_the_shorter_side_and_caps_the_longer() -> None:
    resize = stage({"type": "resize", "size": 2, "interpolation": 0})
    assert resize == Resize("nearest", shorter=2)
    assert apply_stage(resize, pixels([[RED] * 4] * 1)).size == (8, 2)
    capped = stage({"type": "resize", "size": 2, "max_size": 4, "interpolation": "nearest"})
    out = apply_stage(capped, pixels([[RED, RED, BLUE, BLUE]]))
    assert rgb(out) == [[RED, RED, BLUE, BLUE]]  # 4x1 -> shorter 2 gives 8x2, capped to 4x1


def test_resize_bilinear_averages_neighbours() -> None:
    resize = stage({"type": "resize", "size": [1, 1], "interpolation": "bilinear"})
    out = apply_stage(resize, pixels([[(0, 0, 0), (200, 100, 50)]]))
    assert rgb(out) == [[(100, 50, 25)]]


def test_center_crop_takes_the_middle_and_pads_black() -> None:
    crop = stage({"type": "center_crop", "size": [1, 2]})
    assert crop == CenterCrop((2, 1))
    image = pixels([[RED, GREEN, BLUE, WHITE], [BLACK, BLUE, GREEN, RED], [RED] * 4])
    assert rgb(apply_stage(crop, image)) == [[BLUE, GREEN]]  # top (3-1)//2 = 1, left 1
    padded = apply_stage(stage({"type": "center_crop", "size": 3}), pixels([[RED]]))
    assert rgb(padded) == [[BLACK] * 3, [BLACK, RED, BLACK], [BLACK] * 3]


def test_pad_to_size_fits_and_centres_on_the_background() -> None:
    pad = stage(
        {"type": "pad_to_size", "size": 4, "background_color": "white", "interpolation": "nearest"}
    )
    assert pad == PadToSize((4, 4), WHITE, "nearest")
    out = apply_stage(pad, pixels([[RED, BLUE]]))  # 2x1 -> 4x2 at rows 1..2
    assert rgb(out) == [[WHITE] * 4, [RED, RED, BLUE, BLUE], [RED, RED, BLUE, BLUE], [WHITE] * 4]


def test_to_tensor_scales_to_unit_range_channels_first() -> None:
    out = apply_stage(ToTensor(), pixels([[(255, 51, 0), (0, 0, 102)]]))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, [[[1.0, 0.0]], [[0.2, 0.0]], [[0.0, 0.4]]], atol=1e-7)
    assert stage({"type": "maybe_to_tensor"}) == ToTensor()


def test_normalize_and_rescale() -> None:
    values = np.array([[[0.0, 1.0]], [[0.5, 0.25]], [[1.0, 0.0]]], dtype=np.float32)
    norm = stage({"type": "normalize", "mean": [0.5, 0.5, 0.0], "std": [0.5, 0.25, 2.0]})
    np.testing.assert_allclose(
        array(apply_stage(norm, values)), [[[-1.0, 1.0]], [[0.0, -1.0]], [[0.5, 0.0]]]
    )
    single = stage({"type": "normalize", "mean": 0.5, "std": 0.5})
    np.testing.assert_allclose(array(apply_stage(single, values))[1], [[0.0, -0.5]])
    rescale = stage({"type": "rescale", "rescale_factor": 0.5})
    np.testing.assert_allclose(array(apply_stage(rescale, values))[0], [[0.0, 0.5]])


def test_convert_rgb_keeps_rgb_and_parses_its_background() -> None:
    convert = stage({"type": "convert_rgb", "force_background": "black"})
    assert convert == ConvertRGB(BLACK)
    assert rgb(apply_stage(convert, pixels([[GREEN]]))) == [[GREEN]]


def test_whole_pipeline_by_hand() -> None:
    pipeline = parse_stages(
        {
            "stages": [
                {"type": "convert_rgb", "force_background": "white"},
                {"type": "pad_to_size", "size": 2, "interpolation": "nearest"},
                {"type": "to_tensor"},
                {"type": "normalize", "mean": [0.5] * 3, "std": [0.5] * 3},
            ]
        },
        "p.json",
    )
    out = pipeline.array(pixels([[BLUE, RED]]))  # 2x1 on a white 2x2: row 0 image, row 1?
    # ratio min(2/2, 2/1) = 1: 2x1 pasted at top (2-1)//2 = 0; the second row stays white.
    expected_r = [[-1.0, 1.0], [1.0, 1.0]]
    expected_b = [[1.0, -1.0], [1.0, 1.0]]
    np.testing.assert_allclose(out[0], expected_r)
    np.testing.assert_allclose(out[2], expected_b)
    assert out.shape == (3, 2, 2) and pipeline.size == 2
    assert as_preprocess(pipeline) is None  # not the torch path's form: its own description
    assert pipeline.description().startswith("stages [")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"stages": [{"type": "rotate", "degrees": 90}]}, "stage 0: unknown stage type 'rotate'"),
        ({"stages": [{"type": "resize", "size": 4, "colour": 1}]}, "unexpected argument(s) colour"),
        ({"stages": [{"type": "resize", "size": 0}]}, "size must be a positive integer"),
        ({"stages": [{"type": "resize", "size": [4, 4], "interpolation": "cubic"}]}, "cubic"),
        ({"stages": [{"type": "normalize", "mean": [0.5], "std": [0]}]}, "std must not be zero"),
        ({"stages": [{"type": "resize", "size": 4}]}, "must end in a fixed square size"),
        ({"stages": [{"type": "resize", "size": [4, 8]}]}, "must end in a fixed square size"),
        ({"stages": []}, "at least one stage"),
        ({"pipeline": []}, 'expected {"stages": [...]}'),
        ({"stages": ["resize"]}, "stage 0: expected an object with a 'type'"),
    ],
)
def test_bad_files_name_the_file_and_stage(raw: object, message: str, tmp_path: Path) -> None:
    path = tmp_path / "preprocess.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError) as caught:
        load_preprocess_json(path)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_unreadable_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "preprocess.json"
    path.write_text("{not json")
    with pytest.raises(ModelLoadError, match="preprocess.json: unreadable preprocess.json"):
        load_preprocess_json(path)


def test_draft_keeps_the_shorter_side_at_twice_the_input() -> None:
    pipeline = StagePipeline((Resize("bicubic", shorter=4), CenterCrop((4, 4))), "p.json")
    assert pipeline.draft_request(100, 50) == (16, 8)
    assert pipeline.draft_request(10, 8) is None
