"""Zoneout: Krueger et al. 2016, arXiv 1606.01305.

Each unit keeps its previous value with probability z: h with z_h (``rate``), c with z_c
(``cell_rate``), a fresh {0, 1} mask per step (1 = keep), no rescaling. In eval each unit
takes the expectation, h_t = z*h_{t-1} + (1-z)*h~_t (the same for c).
"""

from __future__ import annotations

from typing import Optional

from ..step_lstm import Masks, StepLSTM, StepScheme


class Zoneout(StepScheme):
    name = "zoneout"
    masks = ("step",)
    uses_cell_rate = True
    fusable = True  # masks "zone_h" and "zone_c" of FusedMasks

    def _rates(self) -> dict[str, float]:
        """Each mask's keep probability z, for the masks that are on (h first, then c)."""
        return {key: z for key, z in (("zone_h", self.rate), ("zone_c", self.cell_rate)) if z > 0}

    def sample(self, layer: StepLSTM, T: int, B: int) -> Masks:
        w, H = layer.weight_hh_l0, layer.hidden_size
        return {key: layer.keep_mask((T, B, H), z, w) for key, z in self._rates().items()}

    def expected(self, layer: StepLSTM, T: int, B: int) -> Optional[Masks]:
        """The constant z as (T, B, H) views: the expectation of each unit."""
        w, H = layer.weight_hh_l0, layer.hidden_size
        return {key: w.new_full((1, 1, H), z).expand(T, B, H) for key, z in self._rates().items()}

    def next_state(self, h_prev, c_prev, h_new, c_new, masks, t):
        zh, zc = masks.get("zone_h"), masks.get("zone_c")
        h = h_new if zh is None else zh[t] * h_prev + (1 - zh[t]) * h_new
        c = c_new if zc is None else zc[t] * c_prev + (1 - zc[t]) * c_new
        return h, c
