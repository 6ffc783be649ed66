"""The chosen model's ``best/`` folder is replaced whole or not at all: a worker SIGKILLed while saving a
better state leaves the previous complete folder, never old and new files together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.training.checkpoints import chosen_dir, recover_dir, replace_dir

ROOT = Path(__file__).resolve().parents[2]

# Saves state 1, then starts saving state 2 as save_pretrained does (file by file) and is SIGKILLed
# between the weights and the config.
KILLED_MID_SAVE = """
import os, signal, sys
from pathlib import Path
from app.training.checkpoints import replace_dir

def save(state):
    def write(path):
        path.mkdir(parents=True, exist_ok=True)
        (path / "model.safetensors").write_text(state)
        if state == "2":
            os.kill(os.getpid(), signal.SIGKILL)
        (path / "config.json").write_text(state)
    return write

best = Path(sys.argv[1])
replace_dir(best, save("1"))
replace_dir(best, save("2"))
"""


def _files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_worker_killed_mid_save_leaves_the_previous_best(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE, str(tmp_path / "best")], cwd=ROOT)
    assert run.returncode == -9, "the saving process was killed"
    best = chosen_dir(tmp_path)  # what the resumed attempt (or the publish after it) reads
    assert _files(best) == {"model.safetensors": "1", "config.json": "1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"], "no staging folder is left to upload"


@pytest.mark.parametrize("left", [["best.previous", "best.partial"], ["best", "best.previous"]])
def test_recover_after_a_kill_between_the_renames(tmp_path: Path, left: list[str]) -> None:
    """Killed after the old folder was moved aside (the old one comes back) or after the new one took its
    place (the new one stays): either way one complete folder named ``best``."""
    for name in left:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(name)
    recover_dir(tmp_path / "best")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert (tmp_path / "best" / "config.json").read_text() == ("best.previous" if left[1] == "best.partial" else "best")


def test_a_file_where_the_folder_goes_is_an_error(tmp_path: Path) -> None:
    """A disk-level problem stays a job error, as with the in-place save (``test_retry.py`` relies on it)."""
    (tmp_path / "best").write_text("in the way")
    with pytest.raises(NotADirectoryError):
        replace_dir(tmp_path / "best", lambda path: path.mkdir())
    assert (tmp_path / "best").read_text() == "in the way"
