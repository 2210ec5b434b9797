"""`eqx_stencil._hlo`: counting collectives and their bytes in HLO text.

Real compiled programs are checked in `tests/test_nn_sharding.py` and
`tests/test_sharding.py` (8 devices); here, the text forms one device cannot
produce: async start/done pairs, combined permutes, instruction names that
contain an opcode.
"""

import pytest

from eqx_stencil._hlo import COLLECTIVES, collective_permute_bytes, count_collectives


SYNC = """
ENTRY %main {
  %p = f32[8,16]{1,0} parameter(0)
  %collective-permute.1 = f32[1,16]{1,0} collective-permute(%slice), channel_id=1
  %collective-permute.2 = f32[1,16]{1,0} collective-permute(%slice.1), channel_id=2
  %all-gather.3 = f32[16,16]{1,0} all-gather(%p), channel_id=3, dimensions={0}
  ROOT %add = f32[8,16]{1,0} add(%p, %p)
}
"""
ASYNC = """
  %cps = (bf16[10,1]{1,0}, bf16[10,1]{1,0}, u32[], u32[]) collective-permute-start(%a)
  %cpd = bf16[10,1]{1,0} collective-permute-done(%cps)
  %ars = f32[4]{0} all-reduce-start(%b), to_apply=%sum
  %ard = f32[4]{0} all-reduce-done(%ars)
"""
COMBINED = (
    "  %cp = (f64[2,3]{1,0}, s32[5]{0}) collective-permute(%a, %b), channel_id=1\n"
)


def test_counts_each_instruction_once() -> None:
    counts = count_collectives(SYNC)
    assert set(counts) == set(COLLECTIVES)
    assert counts == {
        "collective-permute": 2,
        "all-gather": 1,
        "all-to-all": 0,
        "all-reduce": 0,
        "reduce-scatter": 0,
    }


def test_async_pairs_count_once() -> None:
    counts = count_collectives(ASYNC)
    assert counts["collective-permute"] == 1
    assert counts["all-reduce"] == 1


@pytest.mark.parametrize(
    "text, expected",
    [
        (SYNC, 2 * 16 * 4),
        (ASYNC, 10 * 2),  # the operand of the start, not operand + output
        (COMBINED, 2 * 3 * 8 + 5 * 4),
        ("ROOT %x = f32[3]{0} add(%a, %b)\n", 0),
    ],
)
def test_permute_bytes(text: str, expected: int) -> None:
    assert collective_permute_bytes(text) == expected


def test_unknown_element_type_raises() -> None:
    text = "  %cp = q7[4]{0} collective-permute(%a), channel_id=1\n"
    with pytest.raises(ValueError, match="q7"):
        collective_permute_bytes(text)
