"""Differential fuzzing: random small transformer-like models, zeroquant against eager, for every
implemented preset (tests/robust/presets.py) and the cpu and reference targets.

Default run: a handful of derandomized examples per preset and target, plus every example that
ever failed (kept below as explicit regression tests). ``-m fuzz``: the long run, with a fixed
budget (``FUZZ_EXAMPLES`` examples shared by all preset x target pairs, fixed seed). CI runs both.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings

from tests.robust.differential import check
from tests.robust.fuzz_models import ModelSpec, model_specs
from tests.robust.presets import PRESETS, TARGETS

#: The long run's budget: examples over all presets x targets together (each compiles one
#: model with Inductor, 2-6 s on 2 busy cores), so new presets share it rather than grow it.
FUZZ_EXAMPLES = 24
QUICK_EXAMPLES = 2


def _settings(total: int):
    per_pair = max(2, total // (len(PRESETS) * len(TARGETS)))
    return settings(max_examples=per_pair, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                    print_blob=True)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("preset", PRESETS)
@_settings(QUICK_EXAMPLES)
@given(spec=model_specs())
def test_quick_fuzz(preset, target, spec):
    check(spec, preset, target)


@pytest.mark.fuzz
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("preset", PRESETS)
@seed(20261201)
@settings(_settings(FUZZ_EXAMPLES), derandomize=False)
@given(spec=model_specs())
def test_fuzz(preset, target, spec):
    check(spec, preset, target)


#: Examples the fuzzer found (shrunk), each kept as a plain test once the bug was fixed.
REGRESSIONS = {
    "every_variation": ModelSpec(d=7, hidden=13, depth=2, act="gelu_tanh", norm="rmsnorm", bias=True,
                                 layout="noncontig", tied_head=True, tied_down=True, call_twice=True,
                                 lead=(2, 3, 1), dtype=torch.bfloat16, seed=3),
    # the int_mm stride-0 row bug (codegen/cpu/kernels.py, _rows_strided): one static row
    "last_token_one_row": ModelSpec(d=16, hidden=31, last_token=True, lead=(1, 5), seed=1),
    # grad mode with a bias on every linear: the bias must be detached before the quantized op
    # (schemes/base.inference_only), or AOT autograd fails to compile (checked by breaking it)
    "grad_mode_bias": ModelSpec(d=13, hidden=17, depth=2, bias=True, tied_head=True, grad=True, seed=2),
}


#: Paths the default run's few random draws may miss, pinned so that every `make test` takes them:
#: GPT-2's and SmolLM2's layout (token ids, a head tied to the embedding table, logits of the
#: last token only) under release_float_weights, where the table is read as the head's int8 rows;
#: widths INT4 takes (K = 32, 64), so the 4-bit presets run INT4 kernels, not their INT8 fallback.
PINNED = {
    "tied_embedding_release": ModelSpec(d=32, hidden=64, embed="tied", vocab=64, lead=(2, 5), last_token=True,
                                        release=True, norm="rmsnorm", act="silu", bias=False, seed=1),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", sorted(REGRESSIONS) + sorted(PINNED))
def test_regression(name, preset, target):
    check(REGRESSIONS.get(name) or PINNED[name], preset, target)
