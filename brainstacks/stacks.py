"""StackedModel: wraps every target projection of a causal LM and manages domains, stacks and routing weights.

A **stack** is one MoE-LoRA delta on every target projection of every layer; a **domain** owns one or more stacks
(residual boosting adds them one at a time). At most one stack is trainable (the *active* stack); freezing it
folds its null space into B, casts it to the compact storage dtype and packs it with the others.

Routing weights are per sequence: `set_weights(w)` with w (B, D) in `domains` order; None means ungated (every
stack at weight 1, as during training). The base model's weights are never modified.

    sm = StackedModel(model, StackConfig())
    sm.add_domain("math"); params = sm.start_stack("math"); ...train...; sm.freeze_active()
    with sm.routing(torch.tensor([[1.0]])): model.generate(...)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from brainstacks import int8_storage
from brainstacks.base import prepare_for_backward, target_modules
from brainstacks.config import StackConfig, parse_dtype
from brainstacks.dtypes import packed_dtype
from brainstacks.errors import RoutingError, StackFormatError
from brainstacks.layer import RoutingState, StackedLinear
from brainstacks.lora import is_lora_stack, lora_tensor_problem, packing_rank, to_packing
from brainstacks.moe_lora import MoELoRA, stack_tensor_problem, stack_tensor_shapes
from brainstacks.shared_input import build_groups

DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


@dataclass
class PreparedStacks:
    """A full set of frozen stacks packed to the side by `StackedModel.prepare`, ready for `commit`."""

    domains: list[str]
    stacks: list[tuple[str, int]]  # packed order
    storage_dtype: torch.dtype | None
    packed: dict[str, tuple]  # layer path -> (AW, BT, fp32_copy) from StackedLinear.pack
    sources: list[dict[str, torch.Tensor]]  # each stack's own tensors (MoE-LoRA or LoRA), in packed order
    rank: int  # the packing rank (brainstacks/lora.py)


class StackedModel:
    """Owns the wrapped layers of one model and the bookkeeping of domains and stacks."""

    def __init__(self, model: nn.Module, config: StackConfig | None = None):
        self.model = model
        self.config = config or StackConfig()
        self.config.validate()
        self.state = RoutingState()
        self.layers: dict[str, StackedLinear] = {}
        for path, mod in target_modules(model, self.config.targets).items():
            if isinstance(mod, StackedLinear):
                raise StackFormatError(f"{path}: model is already wrapped")
            layer = StackedLinear(mod, path, self.config, self.state)
            _set_submodule(model, path, layer)
            self.layers[path] = layer
        if not self.layers:
            raise StackFormatError(f"no target projections {list(self.config.targets)} found in the model")
        self.groups = build_groups(self.layers)  # q/k/v and gate/up: one gating pass per shared input
        for p in model.parameters():
            p.requires_grad_(False)
        self._domains: list[str] = []
        self._stacks: list[tuple[str, int]] = []  # packed order: sorted by (domain order, k)
        self._storage_dtype: torch.dtype | None = None  # dtype the frozen stacks are stored (and saved) in
        self._active: str | None = None
        self._weights: torch.Tensor | None = None
        self._sources: list[dict[str, torch.Tensor]] = []  # each frozen stack's own tensors (CPU), in packed order
        self.pack_rank = self.config.rank  # the rank every stack is packed at (brainstacks/lora.py)

    def share_inputs(self, on: bool = True) -> None:
        """Turn the shared-input groups (brainstacks/shared_input.py) on or off, e.g. to measure them."""
        for g in self.groups:
            g.reset()
            g.enabled, g.misses = on, 0

    # ---- bookkeeping -----------------------------------------------------------------------------------------
    @property
    def domains(self) -> list[str]:
        return list(self._domains)

    @property
    def stacks(self) -> list[tuple[str, int]]:
        """(domain, k) of every frozen stack, in packed order."""
        return list(self._stacks)

    @property
    def active_domain(self) -> str | None:
        return self._active

    @property
    def device(self) -> torch.device:
        return next(iter(self.layers.values())).base_layer.weight.device

    def num_stacks(self, domain: str | None = None) -> int:
        return sum(1 for d, _ in self._stacks if domain is None or d == domain)

    def shapes(self) -> dict[str, tuple[int, int]]:
        """(d_out, d_in) of every wrapped projection."""
        return {p: (lay.out_features, lay.in_features) for p, lay in self.layers.items()}

    def add_domain(self, name: str) -> None:
        if not isinstance(name, str) or not DOMAIN_NAME.match(name):
            raise StackFormatError(f"invalid domain name {name!r}: use letters, digits, '_', '.', '-' (max 64)")
        if name in self._domains:
            raise StackFormatError(f"domain {name!r} already exists")
        self._domains.append(name)
        self.set_weights(None)  # earlier (B, D-1) weights no longer fit

    def remove_domain(self, name: str) -> None:
        self._require_domain(name)
        if self._active == name:
            self.discard_active()
        keep = [i for i, (d, _) in enumerate(self._stacks) if d != name]
        self._swap(self._pack([d for d in self._domains if d != name], [self._stacks[i] for i in keep],
                              [self._sources[i] for i in keep], self._storage_dtype))
        self.set_weights(None)

    def _require_domain(self, name: str) -> int:
        try:
            return self._domains.index(name)
        except ValueError:
            raise RoutingError(f"unknown domain {name!r}; known: {self._domains}") from None

    # ---- the active (trainable) stack -----------------------------------------------------------------------
    def start_stack(self, domain: str, nullspace: dict[str, torch.Tensor] | None = None) -> list[nn.Parameter]:
        """Put a new trainable stack for `domain` on every target; returns its parameters.

        `nullspace` maps layer path → V (d_out, K): the active stack's output is kept orthogonal to span(V).
        """
        self._require_domain(domain)
        if self._active is not None:
            raise StackFormatError(f"a stack for {self._active!r} is already active; freeze or discard it first")
        prepare_for_backward(self.model)  # gradients must flow through the 4-bit base layers correctly
        params: list[nn.Parameter] = []
        for path, lay in self.layers.items():
            V = nullspace.get(path) if nullspace else None
            lay.active = MoELoRA(lay.in_features, lay.out_features, self.config, V, device=self.device)
            params.extend(lay.active.parameters())
        self._active = domain
        self.set_weights(self._weights)
        return params

    def active_modules(self) -> dict[str, MoELoRA]:
        return {p: lay.active for p, lay in self.layers.items() if lay.active is not None}

    def active_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of the active stack's parameters (for best-snapshot keeping)."""
        return {f"{p}.{n}": t.detach().clone()
                for p, m in self.active_modules().items() for n, t in m.state_dict().items()}

    def load_active_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for p, m in self.active_modules().items():
                for n, t in m.state_dict().items():
                    t.copy_(state[f"{p}.{n}"])

    def aux_loss(self) -> torch.Tensor:
        """Mean load-balancing loss of the active stack over its projections, from the last training forward."""
        terms = [m.aux for m in self.active_modules().values() if m.aux is not None]
        if not terms:
            return torch.zeros((), device=self.device)
        return torch.stack(terms).mean()

    def freeze_active(self, dtype: str | torch.dtype | None = None) -> tuple[str, int]:
        """Freeze the active stack: fold its null space into B, store in `dtype` (default config.frozen_dtype)."""
        if self._active is None:
            raise StackFormatError("no active stack to freeze")
        name = dtype or self.config.frozen_dtype
        dt = parse_dtype(name)
        tensors = {}
        for p, lay in self.layers.items():
            for n, t in lay.active.frozen_tensors(dt).items():
                tensors[f"{p}.{n}"] = t
            lay.active = None
        if name == int8_storage.INT8:  # hold what the bundle will store, so later domains train on the served values
            tensors = int8_storage.round_trip(tensors, dt, "freeze_active")
        domain, self._active = self._active, None
        return domain, self.attach_stack(domain, tensors)

    def discard_active(self) -> None:
        for lay in self.layers.values():
            lay.active = None
        self._active = None
        self.set_weights(self._weights)

    # ---- frozen stacks ---------------------------------------------------------------------------------------
    def attach_stack(self, domain: str, tensors: dict[str, torch.Tensor], dtype: str | torch.dtype | None = None
                     ) -> int:
        """Add a frozen stack to `domain` from {f"{path}.{A|B|W}": tensor}; returns its index k within the domain.

        Every wrapped layer must be present with the exact shapes; dtype defaults to the tensors' own.
        """
        return self.attach_stacks([(domain, tensors)], dtype)[0]

    def attach_stacks(self, items: list[tuple[str, dict[str, torch.Tensor]]],
                      dtype: str | torch.dtype | None = None) -> list[int]:
        """Add several frozen stacks, validating all of them first and packing once; returns their indices k."""
        new = [(domain, self._validated(domain, tensors, dtype)) for domain, tensors in items]
        dts = {t.dtype for _, tensors in new for t in tensors.values()}
        if self._stacks and self._storage_dtype is not None:
            dts.add(self._storage_dtype)
        if len(dts) > 1:
            raise StackFormatError(f"stacks mix dtypes {sorted(map(str, dts))}; frozen stacks share one")
        if dts:
            self._storage_dtype = dts.pop()
        sources = dict(zip(self._stacks, self._sources, strict=True))
        keys = []
        for domain, tensors in new:
            k = self.num_stacks(domain) + sum(1 for d, _ in keys if d == domain)
            keys.append((domain, k))
            sources[(domain, k)] = tensors
        order = sorted(self._stacks + keys, key=lambda s: (self._domains.index(s[0]), s[1]))
        self._swap(self._pack(list(self._domains), order, [sources[s] for s in order], self._storage_dtype))
        self.set_weights(self._weights)  # the same domains: the rows' weights still fit
        return [k for _, k in keys]

    def prepare(self, items: dict[str, list[dict[str, torch.Tensor]]],
                dtype: str | torch.dtype | None = None) -> PreparedStacks:
        """Validate and pack a complete replacement set {domain: [stack tensors, ...]} (domain order kept) to the
        side: nothing live changes, so the model keeps serving its current stacks while this runs (on another
        thread, for a hot reload) and any failure, an out-of-memory error while packing included, leaves it as it
        was. `commit` then swaps the result in."""
        domains = list(items)
        for name in domains:
            if not isinstance(name, str) or not DOMAIN_NAME.match(name):
                raise StackFormatError(f"invalid domain name {name!r}: use letters, digits, '_', '.', '-' (max 64)")
        order = [(d, k) for d in domains for k in range(len(items[d]))]
        per = [self._validated(d, items[d][k], dtype, domains) for d, k in order]
        dts = {t.dtype for p in per for t in p.values()}
        if len(dts) > 1:
            raise StackFormatError(f"stacks mix dtypes {sorted(map(str, dts))}; frozen stacks share one")
        storage = dts.pop() if dts else None
        return self._pack(domains, order, per, storage)

    def _pack(self, domains: list[str], order: list[tuple[str, int]], sources: list[dict[str, torch.Tensor]],
              storage: torch.dtype | None) -> PreparedStacks:
        """The one packing path: the stacks (validated, in `order`) in one geometry (brainstacks/lora.py's
        to_packing: E experts at the packing rank), each layer packed to the side in the compute dtype the storage
        dtype takes here (brainstacks.dtypes.packed_dtype; exact: every storage value fits)."""
        compute = packed_dtype(storage, self.device)
        rank = packing_rank(self.config, sources)
        shapes = self.shapes()
        per = [to_packing(src, shapes, self.config, rank, compute, self.device) for src in sources]
        packed = {path: lay.pack([p[path] for p in per]) for path, lay in self.layers.items()}
        return PreparedStacks(list(domains), list(order), storage, packed, list(sources), rank)

    def _swap(self, prepared: PreparedStacks) -> None:
        """Install a packed set: pointer assignments only (routing weights are the caller's to reset)."""
        for path, lay in self.layers.items():
            AW, BT, fp32_copy = prepared.packed[path]
            lay.set_packed(AW, BT, len(prepared.stacks), fp32_copy, prepared.rank)
        self._domains = list(prepared.domains)
        self._sources = list(prepared.sources)
        self.pack_rank = prepared.rank
        self._stacks = list(prepared.stacks)
        self._storage_dtype = prepared.storage_dtype

    def commit(self, prepared: PreparedStacks) -> None:
        """Swap in what `prepare` built: pointer assignments only, so it cannot fail half-way. Call between forwards
        (the engine's model thread). Routing weights are reset: their columns named the old domains."""
        if self._active is not None:
            raise StackFormatError(f"a stack for {self._active!r} is being trained; freeze or discard it first")
        self._swap(prepared)
        self.set_weights(None)

    def _validated(self, domain: str, tensors: dict[str, torch.Tensor], dtype,
                   domains: list[str] | None = None) -> dict[str, torch.Tensor]:
        """One stack's tensors (MoE-LoRA: every wrapped layer's A, B, W; or a LoRA's: brainstacks/lora.py) checked
        against the wrapped layers, as detached copies on the CPU (kept for repacking and stack_tensors; the packing
        on the model's device is the only copy there)."""
        if domains is None:
            self._require_domain(domain)
        elif domain not in domains:
            raise RoutingError(f"unknown domain {domain!r}; known: {domains}")
        if is_lora_stack(tensors):
            problem = lora_tensor_problem(tensors, self.shapes())
        else:
            problem = stack_tensor_problem(tensors, stack_tensor_shapes(self.shapes(), self.config))
        if problem:
            raise StackFormatError(f"stack for {domain!r}: {problem}")
        return {n: t.detach().to(device="cpu", dtype=parse_dtype(dtype) if dtype else t.dtype)
                for n, t in tensors.items()}

    def clear(self) -> None:
        """Remove every domain and stack (the active one too) in one step."""
        self.discard_active()
        self._swap(self._pack([], [], [], self._storage_dtype))
        self.set_weights(None)  # earlier weights name domains that are gone

    def stack_tensors(self, domain: str, k: int) -> dict[str, torch.Tensor]:
        """The frozen stack (domain, k) as it was given: {f"{path}.{A|B|W}": tensor}, or a LoRA's tensors (on CPU,
        storage dtype)."""
        try:
            i = self._stacks.index((domain, k))
        except ValueError:
            raise StackFormatError(f"no frozen stack {k} in domain {domain!r}") from None
        return {n: t.to(device="cpu", dtype=self._storage_dtype).clone() for n, t in self._sources[i].items()}

    # ---- routing ---------------------------------------------------------------------------------------------
    def weights_tensor(self, weights: dict[str, float], rows: int = 1) -> torch.Tensor:
        """A (rows, D) weight tensor from {domain: w}; domains not named get 0."""
        w = torch.zeros(rows, len(self._domains))
        for name, v in weights.items():
            w[:, self._require_domain(name)] = float(v)
        return w

    @property
    def weights(self) -> torch.Tensor | None:
        """The (B, D) routing weights set_weights last took (None: ungated)."""
        return self._weights

    def set_weights(self, weights: torch.Tensor | None) -> None:
        """Per-sequence domain weights (B, D) for the next forwards, or None for ungated (all stacks at 1).

        Selects, once for every layer, the stacks whose domain is non-zero in some row and their multipliers.
        """
        st = self.state
        if weights is None:
            self._weights = None
            st.selected, st.active_mult = None, None
            st.set_mult(None)
            return
        w = torch.as_tensor(weights, dtype=torch.float32)
        if w.dim() == 1:
            w = w.unsqueeze(0)
        D = len(self._domains)
        if w.dim() != 2 or w.shape[1] != D:
            raise RoutingError(f"routing weights must have shape (batch, {D}) for domains {self._domains}, "
                               f"got {tuple(w.shape)}")
        if not torch.isfinite(w).all() or (w < 0).any():
            raise RoutingError("routing weights must be finite and >= 0")
        self._weights = w
        w_cpu = w.detach().cpu()
        live = (w_cpu != 0).any(0)  # (D,)
        sel = tuple(i for i, (d, _) in enumerate(self._stacks) if live[self._domains.index(d)])
        st.selected = sel
        dev = self.device
        if sel:
            cols = torch.tensor([self._domains.index(self._stacks[i][0]) for i in sel])
            lay = next(iter(self.layers.values()))
            # (B, m) in the dtype decode steps compute in (the float32 copy for small calls, where a layer keeps
            # one), so no layer casts it on the hot path
            dt = lay.fp32_copy[0].dtype if lay.fp32_copy is not None else lay.AW.dtype
            st.set_mult((w_cpu[:, cols] * self.config.scale).to(device=dev, dtype=dt))
        else:
            st.set_mult(None)
        st.active_mult = w_cpu[:, self._domains.index(self._active)].to(dev) if self._active is not None else None

    @contextmanager
    def routing(self, weights: torch.Tensor | None) -> Iterator[None]:
        prev = self._weights
        self.set_weights(weights)
        try:
            yield
        finally:
            self.set_weights(prev)

    @contextmanager
    def without_active(self) -> Iterator[None]:
        """The model below the active stack (e.g. the DPO reference): frozen stacks on, active stack off."""
        saved = {p: lay.active for p, lay in self.layers.items()}
        for lay in self.layers.values():
            lay.active = None
        try:
            yield
        finally:
            for p, lay in self.layers.items():
                lay.active = saved[p]

    @contextmanager
    def base_only(self) -> Iterator[None]:
        prev = self.state.enabled
        self.state.enabled = False
        try:
            yield
        finally:
            self.state.enabled = prev
