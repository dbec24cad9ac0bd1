"""Recurrent dropout without memory loss: Semeniuta et al. 2016, arXiv 1603.05118.

Dropout of the cell update only, c_t = f * c_{t-1} + i * d(g_t); c_{t-1} itself is never
dropped. ``mask=sequence``: one (B, H) mask per sequence; ``step``: a fresh (T, B, H) mask
per time step. In eval the masks are off.
"""

from __future__ import annotations

from ..step_lstm import Masks, StepLSTM, StepScheme


class Semeniuta(StepScheme):
    name = "semeniuta"
    masks = ("sequence", "step")
    fusable = True  # mask "g" of FusedMasks

    def sample(self, layer: StepLSTM, T: int, B: int) -> Masks:
        w, H, p = layer.weight_hh_l0, layer.hidden_size, self.rate
        if self.mask == "sequence":
            return {"g": layer.held_mask("g", lambda: layer.dropout_mask((B, H), p, w))}
        return {"g": layer.dropout_mask((T, B, H), p, w)}

    def cell_update(self, g, masks, t):
        m = masks.get("g")
        if m is None:
            return g
        return g * (m[t] if m.dim() == 3 else m)
