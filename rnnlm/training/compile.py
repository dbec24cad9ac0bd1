"""``trainer.compile``: the training and validation forward under ``torch.compile``.

Meant for CUDA, where the step loop of Gal's, Semeniuta's and zoneout's recurrent dropout
is launch-bound (thousands of small kernels per training step): ``reduce-overhead`` is
torch.compile's CUDA-graphs mode. On the CPU the hand-written fused loop beats a compiled
one (docs/performance.md), so there the option only costs compile time; it still trains
correctly, which is what the CPU tests check. Whether it pays on a GPU is measured by
``scripts/gpu_check.py``; until then the default is off.

What is compiled, and what is not:

- Only :class:`~rnnlm.training.Trainer`'s forward passes (training steps and the
  validation after each epoch) go through :class:`CompiledForward`. The final test,
  MC-dropout evaluation and ``rnnlm eval`` run the plain module.
- The trainer keeps the uncompiled module as ``trainer.model``: checkpoints hold its
  state dict, with the usual keys (a compiled module's keys would gain ``_orig_mod.``),
  and load into an uncompiled model.
- Step-loop layers run :func:`~rnnlm.dropout.step_lstm.plain_lstm` while compiled: the
  fused loop writes into slices of preallocated buffers (``out=`` on non-contiguous
  views), which Dynamo cannot trace, and on CPU it calls private oneDNN ops that have no
  fake-tensor kernels. The plain loop is the definition the fused one is tested against
  (same values up to rounding, same gradients); Inductor fuses its pointwise ops itself.
  Outside the compiled call the layers are left as they were.
- ``torch._dynamo.config.allow_rnn`` is on during the call: otherwise Dynamo refuses every
  ``nn.LSTM`` subclass (WeightDropLSTM, StepLSTM) and, as that happens inside the model's
  layer loop, runs the whole forward eagerly. With it, every recurrent-dropout variant
  compiles to one graph without breaks.
- Dropout masks: Inductor's ``fallback_random`` is on, so masks are drawn by the eager
  random ops from the global generator, exactly as without compiling: the same seed gives
  the same masks with the option on or off, and the checkpointed RNG state resumes either.
- Shapes: ``dynamic=False``. The step loop unrolls over the segment length T, so Dynamo
  specialises on T whatever ``dynamic`` says (``dynamic=None`` or ``mark_dynamic`` would
  not save a compile), and CUDA graphs record one graph per shape anyway. Every distinct
  length is therefore its own compile; AWD's variable BPTT draws lengths from
  N(bptt, 5) and N(bptt / 2, 5), a few dozen distinct values over a run, plus the
  validation shapes in eval mode. Dynamo's recompile limit (8 by default, after which new
  shapes silently run eagerly) is raised to :data:`RECOMPILE_LIMIT` during the call so
  that they all compile; ``trainer.variable_bptt=false`` keeps it to a handful.
- ``reduce-overhead``: a CUDA graph's outputs are overwritten by its next replay, so each
  call first marks a new step (``torch.compiler.cudagraph_mark_step_begin``) and the hidden
  state, which outlives the step, is returned as a copy.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ..config import COMPILE_MODES
from ..dropout import StepLSTM
from ..model import AWDLSTM, LMOutput

# Distinct (segment length, batch, train/eval) shapes compiled before Dynamo gives up and
# runs new ones eagerly: AWD's variable BPTT stays within bptt +- 25 and bptt / 2 +- 25
# except with probability ~1e-6 per draw (5 sigma), i.e. at most ~100 lengths.
RECOMPILE_LIMIT = 128


@contextlib.contextmanager
def _plain_step_loops(model: torch.nn.Module) -> Iterator[None]:
    layers = [m for m in model.modules() if isinstance(m, StepLSTM)]
    fused = [m.fused for m in layers]
    for m in layers:
        m.fused = False
    try:
        yield
    finally:
        for m, f in zip(layers, fused):
            m.fused = f


class CompiledForward:
    """``model``'s forward under ``torch.compile(mode=mode, dynamic=False)``, with the settings
    the module docstring explains; every other attribute (``eval``, ``train``,
    ``init_hidden``, ...) is the model's own, so it stands in for the model in evaluation."""

    def __init__(self, model: AWDLSTM, mode: str) -> None:
        if mode not in COMPILE_MODES[1:]:
            raise ValueError(f"compile mode {mode!r} is not one of {COMPILE_MODES[1:]}")
        import torch._inductor  # noqa: F401  (list_mode_options)

        self.model = model
        self.mode = mode
        options = {**torch._inductor.list_mode_options(mode), "fallback_random": True}
        # options instead of mode=: torch.compile takes one or the other; these are the mode's own
        self.compiled = torch.compile(model, options=options, dynamic=False)

    def __call__(self, tokens: torch.Tensor, hidden: Any) -> LMOutput:
        graphs = self.mode == "reduce-overhead"
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch._dynamo.config.patch(allow_rnn=True, recompile_limit=RECOMPILE_LIMIT), \
                _plain_step_loops(self.model):
            out = self.compiled(tokens, hidden)
        if graphs:
            out = out._replace(hidden=[(h.clone(), c.clone()) for h, c in out.hidden])
        return out

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)


def compiled_forward(model: AWDLSTM, mode: str):
    """The forward the trainer calls: ``model`` itself for ``off``, else :class:`CompiledForward`."""
    return model if mode == "off" else CompiledForward(model, mode)
