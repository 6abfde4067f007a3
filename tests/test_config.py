import json

import pytest

from zq_compile import PRESETS, QuantScheme, ZeroQuantConfig


def test_defaults_are_w8a8_per_channel_symmetric():
    c = ZeroQuantConfig()
    assert c.scheme == QuantScheme(weight_bits=8, act_bits=8, weight_groups=None, symmetric=True)


def test_json_round_trip():
    c = ZeroQuantConfig(weight_groups=4, symmetric=False, skip=["pooler.*"], disable_passes=["rewrite_linear"],
                        attention="fp32", requant_plan="recompute")
    text = c.to_json()
    assert json.loads(text)["skip"] == ["pooler.*"]
    back = ZeroQuantConfig.from_json(text)
    assert back == c and isinstance(back.skip, tuple)
    assert hash(back) == hash(c)


def test_frozen():
    with pytest.raises(AttributeError):
        ZeroQuantConfig().preset = "w4a8"


@pytest.mark.parametrize(
    "kwargs, field, allowed",
    [
        ({"preset": "w3a3"}, "preset", "w8a8"),
        ({"preset": "w4/8a9"}, "preset", "w8a8, w4/8a8, w4a8, w8a16, w4a16"),
        ({"group_size": 96}, "group_size", "32, 64, 128"),
        ({"overrides": {"*.mlp.*": "w2a8"}}, "overrides", "w4/8a8"),
        ({"overrides": ["*.mlp.*"]}, "overrides", "dict"),
        ({"module_types": {"": "w8a8"}}, "module_types", "non-empty"),
        ({"roles": {"*.fc": "mlp"}}, "roles", "attention, ffn, other"),
        ({"target": "gpu"}, "target", "auto, cpu, triton, reference"),
        ({"cpu_kernel": "mkl"}, "cpu_kernel", "onednn"),
        ({"attention": "fp16"}, "attention", "auto, bf16, bf16_matmul, fp32"),
        ({"requant_plan": "fused"}, "requant_plan", "auto, store, recompute"),
        ({"weight_groups": 0}, "weight_groups", "positive int"),
        ({"weight_groups": True}, "weight_groups", "positive int"),
        ({"symmetric": "yes"}, "symmetric", "True, False"),
        ({"skip": "pooler.*"}, "skip", "list of strings"),
        ({"disable_passes": ["fuse_everything"]}, "disable_passes", "rewrite_linear"),
        ({"version": 99}, "version", "1"),
    ],
)
def test_invalid_values_name_the_field_and_the_allowed_values(kwargs, field, allowed):
    with pytest.raises(ValueError, match=field) as e:
        ZeroQuantConfig(**kwargs)
    assert allowed in str(e.value)


def test_unknown_fields_are_refused():
    with pytest.raises(ValueError, match="unknown config field.*'presett'"):
        ZeroQuantConfig.from_dict({"presett": "w8a8"})


def test_from_options_accepts_none_dict_and_config():
    c = ZeroQuantConfig(skip=("a",))
    assert ZeroQuantConfig.from_options(None) == ZeroQuantConfig()
    assert ZeroQuantConfig.from_options({"skip": ["a"]}) == c
    assert ZeroQuantConfig.from_options(c) is c


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_scheme(name):
    assert PRESETS[name].name == name


def test_scheme_validation():
    with pytest.raises(ValueError, match="weight_bits=2"):
        QuantScheme(weight_bits=2)
    with pytest.raises(ValueError, match="act_bits=4"):
        QuantScheme(act_bits=4)


def test_scheme_fields_round_trip_through_json_in_any_order():
    c = ZeroQuantConfig(preset="w4/8a8", group_size=64, overrides={"*.mlp.*": "w4a16", "*.fc": "w8a16"},
                        module_types={"LlamaAttention": "w8a16"}, roles={"*.lm_head": "ffn"})
    back = ZeroQuantConfig.from_json(c.to_json())
    assert back == c and hash(back) == hash(c)
    assert back.to_dict()["overrides"] == {"*.fc": "w8a16", "*.mlp.*": "w4a16"}
    assert ZeroQuantConfig(overrides={"*.fc": "w8a16", "*.mlp.*": "w4a16"}) == ZeroQuantConfig(
        overrides={"*.mlp.*": "w4a16", "*.fc": "w8a16"})


@pytest.mark.parametrize("preset, want", [("w4a8", 128), ("w4a16", 128), ("w8a8", None), ("w8a16", None)])
def test_presets_carry_their_int4_group_size(preset, want):
    assert ZeroQuantConfig(preset=preset).scheme.group_size == want
    assert ZeroQuantConfig(preset=preset, group_size=32).scheme.group_size == (32 if want else None)


def test_unknown_preset_lists_every_valid_one():
    with pytest.raises(ValueError) as e:
        ZeroQuantConfig(preset="int4")
    for name in ("w8a8", "w4/8a8", "w4a8", "w8a16", "w4a16"):
        assert name in str(e.value)
