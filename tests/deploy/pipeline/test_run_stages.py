"""Stage keys of `smpq-deploy run` (deploy.pipeline.stages): what makes a stage rerun, what its rerun deletes, --from/--to.

Pipeline-level checks (a new device reruns the search but not FP training; kill and --resume) are in
tests/hil/test_pipeline_board.py; bad settings refused before training are cases of tests/deploy/cli/test_bad_input.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.errors import DeployError
from deploy.pipeline.stages import STAGES, STAGES_FILE, StageBook, stage_key, stage_range


def test_key_changes_with_settings_and_input_bytes(tmp_path: Path) -> None:
    fp = tmp_path / "fp.pt"
    fp.write_bytes(b"weights")
    k = stage_key({"device": "stm32h7", "budget": {"flash_bytes": 1024}}, [fp])
    assert k == stage_key({"budget": {"flash_bytes": 1024}, "device": "stm32h7"}, [fp])  # order does not matter
    assert k != stage_key({"device": "nrf52840", "budget": {"flash_bytes": 1024}}, [fp])
    assert k != stage_key({"device": "stm32h7", "budget": {"flash_bytes": 2048}}, [fp])
    fp.write_bytes(b"retrained")
    assert k != stage_key({"device": "stm32h7", "budget": {"flash_bytes": 1024}}, [fp])
    fp.unlink()
    assert k != stage_key({"device": "stm32h7", "budget": {"flash_bytes": 1024}}, [fp])


def test_finished_stage_is_fresh_until_key_or_output_changes(tmp_path: Path) -> None:
    book = StageBook(tmp_path)
    assert not book.fresh("search", "k1", ["policy.json"])
    book.start("search", "k1")
    (tmp_path / "policy.json").write_text("{}")
    assert not book.fresh("search", "k1", ["policy.json"])  # started, not finished: a killed stage
    assert StageBook(tmp_path).unfinished() == ["search"]
    book.finish("search", "k1", ["policy.json"])
    again = StageBook(tmp_path)  # read back from stages.json
    assert again.fresh("search", "k1", ["policy.json"]) and again.unfinished() == []
    assert not again.fresh("search", "k2", ["policy.json"])
    (tmp_path / "policy.json").unlink()
    assert not again.fresh("search", "k1", ["policy.json"])
    assert json.loads((tmp_path / STAGES_FILE).read_text())["search"] == {"key": "k1", "done": True,
                                                                          "outputs": ["policy.json"]}


def test_new_key_deletes_resume_state_and_same_key_keeps_it(tmp_path: Path) -> None:
    book = StageBook(tmp_path)
    book.start("search", "k1")
    for name in ("search_state.pt", "supernet.pt", "qat_state_ab12.pt", "smpq_log.jsonl", "fp.pt", "train_state.pt"):
        (tmp_path / name).write_bytes(b"x")
    book.start("search", "k1")  # the same settings again (a killed run): its state resumes
    assert (tmp_path / "search_state.pt").is_file() and (tmp_path / "qat_state_ab12.pt").is_file()
    book.start("search", "k2")  # other settings: that state belongs to another search
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != STAGES_FILE)
    assert left == ["fp.pt", "train_state.pt"]  # the training's files are not the search's
    book.start("train", "t1", restart=True)  # --force
    assert not (tmp_path / "train_state.pt").exists() and (tmp_path / "fp.pt").is_file()


def test_drop_removes_the_outputs_a_stage_recorded(tmp_path: Path) -> None:
    book = StageBook(tmp_path)
    (tmp_path / "board.json").write_text("{}")
    (tmp_path / "policy.json").write_text("{}")
    book.finish("board", "b1", ["board.json"])
    book.drop("board")
    book.drop("firmware")  # never ran: nothing to do
    assert not (tmp_path / "board.json").exists() and (tmp_path / "policy.json").is_file()
    assert "board" not in StageBook(tmp_path).doc


def test_stage_range() -> None:
    assert stage_range(None, None) == list(STAGES)
    assert stage_range("export", None) == ["export", "firmware", "board"]
    assert stage_range(None, "search") == ["train", "search"]
    assert stage_range("search", "search") == ["search"]
    with pytest.raises(DeployError, match="--to flash: no such stage"):
        stage_range(None, "flash")
    with pytest.raises(DeployError, match="comes after"):
        stage_range("board", "train")


def test_corrupt_stages_file_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / STAGES_FILE).write_text("{oops")
    with pytest.raises(DeployError, match="stages.json' is not valid JSON"):
        StageBook(tmp_path)
