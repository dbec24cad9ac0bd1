"""``rnnlm eval`` on a tiny trained run: rows, agreement with training-time figures, bad
input, tuning on validation and ``rnnlm summary --metric pointer_ppl``."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from eval_helpers import make_run
from helpers import RNNLM, read_rows

from rnnlm.cli import main as rnnlm_main
from rnnlm.config import Average, Optimizer
from rnnlm.config import TestWeights as Weights  # not Test*: pytest would try to collect it
from rnnlm.data import Vocab
from rnnlm.evaluation.rows import EVAL_COLUMNS
from rnnlm.evaluation.runs import RunError, encode_text, load_run, use_asgd_average



@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A completed tiny run with MC figures and <unk> in its vocabulary."""
    return make_run(tmp_path_factory.mktemp("eval"), unk=True, **{"eval.mc_samples": 2})


@pytest.fixture()
def fresh(run, tmp_path) -> Path:
    """A copy of the run without eval.csv, for tests that count rows."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval.csv"))
    return copy


def training_files(run_dir: Path) -> dict[str, str]:
    files = ["result.csv", "metrics.csv", "checkpoints/best.pt", "checkpoints/last.pt", ".hydra/config.yaml"]
    return {f: hashlib.sha256((run_dir / f).read_bytes()).hexdigest() for f in files}


def by(rows, method, split):
    (row,) = [r for r in rows if r["method"] == method and r["split"] == split]
    return row


def test_every_method_agrees_with_training_and_only_eval_csv_is_written(fresh, capsys):
    before = training_files(fresh)
    code = rnnlm_main(["eval", str(fresh), "method=standard,mc,pointer,dynamic", "batch_size=1",
                       "pointer.lambda=0", "dynamic.lr=0", "dynamic.stats_batches=3"])
    assert code == 0, capsys.readouterr().err
    assert training_files(fresh) == before
    rows = read_rows(fresh / "eval.csv")
    assert list(rows[0]) == list(EVAL_COLUMNS)
    assert len(rows) == 8 and {r["checkpoint"] for r in rows} == {"best"}
    standard = {s: float(by(rows, "standard", s)["ppl"]) for s in ("valid", "test")}
    # lambda = 0 and lr = 0 reduce to the standard evaluation (same batch size and segments here:
    # dynamic uses bptt 5, so compare it to a standard evaluation with bptt 5 below).
    for split in ("valid", "test"):
        assert float(by(rows, "pointer", split)["ppl"]) == standard[split]
        assert float(by(rows, "dynamic", split)["ppl"]) == pytest.approx(standard[split], rel=1e-3)
    out = capsys.readouterr().out
    assert out.count("\n") == 8 and "pointer" in out
    row = by(rows, "dynamic", "test")
    assert row["dynamic.rule"] == "rms" and row["dynamic.stats_batches"] == "3" and row["bptt"] == "5"
    # the values used: unset ones derived from the run's counts as dynamiceval.py --oldhyper
    tensors = len(list(load_run(fresh, "best", "cpu").model.parameters()))
    assert float(row["dynamic.decay"]) == pytest.approx(0.02 / tensors)
    assert float(row["dynamic.epsilon"]) == pytest.approx(0.001 / 3 ** 0.5) and row["dynamic.lr"] == "0.0"
    assert row["pointer.window"] == "" and by(rows, "pointer", "test")["pointer.lambda"] == "0.0"


def test_defaults_reproduce_the_training_time_figures(fresh, capsys):
    """Standard (run's batch sizes, best checkpoint) and MC (run's seed and K) match result.csv."""
    assert rnnlm_main(["eval", str(fresh), "method=standard,mc"]) == 0, capsys.readouterr().err
    rows = read_rows(fresh / "eval.csv")
    (result,) = read_rows(fresh / "result.csv")
    assert float(by(rows, "standard", "valid")["ppl"]) == pytest.approx(float(result["best_val_ppl"]), rel=1e-9)
    assert float(by(rows, "standard", "test")["ppl"]) == pytest.approx(float(result["test_ppl"]), rel=1e-9)
    assert float(by(rows, "mc", "valid")["ppl"]) == pytest.approx(float(result["mc_val_ppl"]), rel=1e-9)
    assert float(by(rows, "mc", "test")["ppl"]) == pytest.approx(float(result["mc_test_ppl"]), rel=1e-9)
    assert by(rows, "mc", "test")["mc.samples"] == "2" and by(rows, "mc", "test")["mc.seed"] == "3"
    assert by(rows, "mc", "test")["mc.columns"] == "20"
    assert by(rows, "standard", "valid")["batch_size"] == "5" and by(rows, "standard", "test")["batch_size"] == "2"


def test_dynamic_lr_zero_is_standard_and_rows_append(fresh, capsys):
    args = ["eval", str(fresh), "split=test", "bptt=5", "batch_size=1"]
    assert rnnlm_main([*args, "method=standard"]) == 0
    assert rnnlm_main([*args, "method=dynamic", "dynamic.rule=sgd", "dynamic.lr=0"]) == 0
    rows = read_rows(fresh / "eval.csv")
    assert [r["method"] for r in rows] == ["standard", "dynamic"]  # appended, old rows kept
    assert float(rows[1]["loss"]) == pytest.approx(float(rows[0]["loss"]), rel=1e-7)
    assert rows[1]["setup_seconds"] == ""  # sgd needs no gradient statistics


def test_user_file_counts_words_outside_the_vocabulary(fresh, tmp_path, capsys):
    text = tmp_path / "mine.txt"
    text.write_text("the cat sees a zebra\nmy sister buys a spaceship today\n", encoding="utf-8")
    assert rnnlm_main(["eval", str(fresh), f"file={text}", "method=standard,pointer"]) == 0
    rows = read_rows(fresh / "eval.csv")
    assert [(r["split"], r["oov_words"], r["tokens"], r["batch_size"]) for r in rows] == [("file", "2", "12", "1")] * 2
    assert rows[0]["file"] == str(text)
    assert "2 words -> <unk>" in capsys.readouterr().out


def test_checkpoint_last(fresh, capsys):
    assert rnnlm_main(["eval", str(fresh), "checkpoint=last", "split=valid"]) == 0
    assert read_rows(fresh / "eval.csv")[0]["checkpoint"] == "last"


def test_last_checkpoint_of_an_averaging_run_reproduces_its_test_figure(tmp_path, capsys):
    """trainer.average=uniform with eval.test_weights=last tests the average: rnnlm eval
    checkpoint=last must load it, not the last iterate."""
    run_dir = make_run(tmp_path, **{"optim.name": Optimizer.sgd, "trainer.average": Average.uniform,
                                    "trainer.average_from": 1, "eval.test_weights": Weights.last})
    assert rnnlm_main(["eval", str(run_dir), "checkpoint=last", "method=standard", "split=test"]) == 0, \
        capsys.readouterr().err
    (result,) = read_rows(run_dir / "result.csv")
    (row,) = read_rows(run_dir / "eval.csv")
    assert float(row["ppl"]) == pytest.approx(float(result["test_ppl"]), rel=1e-6)


def test_last_checkpoint_after_asgd_uses_the_averaged_weights():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.ASGD(model.parameters(), lr=0.1, t0=0, lambd=0.0)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    state = opt.state_dict()
    use_asgd_average(model, state)
    for p in model.parameters():
        assert torch.equal(p, opt.state[p]["ax"])


BAD = [
    ([], "give the run directory first"),
    (["method=pointer"], "give the run directory first"),
    (["{missing}"], "is not a directory"),
    (["{empty}"], "is not a run directory"),
    (["{run}", "foo=1"], "foo is not a key"),
    (["{run}", "method=pointer,beam"], "method=pointer,beam is not"),
    (["{run}", "pointer.theta=abc"], "pointer.theta=abc is not a number"),
    (["{run}", "method=pointer", "pointer.lambda=1.5"], "pointer.lambda=1.5 must be in [0, 1]"),
    (["{run}", "method=pointer", "pointer.window=0"], "pointer.window=0 must be a positive number"),
    (["{run}", "method=dynamic", "dynamic.lr=-1"], "dynamic.lr=-1.0 must be"),
    (["{run}", "method=dynamic", "dynamic.rule=sgd"], "dynamic.rule=sgd needs dynamic.lr"),
    (["{run}", "batch_size=100000"], "batch_size=100000 is too large"),
    (["{run}", "file={nofile}"], "cannot read file="),
    (["{run}", "split=file"], "split=file needs file=PATH"),
    (["{run}", "checkpoint=newest"], "checkpoint=newest is not best or last"),
    (["{run}", "device=gpu"], "device=gpu is not a device"),
    (["{run}", "nokey"], "'nokey' is not KEY=VALUE"),
    (["{unfinished}"], "has no checkpoints/best.pt"),
    (["{run}", "pointer.theta=0.5,x"], "pointer.theta=0.5,x is not a number"),
    (["{run}", "method=pointer", "pointer.lambda=0.1,2"], "pointer.lambda=2.0 must be in [0, 1]"),
    (["{run}", "pointer.theta=0.5,1"], "is a grid for pointer, but method=standard leaves it out"),
    (["{run}", "method=pointer", "pointer.theta=0.5,1", "split=test"], "leave out split= and file="),
    (["{run}", "tune.valid_tokens=100"], "tune.valid_tokens needs a grid"),
    (["{run}", "method=pointer", "pointer.theta=0.5,1", "tune.valid_tokens=0"], "must be a positive integer"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_exit_2_and_nothing_written(fresh, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    unfinished = tmp_path / "unfinished"
    shutil.copytree(fresh / ".hydra", unfinished / ".hydra")
    paths = dict(run=fresh, missing=tmp_path / "nope", empty=tmp_path / "empty", nofile=tmp_path / "nofile.txt",
                 unfinished=unfinished)
    assert rnnlm_main(["eval", *(a.format(**paths) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rnnlm: error: ") and message in err, err
    assert not (fresh / "eval.csv").exists() and not (unfinished / "eval.csv").exists()


def test_text_outside_a_vocabulary_without_unk_is_refused(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("a b c\n", encoding="utf-8")
    with pytest.raises(RunError, match="no <unk>"):
        encode_text(text, Vocab(["<eos>", "a", "b"]))
    ids, oov = encode_text(text, Vocab(["<eos>", "a", "b", "<unk>"]))
    assert ids.tolist() == [1, 2, 3, 0] and oov == 1


def test_console_script(fresh, capsys):
    proc = subprocess.run([RNNLM, "eval", str(fresh), "method=pointer", "split=test"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pointer   test") and "appended 1 rows" in proc.stderr
    assert rnnlm_main(["eval", "--help"]) == 0 and "pointer.lambda" in capsys.readouterr().out


def test_tuning_picks_on_validation_and_summary_reports_it(fresh, capsys):
    code = rnnlm_main(["eval", str(fresh), "method=pointer", "pointer.theta=0.5,1", "pointer.lambda=0.05,0.2",
                       "tune.valid_tokens=150", "pointer.window=40"])
    assert code == 0, capsys.readouterr().err
    rows = read_rows(fresh / "eval.csv")
    grid = [r for r in rows if r["overrides"].endswith("(tuning: grid)")]
    assert len(grid) == 4 and all(r["split"] == "valid" and r["tokens"] == "149" for r in grid)
    assert {(r["pointer.theta"], r["pointer.lambda"]) for r in grid} == {(t, l) for t in ("0.5", "1.0")
                                                                          for l in ("0.05", "0.2")}
    best = min(grid, key=lambda r: float(r["ppl"]))
    chosen = [r for r in rows if r["overrides"].endswith("(tuning: chosen)")]
    assert len(rows) == 6 and [r["split"] for r in chosen] == ["valid", "test"]  # full valid, then test once
    assert int(chosen[0]["tokens"]) > 149
    for r in chosen:
        assert (r["pointer.theta"], r["pointer.lambda"]) == (best["pointer.theta"], best["pointer.lambda"])
    out = capsys.readouterr().out
    assert f"pointer   chosen on valid: pointer.theta={best['pointer.theta']} " in out

    assert rnnlm_main(["summary", str(fresh), "--metric", "pointer_ppl", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    header, values = out.splitlines()[:2]
    table = dict(zip(header.split(","), values.split(",")))
    assert float(table["pointer_val_ppl_mean"]) == pytest.approx(float(chosen[0]["ppl"]))
    assert float(table["pointer_test_ppl_mean"]) == pytest.approx(float(chosen[1]["ppl"]))
    assert "val_ppl_mean" in table  # the training perplexities sit beside it
    assert rnnlm_main(["summary", str(fresh), "--metric", "dynamic_ppl"]) == 1  # no dynamic rows: nothing to report
    assert "no dynamic_val_ppl" in capsys.readouterr().err


def test_a_grid_and_a_plain_method_in_one_call(fresh, capsys):
    """standard is scored as usual; dynamic is tuned on the whole validation split, so test is its only extra row."""
    assert rnnlm_main(["eval", str(fresh), "method=standard,dynamic", "dynamic.rule=sgd", "dynamic.lr=0,1e-4"]) == 0
    rows = read_rows(fresh / "eval.csv")
    line = "method=standard,dynamic dynamic.rule=sgd dynamic.lr=0,1e-4"
    assert [(r["method"], r["split"], r["overrides"]) for r in rows] == [
        ("standard", "valid", line), ("standard", "test", line), ("dynamic", "valid", f"{line} (tuning: grid)"),
        ("dynamic", "valid", f"{line} (tuning: grid)"), ("dynamic", "test", f"{line} (tuning: chosen)")]
    best = min(rows[2:4], key=lambda r: float(r["ppl"]))
    assert rows[4]["dynamic.lr"] == best["dynamic.lr"]
    assert "appended 5 rows" in capsys.readouterr().err


def test_threads_hold_for_the_command_only(fresh):
    """``threads=N`` sets torch's thread count while ``rnnlm eval`` runs, not after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert rnnlm_main(["eval", str(fresh), "method=standard", "split=valid", "threads=1"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------ MC: progress and throughput
def test_mc_shows_its_progress_in_samples_and_reports_token_samples_per_second(fresh, capsys):
    """Without a terminal, MC scoring says what it will do, then a line per tenth with the
    samples done, token-samples/s and the time left; eval.csv's token_samples_per_second is
    tokens x samples / seconds (tokens_per_second stays stream tokens)."""
    assert rnnlm_main(["eval", str(fresh), "method=mc", "split=valid", "mc.samples=5", "mc.columns=2"]) == 0
    err = capsys.readouterr().err
    (row,) = read_rows(fresh / "eval.csv")
    lines = [line for line in err.splitlines() if line.startswith("mc valid:")]
    tokens = int(row["tokens"])
    assert lines[0] == (f"mc valid: 5 samples of {tokens:,} tokens ({5 * tokens:,} token-samples), "
                        f"3 passes of up to 2 columns")
    percents = [int(line.split(":")[1].split("%")[0]) for line in lines[1:]]
    assert percents == sorted(percents) and percents[-1] == 100 and len(percents) >= 5
    assert "(5.0/5 samples)" in lines[-1] and "token-samples/s" in lines[-1] and "left" in lines[-1]
    # Both rates are over the same time (the written seconds are rounded, too coarse for a short run)
    assert float(row["token_samples_per_second"]) == pytest.approx(5 * float(row["tokens_per_second"]), rel=1e-4)
    assert float(row["tokens_per_second"]) == pytest.approx(tokens / float(row["seconds"]), rel=0.05)
    assert row["mc.samples"] == "5"


def test_progress_false_keeps_mc_quiet_and_other_methods_have_no_token_samples(fresh, capsys):
    assert rnnlm_main(["eval", str(fresh), "method=mc,standard", "split=valid", "mc.samples=2",
                       "progress=false"]) == 0
    captured = capsys.readouterr()
    assert "mc valid:" not in captured.err
    mc, standard = read_rows(fresh / "eval.csv")
    assert float(mc["token_samples_per_second"]) > 0 and standard["token_samples_per_second"] == ""
    assert "token-samples/s, 2 per token" in captured.out.splitlines()[0]


def test_mc_progress_counts_every_token_sample_and_changes_nothing(run):
    """evaluate_mc told of each segment gives the same loss, bit for bit, and is told of
    (L - 1) x B x samples token-samples in all."""
    from rnnlm.data import batchify
    from rnnlm.training.evaluate import evaluate_mc

    loaded = load_run(run, "best", "cpu")
    data = batchify(loaded.corpus.valid, 3, torch.device("cpu"))
    counts = []
    plain = evaluate_mc(loaded.model, data, 7, 5, columns=2, seed=1)
    told = evaluate_mc(loaded.model, data, 7, 5, columns=2, seed=1, progress=counts.append)
    assert told == plain
    assert sum(counts) == (data.size(0) - 1) * data.size(1) * 5 and len(counts) > 3


def test_work_progress_lines_and_switch():
    from rnnlm.training.progress import WorkProgress

    lines = []
    bar = WorkProgress("mc test", 4, "samples", 10, "token-samples", terminal=False, emit=lines.append)
    for _ in range(40):
        bar.update(1)
    bar.close()
    assert lines[0] == "mc test: 4 samples of 10 tokens (40 token-samples)"
    assert [line.split(": ")[1].split("%")[0].strip() for line in lines[1:]] == [str(p) for p in range(10, 101, 10)]
    quiet = []
    bar = WorkProgress("mc test", 4, "samples", 10, "token-samples", enabled=False, terminal=False, emit=quiet.append)
    bar.update(40)
    assert quiet == []
