"""The ONNX export's tag files: selected_tags.csv with ips, categories.json, thresholds.csv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.tagger.errors import ModelLoadError
from app.tagger.vocab import (
    CHARACTER,
    GENERAL,
    load_categories,
    load_onnx_vocabulary,
    load_thresholds,
)

CATEGORIES = [{"category": 0, "name": "general"}, {"category": 4, "name": "character"}]
HEADER = "id,tag_id,name,category,count,ips\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def categories(tmp_path: Path, raw: object = CATEGORIES) -> dict[int, str]:
    return load_categories(write(tmp_path / "categories.json", json.dumps(raw)))


def test_names_groups_and_copyrights_in_file_order(tmp_path: Path) -> None:
    tags = write(
        tmp_path / "selected_tags.csv",
        HEADER
        + "0,1,1girl,0,100,[]\n"
        + '1,2,hu_tao_(genshin_impact),4,50,"[""genshin_impact""]"\n'
        # pandas' repr of a list column, with a name holding a quote
        + '2,3,jeanne_d\'arc_(fate),4,40,"[\'fate/grand_order\', ""fate_(series)""]"\n'
        + "3,4,solo,0,90,\n",
    )
    vocab = load_onnx_vocabulary(tags, categories(tmp_path))
    assert vocab.names == ("1girl", "hu_tao_(genshin_impact)", "jeanne_d'arc_(fate)", "solo")
    assert [vocab.group(i) for i in range(4)] == [GENERAL, CHARACTER, CHARACTER, GENERAL]
    assert dict(vocab.char_to_copyrights) == {
        "hu_tao_(genshin_impact)": ("genshin_impact",),
        "jeanne_d'arc_(fate)": ("fate/grand_order", "fate_(series)"),
    }


def test_a_category_missing_from_categories_json_names_the_line(tmp_path: Path) -> None:
    tags = write(tmp_path / "selected_tags.csv", HEADER + "0,1,1girl,0,1,[]\n1,2,artist,1,1,[]\n")
    with pytest.raises(
        ModelLoadError, match=r"selected_tags\.csv:3: category '1' is not one of \[0, 4\]"
    ):
        load_onnx_vocabulary(tags, categories(tmp_path))


def test_categories_json_problems(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"categories\.json: category 5 is named 'meta'"):
        categories(tmp_path, [{"category": 5, "name": "meta"}])
    with pytest.raises(ModelLoadError, match=r"categories\.json: expected a list"):
        categories(tmp_path, {"0": "general"})


def test_missing_columns_and_bad_ips(tmp_path: Path) -> None:
    tags = write(tmp_path / "selected_tags.csv", "tag,category\n1girl,0\n")
    with pytest.raises(ModelLoadError, match=r"selected_tags\.csv: missing column\(s\) name"):
        load_onnx_vocabulary(tags, categories(tmp_path))
    tags = write(tmp_path / "selected_tags.csv", HEADER + '0,1,miku,4,1,"{""a"": 1}"\n')
    with pytest.raises(
        ModelLoadError, match=r"selected_tags\.csv:2: ips .* is not a JSON list of strings"
    ):
        load_onnx_vocabulary(tags, categories(tmp_path))


def test_thresholds_per_group(tmp_path: Path) -> None:
    path = write(
        tmp_path / "thresholds.csv", "category,name,threshold\n0,general,0.3\n4,character,0.85\n"
    )
    assert load_thresholds(path, categories(tmp_path)) == {GENERAL: 0.3, CHARACTER: 0.85}
    write(path, "category,name,threshold\n0,general,1.5\n")
    with pytest.raises(ModelLoadError, match=r"thresholds\.csv:2: threshold 1.5 outside 0..1"):
        load_thresholds(path, categories(tmp_path))
