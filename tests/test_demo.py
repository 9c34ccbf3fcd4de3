"""The demo's table and target checks (the demo itself runs in `make demo`)."""

from experiments import demo


def _row(name, linear, collapse=None, minutes=None):
    return dict(
        encoder=name,
        linear=linear,
        knn=linear - 2,
        label1=linear - 20,
        label10=linear - 10,
        rank=12.0,
        collapse=collapse,
        minutes=minutes,
    )


def test_targets_met_and_missed():
    rows = [
        _row("BYOL (gn_ws)", 78.7, 0.44, 5.0),
        _row("BYOL (bn)", 80.0, 0.88, 5.0),
        _row("random init (gn_ws)", 64.7, 0.27),
        _row("raw pixels", 84.5),
    ]
    assert demo.check_targets(rows) == [
        "ok   GN+WS vs random init: +14.0 points (>= 10)",
        "ok   BN - GN+WS: +1.3 points (<= 5)",
        "ok   GN+WS collapse indicator: 0.440 (>= 0.1; ~0 is collapse)",
    ]
    rows[0] = _row("BYOL (gn_ws)", 70.0, 0.01, 5.0)
    lines = demo.check_targets(rows)
    assert [line[:4] for line in lines] == ["MISS"] * 3
    assert "+5.3 points" in lines[0] and "+10.0 points" in lines[1]


def test_targets_skip_rows_that_were_not_run():
    rows = [_row("BYOL (gn_ws)", 78.0, 0.5, 5.0), _row("raw pixels", 84.5)]
    assert demo.check_targets(rows) == [
        "ok   GN+WS collapse indicator: 0.500 (>= 0.1; ~0 is collapse)"
    ]
    assert demo.check_targets([_row("BYOL (bn)", 80.0, 0.9)]) == []


def test_table_has_a_row_per_encoder_and_dashes_for_missing_values():
    table = demo.format_table(
        [_row("BYOL (gn_ws)", 78.71, 0.4412, 5.04), _row("raw pixels", 84.5)]
    ).splitlines()
    assert len(table) == 4
    assert (
        table[2] == "| BYOL (gn_ws) | 78.7 | 76.7 | 58.7 | 68.7 | 12.0 | 0.441 | 5.0 |"
    )
    assert table[3] == "| raw pixels | 84.5 | 82.5 | 64.5 | 74.5 | 12.0 | — | — |"


def test_a_suite_becomes_a_row_in_percent():
    suite = {
        "linear": {"top1": 0.8},
        "knn": {"best_top1": 0.75},
        "few_label": {"1%": {"top1_mean": 0.6}, "10%": {"top1_mean": 0.7}},
        "rank": {"embedding": 20.0},
    }
    row = demo.suite_row("x", suite, 0.5, 3.0)
    assert (row["linear"], row["knn"], row["label1"], row["label10"]) == (
        80.0,
        75.0,
        60.0,
        70.0,
    )
