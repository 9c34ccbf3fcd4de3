"""Tests of experiments.normalization_study: variants, recipes, runs, report."""

import csv
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow")

from byol import config_checks  # noqa: E402
from experiments import normalization_study as study  # noqa: E402
from tests.fixtures import tiny_config, write_fake_fashion_mnist  # noqa: E402

VARIANTS = ("byol_none", "simclr_bn")
STEPS = 2


# ------------------------------------------------------------------ variants
def test_table_1_has_every_bn_or_none_combination_of_the_three_components():
    base = study.small_config(1)
    combos = {}
    for name in study.variant_names("small"):
        config = study.variant_config(base, name, seed=0)
        norms = study.component_norms(config)
        if config.method == "byol" and set(norms) <= {"BN", "none"}:
            combos[norms] = name
    assert len(combos) == 8
    assert combos[("BN", "BN", "BN")] == "byol_bn"
    assert combos[("none", "none", "none")] == "byol_none"
    assert combos[("BN", "none", "none")] == "byol_bn_enc"
    assert combos[("none", "BN", "BN")] == "byol_bn_proj_pred"


def test_named_variants_and_recipes_set_what_they_say():
    base = study.small_config(1)

    def norms(name):
        return study.component_norms(study.variant_config(base, name, 3))

    assert norms("byol_gn_ws") == ("GN+WS", "GN", "GN")
    assert norms("byol_gn") == ("GN", "GN", "GN")
    assert norms("byol_ws") == ("WS", "none", "none")
    assert norms("byol_gn_ws_ln_heads") == ("GN+WS", "LN", "LN")
    assert norms("simclr_none") == ("none", "none", "—")
    bn_init = study.variant_config(base, "byol_bn_init", 3)
    assert bn_init.model.bn_init and bn_init.seed == 3
    assert study.variant_config(base, "simclr_bn", 0).method == "simclr"
    # A variant's fields do not leak into the next one built from the same base.
    assert not study.variant_config(base, "byol_bn", 0).model.bn_init
    # The paper's recipe: predictor at the rest's rate, GN with 16 groups,
    # the reference crop over U[0.08, 1]; pred10x changes the predictor only.
    paper = study.variant_config(base, "byol_gn_ws", 0, "paper")
    fast = study.variant_config(base, "byol_gn_ws", 0, "pred10x")
    assert paper.training.predictor_lr_multiplier == 1.0
    assert fast.training.predictor_lr_multiplier == 10.0
    assert (paper.model.num_groups, paper.data.crop_rule) == (16, "reference")
    assert paper.data.min_crop_area == 0.08
    diff = {
        (section, key)
        for section in ("data", "model", "training", "evaluation")
        for key, value in paper[section].items()
        if fast[section][key] != value
    }
    assert diff == {("training", "predictor_lr_multiplier")}


def test_plans_and_every_config_of_both_scales_are_valid():
    main = study.planned_runs("main", epochs=10)
    pilot = study.planned_runs("pilot", epochs=10)
    paper = study.study_runs("paper", study.variant_names("paper"), [0])
    for run in main + pilot + paper:
        config_checks.check_pretrain_config(run.config)
    names = [r.name for r in main]
    assert len(set(names)) == len(names)
    seeds = {}
    for r in main:
        seeds.setdefault((r.variant, r.recipe), set()).add(r.seed)
    assert all(seeds[v, "paper"] == {0, 1, 2} for v in study.KEY_VARIANTS)
    assert all(seeds[v, "pred10x"] == {0, 1, 2} for v in study.PRED10X_VARIANTS)
    assert {r.config.training.max_steps for r in main} == {10 * 60_000 // 256}
    assert sorted(r.epochs for r in pilot) == [1, 1, 3, 3, 10, 10]
    assert {r.config.data.dataset for r in paper} == {"imagenet2012"}
    steps = {r.variant: r.config.training.max_steps for r in paper}
    assert steps["byol_bn_1000ep"] == 1000 * 1281167 // 4096 == 312_784
    assert steps["byol_bn"] == 300 * 1281167 // 4096 == 93_835


@pytest.mark.parametrize(
    "scale, names, recipes, message",
    [
        ("small", ["byol_bn", "nope"], ["paper"], "--variants: 'nope' unknown;"),
        ("small", ["byol_gn_ws_1000ep"], ["paper"], "of the paper scale only"),
        ("huge", ["byol_bn"], ["paper"], "--scale 'huge' unknown; expected one"),
        ("small", ["byol_bn"], ["fast"], "--recipes: 'fast' unknown; expected"),
    ],
)
def test_bad_variant_recipe_or_scale_is_a_one_line_error(
    scale, names, recipes, message
):
    with pytest.raises(ValueError, match=message) as error:
        study.study_runs(scale, names, [0], recipes)
    assert "\n" not in str(error.value)


def test_cli_dry_run_and_unknown_variant():
    command = [sys.executable, "-m", "experiments.normalization_study"]
    dry = subprocess.run(
        [*command, "--scale=paper", "--dry_run", "--seeds=0"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = dry.stdout.strip().splitlines()
    assert lines[-1] == "17 configs valid; nothing trained (--dry_run)"
    assert sum("imagenet2012" in line for line in lines) == 17
    bad = subprocess.run(
        [*command, "--variants=byol_bn,simclr_ln", "--dry_run"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: --variants: 'simclr_ln' unknown; expected one of: "
        + ", ".join(study.variant_names("small"))
    ]


# -------------------------------------------------------------- tiny study
@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Two variants x one seed, two steps each, on a fake Fashion-MNIST."""
    data_dir = tmp_path_factory.mktemp("fm_data")
    write_fake_fashion_mnist(str(data_dir))
    base = tiny_config(data_dir, max_steps=STEPS, log_every_steps=1)
    base.evaluation.evaluate_at_start = True
    base.evaluation.probe_every_steps = 1
    runs = [
        study.Run(v, "paper", 0, 1, study.variant_config(base, v, 0)) for v in VARIANTS
    ]
    results, workdirs = (str(tmp_path_factory.mktemp(n)) for n in ("results", "runs"))
    records = [study.execute(run, results, workdirs) for run in runs]
    paths = study.write_report(study.read_records(results), results)
    return runs, results, workdirs, records, paths


def test_each_run_left_its_result_file(tiny_study):
    runs, results, workdirs, records, _ = tiny_study
    for run, record in zip(runs, records, strict=True):
        with open(os.path.join(results, "runs", f"{run.name}.json")) as f:
            saved = json.load(f)
        with open(os.path.join(workdirs, run.name, "results.json")) as f:
            pretrained = json.load(f)
        assert saved == json.loads(json.dumps(record))
        assert saved["status"] == "done" and saved["steps"] == STEPS
        assert saved["final"] == pretrained["evaluation"]
        assert saved["start"] == pretrained["start_evaluation"]
        assert 0 <= saved["final"]["linear"]["top1"] <= 1
        assert set(saved["final"]["few_label"]) == {"1%", "10%"}
        assert saved["config"]["method"] == run.config.method
        assert saved["code"]["code_sha256"] == study.code_version()["code_sha256"]
        assert saved["where"]["platform"] == "cpu"
        assert saved["where"]["cpu"] == study._cpu_model() != ""
        assert saved["minutes"] > 0 and saved["cpu_minutes"] > 0
        # Metrics at every probe (steps 0, 1, 2) and the collapse indicator.
        probes = [h["step"] for h in saved["history"] if "probe_top1" in h]
        assert probes == [0, 1, 2]
        assert [h["step"] for h in saved["history"] if "collapse" in h] == [1, 2]
        assert "knn20_top1" in saved["history"][-1]
        assert "rank_projection" in saved["history"][-1]
        # No checkpoint goes into the results folder.
        assert not os.path.exists(os.path.join(results, "runs", run.name))
    assert records[1]["method"] == "simclr" and records[1]["norms"][2] == "—"


def test_table_rows_figure_and_table_only_rebuild(tiny_study):
    _, results, _, records, paths = tiny_study
    with open(paths["markdown"]) as f:
        text = f.read()
    rows = [line for line in text.splitlines() if line.startswith("| byol_none")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    start = records[0]["start"]["linear"]["top1"]
    final = records[0]["final"]["linear"]["top1"]
    assert cells[:7] == ["byol_none", "paper", "1", "none", "none", "none", "0"]
    assert cells[7] == f"{100 * start:.1f}" and cells[8] == f"{100 * final:.1f}"
    assert cells[9] == f"{100 * (final - start):+.1f}"
    assert cells[-1] == "0.1 (GN+WS report, 300 ep.)"
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [r["variant"] for r in table] == list(VARIANTS)
    assert float(table[0]["linear_mean"]) == pytest.approx(final, abs=1e-5)
    assert table[0]["linear_std"] == ""  # one seed: no spread
    with open(paths["figure"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # The table-only mode rebuilds the same table from the result files alone.
    os.remove(paths["markdown"])
    command = [
        sys.executable,
        "-m",
        "experiments.normalization_study",
        "--table_only",
        f"--results={results}",
    ]
    subprocess.run(command, check=True, capture_output=True)
    with open(paths["markdown"]) as f:
        assert f.read() == text


def test_rerun_trains_nothing(tiny_study, monkeypatch):
    runs, results, workdirs, records, _ = tiny_study
    calls = []
    monkeypatch.setattr(study, "pretrain_isolated", lambda *a: calls.append(a))
    again = [study.execute(run, results, workdirs) for run in runs]
    assert calls == []
    assert [r["final"] for r in again] == [r["final"] for r in records]


def test_a_run_that_fails_in_its_process_is_reported_by_name(tiny_study, tmp_path):
    runs = tiny_study[0]
    config = runs[0].config.copy_and_resolve_references()
    config.data.data_dir = str(tmp_path / "no_data")
    with pytest.raises(
        RuntimeError, match=r"the run in .*/run failed: .*fashion_mnist"
    ):
        study.pretrain_isolated(config, str(tmp_path / "run"))


def test_a_run_directory_of_another_config_is_refused(tiny_study):
    runs, results, workdirs, _, _ = tiny_study
    config = runs[0].config.copy_and_resolve_references()
    config.training.max_steps = STEPS + 1
    run = study.Run(runs[0].variant, "paper", 0, 1, config)
    with pytest.raises(ValueError, match=r"holds a run of another config"):
        study.execute(run, str(os.path.join(results, "other")), workdirs)


# ------------------------------------------------------------------ summary
def _record(variant, seed, start, final, status="done"):
    suite = lambda top1: {  # noqa: E731
        "linear": {"top1": top1},
        "knn": {"best_top1": top1 - 0.05},
        "few_label": {
            "1%": {"top1_mean": top1 - 0.2},
            "10%": {"top1_mean": top1 - 0.1},
        },
        "rank": {"embedding": 10.0, "projection": 5.0},
    }
    return {
        "variant": variant,
        "recipe": "paper",
        "epochs": 10,
        "seed": seed,
        "norms": ["BN", "BN", "BN"],
        "status": status,
        "start": suite(start),
        "final": suite(final) if status == "done" else None,
        "final_scalars": {"collapse": 0.5},
        "minutes": 2.0,
    }


def test_summary_gives_mean_std_and_gain_over_each_run_s_own_start():
    records = [
        _record("byol_bn", 0, 0.60, 0.80),
        _record("byol_bn", 1, 0.62, 0.82),
        _record("byol_none", 0, 0.70, None, status="failed"),
    ]
    rows = study.summarise(records)
    assert [r.variant for r in rows] == ["byol_bn", "byol_none"]
    assert rows[0].stat("final", "linear", "top1")[0] == pytest.approx(0.81)
    assert rows[0].stat("final", "linear", "top1")[1] == pytest.approx(0.02**0.5 / 10)
    assert rows[0].gains() == pytest.approx([0.20, 0.20])
    table = study.format_markdown(rows).splitlines()
    assert table[2] == (
        "| byol_bn | paper | 10 | BN | BN | BN | 0,1 | 61.0 ± 1.4 | 81.0 ± 1.4 "
        "| +20.0 | 76.0 ± 1.4 | 61.0 ± 1.4 | 71.0 ± 1.4 | 0.50 | 10.0 | 5.0 | 2.0 "
        "| 72.5 (BYOL paper, 300 ep. (74.3 at 1000 ep.)) |"
    )
    assert "(1 diverged)" in table[3]


def test_figure_groups_hold_every_variant_once_and_set_the_pilot_apart():
    grouped = [v for names in study.FIGURE_GROUPS.values() for v in names]
    assert sorted(grouped) == sorted(study.VARIANTS)
    records = [
        _record("simclr_none", 0, 0.7, 0.8),
        {**_record("byol_none", 0, 0.7, 0.8), "recipe": "pred10x"},
        _record("byol_none", 0, 0.7, 0.8),
        _record("byol_none", 1, 0.7, 0.8),
        {**_record("byol_bn", 0, 0.7, 0.8), "epochs": 1},
        _record("byol_bn", 0, 0.7, 0.8),
    ]
    groups = study.figure_groups(study.summarise(records))
    named = {
        g: [(r.variant, r.recipe, r.epochs) for r in rows] for g, rows in groups.items()
    }
    assert named == {
        "where BN sits (Table 1 of the report)": [("byol_bn", "paper", 10)],
        # The two recipes of a variant side by side, the paper's first.
        "without batch statistics": [
            ("byol_none", "paper", 10),
            ("byol_none", "pred10x", 10),
        ],
        "SimCLR": [("simclr_none", "paper", 10)],
        # Off the budget most runs have: the pilot's panel.
        study.PILOT_GROUP: [("byol_bn", "paper", 1)],
    }
