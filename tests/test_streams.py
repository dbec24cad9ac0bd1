"""One random stream per source: what two variants at one seed share, step for step."""

from __future__ import annotations

import pytest
import torch

from rnnlm.config import (
    DropoutConfig,
    ModelConfig,
    OptimConfig,
    Optimizer,
    RecurrentDropoutConfig,
    RunConfig,
    SeedsConfig,
    TrainerConfig,
)
from rnnlm.data import batchify
from rnnlm.dropout import EmbeddingDropout, SequenceDropout, StochasticModule, mc_pass
from rnnlm.model import AWDLSTM
from rnnlm.training import Trainer, evaluate_mc, load_checkpoint, save_checkpoint
from rnnlm.training.streams import SOURCES, RandomStreams, derived_seed, mask_modules, seed_init, stream_seeds

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 19
VARIANTS = {
    "none": RecurrentDropoutConfig("none", 0.0),
    "weight_drop": RecurrentDropoutConfig("weight_drop", 0.3, "element"),
    "gal_tied": RecurrentDropoutConfig("variational", 0.3, "tied"),
    "zoneout": RecurrentDropoutConfig("zoneout", 0.1, "step", cell_rate=0.2),
}


def stream(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n,), generator=g)


def config(recurrent: RecurrentDropoutConfig, seed: int = 7, **seeds) -> RunConfig:
    return RunConfig(
        model=ModelConfig(emsize=8, nhid=12, nlayers=2),
        dropout=DropoutConfig(embedding=0.2, input=0.3, hidden=0.25, output=0.3, recurrent=recurrent),
        optim=OptimConfig(name=Optimizer.sgd, lr=5.0),
        trainer=TrainerConfig(bptt=8, max_epochs=1, max_batches=4, progress=False),
        seed=seed, seeds=SeedsConfig(**seeds),
    )


class Recorder(Trainer):
    """Records each step's segment length and every mask the shared dropouts draw."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lengths: list[int] = []
        self.masks: list[tuple[str, torch.Tensor]] = []
        for name, module in self.model.named_modules():
            if isinstance(module, (EmbeddingDropout, SequenceDropout)):
                draw = module.dropout_mask

                def recording(shape, p, like, _draw=draw, _name=name):
                    mask = _draw(shape, p, like)
                    self.masks.append((_name, mask.clone()))
                    return mask

                module.dropout_mask = recording

    def train_step(self, inputs, targets, lr):
        self.lengths.append(inputs.size(0))
        return super().train_step(inputs, targets, lr)


def train(cfg: RunConfig) -> tuple[Recorder, dict[str, torch.Tensor]]:
    seed_init(stream_seeds(cfg))
    model = AWDLSTM(VOCAB, cfg.model, cfg.dropout)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Recorder(model, cfg, batchify(stream(400), 4), batchify(stream(60, 1), 2),
                       save_best=lambda w: None, load_best=lambda: {})
    trainer.fit()
    return trainer, initial


def shared_weights(state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The embedding, decoder bias and LSTM weights, in build order, whatever the layer's class
    calls them (WeightDropLSTM nests its nn.LSTM as ``lstm``)."""
    return [v for k, v in state.items()]


def test_derived_seeds_are_distinct_per_source_and_explicit_ones_win():
    seeds = stream_seeds(config(VARIANTS["none"], seed=3))
    assert list(seeds) == list(SOURCES)
    assert len(set(seeds.values())) == len(SOURCES)
    assert seeds == stream_seeds(config(VARIANTS["gal_tied"], seed=3))  # the variant does not enter
    assert seeds != stream_seeds(config(VARIANTS["none"], seed=4))
    assert all(0 <= s < 2**63 for s in seeds.values())
    assert derived_seed(3, "dropout") == seeds["dropout"]
    explicit = stream_seeds(config(VARIANTS["none"], seed=3, dropout=11))
    assert explicit["dropout"] == 11 and {k: v for k, v in explicit.items() if k != "dropout"} == {
        k: v for k, v in seeds.items() if k != "dropout"}


def test_mask_modules_split_the_shared_dropouts_from_the_recurrent_layers():
    model = AWDLSTM(VOCAB, ModelConfig(emsize=8, nhid=12, nlayers=2), DropoutConfig(recurrent=VARIANTS["gal_tied"]))
    shared = mask_modules(model, "dropout")
    recurrent = mask_modules(model, "recurrent")
    assert {type(m) for m in shared} == {EmbeddingDropout, SequenceDropout} and len(shared) == 4
    assert len(recurrent) == 2 and all(m in list(model.rnns) for m in recurrent)


@pytest.mark.parametrize("form", ["batch", "sequence", "token"])
def test_word_dropout_of_every_form_draws_from_the_dropout_stream(form):
    """Per word type, per sequence or per token (Gal's Table 1 form): the mask is the next
    draw of the run's dropout stream, with the shape of its form."""
    from rnnlm.dropout.base import bernoulli_mask

    cfg = config(VARIANTS["none"], seed=5)
    model = AWDLSTM(VOCAB, cfg.model, DropoutConfig(embedding=0.4, embedding_mask=form)).train()
    RandomStreams(stream_seeds(cfg), torch.device("cpu")).attach(model)
    drop = model.embedding_dropout
    assert drop in mask_modules(model, "dropout") and drop.mask == form
    tokens = stream(24).view(6, 4)  # (T, B)
    factors = (drop(tokens) / model.encoder(tokens))[..., 0]
    expected = torch.Generator().manual_seed(stream_seeds(cfg)["dropout"])
    shape = {"batch": (VOCAB,), "sequence": (4, VOCAB), "token": (6, 4)}[form]
    keep = bernoulli_mask(shape, 0.4, model.encoder.weight, expected)
    want = {"batch": lambda: keep[tokens], "sequence": lambda: keep[torch.arange(4), tokens],
            "token": lambda: keep}[form]()
    assert torch.allclose(factors, want)


def test_variants_at_one_seed_share_weights_schedule_and_shared_masks_step_for_step():
    runs = {name: train(config(recurrent)) for name, recurrent in VARIANTS.items()}
    base, base_init = runs["none"]
    assert len(base.masks) == 4 * 4  # 4 steps x (word, input, hidden, output)
    for name, (trainer, initial) in runs.items():
        assert trainer.lengths == base.lengths, name
        # The same numbers for every parameter (the layers' names differ between schemes)
        for got, want in zip(shared_weights(initial), shared_weights(base_init)):
            assert torch.equal(got, want), name
        assert [n for n, _ in trainer.masks] == [n for n, _ in base.masks]
        for (site, got), (_, want) in zip(trainer.masks, base.masks):
            assert torch.equal(got, want), (name, site)


def test_one_global_generator_would_shift_the_shared_masks():
    """What the streams prevent: drawn from one generator, a recurrent variant's extra draws
    change the later shared masks."""
    plain, gal = (train(config(VARIANTS[name]))[0] for name in ("none", "gal_tied"))
    for trainer in (plain, gal):
        RandomStreams.detach(trainer.model)
    torch.manual_seed(0)
    x = torch.randint(0, VOCAB, (8, 4))
    masks = []
    for trainer in (plain, gal):
        torch.manual_seed(0)
        trainer.model.train()
        trainer.masks.clear()
        trainer.model(x, trainer.model.init_hidden(4))
        trainer.model(x, trainer.model.init_hidden(4))
        masks.append([m for _, m in trainer.masks])
    assert torch.equal(masks[0][0], masks[1][0])  # the first draw agrees
    assert not all(torch.equal(a, b) for a, b in zip(masks[0][4:], masks[1][4:]))  # later ones do not


def test_a_source_seed_changes_that_source_alone():
    base, base_init = train(config(VARIANTS["gal_tied"]))
    other, other_init = train(config(VARIANTS["gal_tied"], dropout=123))
    assert other.lengths == base.lengths
    assert all(torch.equal(a, b) for a, b in zip(shared_weights(other_init), shared_weights(base_init)))
    assert not torch.equal(other.masks[0][1], base.masks[0][1])
    data, _ = train(config(VARIANTS["gal_tied"], data=123))
    assert data.lengths != base.lengths


def test_checkpoint_holds_the_streams_and_a_streamless_one_resumes_on_the_global_generator(tmp_path):
    trainer, _ = train(config(VARIANTS["weight_drop"]))
    payload = trainer.state_dict()
    assert set(payload["streams"]) == {"dropout", "recurrent"}
    save_checkpoint(tmp_path / "last.pt", payload)
    cfg = config(VARIANTS["weight_drop"])
    resumed = Trainer(AWDLSTM(VOCAB, cfg.model, cfg.dropout), cfg, batchify(stream(400), 4),
                      batchify(stream(60, 1), 2), save_best=lambda w: None, load_best=lambda: {})
    resumed.load_state_dict(load_checkpoint(tmp_path / "last.pt"))
    modules = [m for m in resumed.model.modules() if isinstance(m, StochasticModule)]
    assert all(m.generator is not None for m in modules)
    for source in ("dropout", "recurrent"):
        assert torch.equal(resumed.streams.masks[source].get_state(), trainer.streams.masks[source].get_state())

    legacy = dict(payload)
    del legacy["streams"]
    resumed.load_state_dict(legacy)
    assert all(m.generator is None for m in modules)


def test_mc_dropout_draws_from_its_own_seed_not_from_the_training_streams():
    trainer, _ = train(config(VARIANTS["gal_tied"]))
    model, data = trainer.model, batchify(stream(40, 2), 2)
    before = {s: g.get_state() for s, g in trainer.streams.masks.items()}
    with_streams = evaluate_mc(model, data, 8, samples=3, columns=1, seed=5)
    assert all(torch.equal(g.get_state(), before[s]) for s, g in trainer.streams.masks.items())
    RandomStreams.detach(model)
    assert evaluate_mc(model, data, 8, samples=3, columns=1, seed=5) == with_streams
    trainer.streams.attach(model)
    with mc_pass(model):
        assert all(m.generator is None for m in model.modules() if isinstance(m, StochasticModule))
    assert all(m.generator is not None for m in model.modules() if isinstance(m, StochasticModule))
