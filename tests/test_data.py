"""data.py: the grid validator (hypothesis), task rejection, log_rejected, read_json, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from arcttt.data import (
    MAX_SIDE, SPLITS, Challenges, DataFileError, GridError, Rejected, bundled_split, export_split, grid_to_list,
    load_challenges, load_solutions, log_rejected, parse_grid, tasks_from_json,
)
from helpers import grid_lists


@given(grid_lists())
def test_valid_grids_round_trip(grid):
    arr = parse_grid(grid, "g")
    assert arr.dtype == np.uint8 and arr.shape == (len(grid), len(grid[0]))
    back = grid_to_list(arr)
    assert back == grid
    assert all(type(v) is int for row in back for v in row)
    assert np.array_equal(parse_grid(arr), arr)  # arrays are accepted too


BAD_VALUES = st.one_of(st.integers(10, 10**6), st.integers(-10**6, -1),
                       st.floats(allow_nan=True), st.booleans(), st.text(max_size=3), st.none(),
                       st.just([1]), st.builds(np.bool_, st.booleans()))


@given(grid_lists(), st.data())
def test_bad_cell_is_refused_naming_the_cell(grid, data):
    r = data.draw(st.integers(0, len(grid) - 1))
    c = data.draw(st.integers(0, len(grid[0]) - 1))
    bad = data.draw(BAD_VALUES)
    grid[r][c] = bad
    with pytest.raises(GridError) as err:
        parse_grid(grid, "task t train[0].input")
    msg = str(err.value)
    assert msg.startswith(f"task t train[0].input[{r}][{c}]: value ")
    assert ("outside 0-9" if isinstance(bad, int) and not isinstance(bad, bool) else "not an integer") in msg


@given(grid_lists(min_h=2), st.data())
def test_ragged_grid_is_refused_naming_the_row(grid, data):
    r = data.draw(st.integers(1, len(grid) - 1))
    w = len(grid[0])
    new_w = data.draw(st.integers(0, MAX_SIDE + 1).filter(lambda n: n != w))
    grid[r] = (grid[r] * 2)[:new_w] + [0] * max(0, new_w - 2 * w)
    with pytest.raises(GridError, match=rf"^g\[{r}\]: row has {new_w} cells, row 0 has {w} \(not rectangular\)"):
        parse_grid(grid, "g")


@given(grid_lists(), st.data())
def test_row_that_is_not_a_list_is_refused_naming_the_row(grid, data):
    r = data.draw(st.integers(0, len(grid) - 1))
    grid[r] = data.draw(st.one_of(st.tuples(st.integers(0, 9)), st.integers(0, 9), st.text(max_size=3),
                                  st.none(), st.dictionaries(st.text(max_size=2), st.integers(0, 9))))
    with pytest.raises(GridError, match=rf"^g\[{r}\]: row is not a list"):
        parse_grid(grid, "g")


@given(st.integers(0, 40), st.integers(0, 40))
def test_sizes_outside_1_to_30_are_refused(h, w):
    grid = [[0] * w for _ in range(h)]
    if 1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE:
        assert parse_grid(grid).shape == (h, w)
    else:
        with pytest.raises(GridError, match=r"^g: (size \d+x\d+ outside 1x1\.\.30x30|not a non-empty list)"):
            parse_grid(grid, "g")


@pytest.mark.parametrize("obj", [None, 3, "[[1]]", {"0": [1]}, (), [], ((1, 2),), np.zeros((2,), np.uint8)])
def test_non_grids_are_refused(obj):
    with pytest.raises(GridError, match=r"^here(\[0\])?: "):
        parse_grid(obj, "here")


def test_float_array_is_refused():
    with pytest.raises(GridError, match=r"^grid\[0\]\[0\]: value 1.0 is not an integer"):
        parse_grid(np.ones((2, 2), dtype=np.float32))


GOOD = {"train": [{"input": [[1, 2]], "output": [[2, 1]]}], "test": [{"input": [[3, 4]]}, {"input": [[5]]}]}


def test_tasks_from_json_keeps_good_and_rejects_bad_with_readable_counts():
    data = {"good": GOOD, "ragged": {**GOOD, "test": [{"input": [[1], [1, 2]]}]},
            "not_object": [1, 2], "no_test": {"train": GOOD["train"]}}
    ch = tasks_from_json(data)
    assert list(ch.tasks) == ["good"] and ch.ids == list(data)
    reasons = {r.task_id: r.reason for r in ch.rejected}
    assert reasons["ragged"] == "task ragged: test[0].input[1]: row has 2 cells, row 0 has 1 (not rectangular)"
    assert reasons["not_object"] == "task not_object: task is not an object"
    assert reasons["no_test"] == "task no_test: missing 'test'"
    assert ch.test_counts() == {"good": 2, "ragged": 1}


def test_log_rejected_gives_one_line_per_rejected_task():
    ch = Challenges(tasks={}, ids=["a", "b"], rejected=[
        Rejected("a", "task a: no train pairs", 2), Rejected("b", "task b: task is not an object", None)])
    lines: list[str] = []
    log_rejected(ch, lines.append)
    assert lines == ["rejected task a: no train pairs (submission keeps 2 default entries)",
                     "rejected task b: task is not an object (test count unreadable: no submission entry)"]
    log_rejected(Challenges(tasks={}), lines.append)
    assert len(lines) == 2


@pytest.mark.parametrize("content, fault", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe\x00garbage\x80", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"[1, 2]", "not a JSON object of tasks (got array)"),
    (b"null", "not a JSON object of tasks (got null)"),
])
def test_unreadable_challenges_files_raise_data_file_error(tmp_path, content, fault):
    path = tmp_path / "c.json"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match="challenges file .*c.json") as err:
        load_challenges(path)
    assert fault in str(err.value)


def test_missing_file_and_folder_raise_data_file_error(tmp_path):
    with pytest.raises(DataFileError, match="cannot read"):
        load_challenges(tmp_path / "absent.json")
    with pytest.raises(DataFileError, match="cannot read"):
        load_solutions(tmp_path)


def test_export_split_limit_keeps_first_tasks_in_kaggle_names(tmp_path):
    chal, sol = export_split("arc-agi-2-eval", tmp_path, limit=3)
    assert (chal.name, sol.name) == ("arc-agi_evaluation_challenges.json", "arc-agi_evaluation_solutions.json")
    challenges, solutions = bundled_split("arc-agi-2-eval")
    first = sorted(challenges)[:3]
    assert json.loads(chal.read_text()) == {k: challenges[k] for k in first}
    assert list(load_solutions(sol)) == first
    with pytest.raises(ValueError, match="at least 1"):
        export_split("arc-agi-2-eval", tmp_path, limit=0)


def test_bundled_split_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown split 'arc-agi-3'"):
        bundled_split("arc-agi-3")
    assert set(SPLITS) == {"arc-agi-1-train", "arc-agi-1-eval", "arc-agi-2-train", "arc-agi-2-eval"}
