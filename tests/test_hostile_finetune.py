"""finetune under crashes and broken files (issue 19, items 5, 6 and 7): the checkpoint swap leaves
a whole checkpoint that --resume finds whatever step it is killed at; a corrupt, truncated,
foreign or hostile checkpoint, a state beyond its steps, JSONL lines that are not tasks and an
unbounded synthetic:N are each one error line naming the file (and line), exit 2."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from arcttt.finetune import CHECKPOINT, Dist, FinetuneConfig, find_checkpoint, load_checkpoint, save_checkpoint
from arcttt.finetune_data import load_tasks
from helpers import run_cli

DIST = Dist(0, 1, torch.device("cpu"))


class Killed(BaseException):
    """The process dies here (SIGKILL: no handler runs)."""


def net(value: float):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(value)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()  # an optimizer state to save
    return model, opt


def state(step):
    return {"step": step, "cursor": [0, step], "losses": [1.0] * step, "tokens": 10 * step, "seconds": 1.0}


CFG = FinetuneConfig(steps=4)
KILL_POINTS = ["writing", "before-aside", "after-aside", "after-new-in", "removing-old"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_at_any_point_of_the_swap_leaves_a_whole_checkpoint(point, tmp_path, monkeypatch):
    folder = tmp_path / CHECKPOINT
    save_checkpoint(folder, *net(1.0), state(1), CFG, DIST)
    renames, removals = [], []
    real_rename, real_rmtree, real_save = Path.rename, shutil.rmtree, torch.save

    def rename(self, target):
        renames.append(self.name)
        if (point == "before-aside" and len(renames) == 1) or (point == "after-aside" and len(renames) == 2):
            raise Killed
        return real_rename(self, target)

    def rmtree(path, *args, **kwargs):
        removals.append(Path(path).name)
        if Path(path).name == CHECKPOINT + ".old" and Path(path).exists():
            if point == "after-new-in":
                raise Killed
            if point == "removing-old":  # half removed: its last file went first
                (Path(path) / "state.json").unlink()
                raise Killed
        return real_rmtree(path, *args, **kwargs)

    def save(obj, f, *args, **kwargs):
        if point == "writing":
            Path(f).write_bytes(b"half an optimizer state")
            raise Killed
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(Killed):
        save_checkpoint(folder, *net(2.0), state(2), CFG, DIST)
    if point in ("after-new-in", "removing-old"):
        assert renames == [CHECKPOINT, CHECKPOINT + ".tmp"]  # the kill came after both renames
    monkeypatch.undo()

    found = find_checkpoint(tmp_path, repair=True)
    assert found == folder
    model, opt = net(0.0)
    got = load_checkpoint(folder, model, opt, CFG)
    want = 1 if point in ("writing", "before-aside") else 2  # the old one, or the new one once it was whole
    assert got["step"] == want
    assert torch.all(model.weight != 0)  # the saved weights, not the fresh ones
    # and the next save works from whatever the kill left
    save_checkpoint(folder, *net(3.0), state(3), CFG, DIST)
    assert load_checkpoint(folder, *net(0.0), CFG)["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]


def write_state(folder, **changes):
    saved = json.loads((folder / "state.json").read_text())
    saved.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del saved[key]
    (folder / "state.json").write_text(json.dumps(saved))


class Payload:
    def __reduce__(self):
        return (print, ("a pickled call ran",))


BROKEN = {
    "state-not-json": lambda f: (f / "state.json").write_text('{"step": 2,'),
    "state-a-list": lambda f: (f / "state.json").write_text("[1, 2]"),
    "state-without-config": lambda f: write_state(f, config=None),
    "state-deep": lambda f: (f / "state.json").write_text("[" * 100_000 + "]" * 100_000),
    "beyond-steps": lambda f: write_state(f, step=9),
    "negative-step": lambda f: write_state(f, step=-1),
    "weights-truncated": lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:40]),
    "optimizer-truncated": lambda f: (f / "optimizer.pt").write_bytes((f / "optimizer.pt").read_bytes()[:50]),
    "optimizer-hostile": lambda f: (f / "optimizer.pt").write_bytes(pickle.dumps(Payload())),
    "optimizer-foreign": lambda f: torch.save({"not": "an optimizer"}, f / "optimizer.pt"),
}
WHERE = {"weights-truncated": "model.safetensors", "optimizer-truncated": "optimizer.pt",
         "optimizer-hostile": "optimizer.pt", "optimizer-foreign": "optimizer.pt"}


@pytest.mark.parametrize("fault", BROKEN)
def test_a_broken_checkpoint_is_one_error_naming_its_file(fault, tmp_path, capsys):
    folder = tmp_path / CHECKPOINT
    save_checkpoint(folder, *net(1.0), state(2), CFG, DIST)
    BROKEN[fault](folder)
    with pytest.raises(ValueError) as e:
        load_checkpoint(folder, *net(0.0), CFG)
    message = str(e.value)
    assert message.startswith(str(folder / WHERE.get(fault, "state.json"))) and "\n" not in message
    assert "a pickled call ran" not in capsys.readouterr().out


def test_resume_beyond_the_steps_is_refused_by_the_command(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["finetune", "--model", str(tiny_model_dir), "--out", str(out), "--data", "synthetic:4", "--config",
            "cpu-tiny", "--set", "batch_rows=1", "--set", "seq_len=1024", "--quiet"]
    code, _, err = run_cli([*args, "--set", "steps=3", "--set", "stop_at_step=1"], capsys)
    assert code == 0, err
    write_state(out / CHECKPOINT, step=5)
    code, _, err = run_cli([*args, "--set", "steps=3", "--resume"], capsys)
    assert code == 2 and err.count("error:") == 1 and "step 5, outside this run's 0..3" in err, err


@pytest.mark.parametrize("line", ["[1, 2]", '"a task"', "7", "null", '{"train": 3}', '{"id": "x", "train": [',
                                  "[" * 100_000])
def test_a_jsonl_line_that_is_not_a_task_names_the_file_and_line(line, tmp_path):
    good = json.dumps({"id": "ok", "train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]]}]})
    path = tmp_path / "tasks.jsonl"
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(ValueError) as e:
        load_tasks(str(path))
    assert str(e.value).startswith(f"{path}: line 3: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["synthetic:10000000000", "synthetic:99999999999999999999:1"])
def test_synthetic_n_is_bounded(spec):
    with pytest.raises(ValueError, match=r"synthetic:N takes at most [\d,]+ tasks"):
        load_tasks(spec)


@pytest.mark.parametrize("text", ['steps: !!python/object/apply:os.system ["touch {marker}"]\n', "steps: [1,\n  2",
                                  "a: 1\nsteps: lots\nlr: -1\n"])
def test_a_hostile_or_broken_yaml_config_is_one_line(text, tiny_model_dir, tmp_path, capsys):
    marker = tmp_path / "ran"
    config = tmp_path / "config.yaml"
    config.write_text("preset: cpu-tiny\n" + text.format(marker=marker))
    code, _, err = run_cli(["finetune", "--model", tiny_model_dir, "--out", tmp_path / "out", "--config", config],
                           capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert not marker.exists() and not (tmp_path / "out").exists()
