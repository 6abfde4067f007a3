import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zq_compile.quant import pack_int4, unpack_int4


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=3), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trips_exactly(shape, seed):
    q = torch.randint(-8, 8, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8
    assert packed.shape == (*shape[:-1], (shape[-1] + 1) // 2)
    assert torch.equal(unpack_int4(packed, shape[-1]), q)


def test_layout_low_nibble_first_twos_complement():
    q = torch.tensor([[1, -1, -8, 7, 3]], dtype=torch.int8)
    assert pack_int4(q).tolist() == [[0xF1, 0x78, 0x03]]


@pytest.mark.parametrize("bad", [torch.tensor([8], dtype=torch.int8), torch.tensor([-9], dtype=torch.int8)])
def test_out_of_range_values_are_refused(bad):
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(bad)


def test_unpack_checks_length():
    with pytest.raises(ValueError, match="does not hold"):
        unpack_int4(torch.zeros(3, dtype=torch.uint8), 7)
