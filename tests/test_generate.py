"""``rnnlm generate``: deterministic under a seed, vocabulary words only, prompt, file output."""

from __future__ import annotations

import subprocess

import pytest
import torch
from eval_helpers import make_run
from helpers import RNNLM

from rnnlm.cli import main as rnnlm_main
from rnnlm.data import Vocab, tokenize
from rnnlm.evaluation.generate import render, sample_words
from rnnlm.evaluation.runs import load_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("generate"), unk=True)


def generate(capsys, *args: str) -> str:
    assert rnnlm_main(["generate", *args]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_same_seed_same_text_other_seed_other_text(run, capsys):
    a = generate(capsys, str(run), "--words", "60", "--seed", "7")
    b = generate(capsys, str(run), "--words", "60", "--seed", "7")
    c = generate(capsys, str(run), "--words", "60", "--seed", "8")
    assert a == b and a != c


def test_only_vocabulary_words_and_the_requested_count(run, capsys):
    vocab = load_run(run).vocab
    text = generate(capsys, str(run), "--words", "80", "--temperature", "1.5")
    words = tokenize(text.splitlines())  # <eos> per line, as the corpora are read
    assert set(words) <= set(vocab.itos)
    ids = sample_words(load_run(run).model, vocab, 80, 1.5, seed=1111)
    assert len(ids) == 80 and render(ids, vocab) == text


def test_prompt_conditions_the_state_and_low_temperature_is_greedy(run):
    loaded = load_run(run)
    stoi = loaded.vocab.stoi
    prompt = [stoi[w] for w in "the cat sees".split()]
    greedy = sample_words(loaded.model, loaded.vocab, 1, 1e-4, seed=2, prompt=prompt)
    with torch.no_grad():
        out = loaded.model(torch.tensor([stoi["<eos>"], *prompt]).view(-1, 1), loaded.model.init_hidden(1))
        alone = loaded.model(torch.tensor([[stoi["<eos>"]]]), loaded.model.init_hidden(1))
    # The first word is drawn after <eos> + prompt: the argmax of that distribution, not of <eos> alone's.
    assert greedy == [int(out.logits[-1, 0].argmax())]
    assert not torch.allclose(out.logits[-1], alone.logits[-1])


def test_render_writes_eos_as_line_breaks():
    vocab = Vocab(["<eos>", "a", "b"])
    assert render([1, 2, 0, 2, 0], vocab) == "a b\nb\n"
    assert render([0, 1], vocab) == "\na\n"


def test_out_file_and_console_script(run, tmp_path):
    out = tmp_path / "sample.txt"
    proc = subprocess.run([RNNLM, "generate", str(run), "--words", "20", "--seed", "3", "--out", str(out),
                           "--prompt", "my sister zorblax"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "1 prompt words read as <unk>" in proc.stderr
    assert len(tokenize(out.read_text().splitlines())) >= 20


@pytest.mark.parametrize("args,message", [
    (["{run}", "--words", "0"], "--words 0 must be >= 1"),
    (["{run}", "--temperature", "0"], "--temperature 0.0 must be a positive number"),
    (["{run}", "--seed", "x"], "invalid int value"),
    (["{missing}"], "is not a directory"),
    (["{run}", "--out", "{missing}/x.txt"], "not a writable file path"),
])
def test_bad_input_is_one_line_exit_2(run, tmp_path, capsys, args, message):
    argv = [a.format(run=run, missing=tmp_path / "nope") for a in args]
    assert rnnlm_main(["generate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rnnlm: error: ") and message in err, err
