"""The Relaxed Recursive Transformer as a ``transformers`` model (paper sec. 2.2-2.4).

K shared decoder layers of the source family are looped B times in CYCLE order: virtual position
l (0-based, l < N = K * B) runs shared layer l mod K in loop l // K. Every linear of a shared layer
carries one LoRA per loop (its B virtual positions), so position l computes W' x + B_l A_l x.

The family's own ``*ForCausalLM`` (embeddings, masks, rotary, final norm, head, softcapping) runs
unchanged around the loop: its decoder-layer list is a :class:`LoopedLayers`, which holds the K
shared layers as parameters and presents N *position views* to the family's forward. A view is a
copy of its shared layer's module tree that shares the layer's parameters, buffers and hooks, and
differs only in what belongs to its position, fixed when the view is built: the loop its looped
linears and norms run (an argument of :meth:`LoopedLinear.forward`), the attention's
``layer_idx`` (so the KV cache is keyed by virtual depth, never by the shared layer), and the
sliding window and layer type where the family varies them. No forward writes state on a
module, so activation checkpointing recomputes exactly what ran and ``torch.compile`` sees
ordinary modules; what changes per call is an argument (``forward``'s ``exit_loop`` reaches the
views through the family's own keyword arguments). :meth:`LoopedLayers.at_loops` gives a view
whose rows carry their own loops, which the serving engine runs to mix loops in one pass.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from rrt.model.families import Family, check_layer, family_of
from rrt.model.shape import LORA_KINDS

# Written beside every saved model so that `from_pretrained(path, trust_remote_code=True)` finds
# the classes in a Python that has not imported rrt (rrt must still be installed there).
REMOTE_CODE_FILE = "modeling_rrt.py"
REMOTE_CODE = '''"""Loads a Relaxed Recursive Transformer saved by rrt (needs rrt installed)."""

from rrt.model.modeling import RecursiveConfig, RecursiveForCausalLM

__all__ = ["RecursiveConfig", "RecursiveForCausalLM"]
'''
AUTO_MAP = {
    "AutoConfig": "modeling_rrt.RecursiveConfig",
    "AutoModelForCausalLM": "modeling_rrt.RecursiveForCausalLM",
}


@strict
class RecursiveConfig(PreTrainedConfig):
    """Config of a (relaxed) recursive model.

    ``text_config`` is the source model's config, unchanged: its ``num_hidden_layers`` is the
    virtual depth N = K * B, which is what ``generate()`` sizes the KV cache from.
    """

    model_type = "rrt"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    text_config: dict | PreTrainedConfig | None = None
    num_loops: int = 1
    # LoRA rank per module kind ("attention", "mlp"); 0 = pure recursive. Each linear's rank is
    # capped at min(in_features, out_features).
    lora_rank: dict | None = None
    # Give each loop its own copy of the block's norm weights and linear biases. The paper ties
    # them; untying makes full-rank relaxation exact even when they differ across source layers.
    relax_vectors: bool = False
    init: str | None = None  # provenance: how the shared layers were initialised
    tie_word_embeddings: bool = False
    # The loop every forward exits after unless its ``exit_loop`` argument says otherwise (None:
    # full depth). Fixed when a model is made (:meth:`RecursiveForCausalLM.exiting_after`), for
    # callers that call ``model(input_ids)`` themselves, such as lm-eval.
    exit_loop: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        ranks = {kind: 0 for kind in LORA_KINDS}
        ranks.update(self.lora_rank or {})
        self.lora_rank = ranks

    @property
    def depth(self) -> int:
        """Virtual depth N: the number of layer applications per token."""
        return self.text_config.num_hidden_layers

    @property
    def num_shared_layers(self) -> int:
        """K = N / B."""
        return self.depth // self.num_loops

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if self.num_loops < 1 or self.depth % self.num_loops:
            raise ValueError(
                f"num_loops={self.num_loops} must be a positive divisor of the "
                f"{self.depth} source layers"
            )
        bad = {k: v for k, v in self.lora_rank.items() if k not in LORA_KINDS or v < 0}
        if bad:
            raise ValueError(f"lora_rank {bad}: keys must be {LORA_KINDS}, ranks >= 0")
        check_exit_loop(self.exit_loop, self.num_loops)


def check_exit_loop(loop: int | None, num_loops: int) -> None:
    """An exit loop is a loop count 1..B, or None for full depth."""
    if loop is not None and not 1 <= loop <= num_loops:
        raise ValueError(f"exit loop {loop} must be in 1..{num_loops} (or None)")


@dataclass(frozen=True)
class LoopSpans:
    """Tokens laid out grouped by loop along the sequence dimension (the one before features):
    ``spans[i] = (loop, start, end)``. A caller that orders its rows by loop (the serving engine)
    passes this, and each loop's LoRA then runs on a slice: no gather and no wasted rows."""

    spans: tuple[tuple[int, int, int], ...]

    @classmethod
    def of(cls, loops: list[int]) -> LoopSpans:
        """The spans of per-token loops that are already sorted."""
        spans: list[tuple[int, int, int]] = []
        for t, loop in enumerate(loops):
            if spans and spans[-1][0] == loop:
                spans[-1] = (loop, spans[-1][1], t + 1)
            else:
                if spans and loop < spans[-1][0]:
                    raise ValueError(f"loop spans need tokens sorted by loop, got {loops}")
                spans.append((loop, t, t + 1))
        return cls(tuple(spans))

    def check(self, num_loops: int) -> None:
        bad = sorted({j for j, _, _ in self.spans if not 0 <= j < num_loops})
        if bad:
            raise ValueError(f"loop ids must be in 0..{num_loops - 1}, got {bad}")


Loop = int | torch.Tensor | LoopSpans
"""A loop index: one int for every token of a call, per-token ids (a LongTensor whose shape is
the input's leading token dimensions, e.g. [batch, seq]), or :class:`LoopSpans`."""


def token_loops(loops: torch.Tensor, x: torch.Tensor, heads_first: bool = False) -> torch.Tensor:
    """Per-token loop ids as one flat row index over ``x.shape[:-1]``.

    ``loops`` covers the leading token dimensions ([batch] or [batch, seq]); the dimensions of
    ``x`` after them (seq, heads) repeat each one's loop. ``heads_first`` is for inputs laid out
    [batch, heads, seq, dim].
    """
    lead = tuple(x.shape[:-1])
    ids = loops.to(device=x.device, dtype=torch.long)
    if heads_first and len(lead) == 3:  # [batch, heads, seq]: the loop ids skip the heads
        if tuple(ids.shape) == (lead[0],):
            return ids[:, None, None].expand(lead).reshape(-1)
        if tuple(ids.shape) == (lead[0], lead[2]):
            return ids[:, None, :].expand(lead).reshape(-1)
    if lead[: ids.dim()] != tuple(ids.shape):
        raise ValueError(
            f"loop ids of shape {tuple(ids.shape)} do not match the leading dimensions of an "
            f"input of shape {tuple(x.shape)}"
        )
    return ids.reshape(*ids.shape, *(1,) * (len(lead) - ids.dim())).expand(lead).reshape(-1)


def check_loop_ids(ids: torch.Tensor, num_loops: int) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_loops):
        raise ValueError(f"loop ids must be in 0..{num_loops - 1}, got {ids.unique().tolist()}")


class LoopedLinear(nn.Module):
    """A shared linear with one LoRA per loop: y = W' x + b + B_j A_j x (eq. 4), scaling 1.

    The loop j is an argument: :meth:`forward` takes it, and a position view carries its own as
    ``loop`` (the registered module has none, so calling it without one is an error). The LoRA is
    stacked over loops (lora_A: [B, r, in], lora_B: [B, out, r]).
    """

    loop: Loop | None = None  # set on position views only, when they are built

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_loops: int,
        rank: int,
        bias: bool,
        loop_bias: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.num_loops = num_loops
        self.rank = min(rank, in_features, out_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        if bias:
            shape = (num_loops, out_features) if loop_bias else (out_features,)
            self.bias = nn.Parameter(torch.zeros(shape, **kw))
        else:
            self.register_parameter("bias", None)
        if self.rank:
            self.lora_A = nn.Parameter(torch.empty(num_loops, self.rank, in_features, **kw))
            self.lora_B = nn.Parameter(torch.zeros(num_loops, out_features, self.rank, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.rank:
            nn.init.normal_(self.lora_A, std=1.0 / math.sqrt(self.in_features))
            nn.init.zeros_(self.lora_B)

    @property
    def loop_bias(self) -> bool:
        return self.bias is not None and self.bias.dim() == 2

    def forward(self, x: torch.Tensor, loop: Loop | None = None) -> torch.Tensor:
        loop = self.loop if loop is None else loop
        if loop is None:
            raise RuntimeError("a looped linear needs its loop: call a position view, or pass loop")
        if isinstance(loop, int):
            bias = self.bias[loop] if self.loop_bias else self.bias
            y = F.linear(x, self.weight, bias)
            if self.rank:
                y = y + F.linear(F.linear(x, self.lora_A[loop]), self.lora_B[loop])
            return y
        if isinstance(loop, LoopSpans):
            return self._spans(x, loop)
        return self._per_token(x, loop)

    def _spans(self, x: torch.Tensor, spans: LoopSpans) -> torch.Tensor:
        """Tokens grouped by loop: the shared matmul once, each loop's LoRA on its slice."""
        spans.check(self.num_loops)
        y = F.linear(x, self.weight, None if self.loop_bias else self.bias)
        if self.rank or self.loop_bias:
            parts = []
            for j, a, b in spans.spans:
                part = x[..., a:b, :]
                delta = F.linear(F.linear(part, self.lora_A[j]), self.lora_B[j]) if self.rank else 0
                parts.append(delta + self.bias[j] if self.loop_bias else delta)
            y = y + torch.cat(parts, dim=-2)
        return y

    def _per_token(self, x: torch.Tensor, loops: torch.Tensor) -> torch.Tensor:
        """Rows at their own loops in one call: the shared matmul once, then every loop's LoRA
        stacked (A as [B * r, in], B as [out, B * r]) with each row's other loops masked to zero
        in between. Two matmuls B times as wide as one LoRA and no gather, sort or host sync, so
        the cost does not depend on how the rows' loops are mixed."""
        flat = x.reshape(-1, self.in_features)
        ids = token_loops(loops, x)
        # free on a CPU; on a GPU, or inside a compiled graph, it would wait for the values
        if ids.device.type == "cpu" and not torch.compiler.is_compiling():
            check_loop_ids(ids, self.num_loops)
        y = F.linear(flat, self.weight, None if self.loop_bias else self.bias)
        if self.rank or self.loop_bias:
            own = F.one_hot(ids, self.num_loops).to(flat.dtype)  # [tokens, B]
            if self.rank:
                down = F.linear(flat, self.lora_A.reshape(-1, self.in_features))  # [tokens, B*r]
                down = down * own.repeat_interleave(self.rank, dim=1)
                stacked_b = self.lora_B.permute(1, 0, 2).reshape(self.out_features, -1)
                y = y + F.linear(down, stacked_b)
            if self.loop_bias:
                y = y + own @ self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"loops={self.num_loops}, rank={self.rank}, bias={self.bias is not None}"
        )


class LoopedNorm(nn.Module):
    """One copy of a norm per loop (only with ``relax_vectors``); the loop picks the copy.

    ``heads_first`` marks a norm that sees [batch, heads, seq, dim] (Gemma 3's q/k norms), so that
    per-token loop ids find their rows.
    """

    loop: Loop | None = None  # set on position views only

    def __init__(self, norms: list[nn.Module], heads_first: bool = False) -> None:
        super().__init__()
        self.loops = nn.ModuleList(norms)
        self.heads_first = heads_first

    def forward(self, x: torch.Tensor, loop: Loop | None = None) -> torch.Tensor:
        loop = self.loop if loop is None else loop
        if loop is None:
            raise RuntimeError("a looped norm needs its loop: call a position view, or pass loop")
        if isinstance(loop, int):
            return self.loops[loop](x)
        if isinstance(loop, LoopSpans):
            loop.check(len(self.loops))
            return torch.cat([self.loops[j](x[..., a:b, :]) for j, a, b in loop.spans], dim=-2)
        # Every loop's norm over every row, each row taking its own loop's: no gather, sort or
        # host sync (a norm is cheap), so a compiled step keeps one graph.
        ids = token_loops(loop, x, self.heads_first)
        if ids.device.type == "cpu" and not torch.compiler.is_compiling():
            check_loop_ids(ids, len(self.loops))
        flat = x.reshape(-1, x.shape[-1])
        every = torch.stack([norm(flat) for norm in self.loops])  # [B, tokens, dim]
        return every[ids, torch.arange(flat.shape[0], device=flat.device)].view(x.shape)


# --- position views -----------------------------------------------------------------------------


def _view(
    module: nn.Module,
    overrides: dict[str, dict[str, Any]],
    pairs: list,
    path: str = "",
    hooks: bool = True,
):
    """A copy of ``module``'s tree sharing its parameters, buffers and hooks (the same dicts), with
    ``overrides[path]`` set on the copy at ``path``; records (view, origin, overridden names).
    ``hooks=False``: the copies run no forward hooks (dicts of their own, empty)."""
    view = copy.copy(module)  # a shallow copy: _parameters, _buffers and hook dicts are shared
    view.__dict__["_modules"] = {
        name: _view(child, overrides, pairs, f"{path}{name}.", hooks) if child is not None else None
        for name, child in module._modules.items()
    }
    if not hooks:
        for name in _FORWARD_HOOKS:
            view.__dict__[name] = type(module.__dict__[name])()
    own = overrides.get(path.rstrip("."), {})
    view.__dict__.update(own)
    pairs.append((view, module, frozenset(own)))
    return view


_FORWARD_HOOKS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def module_view(
    module: nn.Module, overrides: dict[str, dict[str, Any]], hooks: bool = True
) -> nn.Module:
    """A copy of ``module``'s tree sharing its parameters, buffers and hooks, with
    ``overrides[path]`` set on the copy at ``path`` (``""``: the module itself): how a caller
    fixes, once, what its own calls of the module need (the engine: its attention function).
    ``hooks=False``: the copy runs no forward hooks, not even those added to ``module`` later
    (the engine: transformers' output capture, which ``torch.compile`` cannot trace)."""
    return _view(module, overrides, [], hooks=hooks)


def _refresh(pairs: list) -> None:
    """Copy what changed on the shared modules since the views were built (the training flag,
    activation checkpointing) onto the views, keeping what each view fixes for its position."""
    for view, origin, own in pairs:
        for name, value in origin.__dict__.items():
            if name == "_modules" or name in own:
                continue
            if getattr(value, "__self__", None) is origin:
                continue  # a method patched onto the shared module would run it, not the view
            view.__dict__[name] = value


class PositionView:
    """Mixin of a position view's class: a call whose ``exit_loop`` (a keyword argument the
    family's forward hands every decoder layer) its loop has reached returns its input untouched,
    before hooks, checkpointing or the KV cache see it, so the family's layer loop runs only the
    first ``exit_loop`` loops."""

    position_loop: int  # the loop of the view's position, set when the view is built

    def __call__(
        self, hidden_states: torch.Tensor, *args: Any, exit_loop: int | None = None, **kwargs: Any
    ) -> Any:
        if exit_loop is not None and self.position_loop >= exit_loop:
            return hidden_states
        return super().__call__(hidden_states, *args, **kwargs)


_POSITION_CLASSES: dict[type, type] = {}


def _position_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``cls`` with :class:`PositionView` in front (one subclass per family layer class)."""
    if cls not in _POSITION_CLASSES:
        _POSITION_CLASSES[cls] = type(cls.__name__, (PositionView, cls), {})
    return _POSITION_CLASSES[cls]


class LoopedLayers(nn.ModuleList):
    """K shared decoder layers, seen by the family's forward as N = K * B position views.

    Registered children (and so the state dict) are the K shared layers; iteration and slicing
    yield the position views in CYCLE order. A view skips itself when a call's ``exit_loop`` says
    so (:class:`PositionView`).
    """

    def __init__(self, layers: list[nn.Module], overrides: list[dict[str, dict[str, Any]]]) -> None:
        super().__init__(layers)
        k = len(layers)
        self.overrides = overrides
        self._pairs: list = []
        self.positions = []
        for p in range(len(overrides)):
            view = _view(layers[p % k], overrides[p], self._pairs)
            view.__class__ = _position_class(type(view))
            view.__dict__["position_loop"] = p // k
            self.positions.append(view)

    def at_loops(
        self,
        index: int,
        loops: torch.Tensor | LoopSpans,
        fixed: dict[str, dict[str, Any]] | None = None,
        hooks: bool = True,
    ) -> nn.Module:
        """A view of shared layer ``index`` whose rows run their own loops (per-token ``loops``).

        One call then runs tokens of different loops through the layer, each with its loop's
        LoRA (every loop's LoRA stacked, the other loops masked; never row by row). What else
        depends on the position (the attention's KV slot, its sliding window) is None here: a
        caller that mixes depths in one call brings its own KV cache and attention masks, and
        ``fixed`` sets what else it needs on the view, by path, and ``hooks=False`` drops its
        forward hooks (as :func:`module_view` does).
        """
        if isinstance(loops, LoopSpans):
            loops.check(len(self.positions) // len(self))
        else:
            check_loop_ids(loops, len(self.positions) // len(self))
        mixed: dict[str, dict[str, Any]] = {}
        for p in range(index, len(self.positions), len(self)):
            for path, attrs in self.overrides[p].items():
                for name in attrs:
                    mixed.setdefault(path, {})[name] = loops if name == "loop" else None
        for path, attrs in (fixed or {}).items():
            mixed.setdefault(path, {}).update(attrs)
        return _view(self[index], mixed, [], hooks=hooks)

    def train(self, mode: bool = True) -> LoopedLayers:
        super().train(mode)
        _refresh(self._pairs)
        return self

    def refresh(self) -> None:
        _refresh(self._pairs)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.positions)

    def __getitem__(self, idx: int | slice) -> Any:
        if isinstance(idx, slice):
            return self.positions[idx]
        return super().__getitem__(idx)

    def extra_repr(self) -> str:
        return f"{len(self)} shared layers x {len(self.positions) // len(self)} loops"

    def __repr__(self) -> str:
        return nn.Module.__repr__(self)  # the shared layers, not the position views


def _position_state(layer_cls: type, text_config: PreTrainedConfig, position: int) -> dict:
    """Simple attributes (ints, strings, ...) of a decoder layer built for ``position``, by path."""
    with torch.device("meta"):
        layer = layer_cls(text_config, position)
    state = {}
    for path, module in layer.named_modules():
        for name, value in vars(module).items():
            simple = value is None or isinstance(value, int | float | str | bool)
            if simple and not name.startswith("_") and name != "training":
                state[(path, name)] = value
    return state


def _is_norm(module: nn.Module) -> bool:
    """A parameterised leaf of a decoder layer that is not a linear: a norm (RMSNorm, LayerNorm)."""
    return (
        not isinstance(module, nn.Linear | LoopedLinear)
        and not list(module.children())
        and any(True for _ in module.parameters(recurse=False))
    )


@dataclass
class RecursiveCausalLMOutput(CausalLMOutputWithPast):
    """The family's causal-LM output plus ``loop_logits``: every loop's exit logits (through the
    shared final norm and head), the last being ``logits``. A declared field, so wrappers that
    rebuild outputs from their fields (accelerate's mixed precision, DDP) keep it."""

    loop_logits: tuple[torch.FloatTensor, ...] | None = None


class RecursiveForCausalLM(PreTrainedModel, GenerationMixin):
    """A (relaxed) recursive model around the source family's own causal LM."""

    config_class = RecursiveConfig
    config: RecursiveConfig
    base_model_prefix = "lm"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False  # transformers' output capture (loop exits) sets a ContextVar
    supports_gradient_checkpointing = True

    def __init__(self, config: RecursiveConfig) -> None:
        super().__init__(config)
        text = config.text_config
        self.family: Family = family_of(text.model_type)
        depth, k = config.depth, config.num_shared_layers
        text.num_hidden_layers = k  # build only the K shared layers
        try:
            self.lm = MODEL_FOR_CAUSAL_LM_MAPPING[type(text)](text)
        finally:
            text.num_hidden_layers = depth
        shared = list(self.lm.get_submodule(self.family.layers))
        for layer in shared:
            check_layer(self.family, layer)
            self._loop_layer(layer)

        states = [_position_state(type(shared[0]), text, p) for p in range(depth)]
        looped = [
            path
            for path, m in shared[0].named_modules()
            if isinstance(m, LoopedLinear | LoopedNorm)
        ]
        overrides: list[dict[str, dict[str, Any]]] = []
        for p in range(depth):
            # What differs between the positions sharing this layer is fixed on each one's view.
            varying = {
                key
                for q in range(p % k, depth, k)
                for key in states[q]
                if states[q][key] != states[p][key]
            }
            own: dict[str, dict[str, Any]] = {path: {"loop": p // k} for path in looped}
            for path, name in sorted(varying):
                own.setdefault(path, {})[name] = states[p][(path, name)]
            overrides.append(own)
        self.lm.set_submodule(self.family.layers, LoopedLayers(shared, overrides))
        self.post_init()

    def _loop_layer(self, layer: nn.Module) -> None:
        """Swap a fresh shared layer's linears (and, with relax_vectors, norms) for looped ones."""
        cfg = self.config
        for name in self.family.linears:
            old: nn.Linear = layer.get_submodule(name)
            new = LoopedLinear(
                old.in_features,
                old.out_features,
                cfg.num_loops,
                cfg.lora_rank[self.family.kind(name)],
                bias=old.bias is not None,
                loop_bias=cfg.relax_vectors,
                device=old.weight.device,
                dtype=old.weight.dtype,
            )
            with torch.no_grad():
                new.weight.copy_(old.weight)
                if old.bias is not None:
                    new.bias.copy_(old.bias.expand_as(new.bias))
            new._is_hf_initialized = True
            layer.set_submodule(name, new)
        if cfg.relax_vectors:
            norms = [n for n, m in layer.named_modules() if _is_norm(m)]
            for name in norms:
                old = layer.get_submodule(name)
                copies = [old] + [copy.deepcopy(old) for _ in range(cfg.num_loops - 1)]
                looped = LoopedNorm(copies, heads_first=name in self.family.heads_first_norms)
                looped._is_hf_initialized = True
                layer.set_submodule(name, looped)

    # --- the loop -----------------------------------------------------------------------------

    @property
    def looped_layers(self) -> LoopedLayers:
        return self.lm.get_submodule(self.family.layers)

    @property
    def num_loops(self) -> int:
        return self.config.num_loops

    def exiting_after(self, loop: int | None) -> RecursiveForCausalLM:
        """This model (the same modules and parameters; ``self`` is unchanged) with every forward
        exiting after ``loop`` unless its ``exit_loop`` argument says otherwise (paper sec. 3.7):
        for callers that call ``model(input_ids)`` themselves, such as lm-eval's ``HFLM``. The
        exit is the copy's config's ``exit_loop``, fixed here as its attention implementation is.
        """
        check_exit_loop(loop, self.num_loops)
        model = copy.copy(self)  # a shallow copy: the modules (and so parameters) are shared
        model.config = copy.copy(self.config)
        model.config.exit_loop = loop
        return model

    def _set_gradient_checkpointing(self, *args: Any, **kwargs: Any) -> None:
        super()._set_gradient_checkpointing(*args, **kwargs)
        self.looped_layers.refresh()  # the position views checkpoint as their shared layers do

    def position_parameters(self, position: int) -> dict[str, torch.Tensor]:
        """Views of the parameters virtual position ``position`` runs with, LoRA excluded, named
        as in a source decoder layer (``self_attn.q_proj.weight``, ``input_layernorm.weight``).

        Writing into a view writes the model: matrices are shared by the B positions of a layer,
        norms and biases too unless ``relax_vectors`` gave each loop its own.
        """
        k = self.config.num_shared_layers
        layer, loop = self.looped_layers[position % k], position // k
        out: dict[str, torch.Tensor] = {}
        looped_norms: list[str] = []
        for path, module in layer.named_modules():
            if any(path.startswith(f"{norm}.") for norm in looped_norms):
                continue  # a loop's copy inside a LoopedNorm, handled with it
            if isinstance(module, LoopedLinear):
                out[f"{path}.weight"] = module.weight
                if module.bias is not None:
                    out[f"{path}.bias"] = module.bias[loop] if module.loop_bias else module.bias
            elif isinstance(module, LoopedNorm):
                looped_norms.append(path)
                for name, param in module.loops[loop].named_parameters():
                    out[f"{path}.{name}"] = param
            elif _is_norm(module):
                for name, param in module.named_parameters(recurse=False):
                    out[f"{path}.{name}"] = param
        return out

    def lora(self, position: int, linear: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Views (A [r, in], B [out, r]) of position ``position``'s LoRA on ``linear``, or None."""
        k = self.config.num_shared_layers
        module: LoopedLinear = self.looped_layers[position % k].get_submodule(linear)
        if not module.rank:
            return None
        loop = position // k
        return module.lora_A[loop], module.lora_B[loop]

    def exit_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of an exit: the shared final norm and head (and the family's softcapping)."""
        logits = self.get_output_embeddings()(self.lm.get_submodule(self.family.final_norm)(hidden))
        cap = getattr(self.config.text_config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def loop_logits(self, input_ids: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        """Logits of every loop's exit in one forward pass, the last being the full-depth logits.

        Early-exit training (paper sec. 3.7) puts a loss on each of them. Training code calls
        ``model(..., return_loop_logits=True)`` instead, so that a DDP wrapper's forward runs.
        """
        return self(input_ids, use_cache=False, return_loop_logits=True, **kwargs).loop_logits

    # --- transformers plumbing ----------------------------------------------------------------

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.save_pretrained`` plus the remote-code shim and its ``auto_map``."""
        self.config.auto_map = dict(AUTO_MAP)
        out = super().save_pretrained(save_directory, *args, **kwargs)
        (Path(save_directory) / REMOTE_CODE_FILE).write_text(REMOTE_CODE)
        return out

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.lm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.lm.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.lm.get_decoder()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_loop_logits: bool = False,
        return_dict: bool | None = None,
        exit_loop: int | None = None,
        **kwargs: Any,
    ) -> RecursiveCausalLMOutput | tuple:
        """The family's forward over the looped layers. ``return_loop_logits`` adds
        ``loop_logits``: every loop's exit logits, the last being ``logits``. ``exit_loop`` b
        runs only the first b loops, then the final norm and head, as if every token exited
        after loop b (paper sec. 3.7); None takes ``config.exit_loop`` (None: full depth).

        The hidden states leaving each loop come from transformers' own output capture, asked
        for only the B - 1 intermediate exits (``output_hidden_states`` as indices).
        """
        exit_loop = self.config.exit_loop if exit_loop is None else exit_loop
        check_exit_loop(exit_loop, self.num_loops)
        loops = exit_loop or self.num_loops
        if loops < self.num_loops:  # the position views past it skip themselves (PositionView)
            kwargs["exit_loop"] = loops
        k = self.config.num_shared_layers
        asked = kwargs.get("output_hidden_states")
        if return_loop_logits and not asked:
            kwargs["output_hidden_states"] = [loop * k for loop in range(1, loops)] or False
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            return_dict=True,
            **kwargs,
        )
        exits = None
        if return_loop_logits:
            keep = (
                slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            )
            hidden = out.hidden_states or ()
            exits = tuple(
                self.exit_logits(hidden[loop * k][:, keep]) for loop in range(1, loops)
            ) + (out.logits,)
        output = RecursiveCausalLMOutput(
            loss=out.loss,
            logits=out.logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states if asked else None,
            attentions=out.attentions,
            loop_logits=exits,
        )
        use_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if use_dict else output.to_tuple()


# Importing this module registers the recursive model with transformers' Auto classes, so a saved
# model loads with ``AutoModelForCausalLM.from_pretrained``.
AutoConfig.register(RecursiveConfig.model_type, RecursiveConfig, exist_ok=True)
AutoModelForCausalLM.register(RecursiveConfig, RecursiveForCausalLM, exist_ok=True)
