"""The Relaxed Recursive Transformer as a ``transformers`` model (paper sec. 2.2-2.4).

K shared decoder layers of the source family are looped B times in CYCLE order: virtual position
l (0-based, l < N = K * B) runs shared layer l mod K in loop l // K. Every linear of a shared layer
carries one LoRA per loop (its B virtual positions), so position l computes W' x + B_l A_l x.

The family's own ``*ForCausalLM`` (embeddings, masks, rotary, final norm, head, softcapping) runs
unchanged around the loop: its decoder-layer list is a :class:`LoopedLayers`, which holds the K
shared layers as parameters but presents the N virtual positions to the family's forward. Each
virtual position sets the shared layer's position-dependent state before it runs: the attention's
``layer_idx`` (so the KV cache is keyed by virtual depth, never by the shared layer), sliding
window and layer type, and the loop index that picks the LoRA.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from rrt.families import Family, check_layer, family_of

LORA_KINDS = ("attention", "mlp")

# Written beside every saved model so that `from_pretrained(path, trust_remote_code=True)` finds
# the classes in a Python that has not imported rrt (rrt must still be installed there).
REMOTE_CODE_FILE = "modeling_rrt.py"
REMOTE_CODE = '''"""Loads a Relaxed Recursive Transformer saved by rrt (needs rrt installed)."""

from rrt.modeling import RecursiveConfig, RecursiveForCausalLM

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


class LoopedLinear(nn.Module):
    """A shared linear with one LoRA per loop: y = W' x + b + B_j A_j x (eq. 4), scaling 1.

    ``loop`` selects j; the virtual position sets it before each call. The LoRA is stacked over
    loops (lora_A: [B, r, in], lora_B: [B, out, r]) so the B adapters of a linear live together.
    """

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
        self.loop = 0
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        j = self.loop
        bias = self.bias[j] if self.loop_bias else self.bias
        y = F.linear(x, self.weight, bias)
        if self.rank:
            y = y + F.linear(F.linear(x, self.lora_A[j]), self.lora_B[j])
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"loops={self.num_loops}, rank={self.rank}, bias={self.bias is not None}"
        )


class LoopedNorm(nn.Module):
    """One copy of a norm per loop (only with ``relax_vectors``); ``loop`` selects the copy."""

    def __init__(self, norms: list[nn.Module]) -> None:
        super().__init__()
        self.loops = nn.ModuleList(norms)
        self.loop = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.loops[self.loop](*args, **kwargs)


class VirtualLayer:
    """Virtual position l of the loop: shared layer l mod K in loop l // K.

    Not an ``nn.Module``: it owns no parameters, it only sets the shared layer's
    position-dependent state and calls it.
    """

    def __init__(
        self,
        layer: nn.Module,
        loop: int,
        state: list[tuple[nn.Module, str, Any]],
        looped: list[nn.Module],
    ) -> None:
        self.layer, self.loop, self.state, self.looped = layer, loop, state, looped
        self.own = {name: value for module, name, value in state if module is layer}
        self.sink: list[torch.Tensor] | None = (
            None  # set on a loop's last position to record its exit
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for module, name, value in self.state:
            setattr(module, name, value)
        for module in self.looped:
            module.loop = self.loop
        out = self.layer(*args, **kwargs)
        if self.sink is not None:
            self.sink.append(out)
        return out

    def __getattr__(self, name: str) -> Any:
        # The family's forward may read e.g. `decoder_layer.attention_type` before calling.
        own = self.__dict__.get("own", {})
        return own[name] if name in own else getattr(self.layer, name)


class LoopedLayers(nn.ModuleList):
    """K shared decoder layers, seen by the family's forward as N = K * B virtual layers.

    Registered children (and so the state dict) are the K shared layers; iteration and slicing
    yield the virtual positions in CYCLE order, truncated to ``exit_loop`` loops when set.
    """

    def __init__(self, layers: list[nn.Module], positions: list[VirtualLayer]) -> None:
        super().__init__(layers)
        self.positions = positions
        self.exit_loop: int | None = None

    def virtual(self) -> list[VirtualLayer]:
        if self.exit_loop is None:
            return self.positions
        return self.positions[: self.exit_loop * len(self)]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.virtual())

    def __getitem__(self, idx: int | slice) -> Any:
        if isinstance(idx, slice):
            return self.virtual()[idx]
        return super().__getitem__(idx)

    @contextmanager
    def recording(self, sink: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
        """Append the hidden state leaving each loop to ``sink`` while the block is active."""
        ends = self.positions[len(self) - 1 :: len(self)]
        for position in ends:
            position.sink = sink
        try:
            yield sink
        finally:
            for position in ends:
                position.sink = None

    def extra_repr(self) -> str:
        return f"{len(self)} shared layers x {len(self.positions) // len(self)} loops"

    def __repr__(self) -> str:
        return nn.Module.__repr__(self)  # the shared layers, not the virtual positions


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
    _can_compile_fullgraph = False
    # Checkpoint recomputation would run after later positions changed the shared layer's state.
    supports_gradient_checkpointing = False

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
        positions = []
        for p in range(depth):
            layer = shared[p % k]
            # Attributes that differ between the positions sharing this layer are set per call.
            keys = {
                key
                for q in range(p % k, depth, k)
                for key in states[q]
                if states[q][key] != states[p][key]
            }
            state = [
                (layer.get_submodule(path), name, states[p][(path, name)])
                for path, name in sorted(keys)
            ]
            looped = [m for m in layer.modules() if isinstance(m, LoopedLinear | LoopedNorm)]
            positions.append(VirtualLayer(layer, p // k, state, looped))
        self.lm.set_submodule(self.family.layers, LoopedLayers(shared, positions))
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
                looped = LoopedNorm(copies)
                looped._is_hf_initialized = True
                layer.set_submodule(name, looped)

    # --- the loop -----------------------------------------------------------------------------

    @property
    def looped_layers(self) -> LoopedLayers:
        return self.lm.get_submodule(self.family.layers)

    @property
    def num_loops(self) -> int:
        return self.config.num_loops

    def set_exit_loop(self, loop: int | None) -> None:
        """Run only the first ``loop`` loops, then the final norm and head (None: full depth).

        Evaluates the model as if every token exited after that loop (paper sec. 3.7).
        """
        if loop is not None and not 1 <= loop <= self.num_loops:
            raise ValueError(f"exit loop {loop} must be in 1..{self.num_loops} (or None)")
        self.looped_layers.exit_loop = loop

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

    def loop_logits(self, input_ids: torch.Tensor, **kwargs: Any) -> list[torch.Tensor]:
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
        **kwargs: Any,
    ) -> Any:
        """The family's forward over the looped layers. ``return_loop_logits`` adds
        ``loop_logits``: every loop's exit logits, the last being ``logits``."""
        hidden: list[torch.Tensor] = []
        with self.looped_layers.recording(hidden) if return_loop_logits else nullcontext():
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        if return_loop_logits:
            out.loop_logits = [self.exit_logits(h) for h in hidden[:-1]] + [out.logits]
        return out
