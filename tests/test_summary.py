"""Tests of ``rnnlm summary`` on synthetic run directories."""

from __future__ import annotations

import io
import math
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from rnnlm.config import RunConfig
from rnnlm.results import METRICS_COLUMNS, RESULT_COLUMNS, SETTING_COLUMNS, write_csv
from rnnlm.summary.cli import main

KIND, RATE, MASK = "dropout.recurrent.kind", "dropout.recurrent.rate", "dropout.recurrent.mask"

# (kind, mask, rate) -> per-seed (best_val_ppl, test_ppl). For variational, one
# seed at 0.4 (59.5) beats every seed at 0.2, and 0.4 has the better test mean,
# but 0.2 has the lower MEAN validation ppl, so 0.2 must be chosen.
SWEEP = {
    ("variational", "tied", 0.2): [(60.0, 61.0), (61.0, 60.0), (62.0, 59.0)],
    ("variational", "tied", 0.4): [(59.5, 57.0), (63.0, 57.5), (63.5, 56.5)],
    ("semeniuta", "sequence", 0.2): [(70.0, 69.0), (72.0, 70.0)],
    ("semeniuta", "sequence", 0.4): [(68.0, 67.0), (69.0, 67.5)],
}


def make_run(
    run_dir: Path,
    *,
    seed: int = 1,
    kind: str = "variational",
    mask: str = "tied",
    rate: float = 0.2,
    val: float | None = 60.0,
    test: float | None = 59.0,
    status: str = "completed",
    mc: tuple[float, float] | None = None,
    dataset: str = "ptb",
    epochs: int = 4,
    result: bool = True,
    test_weights: str = "best",
) -> Path:
    """A run as the trainer leaves it: .hydra/, and result.csv + metrics.csv unless ``result`` is False."""
    cfg = OmegaConf.structured(RunConfig)
    cfg.merge_with_dotlist(
        [f"seed={seed}", f"{KIND}={kind}", f"{MASK}={mask}", f"{RATE}={rate}", f"dataset.name={dataset}",
         f"dataset.path=/data/{seed}", "device=auto", f"eval.test_weights={test_weights}"]
    )
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create([f"seed={seed}", f"{RATE}={rate}"]), run_dir / ".hydra" / "overrides.yaml")
    if not result:
        return run_dir
    settings = {key: getattr(OmegaConf.select(cfg, key), "value", OmegaConf.select(cfg, key))
                for key in SETTING_COLUMNS}
    write_csv(run_dir / "result.csv", [{
        **settings, "seed": seed, "status": status, "stop_reason": "max_epochs",
        "vocab_size": 10000, "train_split_tokens": 929589, "valid_split_tokens": 73760, "test_split_tokens": 82430,
        "n_params": 24_000_000, "epochs_run": epochs, "asgd_epoch": 2, "best_epoch": epochs,
        "best_val_loss": None if val is None else math.log(val), "best_val_ppl": val,
        "test_loss": None if test is None else math.log(test), "test_ppl": test,
        "mc_val_ppl": mc[0] if mc else None, "mc_test_ppl": mc[1] if mc else None,
        "eval_batch_size": 10, "test_batch_size": 1, "wall_seconds": 100.0, "device": "cuda:0",
        "torch_version": "2.3.0", "rnnlm_version": "0.1.0", "git_revision": "abc123",
        "overrides": f"seed={seed} {RATE}={rate}", "run_dir": str(run_dir),
    }], RESULT_COLUMNS)
    ppl = [(val or 100.0) * (1 + 3.0 / (e + 1) ** 1.5) + seed * 0.3 for e in range(epochs)]
    write_csv(run_dir / "metrics.csv", [
        {"epoch": e + 1, "stage": "train", "lr": 30.0, "optimizer": "sgd", "train_loss": 5.0, "train_ppl": 150.0,
         "val_loss": math.log(p), "val_ppl": p, "epoch_seconds": 10.0, "tokens_per_second": 90000.0,
         "epoch_tokens": 929589}
        for e, p in enumerate(ppl)
    ], METRICS_COLUMNS)
    return run_dir


def make_sweep(root: Path, sweep: dict = SWEEP, **kwargs) -> Path:
    """One Hydra-multirun-like dir: root/0, root/1, ... per (setting, seed)."""
    job = 0
    for (kind, mask, rate), values in sweep.items():
        for seed, (val, test) in enumerate(values, start=1):
            make_run(root / str(job), seed=seed, kind=kind, mask=mask, rate=rate, val=val, test=test, **kwargs)
            job += 1
    return root


def add_broken_runs(root: Path) -> dict[Path, str]:
    """A failed, a diverged, a running and a .hydra-only run in the variational sweep: {dir: status}."""
    return {
        make_run(root / "90", seed=4, status="failed", val=None, test=None): "failed",
        make_run(root / "91", seed=5, rate=0.4, status="diverged", val=None, test=None): "diverged",
        make_run(root / "92", seed=6, status="running", val=65.0, test=None): "running",
        make_run(root / "93", seed=7, rate=0.4, result=False): "failed",
    }


@pytest.fixture(scope="module")
def sweep_template(tmp_path_factory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("template") / "sweep")


@pytest.fixture
def sweep(sweep_template, tmp_path) -> Path:
    """A fresh copy of the SWEEP runs (building them once keeps the tests fast)."""
    return Path(shutil.copytree(sweep_template, tmp_path / "sweep"))


def read_csv_block(text: str) -> pd.DataFrame:
    """The first CSV table of stdout (captions are '#' lines)."""
    blocks = [b for b in re.split(r"^#.*\n", text, flags=re.MULTILINE) if b.strip()]
    return pd.read_csv(io.StringIO(blocks[0]))


def row_of(table: pd.DataFrame, kind: str, rate: float) -> pd.Series:
    hit = table[(table[KIND] == kind) & (table[RATE].round(6) == rate)]
    assert len(hit) == 1, table
    return hit.iloc[0]


def test_runs_are_loaded_with_flattened_config_and_result_columns(sweep):
    from rnnlm.summary.runs import load_runs

    runs = load_runs([sweep])
    assert len(runs.frame) == 10 and {KIND, RATE, "model.nhid", "optim.lr", "seed"} <= set(runs.config_keys)
    first = runs.frame.iloc[0]
    assert first["run_dir"] == str(sweep / "0") and first["status"] == "completed"
    assert first["test_split_tokens"] == 82430 and first["device"] == "auto" and first["result.device"] == "cuda:0"
    assert "result.seed" not in runs.frame.columns  # a setting: read from the config only
    assert first["result.run_dir"] != first["run_dir"]  # the copied sweep was written elsewhere


def test_runs_written_with_older_column_names_are_read_under_todays():
    """The committed study runs name the split sizes and an epoch's tokens ``*_tokens``."""
    from rnnlm.results import current_names
    from rnnlm.summary.runs import load_runs, read_metrics

    run_dir = Path(__file__).resolve().parents[1] / "docs" / "studies" / "recurrent_dropout_ptb" / "runs" / "0"
    assert "train_tokens" in (run_dir / "result.csv").read_text().split("\n")[0].split(",")
    (row,) = load_runs([run_dir]).frame.to_dict("records")
    assert (row["train_split_tokens"], row["valid_split_tokens"], row["test_split_tokens"]) == (60000, 73760, 82430)
    assert not {"train_tokens", "valid_tokens", "test_tokens"} & set(row) and row["dataset.train_tokens"] == 60000
    metrics = read_metrics(run_dir)
    assert "train_tokens" not in metrics and metrics["epoch_tokens"].iloc[0] == 59990
    # the one mapping, per file: the same old name is an epoch's count in metrics.csv
    assert current_names({"train_tokens": 1, "val_ppl": 2}, "metrics.csv") == {"epoch_tokens": 1, "val_ppl": 2}
    assert current_names({"train_tokens": 1}, "result.csv") == {"train_split_tokens": 1}


def test_settings_come_from_the_config_alone(tmp_path):
    """result.csv repeats the settings; the summary reads them from .hydra/config.yaml only."""
    from rnnlm.summary.runs import load_runs

    run = make_run(tmp_path / "0", rate=0.2)
    result = pd.read_csv(run / "result.csv").assign(**{RATE: 0.9})
    result.to_csv(run / "result.csv", index=False)
    frame = load_runs([tmp_path]).frame
    assert frame[RATE].tolist() == [0.2] and f"result.{RATE}" not in frame


def test_group_means_and_stds_match_hand_computed_values(sweep, capsys):
    assert main([str(sweep)]) == 0
    summary = pd.read_csv(sweep / "summary.csv")
    # dataset.path and seed differ between runs too, but are bookkeeping
    assert list(summary.columns) == [KIND, MASK, RATE, "n", "val_ppl_mean", "val_ppl_std", "test_ppl_mean",
                                     "test_ppl_std"]
    for (kind, _, rate), values in SWEEP.items():
        row = row_of(summary, kind, rate)
        vals, tests = [v for v, _ in values], [t for _, t in values]
        assert row["n"] == len(values)
        assert row["val_ppl_mean"] == pytest.approx(statistics.mean(vals))
        assert row["val_ppl_std"] == pytest.approx(statistics.stdev(vals))
        assert row["test_ppl_mean"] == pytest.approx(statistics.mean(tests))
        assert row["test_ppl_std"] == pytest.approx(statistics.stdev(tests))
    out = capsys.readouterr().out
    assert "| dropout.recurrent.kind" in out and "61.00" in out and "best by validation" in out


def test_best_by_validation_uses_mean_val_not_single_seed_nor_test(sweep, capsys):
    assert main([str(sweep)]) == 0
    best = pd.read_csv(sweep / "best.csv")
    assert len(best) == 2
    variational = best[best[KIND] == "variational"].iloc[0]
    assert variational[RATE] == pytest.approx(0.2)  # not 0.4: lower single seed and lower test mean
    assert variational["val_ppl_mean"] == pytest.approx(61.0)
    assert variational["test_ppl_mean"] == pytest.approx(60.0)
    semeniuta = best[best[KIND] == "semeniuta"].iloc[0]
    assert semeniuta[RATE] == pytest.approx(0.4)
    assert semeniuta["test_ppl_mean"] == pytest.approx(67.25)


def test_single_seed_shows_dash_for_std(tmp_path, capsys):
    make_run(tmp_path / "a", rate=0.2, val=60.0, test=59.0)
    make_run(tmp_path / "b", rate=0.4, val=62.0, test=61.0)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    first_row = out.splitlines()[2]
    assert first_row.count("—") == 2 and "60.00" in first_row, out
    assert pd.read_csv(tmp_path / "summary.csv")["val_ppl_std"].isna().all()


def test_broken_runs_are_counted_and_listed_and_the_rest_summarised(sweep, capsys):
    broken = add_broken_runs(sweep)
    assert main([str(sweep)]) == 0
    captured = capsys.readouterr()
    assert "4 of 14 runs not summarised (1 diverged, 2 failed, 1 running):" in captured.err
    listed = {line.split()[1]: line.split()[0] for line in captured.err.splitlines() if line.startswith("  ")}
    assert listed == {str(path): status for path, status in broken.items()}
    assert f"{sweep / '93'}  (no result.csv)" in captured.err
    summary = pd.read_csv(sweep / "summary.csv")
    assert row_of(summary, "variational", 0.2)["n"] == 3
    assert row_of(summary, "variational", 0.2)["val_ppl_mean"] == pytest.approx(61.0)
    assert "runs not summarised" in (sweep / "summary.md").read_text()
    assert "running" not in captured.out


def test_no_completed_runs_is_an_error(tmp_path, capsys):
    make_run(tmp_path / "0", status="failed", val=None, test=None)
    make_run(tmp_path / "1", result=False)
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no completed runs" in err and "2 of 2 runs not summarised" in err
    assert not (tmp_path / "summary.csv").exists()


def test_csv_and_latex_formats(sweep, capsys):
    assert main([str(sweep), "--format", "csv"]) == 0
    printed = read_csv_block(capsys.readouterr().out)
    pd.testing.assert_frame_equal(printed, pd.read_csv(sweep / "summary.csv"))
    assert main([str(sweep), "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert out.count(r"\begin{tabular}") == 2
    assert "dropout.recurrent.kind" in out and r"val\_ppl\_mean" in out and "61.00" in out


def test_filter_is_type_aware_and_drops_constant_keys(sweep, capsys):
    assert main([str(sweep), "--filter", f"{KIND}=variational", "--filter", f"{RATE}=0.40",
                 "--format", "csv"]) == 0
    printed = read_csv_block(capsys.readouterr().out)
    assert list(printed.columns[:2]) == ["n", "val_ppl_mean"]  # nothing differs any more
    assert printed["val_ppl_mean"].tolist() == [pytest.approx(62.0)]
    assert main([str(sweep), "--filter", f"{KIND}=semeniuta", "--filter", f"{KIND}=variational",
                 "--filter", "dropout.locked=true", "--filter", "dataset.name=ptb", "--format", "csv"]) == 0
    assert len(read_csv_block(capsys.readouterr().out)) == 4
    assert main([str(sweep), "--filter", "dropout.locked=false"]) == 1
    assert "no runs match" in capsys.readouterr().err


def test_group_by_explicit_keys(sweep, capsys):
    assert main([str(sweep), "--group-by", KIND, "--format", "csv"]) == 0
    printed = read_csv_block(capsys.readouterr().out).set_index(KIND)
    vals = [v for (kind, _, _), values in SWEEP.items() if kind == "variational" for v, _ in values]
    assert printed.loc["variational", "n"] == 6
    assert printed.loc["variational", "val_ppl_mean"] == pytest.approx(statistics.mean(vals))
    assert printed.loc["variational", "val_ppl_std"] == pytest.approx(statistics.stdev(vals))


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--filter", "recurrent.knd=variational", f"unknown key 'recurrent.knd' in --filter; did you mean: {KIND}"),
        ("--group-by", "recurrent.knd", f"unknown key 'recurrent.knd' in --group-by; did you mean: {KIND}"),
        ("--filter", "variational", "--filter 'variational' is not KEY=VALUE"),
    ],
)
def test_bad_keys_give_one_line_and_exit_2(sweep, capsys, option, value, expected):
    assert main([str(sweep), option, value]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def test_outputs_go_into_the_first_dir(sweep, tmp_path, capsys):
    second = make_sweep(tmp_path / "wt2", dataset="wikitext2")
    assert main([str(sweep), str(second)]) == 0
    for name in ("summary.csv", "summary.md", "best.csv"):
        assert (sweep / name).is_file() and not (second / name).exists()
    assert not list(sweep.glob(".*.tmp"))
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary.columns[0] == "dataset.name" and len(summary) == 8
    assert len(pd.read_csv(sweep / "best.csv")) == 4  # best rate per (dataset, kind, mask)
    assert "| dataset.name" in (sweep / "summary.md").read_text()


def test_mc_columns_and_metric_selection(sweep, tmp_path, capsys):
    assert main([str(sweep)]) == 0
    assert "mc_val_ppl_mean" not in pd.read_csv(sweep / "summary.csv").columns
    mc_root = tmp_path / "mc"
    make_run(mc_root / "0", seed=1, rate=0.2, val=60.0, test=59.0, mc=(58.0, 57.0))
    make_run(mc_root / "1", seed=2, rate=0.2, val=62.0, test=61.0, mc=(60.0, 59.0))
    make_run(mc_root / "2", seed=1, rate=0.4, val=61.5, test=60.0, mc=(57.0, 58.0))
    assert main([str(mc_root)]) == 0
    summary = pd.read_csv(mc_root / "summary.csv")
    assert {"mc_val_ppl_mean", "mc_val_ppl_std", "mc_test_ppl_mean", "mc_test_ppl_std"} <= set(summary.columns)
    assert pd.read_csv(mc_root / "best.csv")[RATE].tolist() == [pytest.approx(0.2)]  # val ppl 61 < 61.5
    assert main([str(mc_root), "--metric", "mc_test_ppl"]) == 0  # selects on mc_val_ppl
    best = pd.read_csv(mc_root / "best.csv")
    assert best[RATE].tolist() == [pytest.approx(0.4)] and best.columns[2] == "mc_val_ppl_mean"
    capsys.readouterr()
    assert main([str(mc_root), "--metric", "val_loss", "--format", "csv"]) == 0
    printed = read_csv_block(capsys.readouterr().out)
    assert printed["val_loss_mean"].tolist() == pytest.approx([math.log(60 * 62) / 2, math.log(61.5)])


def test_no_numeric_key_and_plots(tmp_path, capsys):
    make_run(tmp_path / "0", seed=1, kind="variational", mask="tied")
    make_run(tmp_path / "1", seed=1, kind="semeniuta", mask="sequence")
    assert main([str(tmp_path), "--plot"]) == 0
    err = capsys.readouterr().err
    assert "no numeric grouping key" in err
    assert len(pd.read_csv(tmp_path / "best.csv")) == 2
    assert (tmp_path / "learning_curves.png").stat().st_size > 0


def test_plot_files_are_written(sweep, capsys):
    add_broken_runs(sweep)
    assert main([str(sweep), "--plot"]) == 0
    for name in ("ppl_vs_rate.png", "learning_curves.png"):
        data = (sweep / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_missing_or_empty_dir_is_one_line_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rnnlm summary: error: {tmp_path / 'nope'}: no such directory"]
    assert main([str(tmp_path)]) == 2
    assert "no runs found" in capsys.readouterr().err


def write_eval_rows(run_dir: Path, rows: list[tuple[str, str, float, float]]) -> None:
    """eval.csv rows of the pointer method: (split, checkpoint, pointer.theta, ppl)."""
    header = "method,split,checkpoint,pointer.window,pointer.theta,pointer.lambda,pointer.start,ppl\n"
    lines = [f"pointer,{split},{ckpt},100,{theta},0.1,full,{ppl}\n" for split, ckpt, theta, ppl in rows]
    (run_dir / "eval.csv").write_text(header + "".join(lines))


def test_eval_metric_reads_eval_csv_at_the_tested_setting(tmp_path, capsys):
    # valid rows of a tuning grid, then valid and test at the chosen setting (theta 0.5), then a
    # later valid row of another setting, which must not be paired with the test row
    for i, (rate, chosen_val, test) in enumerate([(0.2, 50.0, 49.0), (0.2, 52.0, 51.0), (0.4, 48.0, 47.5)]):
        run = make_run(tmp_path / str(i), seed=i, rate=rate, val=60.0 + i, test=59.0)
        write_eval_rows(run, [("valid", "best", 1.0, 99.0), ("valid", "best", 0.5, chosen_val),
                              ("test", "best", 0.5, test), ("valid", "best", 2.0, 10.0)])
    make_run(tmp_path / "3", seed=4, rate=0.4)  # no eval.csv: left out
    assert main([str(tmp_path), "--metric", "pointer_ppl", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    printed = read_csv_block(captured.out)
    assert list(printed.columns[:6]) == [RATE, "n", "pointer_val_ppl_mean", "pointer_val_ppl_std",
                                         "pointer_test_ppl_mean", "pointer_test_ppl_std"]
    assert printed["pointer_val_ppl_mean"].tolist() == [pytest.approx(51.0), pytest.approx(48.0)]
    assert printed["pointer_test_ppl_mean"].tolist() == [pytest.approx(50.0), pytest.approx(47.5)]
    assert "val_ppl_mean" in printed.columns  # the training perplexities sit beside it
    assert "(no pointer_val_ppl)" in captured.err
    assert pd.read_csv(tmp_path / "best.csv")[RATE].tolist() == [pytest.approx(0.4)]
    assert main([str(tmp_path), "--metric", "dynamic_ppl"]) == 1  # no dynamic rows
    assert "no completed runs with dynamic_val_ppl" in capsys.readouterr().err


def test_an_eval_method_scored_on_test_only_is_reported_beside_the_selected_pair(tmp_path, capsys):
    for i, test in enumerate((40.0, 44.0)):  # e.g. MC dropout on the test split alone
        run = make_run(tmp_path / str(i), seed=i, rate=0.2, val=60.0 + i, test=59.0)
        write_eval_rows(run, [("test", "best", 1.0, test)])
    make_run(tmp_path / "2", seed=2, rate=0.2, val=62.0, test=59.0)  # not scored: still in val/test
    assert main([str(tmp_path), "--format", "csv"]) == 0
    (row,) = read_csv_block(capsys.readouterr().out).to_dict("records")
    assert row["n"] == 3 and row["val_ppl_mean"] == pytest.approx(61.0)
    assert row["pointer_test_ppl_mean"] == pytest.approx(42.0)  # over the runs that have it
    assert row["pointer_test_ppl_n"] == 2  # ... and says how many they are
    assert "pointer_val_ppl_mean" not in row  # no run has it: no empty column


# --- differences from a baseline -------------------------------------------------------------

# (kind, mask, rate) -> per-seed (val, test), seeds 1, 2, 3: the baseline "none", one group
# clearly lower, one within the noise, one with two seeds, one with a single seed.
VERSUS = {
    ("none", "element", 0.0): [(100.0, 98.0), (102.0, 100.0), (104.0, 102.0)],
    ("weight_drop", "element", 0.5): [(90.0, 88.0), (91.0, 89.5), (92.0, 89.0)],
    ("weight_drop", "row", 0.5): [(101.0, 99.0), (104.0, 101.0), (102.5, 103.0)],
    ("weight_drop", "column", 0.5): [(95.0, 94.0), (97.0, 95.0)],
    ("variational", "tied", 0.5): [(99.0, 97.0)],
}


def blocked_by_hand(values: dict, i: int) -> tuple[dict, dict, float, float, np.ndarray]:
    """Least squares of log value on group and seed, by numpy, for value ``i`` of VERSUS-like
    {setting: [(val, test) per seed 1, 2, ...]}, the first setting the baseline:
    ({setting: log ratio}, {setting: se}, residual df, baseline geometric mean, correlation)."""
    settings = list(values)
    cells = [(g, seed, v[i]) for g, runs in enumerate(values.values()) for seed, v in enumerate(runs)]
    seeds = sorted({seed for _, seed, _ in cells})
    x = np.array([[1.0] + [float(g == k) for k in range(1, len(settings))] + [float(s == t) for t in seeds[1:]]
                  for g, s, _ in cells])
    y = np.log([v for _, _, v in cells])
    beta, rss, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    df = len(y) - rank
    cov = (float(rss[0]) / df * np.linalg.inv(x.T @ x))[1:len(settings), 1:len(settings)]
    se = np.sqrt(np.diag(cov))
    gm = math.exp(np.mean(np.log([v[i] for v in values[settings[0]]])))
    return (dict(zip(settings[1:], beta[1:len(settings)])), dict(zip(settings[1:], se)), df, gm,
            cov / np.outer(se, se))


@pytest.fixture(scope="module")
def versus_template(tmp_path_factory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("versus") / "sweep", VERSUS)


@pytest.fixture
def versus(versus_template, tmp_path) -> Path:
    return Path(shutil.copytree(versus_template, tmp_path / "sweep"))


def group_of(table: pd.DataFrame, kind: str, mask: str) -> pd.Series:
    hit = table[(table[KIND] == kind) & (table[MASK] == mask)]
    assert len(hit) == 1, table
    return hit.iloc[0]


def test_baseline_comparison_blocks_on_the_seeds_and_matches_least_squares(versus, capsys):
    from rnnlm.study.stats import simultaneous_critical

    assert main([str(versus), "--baseline", f"{KIND}=none", "--format", "csv"]) == 0
    printed = read_csv_block(capsys.readouterr().out)
    assert (printed["method"] == "blocked").all()  # every group shares a seed with the baseline
    for i, stem in enumerate(("val_ppl", "test_ppl")):
        estimate, se, df, gm, corr = blocked_by_hand(VERSUS, i)
        crit = simultaneous_critical(corr, df)  # four comparisons, one family per column
        for (kind, mask, rate), values in VERSUS.items():
            row = group_of(printed, kind, "—" if kind == "none" else mask)  # no mask is drawn without dropout
            if kind == "none":
                assert row[f"{stem}_verdict"] == "baseline" and row[f"{stem}_diff"] == 0.0
                assert math.isnan(row[f"{stem}_low"])
                continue
            b = estimate[(kind, mask, rate)]
            assert row[f"{stem}_ratio"] == pytest.approx(math.exp(b), rel=1e-9)
            assert row[f"{stem}_crit"] == pytest.approx(crit, abs=1e-6)
            half = crit * se[(kind, mask, rate)]
            assert (row[f"{stem}_diff"], row[f"{stem}_low"], row[f"{stem}_high"]) == pytest.approx(
                [gm * math.expm1(b), gm * math.expm1(b - half), gm * math.expm1(b + half)], rel=1e-6)
            assert 0 < row[f"{stem}_p"] <= 1 and row[f"{stem}_seeds_needed"] >= 2
        # groups with every seed: the estimate is the difference of the geometric means
        for mask in ("element", "row"):
            mine = [v[i] for v in VERSUS[("weight_drop", mask, 0.5)]]
            assert group_of(printed, "weight_drop", mask)[f"{stem}_diff"] == pytest.approx(
                statistics.geometric_mean(mine) - gm, rel=1e-9)
    assert group_of(printed, "weight_drop", "element")["val_ppl_verdict"] == "lower"
    assert group_of(printed, "weight_drop", "row")["val_ppl_verdict"] == "unresolved"
    assert group_of(printed, "weight_drop", "column")["val_ppl_verdict"] == "lower"  # two seeds
    single = group_of(printed, "variational", "tied")  # one seed: the pooled residual sd gives its interval
    assert single["val_ppl_perm_p"] == 1.0 and math.isnan(single["val_ppl_paired_low"])
    column = group_of(printed, "weight_drop", "column")
    assert column["val_ppl_perm_floor"] == 0.5 and column["val_ppl_perm_p"] == 0.5  # both seeds lower


def test_groups_without_shared_seeds_are_compared_by_welch(tmp_path, capsys):
    from scipy import stats

    base, other = [100.0, 104.0, 99.0], [92.0, 97.0, 90.0, 95.0]
    for seed, val in enumerate(base, start=1):
        make_run(tmp_path / f"b{seed}", seed=seed, kind="none", val=val, test=val)
    for seed, val in enumerate(other, start=11):
        make_run(tmp_path / f"o{seed}", seed=seed, kind="weight_drop", mask="row", val=val, test=val)
    make_run(tmp_path / "single", seed=21, kind="variational", val=98.0, test=98.0)
    assert main([str(tmp_path), "--baseline", f"{KIND}=none", "--format", "csv"]) == 0
    printed = read_csv_block(capsys.readouterr().out)
    welch = stats.ttest_ind(np.log(other), np.log(base), equal_var=False)  # Welch (1947) on log perplexity
    ci = welch.confidence_interval(0.95)
    gm = statistics.geometric_mean(base)
    row = group_of(printed, "weight_drop", "row")
    assert (printed["method"] == "welch").all()
    assert (row["val_ppl_low"], row["val_ppl_high"]) == pytest.approx([gm * math.expm1(ci.low),
                                                                       gm * math.expm1(ci.high)], rel=1e-9)
    assert row["val_ppl_p"] == pytest.approx(welch.pvalue, rel=1e-9) and math.isnan(row["val_ppl_perm_p"])
    assert row["val_ppl_diff"] == pytest.approx(statistics.geometric_mean(other) - gm, rel=1e-9)
    single = group_of(printed, "variational", "tied")
    assert single["val_ppl_verdict"] == "n<2: no interval" and math.isnan(single["val_ppl_low"])


def test_baseline_in_markdown_and_latex_joins_difference_and_interval(versus, capsys):
    assert main([str(versus), "--baseline", f"{KIND}=none", "--format", "csv"]) == 0
    row = group_of(read_csv_block(capsys.readouterr().out), "weight_drop", "element")
    cell = f"{row['val_ppl_diff']:+.2f} [{row['val_ppl_low']:+.2f}, {row['val_ppl_high']:+.2f}]"
    assert main([str(versus), "--baseline", f"{KIND}=none"]) == 0
    out = capsys.readouterr().out
    assert cell in out and f"{row['val_ppl_ratio']:.3f}" in out and "baseline" in out
    assert "Dunnett-type max-t" in out and "two families" in out and "val_ppl: 4 comparisons" in out
    assert "val_ppl_seeds_needed" not in out and "val_ppl_paired_low" not in out  # summary.csv only
    assert {"val_ppl_seeds_needed", "val_ppl_paired_low", "test_ppl_ratio_high", "method"} <= set(
        pd.read_csv(versus / "summary.csv").columns)
    assert "best by validation" not in out  # one setting per variant: nothing to choose, no second table
    assert "Baseline: dropout.recurrent.kind=none." in (versus / "summary.md").read_text()
    assert main([str(versus), "--baseline", f"{KIND}=none", "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert cell in latex and "\\begin{tabular}" in latex


def test_effect_sets_the_margin_and_bad_values_are_one_line_exit_2(versus, capsys):
    assert main([str(versus), "--baseline", f"{KIND}=none", "--effect", "0.2", "--format", "csv"]) == 0
    printed = read_csv_block(capsys.readouterr().out)
    assert group_of(printed, "weight_drop", "row")["val_ppl_verdict"] == "within ±20%"
    for bad in ("0", "1", "-0.1", "nan"):
        assert main([str(versus), "--baseline", f"{KIND}=none", "--effect", bad]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and "--effect" in captured.err
    build = __import__("rnnlm.summary.cli", fromlist=["build_parser"]).build_parser
    assert "default 0.03" in build().format_help()


def test_baseline_plot(versus, capsys):
    assert main([str(versus), "--baseline", f"{KIND}=none", "--plot"]) == 0
    data = (versus / "diff_vs_baseline.png").read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
    assert "diff_vs_baseline.png" in capsys.readouterr().err


@pytest.mark.parametrize("spec,expected", [
    ([f"{KIND}=nonee"], f"--baseline {KIND}=nonee matches no summarised run"),
    ([f"{KIND}=weight_drop"], f"--baseline {KIND}=weight_drop matches 3 groups"),
    (["dropout.recurrent.knd=none"], "unknown key 'dropout.recurrent.knd' in --baseline"),
    (["none"], "--baseline 'none' is not KEY=VALUE"),
])
def test_bad_baseline_is_one_line_exit_2(versus, capsys, spec, expected):
    assert main([str(versus), *(a for s in spec for a in ("--baseline", s))]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


def test_two_baseline_keys_pick_one_group(versus, capsys):
    assert main([str(versus), "--baseline", f"{KIND}=weight_drop", "--baseline", f"{MASK}=row",
                 "--format", "csv"]) == 0
    printed = read_csv_block(capsys.readouterr().out)
    assert group_of(printed, "weight_drop", "row")["val_ppl_verdict"] == "baseline"
    gm = {kind: statistics.geometric_mean(v for v, _ in VERSUS[setting])
          for kind, setting in (("none", ("none", "element", 0.0)), ("row", ("weight_drop", "row", 0.5)))}
    assert group_of(printed, "none", "—")["val_ppl_diff"] == pytest.approx(gm["none"] - gm["row"])


def test_each_test_figure_is_paired_with_the_validation_of_the_same_weights(tmp_path, capsys):
    # best epoch 2 (val 60); the last epoch's validation is 64. With test_weights=last the test
    # used the final weights, so their validation (64) is what the summary pairs it with.
    for i, weights in enumerate(("best", "last")):
        run = make_run(tmp_path / str(i), seed=1, rate=0.2 * (i + 1), val=60.0, test=59.0, test_weights=weights)
        write_csv(run / "metrics.csv", [
            {"epoch": e, "stage": "train", "val_loss": math.log(p), "val_ppl": p}
            for e, p in enumerate((70.0, 60.0, 62.0, 64.0), start=1)
        ], METRICS_COLUMNS)
    assert main([str(tmp_path), "--group-by", RATE, "--format", "csv"]) == 0
    printed = read_csv_block(capsys.readouterr().out)
    assert printed["val_ppl_mean"].tolist() == [pytest.approx(60.0), pytest.approx(64.0)]
    assert printed["test_ppl_mean"].tolist() == [pytest.approx(59.0), pytest.approx(59.0)]


def test_runs_that_differ_only_in_their_trackers_are_one_group(tmp_path, capsys):
    for seed in (1, 2):
        make_run(tmp_path / str(seed), seed=seed, val=60.0 + seed)
    config = tmp_path / "2" / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(config)
    cfg.logger.tensorboard = {"dir": "/tmp/tb"}
    OmegaConf.save(cfg, config)
    assert main([str(tmp_path), "--format", "csv"]) == 0
    printed = read_csv_block(capsys.readouterr().out)
    assert printed["n"].tolist() == [2] and not any(c.startswith("logger") for c in printed.columns)


def test_rates_that_print_alike_are_one_group_in_the_tables_and_the_comparison(tmp_path, capsys):
    # 0.30000001 (e.g. from a search) and 0.3 are one setting; 0.3001 is another
    base = {1: 100.0, 2: 104.0, 3: 99.0}
    near = {(1, 0.3): 90.0, (2, 0.30000001): 96.0, (3, 0.3): 91.0}
    for seed, val in base.items():
        make_run(tmp_path / f"none{seed}", seed=seed, kind="none", rate=0.0, val=val, test=val)
    for (seed, rate), val in near.items():
        make_run(tmp_path / f"near{seed}", seed=seed, rate=rate, val=val, test=val)
    for seed in base:
        make_run(tmp_path / f"far{seed}", seed=seed, rate=0.3001, val=80.0 + seed, test=80.0)
    assert main([str(tmp_path), "--baseline", f"{KIND}=none", "--format", "csv"]) == 0
    printed = read_csv_block(capsys.readouterr().out)
    summary = pd.read_csv(tmp_path / "summary.csv")
    for table in (printed, summary):
        assert sorted(table[RATE]) == [0.0, 0.3, 0.3001]  # the shown value, whichever run came first
        row = table[table[RATE] == 0.3].iloc[0]
        assert row["n"] == 3 and row["val_ppl_mean"] == pytest.approx(statistics.mean(near.values()))
        # the comparison pairs the same three runs with the baseline's three seeds
        assert row["val_ppl_perm_floor"] == 0.25 and row["val_ppl_diff"] == pytest.approx(
            statistics.geometric_mean(near.values()) - statistics.geometric_mean(base.values()), rel=1e-9)
        assert table[table[RATE] == 0.3001].iloc[0]["n"] == 3


def test_learning_curves_cut_early_spikes_and_name_no_unread_mask():
    from rnnlm.summary.plots import _late_top, labels

    # an epoch-3 spike (660) the later half never comes near: the axis ends 5 % above 240 + 4
    curves = pd.DataFrame({"setting": ["a"] * 6 + ["b"] * 6, "epoch": list(range(1, 7)) * 2,
                           "mean": [500, 270, 660, 260, 235, 240, 480, 260, 640, 250, 230, 238],
                           "std": [0, 0, 0, 0, 2, 4, 0, 0, 0, 0, 1, 1]})
    assert _late_top(curves) == pytest.approx(1.05 * 260)  # epochs 4..6 of each: 260 is the highest
    assert _late_top(curves.assign(mean=100.0, std=0.0)) == pytest.approx(105)  # flat: just above
    table = pd.DataFrame({KIND: ["none", "weight_drop"], MASK: ["—", "row"]})
    assert labels(table, [KIND, MASK]).tolist() == ["kind=none", "kind=weight_drop, mask=row"]
