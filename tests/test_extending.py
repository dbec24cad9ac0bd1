"""Extending rnnlm: a new dataset is one YAML file; a new recurrent dropout scheme is one
module in ``rnnlm.dropout.schemes`` and one YAML; the package ships every config it finds.

A user's config directory (``--config-dir``) adds ``dataset/<name>.yaml``; the run reads
the corpus from the directory that file names, and the result CSVs carry the new name. A
scheme module placed on the path of ``rnnlm.dropout.schemes`` is found by name, validated,
built, and trained by ``rnnlm train``, with no other file changed. The runs go through
``rnnlm.cli.main`` in this process (test_train_cli.py covers the console script itself).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import read_rows
from tiny_corpus import write_split_files

import rnnlm.dropout.scheme as scheme_registry
import rnnlm.dropout.schemes as scheme_package
from rnnlm.cli import main as rnnlm_main
from rnnlm.config import ConfigError, RecurrentDropoutConfig
from rnnlm.dropout import StepLSTM, get_scheme, mc_pass, recurrent_layer, registered_schemes

ROOT = Path(__file__).resolve().parents[1]

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
    assert rnnlm_main(["train", "--config-dir", str(tmp_path / "my_configs"), "dataset=tinytext", *QUICK,
                       f"hydra.run.dir={run_dir}"]) == 0
    (row,) = read_rows(run_dir / "result.csv")
    assert row["dataset.name"] == "tinytext" and row["status"] == "completed"
    assert int(row["eval_batch_size"]) == 2
    assert "tinytext" in (run_dir / ".hydra" / "config.yaml").read_text()


def test_a_new_dataset_found_under_rnnlm_data_dir_by_its_dirname(tmp_path, monkeypatch):
    write_split_files(tmp_path / "data" / "Tiny-Text", seed=3)
    configs = tmp_path / "my_configs" / "dataset"
    configs.mkdir(parents=True)
    (configs / "tiny_text.yaml").write_text("name: tiny_text\ndirname: Tiny-Text\nbatch_size: 4\n"
                                            "eval_batch_size: 2\ntest_batch_size: 2\n")
    run_dir = tmp_path / "run"
    monkeypatch.setenv("RNNLM_DATA_DIR", str(tmp_path / "data"))
    assert rnnlm_main(["train", "--config-dir", str(tmp_path / "my_configs"), "dataset=tiny_text", *QUICK,
                       f"hydra.run.dir={run_dir}"]) == 0
    (row,) = read_rows(run_dir / "result.csv")
    assert row["dataset.name"] == "tiny_text"


# --------------------------------------------------------------------------- a recurrent scheme

# The whole of a new scheme: a per-sequence mask on the cell state carried to the next step
# (in the spirit of rnnDrop, Moon et al. 2015). Written against the plain step only, so it
# runs plain_lstm through autograd.
CELL_DROP = textwrap.dedent('''
    """cell_drop: a per-sequence dropout mask on the cell state carried to the next step."""

    from rnnlm.dropout import StepScheme, bernoulli_mask


    class CellDrop(StepScheme):
        name = "cell_drop"
        masks = ("sequence",)

        def sample(self, layer, T, B):
            w, H = layer.weight_hh_l0, layer.hidden_size
            return {"c": layer.held_mask("c", lambda: bernoulli_mask((B, H), self.rate, w))}

        def next_state(self, h_prev, c_prev, h_new, c_new, masks, t):
            return h_new, c_new * masks["c"]
''')
CELL_DROP_YAML = "# cell_drop at rate 0.3\nkind: cell_drop\nrate: 0.3\nmask: sequence\n"


@pytest.fixture
def cell_drop(tmp_path, monkeypatch):
    """The module above on the path of rnnlm.dropout.schemes; registry and path restored after."""
    (tmp_path / "extra_schemes").mkdir()
    (tmp_path / "extra_schemes" / "cell_drop.py").write_text(CELL_DROP)
    monkeypatch.setattr(scheme_package, "__path__", [*scheme_package.__path__, str(tmp_path / "extra_schemes")])
    monkeypatch.setattr(scheme_registry, "_REGISTRY", dict(scheme_registry._REGISTRY))
    yield tmp_path / "extra_schemes"
    sys.modules.pop(f"{scheme_package.__name__}.cell_drop", None)
    vars(scheme_package).pop("cell_drop", None)


def test_a_new_scheme_module_is_found_validated_and_built(cell_drop):
    assert "cell_drop" in registered_schemes()
    with pytest.raises(ConfigError, match="mask=tied does not go with dropout.recurrent.kind=cell_drop"):
        RecurrentDropoutConfig("cell_drop", 0.3, "tied")
    layer = recurrent_layer(5, 7, RecurrentDropoutConfig("cell_drop", 0.3, "sequence"))
    assert isinstance(layer, StepLSTM) and type(layer.scheme) is get_scheme("cell_drop")
    assert not layer.scheme.fusable  # plain_lstm, differentiated by autograd

    torch.manual_seed(0)
    plain = torch.nn.LSTM(5, 7)
    layer.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 5)
    torch.testing.assert_close(layer(x, masks={"c": torch.ones(3, 7)})[0], plain(x)[0])  # keep all = LSTM
    out, (h, c) = layer(x, masks={"c": torch.zeros(3, 7)})  # drop all: no cell carried over
    assert torch.equal(c, torch.zeros_like(c))
    # so the last step starts from c = 0 and h_{T-2}: h_{T-1} = o * tanh(i * g)
    gates = x[-1] @ plain.weight_ih_l0.T + out[-2] @ plain.weight_hh_l0.T + plain.bias_ih_l0 + plain.bias_hh_l0
    i, _, g, o = gates.chunk(4, 1)
    torch.testing.assert_close(out[-1], o.sigmoid() * torch.tanh(i.sigmoid() * g.tanh()))
    out.sum().backward()
    assert layer.weight_hh_l0.grad.abs().sum() > 0

    layer.eval()
    torch.testing.assert_close(layer(x)[0], plain(x)[0])  # eval: mask-free
    with mc_pass(layer):  # MC dropout holds its per-sequence mask across forwards
        first = layer.sample_masks(4, 3)["c"]
        assert torch.equal(layer.sample_masks(4, 3)["c"], first)


def test_a_new_scheme_is_one_module_and_one_yaml_through_the_cli(cell_drop, tmp_path):
    configs = tmp_path / "my_configs" / "dropout" / "recurrent"
    configs.mkdir(parents=True)
    (configs / "cell_drop.yaml").write_text(CELL_DROP_YAML)
    run_dir = tmp_path / "run"
    assert rnnlm_main(["train", "--config-dir", str(tmp_path / "my_configs"), "dropout/recurrent=cell_drop",
                       *QUICK, f"hydra.run.dir={run_dir}"]) == 0
    (row,) = read_rows(run_dir / "result.csv")
    assert (row["dropout.recurrent.kind"], row["dropout.recurrent.rate"]) == ("cell_drop", "0.3")
    assert row["status"] == "completed" and float(row["best_val_ppl"]) > 1


# --------------------------------------------------------------------------- packaging


def test_the_wheel_lists_every_code_package_and_ships_every_config():
    """Config groups ship by the `**/*.yaml` glob; code packages are listed in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    code = sorted(".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "rnnlm").rglob("__init__.py"))
    listed = text[text.index("packages = ["):text.index("]", text.index("packages = ["))]
    missing = [name for name in code if f'"{name}"' not in listed]
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    assert '"rnnlm.configs" = ["**/*.yaml"]' in text and '"rnnlm.configs" = "configs"' in text
    assert not [p for p in (ROOT / "configs").rglob("*") if p.is_file() and p.suffix not in (".yaml", ".py")]
