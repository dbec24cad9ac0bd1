"""Extending rnnlm without changing its code: a new dataset is one YAML file.

A user's config directory (``--config-dir``) adds ``dataset/<name>.yaml``; the run reads
the corpus from the directory that file names, and the result CSVs carry the new name.
"""

from __future__ import annotations

from helpers import read_rows, run_rnnlm
from tiny_corpus import write_split_files

QUICK = ["experiment=smoke", "trainer.max_epochs=1", "trainer.max_batches=2", "trainer.bptt=10",
         "trainer.progress=false"]


def test_a_new_dataset_is_one_yaml_in_a_user_config_dir(tmp_path):
    write_split_files(tmp_path / "data" / "tinytext", seed=7)
    configs = tmp_path / "my_configs" / "dataset"
    configs.mkdir(parents=True)
    (configs / "tinytext.yaml").write_text(
        "# A corpus of my own: a local directory, no Hub source.\n"
        "name: tinytext\n"
        "dirname: tinytext\n"
        f"path: {tmp_path / 'data' / 'tinytext'}\n"
        "batch_size: 4\n"
        "eval_batch_size: 2\n"
        "test_batch_size: 2\n"
    )
    run_dir = tmp_path / "run"
    done = run_rnnlm("train", "--config-dir", str(tmp_path / "my_configs"), "dataset=tinytext", *QUICK,
                     f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (row,) = read_rows(run_dir / "result.csv")
    assert row["dataset.name"] == "tinytext" and row["status"] == "completed"
    assert int(row["eval_batch_size"]) == 2
    assert "tinytext" in (run_dir / ".hydra" / "config.yaml").read_text()


def test_a_new_dataset_found_under_rnnlm_data_dir_by_its_dirname(tmp_path):
    write_split_files(tmp_path / "data" / "Tiny-Text", seed=3)
    configs = tmp_path / "my_configs" / "dataset"
    configs.mkdir(parents=True)
    (configs / "tiny_text.yaml").write_text("name: tiny_text\ndirname: Tiny-Text\nbatch_size: 4\n"
                                            "eval_batch_size: 2\ntest_batch_size: 2\n")
    run_dir = tmp_path / "run"
    import os

    env_dir = os.environ["RNNLM_DATA_DIR"]
    os.environ["RNNLM_DATA_DIR"] = str(tmp_path / "data")
    try:
        done = run_rnnlm("train", "--config-dir", str(tmp_path / "my_configs"), "dataset=tiny_text", *QUICK,
                         f"hydra.run.dir={run_dir}", cwd=tmp_path)
    finally:
        os.environ["RNNLM_DATA_DIR"] = env_dir
    assert done.returncode == 0, done.stderr
    (row,) = read_rows(run_dir / "result.csv")
    assert row["dataset.name"] == "tiny_text"
