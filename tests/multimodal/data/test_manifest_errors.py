"""Tables that cannot be read give a `DataError` naming the file (a user error: message, no traceback)."""

from __future__ import annotations

import pytest

from multimodal.config import load_config
from multimodal.data import DataError, read_manifest
from multimodal.data.manifest import split_name
from multimodal.registry import get_task


def test_unreadable_manifests_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"manifest '.*nope\.csv' does not exist"):
        read_manifest(str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="is a folder, not a table file"):
        read_manifest(str(tmp_path))
    (tmp_path / "rows.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"rows\.xlsx': unsupported extension"):
        read_manifest(str(tmp_path / "rows.xlsx"))
    (tmp_path / "torn.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"torn\.parquet' cannot be read"):
        read_manifest(str(tmp_path / "torn.parquet"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl' cannot be read"):
        read_manifest(str(tmp_path / "bad.jsonl"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv' cannot be read"):
        read_manifest(str(tmp_path / "empty.csv"))
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match=r"binary\.csv' cannot be read"):
        read_manifest(str(tmp_path / "binary.csv"))


def test_unknown_split_name_is_a_data_error():
    with pytest.raises(DataError, match=r"rows\.csv: row 3: unknown split name 'holdout'"):
        split_name("holdout", "rows.csv: row 3")


def test_hf_dataset_folder_that_is_not_a_dataset(tmp_path):
    cfg = load_config(None, ["data.demo=null", f"data.hf_dataset={tmp_path}", "data.audio_column=null"])
    with pytest.raises(DataError, match=r"data\.hf_dataset: .* is not a folder written by datasets' save_to_disk"):
        get_task(cfg.model.task)(cfg).build_splits(progress=False)
