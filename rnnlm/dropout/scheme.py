"""Recurrent dropout schemes: what ``dropout.recurrent.kind`` names, and the layer each builds.

A scheme is a subclass of :class:`RecurrentScheme` with a ``name``, defined in a module of
the package :mod:`rnnlm.dropout.schemes`; defining the class registers it. The modules of
that package are imported the first time a name is looked up, so a new scheme is one module
there plus one YAML in ``configs/dropout/recurrent/``: config validation and the model take
the scheme from here, and nothing else lists the kinds.

A scheme declares which ``dropout.recurrent.mask`` values it accepts and whether it reads
``cell_rate`` or per-gate input masks; :meth:`RecurrentScheme.validate` turns those
declarations into the one-line configuration errors, for the config and for the layers.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, ClassVar

from torch import nn

from ..checks import ConfigError, check_rate

if TYPE_CHECKING:
    from ..config import RecurrentDropoutConfig

_REGISTRY: dict[str, type["RecurrentScheme"]] = {}


class RecurrentScheme:
    """A recurrent dropout scheme: its settings and the LSTM layer that applies it.

    Subclasses set ``name`` (the ``dropout.recurrent.kind`` value) and implement
    :meth:`build`. Step-loop schemes derive from :class:`~rnnlm.dropout.step_lstm.StepScheme`.
    """

    name: ClassVar[str]
    # The dropout.recurrent.mask values this scheme accepts; empty: it has no mask.
    masks: ClassVar[tuple[str, ...]] = ()
    # Whether it reads dropout.recurrent.cell_rate (zoneout's z_c).
    uses_cell_rate: ClassVar[bool] = False
    # The masks with which dropout.recurrent.per_gate_input may be true.
    per_gate_input_masks: ClassVar[tuple[str, ...]] = ()
    # Whether its layer runs a step loop of its own (StepScheme), which trainer.compile
    # compiles; otherwise the layer is ATen's/cuDNN's fused LSTM kernel.
    step_loop: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return  # an abstract base, e.g. StepScheme
        other = _REGISTRY.get(cls.name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise TypeError(f"recurrent dropout scheme {cls.name!r} is defined twice: "
                            f"{other.__module__}.{other.__qualname__} and {cls.__module__}.{cls.__qualname__}")
        _REGISTRY[cls.name] = cls

    @classmethod
    def validate(cls, rate: float, mask: str, cell_rate: float = 0.0, per_gate_input: bool = False) -> None:
        """Raise :class:`~rnnlm.config.ConfigError` (a ValueError) for settings this scheme cannot run."""
        check_rate("dropout.recurrent.rate", rate)
        check_rate("dropout.recurrent.cell_rate", cell_rate)
        if cls.masks and mask not in cls.masks:
            raise ConfigError(f"dropout.recurrent.mask={mask} does not go with dropout.recurrent.kind={cls.name}; "
                              f"choose one of: {', '.join(cls.masks)}.")
        if cell_rate and not cls.uses_cell_rate:
            users = [name for name, s in registered_schemes().items() if s.uses_cell_rate]
            raise ConfigError(f"dropout.recurrent.cell_rate={cell_rate} only applies to "
                              f"dropout.recurrent.kind={'|'.join(users)}; set it to 0.")
        if per_gate_input and mask not in cls.per_gate_input_masks:
            users = [f"{name}/{m}" for name, s in registered_schemes().items() for m in s.per_gate_input_masks]
            raise ConfigError(f"dropout.recurrent.per_gate_input=true needs dropout.recurrent.kind/mask "
                              f"{' or '.join(users)} (got {cls.name}/{mask}); set it to false.")

    @classmethod
    def build(cls, input_size: int, hidden_size: int, rate: float, mask: str, cell_rate: float = 0.0,
              input_rate: float = 0.0) -> nn.Module:
        """One LSTM layer ``(T, B, input_size) -> (T, B, hidden_size)`` with the ``nn.LSTM``
        call signature, carrying this dropout. ``input_rate``: the rate of per-gate input
        masks (0 unless ``per_gate_input``)."""
        raise NotImplementedError


def _import_scheme_modules() -> None:
    from . import schemes as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def registered_schemes() -> dict[str, type[RecurrentScheme]]:
    """Every registered scheme by name, sorted."""
    _import_scheme_modules()
    return dict(sorted(_REGISTRY.items()))


def get_scheme(name: str) -> type[RecurrentScheme]:
    """The scheme called ``name``; ConfigError naming the known ones otherwise."""
    if name not in _REGISTRY:
        _import_scheme_modules()
    if name not in _REGISTRY:
        raise ConfigError(f"dropout.recurrent.kind={name} is not a recurrent dropout scheme; "
                          f"choose one of: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]


def recurrent_layer(input_size: int, hidden_size: int, cfg: "RecurrentDropoutConfig",
                    input_rate: float = 0.0) -> nn.Module:
    """One LSTM layer ``(T, B, I) -> (T, B, H)`` carrying the configured recurrent dropout.

    ``input_rate``: the layer's input dropout rate, which becomes the rate of per-gate input
    masks when ``cfg.per_gate_input``.
    """
    return get_scheme(cfg.kind).build(input_size, hidden_size, cfg.rate, cfg.mask, cfg.cell_rate,
                                  input_rate if cfg.per_gate_input else 0.0)


def every_variant(rate: float = 0.3, cell_rate: float = 0.2) -> list["RecurrentDropoutConfig"]:
    """One config per registered scheme and mask it accepts, at ``rate`` (zoneout: z_h, with
    z_c = ``cell_rate``; Gal untied with its per-gate input masks): what a check of every
    recurrent dropout runs over."""
    from ..config import RecurrentDropoutConfig

    return [
        RecurrentDropoutConfig(kind=name, rate=0.0 if name == "none" else rate, mask=mask,
                               cell_rate=cell_rate if name == "zoneout" else 0.0,
                               per_gate_input=name == "variational" and mask == "untied")
        for name, scheme in sorted(registered_schemes().items())
        for mask in scheme.masks or ("element",)
    ]
