"""Document offsets are read on the host once per tensor, not once per layer: a host sync per layer drains a GPU's
queue every time. A tensor written in place, a new tensor with the same values and inference tensors are
checked again; bad offsets still raise."""
from __future__ import annotations

from unittest import mock

import pytest
import torch

from flashxlstm.nn.packing import check_cu_seqlens
from flashxlstm.ops.mlstm_cell.checks import check_cu_seqlens_values


def counting_tolist():
    calls = []
    real = torch.Tensor.tolist

    def tolist(self):
        calls.append(1)
        return real(self)

    return calls, mock.patch.object(torch.Tensor, "tolist", tolist)


def test_op_check_reads_the_offsets_once_per_tensor():
    calls, patch = counting_tolist()
    cu = torch.tensor([0, 3, 7, 10])
    with patch:
        for _ in range(5):
            check_cu_seqlens_values(cu, 10)
        assert len(calls) == 1
        check_cu_seqlens_values(cu.clone(), 10)  # another tensor: read again
        assert len(calls) == 2
        with pytest.raises(ValueError, match="rise strictly from 0 to S=11"):
            check_cu_seqlens_values(cu, 11)  # another check on the same tensor
        cu[1] = 8  # written in place: read again, and now wrong
        with pytest.raises(ValueError, match="rise strictly"):
            check_cu_seqlens_values(cu, 10)
        with torch.inference_mode():
            inf = torch.tensor([0, 4, 10])
        check_cu_seqlens_values(inf, 10)
        check_cu_seqlens_values(inf, 10)
    assert len(calls) == 6


def test_layer_check_reads_the_offsets_once_per_tensor():
    calls, patch = counting_tolist()
    x = torch.zeros(2, 5, 3)
    cu = torch.tensor([0, 2, 5, 10])
    with patch:
        for _ in range(4):
            check_cu_seqlens("layer", x, cu, None)
        assert len(calls) == 1
        cu[1] = 0
        with pytest.raises(ValueError, match="rise strictly"):
            check_cu_seqlens("layer", x, cu, None)
        with pytest.raises(ValueError, match="lacks the row starts"):
            check_cu_seqlens("layer", x, torch.tensor([0, 2, 6, 10]), None)
