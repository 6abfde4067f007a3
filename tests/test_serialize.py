"""zq_compile.save / zq_compile.load: round trip bit for bit with no re-quantization, and bad files
refused with a clear error and no trace left."""

import json
import pickle

import pytest
import torch

import zq_compile
import zq_compile.schemes.w8a8 as w8a8
from zq_compile import WeightsFileError, ZeroQuantConfig, store
from zq_compile.codegen.cpu.kernels import KERNELS
from zq_compile.serialize import METADATA_KEY
from tests.models.tiny import model_output, save_and_reload, tiny_model
from tests.modules import Block

pytestmark = pytest.mark.skipif(KERNELS["onednn"].unavailable_reason() is not None, reason="needs oneDNN")

CONFIG = ZeroQuantConfig(cpu_kernel="onednn")  # one kernel on both sides: outputs compare bit for bit


def _ids():
    return torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))


def _compiled_output(model, config=CONFIG):
    torch._dynamo.reset()
    compiled = zq_compile.compile(model, config)
    with torch.inference_mode():
        return compiled, model_output(compiled(_ids()))


@pytest.fixture
def no_quantize_no_pickle(monkeypatch):
    """Loading and compiling afterwards may neither quantize a weight nor unpickle anything."""

    def refuse(what):
        def fail(*a, **k):
            raise AssertionError(f"{what} called")

        return fail

    monkeypatch.setattr(w8a8, "quantize_weight", refuse("quantize_weight"))
    for name in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse(f"pickle.{name}"))
    monkeypatch.setattr(torch, "load", refuse("torch.load"))


#: (model, the module save gets): the default run covers each edge once; -m slow the rest
ROUND_TRIPS = [("bert", "compiled"), ("llama", "original")] + [
    pytest.param(k, e, marks=pytest.mark.slow) for k, e in [("bert", "original"), ("gpt2", "compiled"),
                                                           ("gpt2", "original"), ("llama", "compiled")]]


@pytest.mark.parametrize("kind,saved_from", ROUND_TRIPS)
def test_round_trip_is_bit_identical_without_requantizing(kind, saved_from, tmp_path, request):
    model = tiny_model(kind)
    compiled, before = _compiled_output(model)
    path = tmp_path / "w.safetensors"
    zq_compile.save(compiled if saved_from == "compiled" else model, path)

    fresh = tiny_model(kind)  # same weights, nothing quantized yet
    request.getfixturevalue("no_quantize_no_pickle")
    config = zq_compile.load(path, fresh)
    assert config == CONFIG
    _, after = _compiled_output(fresh, config)
    assert torch.equal(before, after)


@pytest.mark.parametrize("preset,tokens", [("w4a16", 1), ("w4/8a8", 1), ("w4/8a8", 40)])
def test_int4_round_trip_saves_the_weights_not_the_kernels_handles(preset, tokens, tmp_path, request):
    """INT4 graphs hold one-byte handles to a kernel's own copy (ATen's INT4 layout for few
    tokens, the W4A8 int8 copy for many); the file must hold the packed INT4 weights they
    stand for (it held the handles' zeros: every loaded INT4 model computed garbage)."""
    config = ZeroQuantConfig(preset=preset, cpu_kernel="onednn")
    ids = torch.randint(0, 1000, (1, tokens), generator=torch.Generator().manual_seed(0))
    before, after, _ = save_and_reload("llama", config, ids, tmp_path / "w.safetensors",
                                       lambda: request.getfixturevalue("no_quantize_no_pickle"))
    assert torch.equal(before, after)


def test_calibration_travels_with_the_file(tmp_path, request):
    """A model calibrated on other data than its first compiled call: the file carries the
    calibration (the smoothed recipe depends on it), so the loaded model quantizes nothing and
    matches bit for bit, and its report says where the calibration came from."""
    model = tiny_model("llama")
    data = [{"input_ids": torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(5))}]
    zq_compile.calibrate(model, CONFIG, data)
    compiled, before = _compiled_output(model)
    zq_compile.save(compiled, tmp_path / "w.safetensors")
    _assert_a_fresh_llama_loads_it_bit_identical(tmp_path / "w.safetensors", before, request)


def _assert_a_fresh_llama_loads_it_bit_identical(path, before, request):
    """Loaded into a twin, nothing quantized again, same outputs, and the report names the file
    as the calibration's source."""
    fresh = tiny_model("llama")
    request.getfixturevalue("no_quantize_no_pickle")
    config = zq_compile.load(path, fresh)
    _, after = _compiled_output(fresh, config)
    assert torch.equal(before, after)
    assert f"zq_compile.load({path.name!r})" in str(zq_compile.recent_reports()[-1].calibration.source)


def _block(seed=0, **kwargs):
    torch.manual_seed(seed)
    return Block(**kwargs).eval()


def _block_output(model, config=CONFIG):
    torch._dynamo.reset()
    with torch.inference_mode():
        return zq_compile.compile(model, config)(torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(1)))


def test_loaded_weights_can_then_be_released(tmp_path):
    model = _block()
    before = _block_output(model)
    zq_compile.save(model, tmp_path / "w.safetensors")
    fresh = _block()
    config = zq_compile.load(tmp_path / "w.safetensors", fresh)
    after = _block_output(fresh, ZeroQuantConfig.from_dict({**config.to_dict(), "release_float_weights": True}))
    assert torch.equal(before, after)
    assert fresh.down.weight.untyped_storage().nbytes() == 0


def test_save_before_any_compiled_call_says_what_to_do(tmp_path):
    model = _block()
    with pytest.raises(ValueError, match="run it once"):
        zq_compile.save(zq_compile.compile(model, CONFIG), tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()


@pytest.fixture(scope="module")
def saved_block(tmp_path_factory):
    model = _block()
    _block_output(model)
    path = tmp_path_factory.mktemp("zq") / "block.safetensors"
    zq_compile.save(model, path)
    return path


def _assert_untouched(model, state):
    for name, t in model.state_dict().items():
        assert torch.equal(t, state[name]), name
    assert all(not store.entries(p) for p in model.parameters())


def _rewrite_metadata(src, dst, edit):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(src, framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(meta, tensors)
    save_file(tensors, dst, metadata={METADATA_KEY: json.dumps(meta)})


def _flip_last_byte(src, dst):
    data = bytearray(src.read_bytes())
    data[-1] ^= 0xFF
    dst.write_bytes(bytes(data))


def _set_config_version(meta, tensors):
    meta["configs"][0]["version"] = 99


def _drop_a_parameter_name(meta, tensors):
    meta["parameters"].pop("norm.bias")


BAD_FILES = {
    "truncated": (lambda src, dst: dst.write_bytes(src.read_bytes()[:-100]), "truncated"),
    "flipped byte": (_flip_last_byte, "corrupt"),
    "not safetensors": (lambda src, dst: dst.write_bytes(b"\x80\x04not a file at all"), "corrupt or truncated"),
    "empty": (lambda src, dst: dst.write_bytes(b""), "truncated"),
    "other config version": (lambda src, dst: _rewrite_metadata(src, dst, _set_config_version), "config version"),
    "other format version": (
        lambda src, dst: _rewrite_metadata(src, dst, lambda m, t: m.update(format_version=99)), "format version 99"),
    "no zeroquant metadata": (
        lambda src, dst: _rewrite_metadata(src, dst, lambda m, t: m.clear()), "not a zeroquant weights file"),
    "extra name in the model": (
        lambda src, dst: _rewrite_metadata(src, dst, _drop_a_parameter_name), "does not know 1 name"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_raises_and_leaves_the_model_untouched(case, saved_block, tmp_path, no_quantize_no_pickle):
    make, message = BAD_FILES[case]
    bad = tmp_path / "bad.safetensors"
    make(saved_block, bad)
    model = _block()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsFileError, match=message):
        zq_compile.load(bad, model)
    _assert_untouched(model, state)


@pytest.mark.parametrize("other", ["other names", "other shapes"])
def test_file_of_another_model_is_refused(other, saved_block, no_quantize_no_pickle):
    if other == "other names":
        model, message = torch.nn.Sequential(_block()).eval(), "the model has no 6 name.*the file does not know 6"
    else:
        model, message = _block(hidden=96), r"up.weight is \[\[96, 64\], 'float32'\] in the model, \[\[160, 64\]"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsFileError, match="saved from another model") as info:
        zq_compile.load(saved_block, model)
    assert info.match(message)
    _assert_untouched(model, state)


def _as_version_3(meta, tensors):
    """What format 3 wrote: each calibration's config signature as [smooth, keep_float, heads]."""
    meta["format_version"] = 3
    for entries in meta["calibration"].values():
        for c in entries:
            c["signature"] = [c["signature"][k] for k in ("smooth", "keep_float", "heads")]


def test_a_version_3_file_still_loads_with_its_calibration(tmp_path, request):
    model = tiny_model("llama")
    compiled, before = _compiled_output(model)
    zq_compile.save(compiled, tmp_path / "w4.safetensors")
    _rewrite_metadata(tmp_path / "w4.safetensors", tmp_path / "w3.safetensors", _as_version_3)
    _assert_a_fresh_llama_loads_it_bit_identical(tmp_path / "w3.safetensors", before, request)
