"""Shards (`arcttt run --shard K/N`) and `arcttt merge`: the choice of a task's shard, three shards
merged into what one run answers, and the merges that must be refused (an overlap, another model or
configuration, another challenges file) or completed with defaults (a missing shard)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from arcttt.data import load_challenges
from arcttt.merge import MergeError, merge_runs
from arcttt.runner import run
from arcttt.shards import Shard, parse_shard, shard_of, take_shard
from arcttt.submission import load_submission, validate_submission
from helpers import records, run_cli, smallest_tasks

# the engine's mechanics, cheaply: one TTT step, one view, answers only as long as the task's own outputs
FAST = ["ttt.steps=1", "data.n_sequences=2", "data.answer_room=evidence", "search.n_augmentations=1",
        "select.n_views=1", "budget.min_task_s=2", "budget.hang_grace_s=300"]


# --- the shard of a task ----------------------------------------------------------------------------

def test_a_task_shard_is_the_sha256_of_its_id():
    # by hand: sha256("00576224") starts 67505e5243eeb377, sha256("007bbfc7") 6ac62a9eab949fab,
    # sha256("a") ca978112ca1bbdca; as integers mod 3 (+1): 3, 2, 2; mod 2 (+1): 2, 2, 1
    assert [shard_of(t, 3) for t in ("00576224", "007bbfc7", "a")] == [3, 2, 2]
    assert [shard_of(t, 2) for t in ("00576224", "007bbfc7", "a")] == [2, 2, 1]
    assert shard_of("anything", 1) == 1
    assert parse_shard(" 2 / 3 ") == Shard(2, 3) and str(parse_shard("2/3")) == "2/3" and parse_shard(None) is None
    with pytest.raises(ValueError, match="--shard"):
        parse_shard("-1/2")


def test_shards_cover_every_task_once(arc1_eval):
    ids = sorted(t.id for t in arc1_eval)
    owners = {tid: [k for k in (1, 2, 3, 4) if Shard(k, 4).holds(tid)] for tid in ids}
    assert all(len(ks) == 1 for ks in owners.values())
    sizes = [sum(ks == [k] for ks in owners.values()) for k in (1, 2, 3, 4)]
    assert min(sizes) > 60, sizes  # 400 tasks: none of the four near empty


def test_take_shard_keeps_rejected_tasks_of_its_shard(tmp_path):
    chal = {"good1": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]]}]},
            "good2": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]},
            "bad": {"train": [], "test": [{"input": [[1]]}]}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(chal))
    loaded = load_challenges(path)
    parts = [take_shard(loaded, Shard(k, 2)) for k in (1, 2)]
    assert sorted(i for p in parts for i in p.ids) == sorted(loaded.ids)
    assert sorted(r.task_id for p in parts for r in p.rejected) == ["bad"]
    for p in parts:
        assert set(p.tasks) | {r.task_id for r in p.rejected} == set(p.ids)


@pytest.mark.parametrize("text", ["0/3", "4/3", "3", "1/0", "a/b", "1/2/3", "", " 2 / "])
def test_a_bad_shard_is_one_clear_error(text, capsys, tmp_path):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)
    code, _, err = run_cli(["run", "--challenges", tmp_path / "c.json", "--model", tmp_path, "--out",
                            tmp_path / "s.json", "--shard", text], capsys)
    assert code == 2 and err.startswith("error: --shard") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.json").exists()


# --- three shards and one run -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def shard_runs(tiny_model_dir, tmp_path_factory):
    """Nine ARC-AGI-1 eval tasks answered once whole and once as shards 1/3, 2/3, 3/3 (same model,
    preset and overrides), each in its own run folder."""
    root = tmp_path_factory.mktemp("shards")
    challenges, solutions = smallest_tasks(9, root / "data")
    kw = dict(config="cpu-smoke", time_budget=1200, workers=1, progress=False, overrides=FAST)
    whole = run(challenges, tiny_model_dir, root / "whole" / "submission.json", run_dir=root / "whole" / "run", **kw)
    assert whole["answered"] == 9
    parts = []
    for k in (1, 2, 3):
        out = root / f"shard{k}" / "submission.json"
        summary = run(challenges, tiny_model_dir, out, run_dir=root / f"shard{k}" / "run", shard=f"{k}/3", **kw)
        assert summary["answered"] == summary["tasks"]
        parts.append(root / f"shard{k}" / "run")
    return {"root": root, "challenges": challenges, "solutions": solutions, "whole": root / "whole", "parts": parts}


def test_a_shard_run_answers_its_shard_only(shard_runs):
    ids = load_challenges(shard_runs["challenges"]).ids
    for k, part in enumerate(shard_runs["parts"], 1):
        meta = json.loads((part / "run.json").read_text())
        mine = [t for t in ids if shard_of(t, 3) == k]
        assert meta["shard"] == f"{k}/3" and meta["tasks"] == mine and meta["engine"] == "local"
        assert sorted(records(part)) == sorted(mine)
        assert sorted(load_submission(part.parent / "submission.json")) == sorted(mine)
    assert sum(len(records(p)) for p in shard_runs["parts"]) == 9


def test_three_shards_merge_into_what_one_run_answers(shard_runs, capsys):
    """The merged submission equals the single run's (same seeds, the same TTT steps and greedy
    search on each task, so the same answers), is valid, and is scored; every record's status,
    attempts, candidates' grids and TTT steps equal the single run's."""
    root = shard_runs["root"]
    out = root / "merged" / "submission.json"
    code, stdout, err = run_cli(["merge", *shard_runs["parts"], "--challenges", shard_runs["challenges"],
                                 "--out", out, "--solutions", shard_runs["solutions"]], capsys)
    assert code == 0, err
    assert "9 tasks from 3 run folders, 9 answered, 0 failed, 0 missing" in stdout and "score: " in stdout
    merged = load_submission(out)
    assert validate_submission(merged, load_challenges(shard_runs["challenges"]).test_counts()) == []
    assert merged == load_submission(shard_runs["whole"] / "submission.json")
    folder = root / "merged" / "arcttt-merged"
    one, joined = records(shard_runs["whole"] / "run"), records(folder)
    assert sorted(one) == sorted(joined)
    for tid, r in one.items():
        m = joined[tid]
        assert (m["status"], m["ttt"]["steps"], m["task_hash"], m["config_hash"], m["model_hash"]) == \
            (r["status"], r["ttt"]["steps"], r["task_hash"], r["config_hash"], r["model_hash"])
        assert [t["attempts"] for t in m["tests"]] == [t["attempts"] for t in r["tests"]]
        assert [[c["grid"] for c in t["candidates"]] for t in m["tests"]] == \
            [[c["grid"] for c in t["candidates"]] for t in r["tests"]]
    meta = json.loads((folder / "run.json").read_text())
    assert meta["command"] == "merge" and meta["workers"] == 3 and len(meta["parts"]) == 3
    assert {r["worker"] for r in joined.values()} == {0, 1, 2}  # each shard's worker 0, offset
    assert (folder / "report.html").is_file() and json.loads((folder / "score.json").read_text())["total"] > 0
    # the merged folder is a run folder: report and profile read it
    assert run_cli(["report", folder], capsys)[0] == 0
    assert run_cli(["profile", folder], capsys)[0] == 0
    # merging again replaces the earlier merge in its folder
    assert run_cli(["merge", *shard_runs["parts"], "--challenges", shard_runs["challenges"], "--out", out],
                   capsys)[0] == 0


def test_a_missing_shard_keeps_its_defaults_and_says_so(shard_runs, capsys, tmp_path):
    parts = shard_runs["parts"]
    out = tmp_path / "submission.json"
    code, stdout, err = run_cli(["merge", parts[0], parts[2], "--challenges", shard_runs["challenges"],
                                 "--out", out], capsys)
    assert code == 0, err
    lost = sorted(records(parts[1]))
    assert f"note: {len(lost)} of 9 tasks are in none of the run folders" in stdout
    assert "shards not given: 2/3" in stdout and f"{len(lost)} missing (default answers)" in stdout
    sub = load_submission(out)
    defaults = load_submission(_defaults(shard_runs["challenges"], tmp_path))
    whole = load_submission(shard_runs["whole"] / "submission.json")
    assert all(sub[t] == defaults[t] for t in lost)
    assert all(sub[t] == whole[t] for t in sub if t not in lost)
    missing = records(tmp_path / "arcttt-merged")
    assert all(missing[t]["status"] == "default" and "missing" in missing[t]["error"] for t in lost)


def _defaults(challenges: Path, tmp_path: Path) -> Path:
    from arcttt.submission import SubmissionWriter

    path = tmp_path / "defaults.json"
    SubmissionWriter.for_challenges(path, load_challenges(challenges))
    return path


def _copy_with(part: Path, dst: Path, **changes) -> Path:
    shutil.copytree(part, dst)
    meta = json.loads((dst / "run.json").read_text())
    (dst / "run.json").write_text(json.dumps({**meta, **changes}))
    return dst


def test_bad_merges_are_refused_with_one_line(shard_runs, capsys, tmp_path):
    parts, chal = shard_runs["parts"], shard_runs["challenges"]
    out = tmp_path / "submission.json"

    def refused(*dirs, challenges=chal) -> str:
        code, stdout, err = run_cli(["merge", *dirs, "--challenges", challenges, "--out", out], capsys)
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, (code, err)
        assert not out.exists()
        return err

    # an overlap: shard 1/3 with the whole run
    err = refused(parts[0], shard_runs["whole"] / "run")
    assert "the run folders overlap" in err and "shard 1/3" in err
    # another model, another configuration (run.json's hashes)
    other_model = _copy_with(parts[1], tmp_path / "other-model", model_hash="0123456789abcdef")
    err = refused(parts[0], other_model, parts[2])
    assert "different models" in err and "0123456789abcdef" in err
    other_cfg = _copy_with(parts[1], tmp_path / "other-config", config_hash="fedcba9876543210")
    assert "different configurations" in refused(parts[0], other_cfg, parts[2])
    # a record made by another model than its folder's run says
    doctored = tmp_path / "doctored"
    shutil.copytree(parts[1], doctored)
    victim = next((doctored / "tasks").glob("*.json"))
    victim.write_text(json.dumps({**json.loads(victim.read_text()), "model_hash": "0123456789abcdef"}))
    assert "was answered by another run" in refused(parts[0], doctored, parts[2])
    # records of tasks the challenges file does not hold
    fewer = tmp_path / "fewer.json"
    ids = load_challenges(chal).ids
    fewer.write_text(json.dumps({k: v for k, v in json.loads(chal.read_text()).items() if k != ids[0]}))
    assert "not in" in refused(*parts, challenges=fewer)
    # the same folder twice, and a path that is not a run folder
    assert "given twice" in refused(parts[0], parts[0])
    assert "not a run folder" in refused(parts[0], tmp_path)


def test_a_task_of_other_content_is_refused(shard_runs, tmp_path):
    chal = json.loads(shard_runs["challenges"].read_text())
    part = shard_runs["parts"][0]
    tid = sorted(records(part))[0]
    chal[tid]["test"][0]["input"] = [[9]]
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(chal))
    with pytest.raises(MergeError, match="answered for other content"):
        merge_runs(shard_runs["parts"], changed, tmp_path / "s.json")


def test_a_ray_address_without_the_ray_engine_is_refused(capsys, tmp_path):
    code, _, err = run_cli(["run", "--challenges", tmp_path / "c.json", "--model", tmp_path, "--out",
                            tmp_path / "s.json", "--ray-address", "auto"], capsys)
    assert (code, err) == (2, "error: --ray-address needs --engine ray\n")
