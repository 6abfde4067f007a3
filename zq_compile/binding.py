"""Keep the quantized weights bound to the float tensors they came from, at every call.

Dynamo passes parameters as graph inputs and guards only on their shapes and dtypes, so one
compiled graph can be called with other tensors than those it was compiled with: the same
``torch.compile``d function applied to a second module, one graph shared by identical layers,
or weights edited in place after compiling (``load_state_dict``, calibration). The quantized
weights are compile-time constants, so each call checks which float tensors it got (identity
and version counter, a few microseconds) and, for tensors it has not seen, quantizes them once
more and keeps the result beside the others until those tensors are freed.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from zq_compile import store


@dataclass
class WeightSource:
    """How one set of quantized constants was made from the graph's float inputs."""

    input_indices: tuple[int, ...]  # graph inputs the float weight is computed from
    make_float: Callable[[list], torch.Tensor]  # those inputs -> W[N, K]
    quantize: Callable[[torch.Tensor], dict[str, torch.Tensor | None]]  # W[N, K] -> constants
    slots: dict[str, int]  # constant name ("wq", "ws", "wz") -> position in the constants list
    store_key: str | None = None  # one-placeholder weights: their key in zq_compile.store
    config: str = ""  # JSON of the config, kept beside the constants in the store
    # The graph's kernel's form of the constants (an INT4 handle, ...), applied after the store:
    # the store keeps what every graph can start from, since two graphs may run two kernels.
    finalize: Callable[[dict], dict] | None = None
    # The int8 GEMM weight's form when the graph also gathers from it (a tied embedding table:
    # it stays plain int8); None: the binding's own finalize.
    int8_finalize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # One GEMM for several linears (passes/merge_sibling_gemms.py): the members' sources, whose
    # constants are made (or taken from the store) one by one and concatenated, and their rows.
    # make_float and quantize are then None.
    parts: tuple["WeightSource", ...] = ()
    part_rows: tuple[tuple[int, int], ...] = ()


def _version(t: torch.Tensor) -> tuple[int, int]:
    """What changes when a tensor's values may have: its version counter (in-place ops) and its
    storage address (``p.data = other`` swaps the storage of the same Parameter object and
    leaves the counter alone). Edits through ``p.data.copy_(...)`` change neither: README,
    "Robustness guarantees", says to edit under ``torch.no_grad()`` instead."""
    return store.version(t), t.data_ptr()


class WeightBinding:
    def __init__(self, sources: list[WeightSource], constants: list[torch.Tensor], example_inputs: list,
                 finalize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], report=None):
        self.sources = sources
        self.indices = tuple(sorted({i for s in sources for i in s.input_indices}))
        self.finalize = finalize
        self.report = report
        self._cache: dict[tuple, tuple[tuple, list]] = {}
        self._remember(example_inputs, list(constants))

    def _key(self, args) -> tuple:
        return tuple(id(args[i]) for i in self.indices)

    def _remember(self, args, constants) -> None:
        key = self._key(args)
        self._cache[key] = (tuple(_version(args[i]) for i in self.indices), constants)
        for i in self.indices:  # forget them when any of the float tensors is freed
            weakref.finalize(args[i], self._cache.pop, key, None)

    def constants_for(self, args: list[Any], template: list[torch.Tensor]) -> list[torch.Tensor]:
        key = self._key(args)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == tuple(_version(args[i]) for i in self.indices):
            return hit[1]
        with torch.inference_mode(False), torch.no_grad():  # the new constants outlive this call
            constants = self._rebuild(args, template)
        if self.report is not None:
            self.report.requantized += 1
        self._remember(args, constants)
        return constants

    def _rebuild(self, args, template) -> list[torch.Tensor]:
        constants = list(template)
        for source in self.sources:
            values = [args[i] for i in source.input_indices]
            made = self._merged(source, args) if source.parts else self._stored_or_quantized(source, values)
            if source.finalize is not None:
                made = source.finalize(made)
            for name, slot in source.slots.items():
                constants[slot] = made[name]
            if "wq" in source.slots:
                finalize = source.int8_finalize or self.finalize
                constants[source.slots["wq"]] = finalize(made["wq"], made["ws"])
                if source.store_key is not None:
                    store.set_tensor(values[0], source.store_key, "wq", constants[source.slots["wq"]])
                if source.parts:
                    keep_merged_rows(constants[source.slots["wq"]], made["ws"],
                                     [(args[p.input_indices[0]], p.store_key, rows)
                                      for p, rows in zip(source.parts, source.part_rows)])
        return constants

    def _merged(self, source: WeightSource, args) -> dict:
        from zq_compile.passes.merge_sibling_gemms import merged_constants

        parts = []
        for part in source.parts:
            made = self._stored_or_quantized(part, [args[i] for i in part.input_indices])
            parts.append((made["wq"], made["ws"]))
        w_q, w_s = merged_constants(parts)
        return {"wq": w_q, "ws": w_s}

    @staticmethod
    def _stored_or_quantized(source: WeightSource, values: list) -> dict:
        """Constants another graph already made for this weight (zq_compile.store), else new ones.
        A weight whose float data was released can only come from the store."""
        if source.store_key is None:
            return source.quantize(source.make_float(values))
        made = store.get(values[0], source.store_key)
        if made is None:
            if store.is_released(values[0]):
                raise store.ReleasedWeightError(store.missing_message(values[0]))
            made = source.quantize(source.make_float(values))
            store.put(values[0], source.store_key, made, source.config)
        return made


def keep_merged_rows(w_q: torch.Tensor, w_s: torch.Tensor, members: list) -> None:
    """After a merged weight took its kernel's form ``w_q``: each member's entry in the store
    (``members``: (float tensor, store key or None, (first row, end row))) keeps its rows as a
    view of it instead of a copy of its own, and the merged scales are remembered with it, so a
    later merge of the same members finds this copy (``merge_sibling_gemms.merged_constants``)."""
    from zq_compile.codegen.cpu.kernels import remember_merged, row_slice

    remember_merged(w_q, w_s)
    for root, key, (start, end) in members:
        if key is not None:
            store.set_tensor(root, key, "wq", row_slice(w_q, start, end))
