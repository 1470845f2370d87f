"""The HTML report and `arcttt show` on the hand-made run directory (tests/conftest.py
``handmade_run``): contents, colours, escaping, robustness, and the page in a real headless chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from hypothesis import given, settings

from arcttt.data import GridError, bundled_split, parse_grid
from arcttt.report import PALETTE, as_grid, grid_svg, write_report
from helpers import HANDMADE_TASKS, PNG_MAGIC, grid_lists, run_cli


@pytest.fixture(scope="module")
def eval_split():
    return bundled_split("arc-agi-1-eval")


def rasterise(svg: str) -> np.ndarray:
    """Colour index per cell as the SVG paints it: each 'M x y h n v1 h-n z' run of a path takes the
    path's fill. -1 where nothing is painted; a cell painted twice fails the test."""
    w, h = map(int, re.search(r'viewBox="0 0 (\d+) (\d+)"', svg).groups())
    out = np.full((h, w), -1)
    for fill, d in re.findall(r'<path fill="(#[0-9A-Fa-f]{6})" d="([^"]*)"', svg):
        colour = PALETTE.index(fill)
        for x, y, n in re.findall(r"M(\d+) (\d+)h(\d+)v1h-\d+z", d):
            x, y, n = int(x), int(y), int(n)
            assert (out[y, x:x + n] == -1).all(), "cell painted twice"
            out[y, x:x + n] = colour
    return out


def svg_named(page: str, what: str) -> str:
    match = re.search(r'<svg class="grid" data-what="' + re.escape(what) + r'".*?</svg>', page)
    assert match, f"no grid {what!r} in the page"
    return match.group(0)


@settings(max_examples=60, deadline=None)
@given(grid_lists())
def test_grid_svg_paints_every_cell_once_in_its_colour(rows):
    grid = parse_grid(rows)
    svg = grid_svg(grid)
    assert (rasterise(svg) == grid).all()
    cell = int(re.search(r'width="(\d+)"', svg).group(1)) // grid.shape[1]
    assert 3 <= cell <= 18 and max(grid.shape) * cell <= max(160, 3 * max(grid.shape))


@pytest.mark.parametrize("bad", [[], [[]], [[1, 2], [3]], [[1.0]], [[True]], [[10]], [[-1]], [["1"]], 5,
                                 None, [[1] * 31], [[0]] * 31, {"a": 1}, [[[1]]]])
def test_as_grid_refuses_what_parse_grid_refuses(bad):
    assert as_grid(bad) is None
    with pytest.raises(GridError):
        parse_grid(bad)


@settings(max_examples=60, deadline=None)
@given(grid_lists())
def test_as_grid_agrees_with_parse_grid(rows):
    grid = as_grid(rows)
    assert grid.dtype == np.uint8 and (grid == parse_grid(rows)).all()


def test_report_contents(handmade_run, run_copy, eval_split):
    _, _, solutions = handmade_run
    page = write_report(run_copy, solutions).read_text()
    assert (run_copy / "timeline.png").read_bytes()[:8] == PNG_MAGIC
    # self-contained: no address outside the page, no external script, style sheet or font
    assert not re.search(r'(src|href)="(?!#|data:)', page) and "@import" not in page and "url(" not in page
    # every task has a table row and a section; the score is 3 of 7 test outputs
    for tid in HANDMADE_TASKS:
        assert page.count(f'href="#task-{tid}"') == 1 and page.count(f'id="task-{tid}"') == 1
    assert "<b>3 / 7</b><span>test outputs right = 42.9%" in page
    cats = re.findall(r'<details class="task (\w+)" id="task-(\w+)"', page)
    assert dict((t, c) for c, t in cats) == {"00576224": "solved", "0692e18c": "solved", "0c786b71": "failed",
                                             "6ea4a07e": "failed", "03560426": "noanswer", "0c9aba6e": "noanswer"}
    # grids drawn in the ARC colours, cell for cell, from the real task
    challenges, truths = eval_split
    train_in = np.array(challenges["00576224"]["train"][0]["input"])
    assert (rasterise(svg_named(page, "00576224 train 1 input")) == train_in).all()
    truth = np.array(truths["6ea4a07e"][1])
    assert (rasterise(svg_named(page, "6ea4a07e test 2 truth")) == truth).all()
    # attempt 1 of 6ea4a07e test 2 is the truth with cell (0, 0) recoloured: one cell differs
    attempt = rasterise(svg_named(page, "6ea4a07e test 2 attempt 1"))
    assert attempt[0, 0] == (truth[0, 0] + 1) % 10 and (attempt != truth).sum() == 1
    assert f'fill="{PALETTE[attempt[0, 0]]}"' in svg_named(page, "6ea4a07e test 2 attempt 1")
    # attempts marked against the truth; the failed task shows the truth as its third candidate
    assert page.count("attempt 1 ✓") == 3  # 00576224, 6ea4a07e test 1, 0692e18c
    section = page[page.index('id="task-0c786b71"'):page.index('id="task-03560426"')]
    assert "#3 = truth" in section and "score -3" in section
    assert "CUDA out of memory" in page and "timeout" in page


def test_report_escapes_run_text(run_copy):
    path = run_copy / "tasks" / "0c9aba6e.json"
    rec = json.loads(path.read_text())
    rec["error"] = "<script>alert('x')</script> & <b>"
    path.write_text(json.dumps(rec))
    page = write_report(run_copy).read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;" in page
    assert page.count("<script>") == 1  # only the page's own


def test_report_without_solutions(run_copy):
    page = write_report(run_copy).read_text()
    assert "no solutions given" in page
    assert set(re.findall(r'<details class="task (\w+)"', page)) == {"unscored", "noanswer"}
    assert not re.search(r'data-what="[^"]* truth"', page) and "= truth" not in page


def test_report_survives_broken_run_files(handmade_run, run_copy):
    (run_copy / "tasks" / "0c786b71.json").write_text("{not json")
    rec = json.loads((run_copy / "tasks" / "00576224.json").read_text())
    rec["tests"][0]["candidates"][1]["grid"] = [[1, 2], [3]]  # ragged
    rec["tests"][0]["attempts"] = "nonsense"
    (run_copy / "tasks" / "00576224.json").write_text(json.dumps(rec))
    (run_copy / "submission.json").unlink()
    page = write_report(run_copy, handmade_run[2]).read_text()
    assert "tasks/0c786b71.json: cannot read" in page
    assert "submission.json: missing; attempts are taken from the task results" in page
    assert 'id="task-0c786b71"' in page and "not a valid grid" in page
    assert "<b>2 / 7</b>" in page  # 00576224 lost its attempts, 0c786b71 its result file

    shutil.rmtree(run_copy / "tasks")
    (run_copy / "run.json").write_text("[]")
    page = write_report(run_copy, handmade_run[2]).read_text()
    assert "tasks/: missing (no task finished)" in page and "run.json: not a JSON object" in page


def test_report_and_show_cli(handmade_run, run_copy, tmp_path, capsys):
    _, challenges, solutions = handmade_run
    code, stdout, _ = run_cli(["report", run_copy, "--solutions", solutions], capsys)
    assert code == 0 and (run_copy / "report.html").is_file()
    assert stdout.strip() == str(run_copy / "report.html")

    out = tmp_path / "task.png"
    code, _, _ = run_cli(["show", "6ea4a07e", "--challenges", challenges, "--solutions", solutions, "--out", out],
                         capsys)
    assert code == 0
    from matplotlib.image import imread

    pixels = (imread(out)[..., :3] * 255).round().astype(int)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert pixels.shape[1] == 1920  # 6 train + 2 test columns of 2.4 inches at 100 dpi
    for colour in (PALETTE[0], PALETTE[1], PALETTE[2]):  # 6ea4a07e is drawn in black, blue and red
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        assert (pixels == rgb).all(axis=-1).sum() > 500

    code, _, err = run_cli(["show", "deadbeef", "--challenges", challenges], capsys)
    assert code == 2 and "task deadbeef is not in" in err


# --- a real browser ---------------------------------------------------------------------------------

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


class _DomFacts(HTMLParser):
    """From a DOM dump: the body's data attributes, hidden task sections and table rows, grid count."""

    def __init__(self):
        super().__init__()
        self.body: dict = {}
        self.shown: dict[str, set] = {"details": set(), "tr": set()}
        self.hidden: dict[str, set] = {"details": set(), "tr": set()}
        self.rows: list[str] = []
        self.grids = 0
        self._row = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "svg" and a.get("class") == "grid":
            self.grids += 1
        if tag in ("details", "tr") and "data-cat" in a:
            (self.hidden if "hidden" in a else self.shown)[tag].add(a.get("id") or a["class"])
            self._row = tag == "tr"
        if tag == "a" and self._row:
            self.rows.append(a["href"].removeprefix("#task-"))
            self._row = False


@pytest.mark.browser
def test_report_in_headless_chromium(handmade_run, run_copy, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; scripts/setup.sh --dev does it)")
    page = write_report(run_copy, handmade_run[2])
    base = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--mute-audio",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]

    # The filter and the sort in the address run through the same code as the buttons and headers.
    url = page.as_uri() + "#filter=solved&sort=total_s:desc"
    dump = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr[-2000:]
    console = [line for line in dump.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], f"the page logged or threw: {console}"
    dom = _DomFacts()
    dom.feed(dump.stdout)
    assert dom.body.get("data-ready") == "1", "the page's script did not run to its end"
    assert (dom.body.get("data-filter"), dom.body.get("data-sort")) == ("solved", "total_s:desc")
    assert dom.shown["details"] == {"task-00576224", "task-0692e18c"}
    assert dom.hidden["details"] == {f"task-{t}" for t in HANDMADE_TASKS} - dom.shown["details"]
    assert dom.shown["tr"] == {"solved"} and dom.hidden["tr"] == {"failed", "noanswer"}
    # slowest first; the two 60 s tasks keep their run order (the sort is stable)
    assert dom.rows == ["0692e18c", "0c786b71", "00576224", "03560426", "6ea4a07e", "0c9aba6e"]
    assert dom.grids > 60

    shot = tmp_path / "report.png"
    run = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1300,1800", page.as_uri()],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and shot.read_bytes()[:8] == PNG_MAGIC, run.stderr[-2000:]
    from matplotlib.image import imread

    pixels = (imread(shot)[..., :3] * 255).round().astype(int)
    assert pixels.shape[:2] == (1800, 1300)
    for colour in ("#FF4136", "#2ECC40", "#7FDBFF"):  # red, green, azure cells of the first tasks
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        assert (pixels == rgb).all(axis=-1).sum() > 200, f"no {colour} grid cells on screen"
