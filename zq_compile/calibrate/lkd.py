"""Layer-by-layer knowledge distillation (ZeroQuant, Yao et al. 2022, Eq. 2).

For each repeated block k of the model, in order:

    float model ──▶ X_k (block k's input: hidden state, masks, position embeddings, all args)
    teacher  Y_k = block_k(X_k)                           (float, no grad)
    student  = copy of block_k with every linear fake-quantized as it will be deployed
    minimise MSE(student(X_k), Y_k) over all of block k's parameters (AdamW, STE rounding)
    block_k's float weights  <-  the student's (kept only if its loss went down)

Both get the *float* model's X_k, as in the paper. Memory holds one block's inputs and outputs
for the calibration samples at a time: X_k is recorded by running the model up to block k (a
pre-hook stops the forward there) with blocks 0..k-1 replaced by a lookup of Y_{k-1}, which was
computed for the previous block anyway; the code between blocks (embeddings, mask and rotary
construction) is re-run, so every block sees exactly the arguments the model passes it. Once
block k is done its X_k is dropped and Y_k becomes the next lookup.

The blocks' parameters and buffers are snapshotted first and restored if anything fails (or is
interrupted) on the way. Everything random (token ids, batch order) comes from ``lkd.seed``.
"""

from __future__ import annotations

import copy
import time
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from zq_compile.calibrate.blocks import Blocks, find_blocks
from zq_compile.calibrate.fake_quant import attach_fake_quant, spec_for_config
from zq_compile.calibrate.lkd_data import calibration_batches


class _Stop(Exception):
    """Raised by the capture pre-hook: the rest of the forward is not needed."""


@dataclass
class BlockResult:
    index: int
    name: str
    linears: int  # fake-quantized linears in the block
    loss_before: float  # MSE to the float block's output, fake-quantized, before training
    loss_after: float  # the same after training
    kept: str  # "trained", or why the block's float weights were left as they were


@dataclass
class LkdReport:
    blocks: str
    data: str
    samples: int
    batches: int
    seconds: float
    config: dict
    #: CPU time of this process (all threads): on a shared machine, cpu_seconds / cores is what
    #: the wall time would be with the cores to itself
    cpu_seconds: float = 0.0
    results: list[BlockResult] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"LKD on {len(self.results)} blocks of {self.blocks!r}: {self.samples} samples ({self.data}), "
                 f"{self.seconds:.1f}s ({self.cpu_seconds:.1f} CPU s)"]
        for r in self.results:
            lines.append(f"  {r.name}: loss {r.loss_before:.4g} -> {r.loss_after:.4g} ({r.kept})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_lkd(model: torch.nn.Module, config=None, lkd_config=None, *, data=None, tokenizer=None,
            spec_for=None) -> LkdReport:
    """Distil ``model``'s blocks in place towards their quantized selves; return the report.

    config: the ZeroQuantConfig the model will be compiled with (its scheme decides the fake
        quantization; default w8a8). lkd_config: an LkdConfig, its dict form, or None for
        ``config.lkd`` (or the defaults). data/tokenizer: see ``lkd_data.py``. spec_for: a
        function module path -> FakeQuantSpec | None overriding the config's scheme (for schemes
        the config cannot express yet; see ``fake_quant.preset_rule``).
    """
    from zq_compile.config import LkdConfig, ZeroQuantConfig

    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model: LKD needs an nn.Module, got {type(model).__name__}")
    config = ZeroQuantConfig.from_options(config)
    lkd = LkdConfig.from_options(lkd_config) or config.lkd or LkdConfig()
    spec_for = spec_for or spec_for_config(config, model)
    blocks = find_blocks(model, lkd.blocks)
    batches = calibration_batches(model, lkd, data, tokenizer)
    started, cpu_started = time.perf_counter(), time.process_time()
    report = LkdReport(blocks=blocks.path, data=_describe(data, lkd), samples=_count(batches), batches=len(batches),
                       seconds=0.0, config=asdict(lkd))
    snapshot = _snapshot(blocks)
    was_training = model.training
    try:
        with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
            torch.manual_seed(lkd.seed)
            model.eval()
            replay = None
            for k, block in enumerate(blocks.modules):
                inputs = _capture(model, blocks, k, batches, replay)
                with torch.no_grad():
                    teacher = [block(*args, **kwargs) for args, kwargs in inputs]
                report.results.append(_train_block(block, k, blocks, inputs, teacher, lkd, spec_for))
                replay = teacher
                del inputs
    except BaseException:
        _restore(snapshot)
        raise
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - started
    report.cpu_seconds = time.process_time() - cpu_started
    return report


# -- recording block inputs ----------------------------------------------------------------------
def _capture(model, blocks: Blocks, k: int, batches, replay) -> list:
    """Block k's (args, kwargs) for every batch; blocks before k answer from ``replay``."""
    captured: list = []
    calls = [0] * k

    def stop(module, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    handle = blocks.modules[k].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        for i, (args, kwargs) in enumerate(batches):
            if replay is not None:
                for j in range(k):
                    blocks.modules[j].forward = _lookup(replay[i], calls, j)
            with torch.no_grad():
                try:
                    model(*args, **kwargs)
                except _Stop:
                    pass
                else:
                    raise ValueError(f"model: block {blocks.name(k)} did not run in the model's forward pass; "
                                     "name the blocks that do with lkd blocks='...'")
            if any(c != i + 1 for c in calls):
                raise ValueError(f"model: blocks of {blocks.path!r} do not run once each, in order, before "
                                 f"{blocks.name(k)}; LKD needs a chain of blocks (name one with lkd blocks='...')")
    finally:
        handle.remove()
        for j in range(k):
            blocks.modules[j].__dict__.pop("forward", None)
    return captured


def _lookup(output, calls: list[int], j: int):
    def forward(*args, **kwargs):
        calls[j] += 1
        return output

    return forward


# -- training one block --------------------------------------------------------------------------
def _first_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    raise ValueError(f"model: a block returned {type(out).__name__}; LKD needs a tensor or a tuple starting with one")


def _to_fp32(tree):
    if isinstance(tree, torch.Tensor):
        return tree.float() if tree.is_floating_point() else tree
    if isinstance(tree, (tuple, list)):
        return type(tree)(_to_fp32(t) for t in tree)
    if isinstance(tree, dict):
        return {k: _to_fp32(v) for k, v in tree.items()}
    return tree


def _student(block: torch.nn.Module, fp32: bool) -> torch.nn.Module:
    """A trainable copy: fresh parameters and buffers (the model's may be inference tensors,
    which autograd cannot save), in fp32 when the block is in 16-bit floats (an lr of 1e-5 is
    below bf16's resolution of most weights)."""
    student = copy.deepcopy(block)
    for module in student.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                t = p.detach().clone()
                module._parameters[name] = torch.nn.Parameter(t.float() if fp32 and t.is_floating_point() else t)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = b.clone()
    return student.eval()


def _mse(student, inputs, teacher, fp32) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for (args, kwargs), y in zip(inputs, teacher):
            if fp32:
                args, kwargs = _to_fp32(args), _to_fp32(kwargs)
            out = _first_tensor(student(*args, **kwargs)).float()
            ref = _first_tensor(y).float()
            total += torch.nn.functional.mse_loss(out, ref, reduction="sum").item()
            count += ref.numel()
    return total / count


def _train_block(block, k: int, blocks: Blocks, inputs, teacher, lkd, spec_for) -> BlockResult:
    name = blocks.name(k)
    fp32 = any(p.dtype in (torch.float16, torch.bfloat16) for p in block.parameters())
    student = _student(block, fp32)
    trained = dict(student.named_parameters())  # the same Parameter objects train once wrapped
    n_linears = attach_fake_quant(student, name, spec_for)
    if n_linears == 0:
        return BlockResult(k, name, 0, 0.0, 0.0, "no quantized linear in the block: not trained")
    before = _mse(student, inputs, teacher, fp32)
    opt = torch.optim.AdamW(list(trained.values()), lr=lkd.lr, weight_decay=lkd.weight_decay)
    decay = lkd.schedule == "linear"
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / lkd.steps if decay else 1.0)
    gen = torch.Generator().manual_seed(lkd.seed * 1_000_003 + k)
    order: list[int] = []
    bar = tqdm(total=lkd.steps, desc=f"LKD {name}", unit="step", disable=not lkd.progress, leave=True)
    for _ in range(lkd.steps):
        if not order:
            order = torch.randperm(len(inputs), generator=gen).tolist()
        i = order.pop()
        args, kwargs = inputs[i]
        if fp32:
            args, kwargs = _to_fp32(args), _to_fp32(kwargs)
        with torch.enable_grad():
            out = _first_tensor(student(*args, **kwargs)).float()
            loss = torch.nn.functional.mse_loss(out, _first_tensor(teacher[i]).float())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"LKD: loss of {name} became {loss.item()} (lower lkd.lr)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        bar.set_postfix(loss=f"{loss.item():.4g}", refresh=False)
        bar.update()
    after = _mse(student, inputs, teacher, fp32)
    bar.set_postfix_str(f"loss {before:.4g} -> {after:.4g}")  # the line left on screen per block
    bar.close()
    if not after < before:
        return BlockResult(k, name, n_linears, before, after, "original weights kept: training did not lower the loss")
    own = dict(block.named_parameters())
    with torch.no_grad():
        for pname, p in own.items():
            _write(p, trained[pname].detach())
    return BlockResult(k, name, n_linears, before, after, "trained")


# -- snapshot / restore --------------------------------------------------------------------------
def _write(dst: torch.Tensor, src: torch.Tensor) -> None:
    # A model built or copied under inference_mode has inference-tensor parameters: those can
    # only be written inside inference mode.
    with torch.inference_mode(dst.is_inference()), torch.no_grad():  # this order: inference_mode(False) turns grad on
        dst.copy_(src.to(dst.dtype))


def _snapshot(blocks: Blocks) -> list[tuple[torch.Tensor, torch.Tensor]]:
    seen, out = set(), []
    for block in blocks.modules:
        for t in (*block.parameters(), *block.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                out.append((t, t.detach().clone()))
    return out


def _restore(snapshot) -> None:
    for t, saved in snapshot:
        _write(t, saved)


def _count(batches) -> int:
    n = 0
    for args, kwargs in batches:
        first = next((t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.dim()), None)
        n += first.shape[0] if first is not None else 1
    return n


def _describe(data, lkd) -> str:
    if data is None:
        return {"random": "random token ids", "generated": "the model's own text from random first tokens",
                "wikipedia": "bundled Wikipedia prose"}[lkd.data]
    if isinstance(data, str) or (isinstance(data, (list, tuple)) and data and isinstance(data[0], str)):
        return "user text"
    return f"user {type(data).__name__}"


# -- once per model, for compile ---------------------------------------------------------------------
#: Models LKD already ran on in this process (by compile or the backend), with the report.
_DONE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def lkd_once(model: torch.nn.Module, config, data=None) -> tuple[LkdReport, bool]:
    """Run ``config.lkd`` on ``model`` (on ``data``, else its own ``lkd.data``) unless it already
    ran on it in this process; (report, ran_now). Never twice: the teacher of a second run would
    be the first run's trained weights, not the model's own, and the bench saw what that costs
    (``calibrate`` then ``compile`` ran LKD twice until 2026-12-07: MiniLM w4/8a8 cosine 0.968
    without LKD, 0.942 with it)."""
    if model in _DONE:
        return _DONE[model], False
    report = run_lkd(model, config, config.lkd, data=data)
    _DONE[model] = report
    return report, True


def calibrated_owner(example_inputs) -> tuple[torch.nn.Module, LkdReport] | None:
    """The already-calibrated model owning parameters among a graph's inputs, if any."""
    ids = {id(t) for t in example_inputs if isinstance(t, torch.nn.Parameter)}
    for model, report in list(_DONE.items()):
        if any(id(p) in ids for p in model.parameters()):
            return model, report
    return None


def lkd_for_graph(config, example_inputs) -> str:
    """What the backend does when ``config.lkd`` is set: run LKD on the model this graph comes
    from, once per model, before the graph's weights are quantized; returns the report's note."""
    owner = calibrated_owner(example_inputs)
    if owner is not None:
        return f"LKD already ran on this model ({owner[1].summary().splitlines()[0]})"
    if not any(isinstance(t, torch.nn.Parameter) for t in example_inputs):
        return "LKD: this graph takes no parameters; it runs before the first graph that does"
    from zq_compile.calibrate.traced_module import traced_module

    model = traced_module(example_inputs)
    if model is None:
        raise ValueError(
            "lkd: the zeroquant backend could not find the nn.Module this graph was traced from, so it "
            "cannot run LKD; use zq_compile.compile(model, config), or run "
            "zq_compile.calibrate.lkd.run_lkd(model, config) before torch.compile and drop 'lkd' from options"
        )
    report, _ = lkd_once(model, config)
    return "LKD ran before this graph compiled: " + report.summary().replace("\n", ";")
