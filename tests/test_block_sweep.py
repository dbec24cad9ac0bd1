"""A study in blocks of seeds (``hydra/sweeper=rnnlm_blocks``): the torch-free core
(:mod:`rnnlm.study.blocks`) on synthetic result.csv files, then the sweeper end to end on the
tiny corpus, in this process: job numbering, looks, the stop at max_blocks, an interrupted
study continued with resume=auto, bad configs refused in one line."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import read_rows, sigterm_on_call
from hydra.core.plugins import Plugins

import hydra_plugins.rnnlm_blocks_sweeper.config  # noqa: F401  (registers hydra/sweeper=rnnlm_blocks)
from hydra_plugins.rnnlm_blocks_sweeper.blocks_sweeper import BlocksSweeper, seed_list
from rnnlm.cli import main as rnnlm_main
from rnnlm.results import RESULT_COLUMNS, write_csv
from rnnlm.study.blocks import BlockStudy, StudyError

# Hydra finds the plugin by scanning the hydra_plugins package of an installed rnnlm; an
# editable install hides it from that scan, and Plugins.register is Hydra's public fallback.
Plugins.instance().register(BlocksSweeper)

pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------- the core, synthetic runs

SEED_EFFECT = [0.10, -0.05, 0.02, 0.07, -0.08, 0.0]  # log perplexity: what a seed does to every variant


def write_run(sweep, job, seed, value, status="completed"):
    row = {"seed": seed, "status": status, "test_ppl": "" if value is None else value,
           "best_val_ppl": "" if value is None else value}
    write_csv(sweep / str(job) / "result.csv", [row], RESULT_COLUMNS)


def write_blocks(study, values):
    """``values[variant][block]``: a test perplexity, or None for a diverged run."""
    for v, row in enumerate(values):
        for b, value in enumerate(row):
            write_run(study.sweep_dir, study.job_index(b, v), study.seeds[b], value,
                      "diverged" if value is None else "completed")


def plan(tmp_path, **settings):
    variants = {"base": ["dropout.output=0.1"], "worse": ["dropout.output=0.5"], "same": ["dropout.output=0.2"]}
    settings = {"min_blocks": 3, "max_blocks": 6, **settings}
    return BlockStudy(tmp_path / "sweep", variants, 0, [1, 2, 3, 4, 5, 6], **settings)


def test_a_clear_study_resolves_at_the_first_look(tmp_path):
    """One variant 20 % worse, one alike to within 0.1 %: both comparisons resolve after the
    three blocks of the first look, and the look's files say so."""
    study = plan(tmp_path)
    noise = np.array([[0.001, -0.001, 0.0], [0.0, 0.001, -0.001], [-0.001, 0.0, 0.001]])
    base = 100 * np.exp(np.array(SEED_EFFECT[:3]))
    write_blocks(study, [base * np.exp(noise[0]), 1.2 * base * np.exp(noise[1]), base * np.exp(noise[2])])
    assert study.finished_blocks() == 3
    look = study.analyse(3)
    assert (look.number, look.blocks) == (1, 3) and 0.95 < look.level < 1
    verdicts = look.table["verdict"]
    assert verdicts["base"] == "baseline" and verdicts["worse"] == "higher" and verdicts["same"].startswith("within")
    assert look.table.loc["worse", "ratio"] == pytest.approx(1.2, rel=1e-3)
    assert look.all_resolved and study.decide(look, 3) == "resolved"

    table = pd.read_csv(tmp_path / "sweep" / "looks" / "look_3.csv")
    assert list(table["variant"]) == ["base", "worse", "same"] and set(table["look"]) == {1}
    assert table["level"].iloc[0] == pytest.approx(look.level)
    md = (tmp_path / "sweep" / "looks" / "look_3.md").read_text()
    assert md.startswith("# Look 1 of at most 4: 3 blocks (seed 1, 2, 3)")
    assert "alpha spending" in md and "±3 %" in md and f"nominal level {100 * look.level:.2f} %" in md  # 99.69 %
    assert "| worse | 3 | 1.200 [" in md and "| higher |" in md
    assert "2 of 2 comparisons with base resolved" in study.paragraph(look)

    stat = (tmp_path / "sweep" / "looks" / "look_3.md").stat().st_mtime_ns
    again = study.analyse(3)  # a look computed again is the same look, and its files are left alone
    pd.testing.assert_frame_equal(again.table, look.table)
    assert (tmp_path / "sweep" / "looks" / "look_3.md").stat().st_mtime_ns == stat


def test_a_noisy_study_runs_to_max_blocks(tmp_path):
    """Differences of ±5 % between runs of one seed leave the comparisons unresolved: the
    study looks after blocks 3, 4 and 5, at falling nominal levels, and stops at max_blocks."""
    study = plan(tmp_path, max_blocks=5, max_minutes=30)
    noise = np.array([[0.05, -0.05, 0.04, -0.03, 0.05], [-0.04, 0.05, -0.05, 0.05, -0.02],
                      [0.05, 0.03, -0.05, -0.04, 0.04]])
    base = 100 * np.exp(np.array(SEED_EFFECT[:5]))
    write_blocks(study, [base * np.exp(noise[0]), base * np.exp(noise[1]), base * np.exp(noise[2])])
    looks = [study.analyse(blocks) for blocks in (3, 4, 5)]
    assert [look.number for look in looks] == [1, 2, 3]
    assert looks[0].level > looks[1].level > looks[2].level > 0.95  # alpha spent look by look, not all at once
    assert not any(look.all_resolved for look in looks)
    assert [study.decide(look, look.blocks) for look in looks] == [None, None, "max_blocks"]
    assert study.decide(looks[0], 3, elapsed_minutes=31) == "max_minutes"
    assert "would need" in study.paragraph(looks[0]) and "If the estimates stayed" in study.paragraph(looks[0])
    assert sorted(p.name for p in (tmp_path / "sweep" / "looks").iterdir()) == [
        f"look_{b}.{ext}" for b in (3, 4, 5) for ext in ("csv", "md")]


def test_blocks_to_resolve_is_the_first_look_whose_interval_would_settle_the_comparison(tmp_path):
    """Projected from the first look: the estimate stays, the standard error shrinks as
    1/sqrt(blocks), and each later look uses its own level and critical value."""
    import math

    from rnnlm.study.maxt import simultaneous_critical

    study = BlockStudy(tmp_path / "sweep", {"base": ["a=1"], "worse": ["a=2"], "same": ["a=3"]}, 0,
                       list(range(1, 13)), min_blocks=3, max_blocks=12)
    noise = np.array([[0.01, -0.01, 0.0], [0.0, 0.012, -0.01], [-0.01, 0.0, 0.011]])
    base = 100 * np.exp(np.array(SEED_EFFECT[:3]))
    write_blocks(study, [base * np.exp(noise[0]), 1.05 * base * np.exp(noise[1]), base * np.exp(noise[2])])
    look = study.analyse(3, write=False)
    projected = study.blocks_to_resolve(look)
    assert set(projected) == {label for label, ok in look.resolved.items() if not ok}
    corr = np.array([[1.0, 0.5], [0.5, 1.0]])
    for label, blocks in projected.items():
        r = look.table.loc[label]
        estimate, se = abs(math.log(r["ratio"])), math.log(r["ratio_high"] / r["ratio"]) / r["crit"]

        def settles(b):
            half = float(simultaneous_critical(corr, 2 * (b - 1), study.level(b))) * se * math.sqrt(3 / b)
            return estimate > half or estimate + half < math.log(1.03)

        assert blocks is not None and settles(blocks) and not any(settles(b) for b in range(4, blocks))


def test_finished_blocks_diverged_runs_and_job_numbering(tmp_path):
    """Job block * V + variant; a block is finished when each run completed or diverged; a
    diverged run is left out of the comparison with a note; blocks count from the first."""
    study = plan(tmp_path)
    assert [study.job_index(b, v) for b in (0, 1) for v in range(3)] == [0, 1, 2, 3, 4, 5]
    assert study.job_dir(2, 1) == tmp_path / "sweep" / "7"
    assert study.block_jobs(2) == [["dropout.output=0.1", "seed=3"], ["dropout.output=0.5", "seed=3"],
                                   ["dropout.output=0.2", "seed=3"]]
    base = 100 * np.exp(np.array(SEED_EFFECT[:4]))
    write_blocks(study, [base, 1.1 * base, [None, *base[1:]]])  # job 2 (block 1, "same") diverged
    write_run(study.sweep_dir, study.job_index(2, 1), 3, None, "interrupted")  # block 3 is not finished
    assert study.block_finished(0) and study.block_finished(3) and not study.block_finished(2)
    assert study.finished_blocks() == 2  # block 4 was finished, but after an unfinished one
    runs = study.runs(2)
    assert len(runs) == 6 and math.isinf(runs.loc[(runs["group"] == "same") & (runs["block"] == 1), "value"].item())
    assert study.without_metric(0) == []
    write_run(study.sweep_dir, study.job_index(2, 1), 3, None)  # completed, without a test perplexity
    assert study.block_finished(2) and study.without_metric(2) == [7]
    write_run(study.sweep_dir, study.job_index(2, 1), 3, 1.1 * base[2])
    look = study.analyse(3)
    assert look.table.loc["same", "n"] == 2 and "1 non-finite run left out" in look.table.loc["same", "note"]


def test_a_job_directory_of_another_plan_is_refused(tmp_path):
    study = plan(tmp_path)
    (study.job_dir(0, 1) / ".hydra").mkdir(parents=True)
    (study.job_dir(0, 1) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["dropout.output=0.2", "seed=1"]))
    with pytest.raises(StudyError, match="not job 1 of this study .variant worse, seed=1.*the variants, their order"):
        study.check_jobs()


@pytest.mark.parametrize("settings,message", [
    ({"variants": {}}, "no variants"),
    ({"variants": {"a": []}}, "one variant"),
    ({"baseline": "nope"}, "baseline 'nope' is not a variant; choose one of: a, b"),
    ({"min_blocks": 1}, "min_blocks=1"),
    ({"max_blocks": 2}, "max_blocks=2 is below min_blocks=3"),
    ({"seeds": [1, 2, 3, 4]}, "4 seeds for max_blocks=5"),
    ({"seeds": [1, 2, 2, 3, 4]}, "the seeds repeat"),
    ({"metric": "seed"}, "metric=seed is not a perplexity or loss column"),
    ({"variants": {"a": ["seed=3"], "b": []}}, "variant a sets seed, the block key"),
])
def test_a_plan_that_cannot_run_is_refused(tmp_path, settings, message):
    args = {"variants": {"a": [], "b": ["dropout.output=0.2"]}, "baseline": "a", "seeds": [1, 2, 3, 4, 5],
            "max_blocks": 5, **settings}
    with pytest.raises(StudyError, match=message.replace("(", r"\(")):
        BlockStudy(tmp_path, args.pop("variants"), args.pop("baseline"), args.pop("seeds"), **args)


def test_seeds_are_a_list_or_a_sweep_in_hydras_syntax():
    assert seed_list(None, "seed", 3) == [1, 2, 3]
    assert seed_list("range(1,21)", "seed", 12) == list(range(1, 21))
    assert seed_list("7,3,5", "seed", 3) == [7, 3, 5]
    assert seed_list([11, 12], "seed", 2) == [11, 12]


# ------------------------------------------------------- the sweeper's loop, a fake launcher

class FakeLauncher:
    """Writes each job's result.csv at once: test perplexity 100 x a seed's effect x the
    variant's factor x a 0.1 % wobble; ``fail`` names job indices that fail (no result)."""

    def __init__(self, sweep, factors, fail=()):
        self.sweep, self.factors, self.fail, self.calls = sweep, factors, set(fail), []

    def launch(self, job_overrides, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        self.calls.append(initial_job_idx)
        returns = []
        for job, overrides in enumerate(job_overrides, start=initial_job_idx):
            ret = JobReturn(overrides=overrides)
            if job in self.fail:
                ret.status, ret.return_value = JobStatus.FAILED, RuntimeError(f"job {job} failed")
            else:
                seed = int(next(o for o in overrides if o.startswith("seed=")).split("=")[1])
                wobble = 0.001 * ((job + seed) % 3 - 1)
                value = 100 * math.exp(SEED_EFFECT[seed - 1] + wobble) * self.factors[overrides[0]]
                write_run(self.sweep, job, seed, value)
                ret.status, ret.return_value = JobStatus.COMPLETED, value
            returns.append(ret)
        return returns


def fake_sweep(tmp_path, factors, fail=(), **settings):
    from omegaconf import OmegaConf

    sweeper = BlocksSweeper(variants={f"v{i}": [override] for i, override in enumerate(factors)}, baseline="v0",
                            **{"min_blocks": 3, "max_blocks": 6, **settings})
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    sweeper.launcher = FakeLauncher(tmp_path / "sweep", factors, fail)
    return sweeper


def test_the_sweeper_stops_when_every_comparison_resolves(tmp_path):
    """20 % worse and alike within 0.1 %: resolved at the first look, after block 3; run
    again, it finds the study stopped and launches nothing."""
    factors = {"dropout.output=0.1": 1.0, "dropout.output=0.5": 1.2, "dropout.output=0.2": 1.0}
    sweeper = fake_sweep(tmp_path, factors)
    sweeper.sweep(["experiment=smoke"])
    assert sweeper.launcher.calls == [0, 3, 6]  # one launch per block, job block * 3 + variant
    stop = yaml.safe_load((tmp_path / "sweep" / "looks" / "stop.yaml").read_text())
    assert (stop["stop"], stop["blocks"], stop["look"]) == ("resolved", 3, 1)
    assert stop["verdicts"]["v1"] == "higher" and stop["verdicts"]["v2"].startswith("within")
    again = fake_sweep(tmp_path, factors)
    again.sweep(["experiment=smoke"])
    assert again.launcher.calls == []


def test_the_sweeper_stops_at_max_minutes_and_after_a_failed_job(tmp_path):
    factors = {"dropout.output=0.1": 1.0, "dropout.output=0.3": 1.0}
    sweeper = fake_sweep(tmp_path, factors, max_minutes=1e-6)  # passed once the first block is done
    sweeper.sweep([])
    assert sweeper.launcher.calls == [0]
    stop = yaml.safe_load((tmp_path / "sweep" / "looks" / "stop.yaml").read_text())
    assert (stop["stop"], stop["blocks"], stop["look"]) == ("max_minutes", 1, None)

    sweeper = fake_sweep(tmp_path, factors, fail=[3])  # block 2's first job fails: the study stops with its error
    with pytest.raises(RuntimeError, match="job 3 failed"):
        sweeper.sweep([])
    assert sweeper.launcher.calls == [2] and not (tmp_path / "sweep" / "looks" / "stop.yaml").exists()


# ------------------------------------------------------------- the sweeper, end to end

# One short epoch of the smoke model per job: 5 batches of 4 x 10 tokens.
QUICK = ("experiment=smoke", "dataset.batch_size=4", "trainer.bptt=10", "trainer.max_epochs=1",
         "trainer.max_batches=5", "trainer.progress=false", "threads=1")
# Three variants; `bad` diverges at every seed, so its comparison never resolves and the study
# runs to max_blocks whatever the other two do.
VARIANTS = ("hydra.sweeper.variants={base:['dropout.output=0.1'],more:['dropout.output=0.3'],"
            "bad:['optim.lr=1e12','optim.clip=0']}")
BLOCKS = ("hydra/sweeper=rnnlm_blocks", VARIANTS, "hydra.sweeper.baseline=base", "hydra.sweeper.min_blocks=2")


def files(sweep, jobs, skip=()):
    """{path: (bytes, mtime)} of every file of ``jobs``' directories, less names in ``skip``."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for job in jobs for p in (sweep / str(job)).rglob("*")
            if p.is_file() and p.name not in skip}


def test_a_block_sweep_stops_at_max_blocks_and_continues_where_it_stood(tmp_path, monkeypatch, capsys):
    """SIGTERM in block 1's second job stops the study (exit 130); the same command with
    resume=auto keeps the finished job, continues the interrupted one, runs blocks 2 and 3 and
    stops at max_blocks=3 with `bad` unresolved; with max_blocks=4 it runs block 4 only, and
    once more it runs nothing."""
    sweep = tmp_path / "sweep"
    command = lambda max_blocks: ["train", "-m", *QUICK, *BLOCKS, f"hydra.sweeper.max_blocks={max_blocks}",  # noqa: E731
                                  f"hydra.sweep.dir={sweep}", "resume=auto"]
    with monkeypatch.context() as patch:
        sigterm_on_call(patch, "rnnlm.training.trainer.get_batch", 5 + 3)  # job 1, its third segment
        assert rnnlm_main(command(3)) == 130
    assert read_rows(sweep / "0" / "result.csv")[0]["status"] == "completed"
    assert read_rows(sweep / "1" / "result.csv")[0]["status"] == "interrupted"
    assert not (sweep / "2").exists() and not (sweep / "looks").exists()
    finished = files(sweep, [0], skip=(".rnnlm-claim",))

    assert rnnlm_main(command(3)) == 0, capsys.readouterr().err[-3000:]
    assert files(sweep, [0], skip=(".rnnlm-claim",)) == finished  # passed over, not run again
    for job in range(9):  # job block * 3 + variant
        (row,) = read_rows(sweep / str(job) / "result.csv")
        block, variant = divmod(job, 3)
        assert row["seed"] == str(block + 1)
        assert [row["dropout.output"] == "0.1", row["dropout.output"] == "0.3", float(row["optim.lr"]) == 1e12][variant]
        assert row["status"] == ("diverged" if variant == 2 else "completed")
    assert read_rows(sweep / "1" / "metrics.csv")[-1]["epoch"] == "1"  # the interrupted job ended its epoch
    assert not (sweep / "9").exists()
    stop = yaml.safe_load((sweep / "looks" / "stop.yaml").read_text())
    assert (stop["stop"], stop["blocks"], stop["look"], stop["seeds"]) == ("max_blocks", 3, 2, [1, 2, 3])
    assert stop["verdicts"]["bad"] == "n<2: no interval" and stop["verdicts"]["base"] == "baseline"
    assert sorted(p.name for p in (sweep / "looks").glob("look_*.md")) == ["look_2.md", "look_3.md"]
    assert "3 non-finite runs left out" in (sweep / "looks" / "look_3.md").read_text()

    done = files(sweep, range(9))
    assert rnnlm_main(command(4)) == 0, capsys.readouterr().err[-3000:]
    assert files(sweep, range(9)) == done  # finished blocks are not launched again
    assert [read_rows(sweep / str(job) / "result.csv")[0]["seed"] for job in (9, 10, 11)] == ["4"] * 3
    assert sorted(p.name for p in (sweep / "looks").glob("look_*.csv")) == ["look_2.csv", "look_3.csv", "look_4.csv"]
    look_4 = pd.read_csv(sweep / "looks" / "look_4.csv")
    assert list(look_4["variant"]) == ["base", "more", "bad"] and list(look_4["n"]) == [4, 4, 0]
    stop = yaml.safe_load((sweep / "looks" / "stop.yaml").read_text())
    assert (stop["stop"], stop["blocks"], stop["look"]) == ("max_blocks", 4, 3)

    done = files(sweep, range(12))
    assert rnnlm_main(command(4)) == 0  # the study has stopped: its looks again, no job
    assert files(sweep, range(12)) == done and not (sweep / "12").exists()

    assert rnnlm_main(["summary", str(sweep), "--format", "csv"]) == 0  # rnnlm summary reads the study's runs
    assert sum(int(r["n"]) for r in read_rows(sweep / "summary.csv")) == 8  # the 4 diverged runs are listed apart


@pytest.mark.parametrize("overrides,message", [
    (("hydra/sweeper=rnnlm_blocks",), "the study has no variants"),
    ((*BLOCKS[:2], "hydra.sweeper.baseline=nope"), "baseline 'nope' is not a variant; choose one of: base, more, bad"),
    ((*BLOCKS, "hydra.sweeper.min_blocks=1"), "min_blocks=1: the first look needs at least 2 blocks"),
    ((*BLOCKS, "hydra.sweeper.max_blocks=1"), "max_blocks=1 is below min_blocks=2"),
    ((*BLOCKS, "hydra.sweeper.max_blocks=4", "hydra.sweeper.seeds=[1,2,3]"), "3 seeds for max_blocks=4"),
    ((*BLOCKS, "dropout.output=0.1,0.2"), "'dropout.output=0.1,0.2' is a sweep"),
    ((*BLOCKS, "dropout.output=0.2"), "sets dropout.output, which variant base sets"),
])
def test_a_study_that_cannot_run_is_refused_in_one_line_and_leaves_nothing(tmp_path, capsys, overrides, message):
    assert rnnlm_main(["train", "-m", *QUICK, *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnlm: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "sweep").exists()


def test_the_study_preset_runs_the_eight_variants_of_the_grid():
    """sweep=recurrent_dropout_blocks: the 8 recurrent dropouts of sweep=recurrent_dropout_ptb,
    `none` the baseline, two jobs at a time with one thread each, looks from block 3 to 12."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    import rnnlm.cli.train  # noqa: F401  (registers the config schema)

    with initialize_config_module("rnnlm.configs", version_base="1.3"):
        study = compose("config", overrides=["experiment=recurrent_dropout_ptb", "sweep=recurrent_dropout_blocks"],
                        return_hydra_config=True)
        grid = compose("config", overrides=["experiment=recurrent_dropout_ptb", "sweep=recurrent_dropout_ptb"],
                       return_hydra_config=True)
    sweeper = study.hydra.sweeper
    assert sweeper._target_.endswith("BlocksSweeper") and study.hydra.launcher._target_.endswith("JoblibLauncher")
    assert (sweeper.baseline, sweeper.min_blocks, sweeper.max_blocks, sweeper.seeds) == ("none", 3, 12, None)
    assert study.hydra.launcher.n_jobs == 2 and study.threads == 1
    parser = OverridesParser.create()
    (cells,) = parser.parse_overrides([f"dropout.recurrent={grid.hydra.sweeper.params['dropout.recurrent']}"])
    variants = {label: parser.parse_overrides(list(overrides))[0].value()
                for label, overrides in sweeper.variants.items()}
    assert list(variants.values()) == list(cells.sweep_iterator()) and len(variants) == 8
    assert variants["none"]["kind"] == "none" and variants["gal_untied"]["per_gate_input"] is True


def test_the_core_needs_neither_hydra_nor_torch_and_the_plugin_only_hydras_public_surface():
    import hydra_plugins.rnnlm_blocks_sweeper as sweeper

    code = "import sys, rnnlm.study.blocks; print(sorted({'torch', 'hydra'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]
    plugin = [p.read_text() for p in Path(sweeper.__file__).parent.glob("*.py")]
    assert len(plugin) == 3 and not any("hydra._internal" in text for text in plugin)
