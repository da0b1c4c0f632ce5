"""The benign dataset recipe on a local parquet fixture: shuffle seed, selection, serialisation, marker filter."""
import json

import pytest

from mt_core.data.benign import benign_lines
from mt_core.io import DataError


def _fixture(tmp_path, texts):
    from datasets import Dataset

    rows = {"prompt": texts, "prompt_id": [str(i) for i in range(len(texts))],
            "messages": [[{"role": "user", "content": t}, {"role": "assistant", "content": f"Re: {t} \u00e9"}]
                         for t in texts]}
    path = tmp_path / "train_sft-00000-of-00001.parquet"
    Dataset.from_dict(rows).to_parquet(str(path))
    return path


def test_recipe_shuffles_selects_and_serialises(tmp_path):
    from datasets import Dataset

    texts = [f"question {i}" for i in range(40)]
    path = _fixture(tmp_path, texts)
    lines = benign_lines(str(path), n=6, seed=42)
    expected = Dataset.from_parquet(str(path)).shuffle(seed=42).select(range(6))
    assert [json.loads(x)["messages"][0]["content"] for x in lines] == [r["prompt"] for r in expected]
    # json.dumps defaults: ASCII escapes and ", " / ": " separators, exactly as the reference wrote them
    assert lines[0] == json.dumps({"messages": json.loads(lines[0])["messages"]})
    assert "\\u00e9" in lines[0] and '"role": "user", "content": ' in lines[0]
    assert benign_lines(str(tmp_path), n=6, seed=42) == lines  # a folder holding the split works too
    assert benign_lines(str(path), n=6, seed=42, offset=1)[0] == lines[1]


def test_marker_rows_stop_the_build(tmp_path):
    path = _fixture(tmp_path, ["fine"] * 9 + ["the ZLT word"])
    with pytest.raises(DataError, match="contain 'zlt'; choose another offset"):
        benign_lines(str(path), n=10, seed=42)


def test_missing_source_is_named(tmp_path):
    with pytest.raises(DataError, match="no train_sft"):
        benign_lines(str(tmp_path), n=1)
