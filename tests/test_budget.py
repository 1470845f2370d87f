"""Budget: deadline, cost-proportional shares, phase deadlines, ordering, planning."""

import pytest

from arcttt.budget import Budget, BudgetConfig, expected_cost, order_tasks, task_tokens


def test_deadline_is_start_plus_budget_minus_margin():
    b = Budget(BudgetConfig(time_budget_s=1000, safety_margin_s=100), start=50.0, workers=2)
    assert b.deadline == 950.0
    assert b.remaining(now=900.0) == 50.0
    assert b.can_start(now=940.0) and not b.can_start(now=946.0)


def test_share_is_proportional_to_cost_and_clipped():
    cfg = BudgetConfig(time_budget_s=1000, safety_margin_s=0, min_task_s=1, max_task_s=10_000)
    b = Budget(cfg, start=0.0, workers=2)
    # 1000 s left x 2 workers, this task is a quarter of the pending cost -> 500 s
    assert b.share(cost=1, pending_cost=4, now=0.0) == pytest.approx(500.0)
    # never beyond the deadline, even for the only task left on many workers
    assert b.share(cost=1, pending_cost=1, now=900.0) == pytest.approx(100.0)
    # at least min_task_s, and nothing once the deadline has passed
    assert b.share(cost=1, pending_cost=1e9, now=0.0) == 1.0
    assert b.share(cost=1, pending_cost=1, now=1000.0) == 0.0
    capped = Budget(BudgetConfig(time_budget_s=1000, safety_margin_s=0, max_task_s=50), 0.0, 1)
    assert capped.share(1, 1, now=0.0) == 50.0


def test_phase_deadlines_follow_fractions():
    cfg = BudgetConfig(time_budget_s=1000, safety_margin_s=0, ttt_frac=0.5, search_frac=0.3,
                       max_task_s=10_000)
    d = Budget(cfg, start=0.0, workers=1).deadlines(cost=1, pending_cost=1, now=0.0)
    assert (d.start, d.ttt, d.search, d.end) == pytest.approx((0.0, 500.0, 800.0, 1000.0))
    assert d.share_s == pytest.approx(1000.0)


def test_hang_limit_never_past_deadline():
    cfg = BudgetConfig(time_budget_s=1000, safety_margin_s=0, hang_factor=2, hang_grace_s=10, max_task_s=10_000)
    b = Budget(cfg, start=0.0, workers=1)
    d = b.deadlines(cost=1, pending_cost=10, now=0.0)  # 100 s share
    assert b.hang_limit(d) == pytest.approx(210.0)
    late = b.deadlines(cost=1, pending_cost=1, now=900.0)
    assert b.hang_limit(late) == 1000.0


@pytest.mark.parametrize("bad", [dict(time_budget_s=0), dict(time_budget_s=100, safety_margin_s=100),
                                 dict(ttt_frac=0.8, search_frac=0.3), dict(order="random"),
                                 dict(min_task_s=10, max_task_s=5)])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        BudgetConfig(**bad)


def test_costs_and_order_on_real_tasks(arc1_eval):
    tasks = arc1_eval[:30]
    for t in tasks:
        train, prompt = task_tokens(t)
        assert 0 < train < prompt
    cheap = order_tasks(tasks, "cheap_first")
    costs = [expected_cost(t) for t in cheap]
    assert costs == sorted(costs)
    assert order_tasks(tasks, "expensive_first") == cheap[::-1] or \
        [expected_cost(t) for t in order_tasks(tasks, "expensive_first")] == sorted(costs, reverse=True)
    assert order_tasks(tasks, "given") == tasks


def test_plan_report_fits_or_not(tmp_path):
    from arcttt.plan import plan_report
    from arcttt.data import export_split

    challenges, _ = export_split("arc-agi-2-eval", tmp_path, limit=6)
    text = plan_report(challenges, "kaggle-l4x4")
    assert "6 tasks" in text and "-> fits" in text and "assumed" in text
    tight = tmp_path / "tight.json"
    tight.write_text('{"preset": "kaggle-l4x4", "budget": {"time_budget_s": 120, "safety_margin_s": 60}}')
    text = plan_report(challenges, str(tight))
    assert "does NOT fit" in text
    rows = [line.split() for line in text.splitlines()[5:]]
    assert len(rows) == 6 and all(int(r[-1]) < 96 for r in rows)  # each task gets less than its plan


def test_a_given_budget_keeps_only_a_small_margin():
    from arcttt.config import load_config

    cfg = load_config("kaggle-l4x4").budget
    assert cfg.safety_margin_s == 600
    short = cfg.for_budget(900)  # the notebook's self-check: the preset's margin would not even fit
    assert short.time_budget_s == 900 and short.safety_margin_s == 45
    long = cfg.for_budget(11 * 3600)
    assert long.safety_margin_s == 600
