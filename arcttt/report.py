"""A run directory as one self-contained HTML page, and one task drawn as a PNG.

:func:`write_report` writes ``RUN_DIR/report.html``: the score, the timeline of where the time went,
a sortable table of every task, and per task its train pairs, test inputs, both attempts, the truth
and the top candidates, drawn as ARC-coloured grids. Grids are inline SVG (one path per colour, so
a 30x30 grid costs a few hundred bytes); the timeline is an inline base64 PNG; a few lines of inline
JavaScript sort the table and filter tasks; the address keeps both, so
``report.html#filter=failed&sort=total_s:desc`` opens on the failed tasks, slowest first. No network,
no external file. Every piece of text from the run is escaped.

:func:`draw_task` draws one task with matplotlib (``arcttt show``).
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arcttt.data import MAX_SIDE, DataFileError, Task, TaskError, load_challenges, load_solutions
from arcttt.profiling import (NO_ANSWER, PHASES, Run, load_run, margin, phase_totals, task_rows, timeline_figure,
                              worker_idle)

# The ARC palette, colour 0 to 9: black, blue, red, green, yellow, grey, magenta, orange, azure, maroon.
PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
           "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
CANDIDATES_SHOWN = 5
LOG_TAIL_LINES = 60
CATEGORIES = {  # filter key -> (button label, what it holds)
    "solved": ("Solved", "every test output right (either attempt equals the truth)"),
    "failed": ("Failed", "answered, but some test output wrong"),
    "noanswer": ("Defaulted / timed out", "no answer of its own: status default, timeout, error, stopped, rejected "
                 "or no result file"),
    "unscored": ("Not scored", "answered, no solution given to score it"),
}


# --- grids ----------------------------------------------------------------------------------------

def as_grid(obj: Any) -> np.ndarray | None:
    """A grid from JSON, or None if it is not a valid ARC grid (the report then says so).

    The same rules as ``data.parse_grid`` but checked on the array at once (a whole split's
    candidates are thousands of grids); only a bool mixed into int rows slips through, as 0/1.
    """
    if isinstance(obj, np.ndarray):
        a = obj
    else:
        try:
            a = np.asarray(obj)
        except (ValueError, TypeError):  # ragged rows
            return None
    if a.ndim != 2 or a.dtype.kind not in "iu" or not (1 <= a.shape[0] <= MAX_SIDE and 1 <= a.shape[1] <= MAX_SIDE):
        return None
    if a.min() < 0 or a.max() > 9:
        return None
    return a.astype(np.uint8)


def grid_svg(grid: np.ndarray, max_px: int = 160, what: str = "") -> str:
    """Inline SVG of a grid: one path per colour (runs of equal cells per row) and thin cell lines.

    ``what`` names the grid (``data-what``) so a reader or a test can find it.
    """
    h, w = grid.shape
    cell = max(3, min(18, max_px // max(h, w)))
    runs: list[list[str]] = [[] for _ in range(10)]  # per colour: one "M x y h n v1 h-n z" per run
    for r in range(h):
        row = grid[r]
        starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]]).tolist()
        for s, e in zip(starts, starts[1:] + [w]):
            runs[int(row[s])].append(f"M{s} {r}h{e - s}v1h-{e - s}z")
    paths = [f'<path fill="{PALETTE[c]}" d="{"".join(d)}"/>' for c, d in enumerate(runs) if d]
    lines = "".join(f"M{c} 0V{h}" for c in range(1, w)) + "".join(f"M0 {r}H{w}" for r in range(1, h))
    if lines:
        paths.append(f'<path d="{lines}" stroke="#555" stroke-width="0.5" vector-effect="non-scaling-stroke"/>')
    return (f'<svg class="grid" data-what="{html.escape(what)}" width="{cell * w}" height="{cell * h}" '
            f'viewBox="0 0 {w} {h}" shape-rendering="crispEdges"><title>{h}x{w}</title>{"".join(paths)}</svg>')


def _figure(grid_obj: Any, caption: str, what: str, max_px: int = 160, mark: str = "") -> str:
    grid = grid_obj if isinstance(grid_obj, np.ndarray) else as_grid(grid_obj)
    body = grid_svg(grid, max_px, what) if grid is not None else '<div class="bad">not a valid grid</div>'
    shape = f" {grid.shape[0]}x{grid.shape[1]}" if grid is not None else ""
    return (f'<figure class="{mark}">{body}<figcaption>{html.escape(caption)}'
            f'<span class="dim">{shape}</span></figcaption></figure>')


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and bool((a == b).all())


# --- what the report shows ------------------------------------------------------------------------

@dataclass
class _Inputs:
    run: Run
    tasks: dict[str, Task]  # from the run's challenges file, where it can be read
    solutions: dict[str, list[np.ndarray]]
    submission: dict | None
    problems: list[str]


def _read_inputs(run_dir: Path, solutions: Path | None) -> _Inputs:
    run = load_run(run_dir)
    problems = list(run.problems)
    tasks: dict[str, Task] = {}
    chal = run.info.get("challenges")
    path = run.path("challenges")
    if chal and path is None:
        problems.append(f"challenges file {chal} not found (nor beside the run folder): grids not shown")
    elif chal:
        try:
            loaded = load_challenges(path)
            tasks = loaded.tasks
            problems += [f"challenges: {r.reason}" for r in loaded.rejected]
        except DataFileError as e:
            problems.append(f"challenges not shown: {e}")
    else:
        problems.append("run.json names no challenges file: train pairs and test inputs not shown")
    sols: dict[str, list[np.ndarray]] = {}
    if solutions is None:  # a dry run records its solutions file: score against it by default
        solutions = run.path("solutions")
    if solutions is not None:
        sols = load_solutions(solutions)  # a bad solutions file is the caller's fault: let it raise
    submission = None
    sub_path = run_dir / "submission.json"
    if sub_path.is_file():
        try:
            submission = json.loads(sub_path.read_text())
            if not isinstance(submission, dict):
                problems.append("submission.json: not a JSON object of tasks")
                submission = None
        except (OSError, json.JSONDecodeError) as e:
            problems.append(f"submission.json: cannot read ({e})")
    else:
        problems.append("submission.json: missing; attempts are taken from the task results")
    if submission is not None and tasks:
        from arcttt.submission import validate_submission

        counts = {tid: t.n_test for tid, t in tasks.items()}
        faults = validate_submission({k: v for k, v in submission.items() if k in counts}, counts)
        problems += [f"submission.json: {f}" for f in faults[:20]]
    return _Inputs(run, tasks, sols, submission, problems)


def _attempts(inp: _Inputs, tid: str) -> list[list[np.ndarray | None]]:
    """Per test input, the two attempts: from submission.json (what is scored) or the task result."""
    if inp.submission is not None and isinstance(inp.submission.get(tid), list):
        return [[as_grid(e.get(k)) if isinstance(e, dict) else None for k in ("attempt_1", "attempt_2")]
                for e in inp.submission[tid]]
    rec = inp.run.tasks.get(tid)
    out = []
    for t in rec.tests if rec else []:
        out.append([as_grid(t.attempts[k]) if k < len(t.attempts) else None for k in (0, 1)])
    return out


def _score(inp: _Inputs, ids: list[str]):
    """ScoreResult over the run's tasks that have solutions (None without solutions)."""
    from arcttt.score import score_submission

    sols = {tid: inp.solutions[tid] for tid in ids if tid in inp.solutions}
    if not sols:
        return None
    sub = {tid: [{"attempt_1": a[0].tolist() if a[0] is not None else None,
                  "attempt_2": a[1].tolist() if a[1] is not None else None} for a in _attempts(inp, tid)]
           for tid in sols}
    return score_submission(sub, sols)


def _category(status: str, hits: tuple[bool, ...] | None) -> str:
    if status in NO_ANSWER or status == "missing":
        return "noanswer"
    if hits is None:
        return "unscored"
    return "solved" if all(hits) else "failed"


# --- the page -------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1400px;
 padding:16px 24px;color:#222;background:#fafafa}
h1{margin:0 0 2px}h2{margin:28px 0 8px;border-bottom:2px solid #ddd;padding-bottom:3px}
.dim{color:#777;font-weight:normal;margin-left:4px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:8px 16px;min-width:130px}
.card b{display:block;font-size:26px}.card span{color:#666;font-size:12px}
.problems{background:#fff4e5;border:1px solid #f0b36b;border-radius:6px;padding:6px 12px}
.problems li{font-family:ui-monospace,monospace;font-size:12px}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child,td.l{text-align:left}
th.sort{cursor:pointer;user-select:none;background:#f0f0f0}th.sort:hover{background:#e4e4e4}
th.asc:after{content:" \\25B2"}th.desc:after{content:" \\25BC"}
tr.solved td:first-child{border-left:4px solid #2ca02c}tr.failed td:first-child{border-left:4px solid #d62728}
tr.noanswer td:first-child{border-left:4px solid #999}
.filters{margin:8px 0;position:sticky;top:0;background:#fafafa;padding:6px 0;z-index:1}
.filters button{font:inherit;padding:4px 12px;margin-right:6px;border:1px solid #aaa;border-radius:14px;
 background:#fff;cursor:pointer}.filters button.on{background:#222;color:#fff;border-color:#222}
.task{background:#fff;border:1px solid #ddd;border-radius:8px;margin:14px 0;padding:4px 14px 10px}
.task.solved{border-left:6px solid #2ca02c}.task.failed{border-left:6px solid #d62728}
.task.noanswer{border-left:6px solid #999}
.task summary{cursor:pointer;font-size:16px;padding:6px 0}.task summary b{font-family:ui-monospace,monospace}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;margin-left:6px;color:#fff}
.b-solved{background:#2ca02c}.b-failed{background:#d62728}.b-noanswer{background:#888}.b-unscored{background:#1f77b4}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start;margin:6px 0}
.pair{display:flex;gap:6px;align-items:center;border:1px solid #eee;border-radius:6px;padding:4px}
.arrow{font-size:20px;color:#888}
figure{margin:0;display:inline-flex;flex-direction:column;align-items:center}
figcaption{font-size:12px;color:#333}figure.hit figcaption{color:#2ca02c;font-weight:bold}
figure.miss figcaption{color:#d62728}
.cands{margin:2px 0 6px 24px}figure.cand figcaption{font-size:11px;text-align:center;font-weight:normal}
figure.cand.miss figcaption{color:#333}
svg.grid{display:block;border:1px solid #888;background:#000}
.lbl{font-weight:bold;margin:8px 0 0}.err{color:#b00;font-family:ui-monospace,monospace;white-space:pre-wrap}
.bad{color:#b00;font-size:12px;border:1px dashed #b00;padding:8px}
pre{background:#fff;border:1px solid #ddd;padding:8px;overflow:auto;max-height:420px;font-size:12px}
.legend span{display:inline-block;width:14px;height:14px;vertical-align:middle;border:1px solid #888;
 margin:0 3px 0 10px}
"""

JS = """
(function(){
var state={filter:'all',sort:''};
function writeHash(){
  history.replaceState(null,'','#filter='+state.filter+(state.sort?'&sort='+state.sort:''));
}
function applyFilter(f){
  if(!document.querySelector('.filters button[data-f="'+f+'"]')) f='all';
  document.querySelectorAll('[data-cat]').forEach(function(e){e.hidden=(f!=='all'&&e.dataset.cat!==f);});
  document.querySelectorAll('.filters button').forEach(function(b){b.classList.toggle('on',b.dataset.f===f);});
  state.filter=document.body.dataset.filter=f;
}
function sortBy(key,asc){
  var th=document.querySelector('th.sort[data-k="'+key+'"]');
  if(!th) return;
  var table=th.closest('table'),body=table.tBodies[0],col=th.cellIndex;
  table.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
  th.classList.add(asc?'asc':'desc');
  function val(r){var c=r.cells[col];return c.dataset.v===undefined?c.textContent:c.dataset.v;}
  var rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(a,b){
    var x=val(a),y=val(b),nx=parseFloat(x),ny=parseFloat(y);
    if(x===''||y==='') return (x==='')-(y==='');  /* blanks last either way */
    var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:(x<y?-1:x>y?1:0);
    return asc?c:-c;
  });
  rows.forEach(function(r){body.appendChild(r);});
  state.sort=document.body.dataset.sort=key+(asc?'':':desc');
}
function fromHash(){
  var p={};
  location.hash.replace(/^#/,'').split('&').forEach(function(kv){
    var i=kv.indexOf('=');
    if(i>0) p[kv.slice(0,i)]=decodeURIComponent(kv.slice(i+1));
  });
  if('filter' in p||!document.body.dataset.filter) applyFilter(p.filter||'all');
  if(p.sort){var s=p.sort.split(':');sortBy(s[0],s[1]!=='desc');}
}
document.querySelectorAll('.filters button').forEach(function(b){
  b.addEventListener('click',function(){applyFilter(b.dataset.f);writeHash();});
});
document.querySelectorAll('th.sort').forEach(function(th){
  th.addEventListener('click',function(){sortBy(th.dataset.k,!th.classList.contains('asc'));writeHash();});
});
window.addEventListener('hashchange',fromHash);  /* a task link (#task-ID) keeps the filter */
fromHash();
document.body.dataset.ready='1';
})();
"""


def _slug(header: str) -> str:
    """A column's key in ``#sort=KEY[:desc]``: "total s" -> "total_s"."""
    return "_".join(header.lower().split())


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num_td(x: float | int | None, fmt: str = "{:.1f}") -> str:
    return '<td data-v=""></td>' if x is None else f'<td data-v="{x}">{fmt.format(x)}</td>'


def _sparkline(losses: list) -> str:
    vals = [float(v) for v in losses if isinstance(v, (int, float)) and np.isfinite(v)]
    if len(vals) < 2:
        return ""
    lo, hi = min(vals), max(vals)
    pts = " ".join(f"{80 * i / (len(vals) - 1):.1f},{18 - 16 * (v - lo) / ((hi - lo) or 1):.1f}"
                   for i, v in enumerate(vals))
    return (f'<svg width="80" height="20" style="vertical-align:middle"><title>TTT loss {vals[0]:.3g} to '
            f'{vals[-1]:.3g}</title><polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="1.5"/></svg>')


def _task_section(inp: _Inputs, tid: str, row, hits: tuple[bool, ...] | None, cat: str) -> str:
    rec = inp.run.tasks.get(tid)
    task = inp.tasks.get(tid)
    truths = inp.solutions.get(tid)
    solved = f"{sum(hits)}/{len(hits)} right" if hits is not None else "not scored"
    head = [f"<b>{_e(tid)}</b>", f'<span class="badge b-{cat}">{_e(CATEGORIES[cat][0])}</span>',
            f'<span class="dim">{_e(solved)} · status {_e(row.status)}']
    if row.worker is not None:
        head.append(f" · worker {row.worker}")
    if row.seconds is not None:
        head.append(f" · {row.seconds:.1f} s")
    if row.ttt_steps is not None:
        head.append(f" · TTT {row.ttt_steps} steps")
    if row.final_loss is not None:
        head.append(f", final loss {row.final_loss:.3f}")
    head.append("</span> " + (_sparkline(rec.ttt.losses) if rec and rec.ttt else ""))
    out = [f'<details class="task {cat}" id="task-{_e(tid)}" data-cat="{cat}" open><summary>{"".join(head)}</summary>']
    if row.error:
        out.append(f'<div class="err">{_e(row.error)}</div>')
    if task is not None:
        out.append('<div class="lbl">Train pairs (input → output)</div><div class="row">')
        for i, p in enumerate(task.train, 1):
            out.append(f'<div class="pair">{_figure(p.input, f"train {i} in", f"{tid} train {i} input", 120)}'
                       f'<span class="arrow">→</span>'
                       f'{_figure(p.output, f"train {i} out", f"{tid} train {i} output", 120)}</div>')
        out.append("</div>")
    attempts = _attempts(inp, tid)
    n_test = task.n_test if task else max(len(attempts), len(truths or []), len(rec.tests) if rec else 0)
    for i in range(n_test):
        truth = truths[i] if truths and i < len(truths) else None
        out.append(f'<div class="lbl">Test {i + 1}'
                   + (f' — {"right" if hits[i] else "wrong"}' if hits is not None and i < len(hits) else "")
                   + '</div><div class="row">')
        if task is not None:
            out.append(_figure(task.test_inputs[i], "test input", f"{tid} test {i + 1} input"))
            out.append('<span class="arrow">→</span>')
        pair = attempts[i] if i < len(attempts) else [None, None]
        for k, a in enumerate(pair, 1):
            mark = "" if truth is None else ("hit" if _same(a, truth) else "miss")
            tick = {"hit": " ✓", "miss": " ✗"}.get(mark, "")
            out.append(_figure(a, f"attempt {k}{tick}", f"{tid} test {i + 1} attempt {k}", mark=mark)
                       if a is not None else f'<div class="bad">attempt {k}: none</div>')
        if truth is not None:
            out.append(_figure(truth, "truth", f"{tid} test {i + 1} truth"))
        out.append("</div>")
        cands = rec.tests[i].candidates if rec and i < len(rec.tests) else []
        if cands:
            out.append(_candidates(tid, i, cands, truth))
    out.append("</details>")
    return "\n".join(out)


def _candidates(tid: str, i: int, cands: list, truth: np.ndarray | None) -> str:
    """The top candidates of one test input as small grids captioned with their figures."""
    shown = [c for c in cands if isinstance(c, dict)][:CANDIDATES_SHOWN]
    figs = []
    for rank, c in enumerate(shown, 1):
        g = as_grid(c.get("grid"))
        facts = [f"{k} {c[k]:.3g}" if isinstance(c.get(k), float) else f"{k} {c[k]}"
                 for k in ("score", "hits", "search_logprob") if c.get(k) is not None]
        mark = "" if truth is None else ("hit" if _same(g, truth) else "miss")
        body = grid_svg(g, 72, f"{tid} test {i + 1} candidate {rank}") if g is not None else \
            '<div class="bad">not a valid grid</div>'
        figs.append(f'<figure class="cand {mark}">{body}<figcaption>#{rank}{" = truth" if mark == "hit" else ""}'
                    f'<br><span class="dim">{"<br>".join(_e(f) for f in facts)}</span></figcaption></figure>')
    more = f", {len(cands) - len(shown)} more not shown" if len(cands) > len(shown) else ""
    return (f'<div class="cands"><span class="dim">Top candidates by score (of {len(cands)}{more}):</span>'
            f'<div class="row">{"".join(figs)}</div></div>')


def _fmt_s(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f} s"


def render_report(run_dir: Path, solutions: Path | None = None, timeline_png: bytes | None = None) -> str:
    """The report page as a string (see :func:`write_report`)."""
    inp = _read_inputs(run_dir, solutions)
    run = inp.run
    ids = run.task_ids
    result = _score(inp, ids)
    hits_of = {r.task_id: r.hits for r in result.per_task} if result else {}
    rows = task_rows(run)
    cats = {r.task_id: _category(r.status, hits_of.get(r.task_id)) for r in rows}
    m = margin(run)
    info = run.info

    score_card = (f"<b>{result.correct} / {result.total}</b><span>test outputs right = {100 * result.score:.1f}%"
                  f"</span>" if result else "<b>–</b><span>no solutions given</span>")
    count = {c: sum(v == c for v in cats.values()) for c in CATEGORIES}
    cards = [score_card, f"<b>{count['solved']} / {len(ids)}</b><span>tasks fully solved</span>",
             f"<b>{count['noanswer']}</b><span>tasks defaulted / timed out / errored</span>",
             f"<b>{_fmt_s(m.after_last_task_s)}</b><span>left at the deadline after the last task</span>"]
    page = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>arcttt report: {_e(run_dir.name)}'
            f'</title><meta name="viewport" content="width=device-width"><style>{CSS}</style></head><body>',
            "<h1>arcttt run report</h1>",
            f'<div class="dim">{_e(run_dir)} · model {_e(info.get("model", "?"))} · {len(ids)} tasks · '
            f'{len(run.workers)} worker(s) · budget {_fmt_s(run.budget_s)} · written '
            f'{_e(time.strftime("%Y-%m-%d %H:%M"))}</div>',
            '<div class="cards">' + "".join(f'<div class="card">{c}</div>' for c in cards) + "</div>"]
    if inp.problems:
        page.append('<div class="problems"><b>Problems reading the run</b><ul>'
                    + "".join(f"<li>{_e(p)}</li>" for p in inp.problems) + "</ul></div>")

    page.append("<h2>Where the time went</h2>")
    if timeline_png:
        page.append(f'<img alt="timeline: a row per worker, tasks as bars coloured by phase" style="max-width:100%" '
                    f'src="data:image/png;base64,{base64.b64encode(timeline_png).decode()}">')
    totals = phase_totals(run)
    page.append('<div class="row"><table><thead><tr><th>phase</th><th>worker-seconds</th><th>share of budget × '
                'workers</th></tr></thead><tbody>'
                + "".join(f"<tr><td>{_e(t.phase)}</td><td>{t.seconds:.1f}</td><td>"
                          f"{'–' if t.share is None else f'{100 * t.share:.1f}%'}</td></tr>" for t in totals)
                + "</tbody></table><table><thead><tr><th>worker</th><th>tasks</th><th>busy s</th><th>idle s</th>"
                '<th title="out of work while other workers still ran">tail s</th></tr></thead><tbody>'
                + "".join(f"<tr><td>{w.worker}</td><td>{w.tasks}</td><td>{w.busy_s:.1f}</td><td>{w.idle_s:.1f}</td>"
                          f"<td>{w.tail_s:.1f}</td></tr>" for w in worker_idle(run))
                + f"</tbody></table><div>Margin at the deadline:<br>{_fmt_s(m.after_last_task_s)} after the last "
                f"task ended<br>{_fmt_s(m.after_submission_s)} after submission.json was last written</div></div>")

    page.append("<h2>Tasks</h2>")
    buttons = [f'<button data-f="all" title="every task">All ({len(ids)})</button>']
    buttons += [f'<button data-f="{c}" title="{_e(what)}">{_e(label)} ({count[c]})</button>'
                for c, (label, what) in CATEGORIES.items() if c != "unscored" or count[c]]
    page.append('<div class="filters">Show: ' + "".join(buttons)
                + '<span class="dim">click a column header to sort, a task id to see its grids</span></div>')
    phase_cols = [p for p in PHASES if any(p in r.phases for r in rows)]
    phase_cols += sorted({p for r in rows for p in r.phases} - set(phase_cols))
    heads = ["task", "solved", "status", "worker", "candidates", "TTT steps", "final loss", "total s"]
    heads += [f"{p} s" for p in phase_cols]
    page.append('<table id="tasks"><thead><tr>'
                + "".join(f'<th class="sort" data-k="{_e(_slug(h))}">{_e(h)}</th>' for h in heads)
                + "</tr></thead><tbody>")
    for r in rows:
        hits = hits_of.get(r.task_id)
        solved = (f'<td data-v="{sum(hits) / len(hits)}">{sum(hits)}/{len(hits)}</td>' if hits
                  else '<td data-v=""></td>')
        page.append(f'<tr class="{cats[r.task_id]}" data-cat="{cats[r.task_id]}"><td><a href="#task-{_e(r.task_id)}">'
                    f'{_e(r.task_id)}</a></td>{solved}<td class="l">{_e(r.status)}</td>'
                    + _num_td(r.worker, "{}") + _num_td(r.n_candidates, "{}") + _num_td(r.ttt_steps, "{}")
                    + _num_td(r.final_loss, "{:.3f}") + _num_td(r.seconds)
                    + "".join(_num_td(r.phases.get(p)) for p in phase_cols) + "</tr>")
    page.append("</tbody></table>")

    page.append('<h2>Task details</h2><p class="dim">Per task: its train pairs (input → output); then per test '
                "input: the input, the two submitted attempts (✓: equals the truth; a test output counts as right "
                "if either attempt does), the truth, and the top candidates of the search ranked by score (higher "
                "is better).</p>"
                '<div class="legend dim">ARC colours:'
                + "".join(f'<span style="background:{c}"></span>{i}' for i, c in enumerate(PALETTE)) + "</div>")
    for r in rows:
        page.append(_task_section(inp, r.task_id, r, hits_of.get(r.task_id), cats[r.task_id]))

    page.append("<h2>Run files</h2>")
    for name in ("config.json", "run.json"):
        path = run_dir / name
        if path.is_file():
            text = path.read_text(errors="replace")
            page.append(f"<details><summary>{name}</summary><pre>{_e(text)}</pre></details>")
    log = run_dir / "log.txt"
    if log.is_file():
        tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        page.append(f"<details><summary>log.txt (last {len(tail)} lines)</summary><pre>{_e(chr(10).join(tail))}"
                    "</pre></details>")
    page.append(f"<script>{JS}</script></body></html>")
    return "\n".join(page)


def write_report(run_dir: Path, solutions: Path | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` (and ``RUN_DIR/timeline.png``); returns the report's path.

    ``solutions`` (Kaggle ``{id: [grid, ...]}``) adds the score, the truth beside each attempt, and the
    solved / failed filters. Unreadable run files are listed on the page, not raised.
    """
    run_dir = Path(run_dir)
    png = timeline_figure(load_run(run_dir), run_dir / "timeline.png").read_bytes()
    path = run_dir / "report.html"
    path.write_text(render_report(run_dir, solutions, png), encoding="utf-8")
    return path


# --- one task as a PNG ----------------------------------------------------------------------------

def find_task(challenges: Path, task_id: str, solutions: Path | None = None) -> Task:
    """Task ``task_id`` of a challenges file, with its test outputs if ``solutions`` is given;
    a TaskError names the task when it is absent or was rejected."""
    loaded = load_challenges(challenges)
    if task_id not in loaded.tasks:
        rejected = {r.task_id: r.reason for r in loaded.rejected}
        if task_id in rejected:
            raise TaskError(f"task {task_id} in {challenges} cannot be drawn: {rejected[task_id]}")
        raise TaskError(f"task {task_id} is not in {challenges} ({len(loaded.ids)} tasks there)")
    task = loaded.tasks[task_id]
    if solutions is not None:
        sols = load_solutions(solutions)
        if task_id not in sols:
            raise TaskError(f"task {task_id} is not in the solutions file {solutions}")
        if len(sols[task_id]) != task.n_test:
            raise TaskError(f"task {task_id}: {len(sols[task_id])} solutions for {task.n_test} test inputs")
        task = Task(task.id, task.train, task.test_inputs, tuple(sols[task_id]))
    return task


def draw_task(task: Task, path: Path) -> Path:
    """Draw a task to a PNG: one column per train pair (input over output), then one per test input
    (input over its solution, if known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(PALETTE)
    columns = [(f"train {i}", p.input, p.output) for i, p in enumerate(task.train, 1)]
    columns += [(f"test {i}", x, task.test_outputs[i - 1] if task.test_outputs else None)
                for i, x in enumerate(task.test_inputs, 1)]
    fig, axes = plt.subplots(2, len(columns), figsize=(2.4 * len(columns), 5), squeeze=False)
    for col, (name, top, bottom) in enumerate(columns):
        for row, grid in enumerate((top, bottom)):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if grid is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "?", ha="center", va="center", fontsize=28, color="#999")
                continue
            h, w = grid.shape
            ax.imshow(grid, cmap=cmap, vmin=0, vmax=9, interpolation="nearest")
            ax.set_xticks(np.arange(-0.5, w), minor=True)
            ax.set_yticks(np.arange(-0.5, h), minor=True)
            ax.grid(which="minor", color="#555", linewidth=0.5)
            ax.tick_params(which="minor", length=0)
            ax.set_title(f"{name} {'input' if row == 0 else 'output'} {h}x{w}", fontsize=9)
    fig.suptitle(f"task {task.id}: {len(task.train)} train pairs, {task.n_test} test input(s)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path
