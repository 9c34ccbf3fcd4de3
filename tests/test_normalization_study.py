"""Tests of experiments.normalization_study: variants, a tiny study, its report."""

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
    base = study.small_config()
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


def test_named_variants_set_what_they_say():
    base = study.small_config()

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


def test_every_config_of_both_scales_is_valid():
    small = study.study_runs("small", study.variant_names("small"), [0, 1])
    paper = study.study_runs("paper", study.variant_names("paper"), [0])
    assert len(small) == 2 * len(study.variant_names("small")) >= 30
    for run in small + paper:
        config_checks.check_pretrain_config(run.config)
    assert {r.config.data.dataset for r in paper} == {"imagenet2012"}
    steps = {r.variant: r.config.training.max_steps for r in paper}
    assert steps["byol_bn_1000ep"] == 1000 * (1281167 // 4096)
    assert steps["byol_bn"] == 300 * (1281167 // 4096)
    assert {r.config.training.max_steps for r in small} == {study.SMALL_STEPS}


@pytest.mark.parametrize(
    "scale, names, message",
    [
        ("small", ["byol_bn", "nope"], "--variants: 'nope' unknown; expected one of"),
        ("small", ["byol_gn_ws_1000ep"], "of the paper scale only"),
        ("huge", ["byol_bn"], "--scale 'huge' unknown; expected one of: small"),
    ],
)
def test_bad_variant_or_scale_is_a_one_line_error(scale, names, message):
    with pytest.raises(ValueError, match=message) as error:
        study.study_runs(scale, names, [0])
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
    runs = [study.Run(v, 0, study.variant_config(base, v, 0)) for v in VARIANTS]
    out = str(tmp_path_factory.mktemp("study"))
    records = study.run_study(runs, out)
    paths = study.write_report(records, out, "small")
    return runs, out, records, paths


def test_each_run_trained_and_left_its_json(tiny_study):
    runs, out, records, _ = tiny_study
    assert [r["variant"] for r in records] == list(VARIANTS)
    for run, record in zip(runs, records, strict=True):
        with open(os.path.join(out, "runs", f"{run.name}.json")) as f:
            saved = json.load(f)
        with open(os.path.join(out, "runs", run.name, "results.json")) as f:
            results = json.load(f)
        assert saved["status"] == "done" and saved["steps"] == STEPS
        assert saved["probe_top1"] == pytest.approx(100 * results["probe"]["top1"])
        assert 0 <= saved["probe_top1"] <= 100
        assert saved["config"]["method"] == run.config.method
        # The collapse indicator of every logged step, for the figure.
        assert [h["step"] for h in record["history"] if "collapse" in h] == [1, 2]
    assert records[1]["method"] == "simclr" and records[1]["predictor_norm"] == "—"


def test_table_rows_and_figure(tiny_study):
    _, _, records, paths = tiny_study
    with open(paths["markdown"]) as f:
        lines = f.read().splitlines()
    rows = [line for line in lines if line.startswith("| byol") or "| simclr" in line]
    assert len(rows) == 2
    top1 = records[0]["probe_top1"]
    assert rows[0].startswith(
        f"| byol_none | byol | none | none | none | 1 | {top1:.1f} |"
    )
    assert rows[0].endswith("| 0.1 (GN+WS report, 300 ep.) |")
    assert rows[1].startswith("| simclr_bn | simclr | BN | BN | — | 1 |")
    assert rows[1].endswith("| — |")
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [r["variant"] for r in table] == list(VARIANTS)
    assert float(table[0]["top1_mean"]) == pytest.approx(top1, abs=1e-4)
    assert table[0]["top1_std"] == ""  # one seed: no spread
    assert table[0]["paper_top1"] == "0.1" and table[1]["paper_top1"] == ""
    with open(paths["figure"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(paths["figure"]) > 10_000


def test_rerun_trains_nothing_and_rebuilds_a_lost_json(tiny_study, monkeypatch):
    runs, out, records, _ = tiny_study
    calls = []
    pretrain = study.pretrain_isolated

    def counting_pretrain(config, workdir):
        calls.append(workdir)
        return pretrain(config, workdir)

    monkeypatch.setattr(study, "pretrain_isolated", counting_pretrain)
    again = study.run_study(runs, out)
    assert calls == []
    assert [r["probe_top1"] for r in again] == [r["probe_top1"] for r in records]

    # Its JSON lost, a finished run is read back from its work directory.
    os.remove(os.path.join(out, "runs", f"{runs[0].name}.json"))
    again = study.run_study(runs, out)
    assert calls == [os.path.join(out, "runs", runs[0].name)]
    assert again[0]["probe_top1"] == records[0]["probe_top1"]


def test_a_run_that_fails_in_its_process_is_reported_by_name(tiny_study, tmp_path):
    runs, _, _, _ = tiny_study
    config = runs[0].config.copy_and_resolve_references()
    config.data.data_dir = str(tmp_path / "no_data")
    workdir = str(tmp_path / "run")
    with pytest.raises(
        RuntimeError, match=r"the run in .*/run failed: .*fashion_mnist"
    ):
        study.pretrain_isolated(config, workdir)


def test_a_run_directory_of_another_config_is_refused(tiny_study):
    runs, out, _, _ = tiny_study
    config = runs[0].config.copy_and_resolve_references()
    config.training.max_steps = STEPS + 1
    with pytest.raises(ValueError, match=r"holds a run of another config"):
        study.run_study([study.Run(runs[0].variant, 0, config)], out)


# ------------------------------------------------------------------ summary
def _record(variant, seed, top1, status="done"):
    return {
        "variant": variant,
        "seed": seed,
        "method": "byol",
        "encoder_norm": "BN",
        "projector_norm": "BN",
        "predictor_norm": "BN",
        "status": status,
        "probe_top1": top1 if status == "done" else None,
        "probe_top5": 99.0 if status == "done" else None,
        "final_collapse": 0.5 if status == "done" else None,
        "minutes": 2.0,
        "paper_top1": 72.5,
        "paper_setting": "BYOL paper, 300 ep.",
    }


def test_summary_gives_mean_and_sample_std_over_seeds_and_counts_failures():
    records = [
        _record("byol_bn", 0, 80.0),
        _record("byol_bn", 1, 82.0),
        _record("byol_none", 0, None, status="failed"),
    ]
    rows = study.summarise(records)
    assert [r.variant for r in rows] == ["byol_bn", "byol_none"]
    assert rows[0].top1_mean == 81.0
    assert rows[0].top1_std == pytest.approx(2**0.5)
    table = study.format_markdown(rows).splitlines()
    assert table[2] == (
        "| byol_bn | byol | BN | BN | BN | 2 | 81.0 ± 1.4 | 0.50 | 2.0 "
        "| 72.5 (BYOL paper, 300 ep.) |"
    )
    assert "| diverged |" in table[3]
