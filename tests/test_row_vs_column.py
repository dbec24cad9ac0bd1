"""WeightDrop masks versus masks on h_{t-1}, on fixed masks (docs/dropout.md).

A column mask on W_hh is Gal's tied mask on h_{t-1} shared by the batch; a per-gate
column mask is Gal's untied mask; a row mask silences one gate row of one unit.
"""

import pytest
import torch

from rnnlm.dropout import WeightDropLSTM
from rnnlm.dropout import StepLSTM

T, B, I, H, P = 6, 3, 5, 4, 0.5


@pytest.fixture
def pair():
    torch.manual_seed(0)
    wd = WeightDropLSTM(I, H, P, mask="column").train()
    step = StepLSTM(I, H, kind="variational", rate=P, mask="tied").train()
    step.load_state_dict(wd.lstm.state_dict())
    x = torch.randn(T, B, I)
    return wd, step, x


def keep(shape, zero_at):
    m = torch.full(shape, 1 / (1 - P))
    m[zero_at] = 0.0
    return m


def test_column_weight_drop_equals_tied_mask_on_h_shared_by_the_batch(pair):
    wd, step, x = pair
    column = keep((1, 1, H), (..., 1))  # unit 1 sends nothing back
    expected, _ = step(x, masks=dict(h=column.view(1, H).expand(B, H)))
    got, _ = wd(x, mask=column)
    assert torch.allclose(got, expected, atol=1e-5)


def test_gate_column_weight_drop_equals_untied_masks(pair):
    wd, step, x = pair
    wd.mask = "gate_column"  # the step layer takes the per-gate (4, B, H) mask as given
    gates = torch.ones(4, 1, H) / (1 - P)
    gates[0, 0, 1] = gates[2, 0, 3] = gates[3, 0, 0] = 0.0  # a different column per gate
    expected, _ = step(x, masks=dict(h=gates.expand(4, B, H)))
    got, _ = wd(x, mask=gates)
    assert torch.allclose(got, expected, atol=1e-5)


def test_row_mask_removes_the_recurrent_input_of_one_gate_of_one_unit(pair):
    """Dropping row (gate f, unit 2) equals zeroing that row of W_hh: the forget gate of
    unit 2 then sees only its input and bias term."""
    wd, _, x = pair
    row = keep((4, H, 1), (1, 2))  # gate 1 = forget, unit 2
    got, _ = wd(x, mask=row)
    reference = WeightDropLSTM(I, H, 0.0)
    reference.load_state_dict(wd.state_dict())
    with torch.no_grad():
        w = reference.lstm.weight_hh_l0
        w.mul_(1 / (1 - P))
        w[1 * H + 2] = 0.0
    expected, _ = reference.lstm(x)
    assert torch.allclose(got, expected, atol=1e-6)


def test_row_and_column_masks_are_off_in_eval(pair):
    wd, _, x = pair
    for mask in ("row", "column", "gate_column", "element"):
        wd.mask = mask
        wd.eval()
        assert torch.equal(wd(x)[0], wd.lstm(x)[0])
