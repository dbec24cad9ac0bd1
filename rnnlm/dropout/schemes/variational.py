"""Variational (Gal) recurrent dropout: Gal & Ghahramani 2016, arXiv 1512.05287.

A dropout mask on h_{t-1} before the recurrent matmul, drawn once per sequence: constant
over time, different for each batch element.

=======  ==========  ============================================================
mask     shape       meaning
=======  ==========  ============================================================
tied     (B, H)      one mask for the four gates (Keras implementation 2)
untied   (4, B, H)   one mask per gate (Keras implementations 0/1, Gal's LM code)
=======  ==========  ============================================================

With ``per_gate_input`` (untied only) each gate also gets its own per-sequence (4, B, I)
mask on the layer input x_t, at the layer's input rate, as Gal's LM code does with its
per-gate ``noise_i``. In eval the masks are off (their expectation is 1).
"""

from __future__ import annotations

from ..step_lstm import Masks, StepLSTM, StepScheme


class Variational(StepScheme):
    name = "variational"
    masks = ("tied", "untied")
    per_gate_input_masks = ("untied",)
    fusable = True  # masks "h" and "x" of FusedMasks

    def sample(self, layer: StepLSTM, T: int, B: int) -> Masks:
        w, H, I = layer.weight_hh_l0, layer.hidden_size, layer.input_size
        masks = {}
        if self.rate > 0:
            shape = (B, H) if self.mask == "tied" else (4, B, H)
            masks["h"] = layer.held_mask("h", lambda: layer.dropout_mask(shape, self.rate, w))
        if self.input_rate > 0:
            masks["x"] = layer.held_mask("x", lambda: layer.dropout_mask((4, B, I), self.input_rate, w))
        return masks

    def gate_inputs(self, x, masks, t):
        m = masks.get("x")
        return (x,) * 4 if m is None else [x * m[k] for k in range(4)]

    def gate_states(self, h, masks, t):
        m = masks.get("h")
        if m is None:
            return (h,) * 4
        return (h * m,) * 4 if m.dim() == 2 else [h * m[k] for k in range(4)]
