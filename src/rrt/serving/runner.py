"""The model runner: one step of the shared block over a flat batch of works (it computes only).

The family's own decoder layers run unchanged, as position views of the recursive model (one loop
for every row) or as :meth:`~rrt.model.modeling.LoopedLayers.at_loops` views whose rows carry
their own loops (depth-wise batching, each row with its loop's LoRA). Attention goes through
transformers' attention interface to :func:`engine_attention`, which keeps keys and values in
the engine's :class:`~rrt.serving.cache.KVCache` at each row's virtual depth and attends each
token to its own request's entries; the step's layout reaches it as a call argument
(``rrt_batch``), never as state on a module. The runner picks that attention once, when it is
built: it runs its own views of the layers, whose attention modules hold a copy of the model's
config naming it, so the model itself (and ``generate``) keeps its own attention.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import types
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel

from rrt.errors import UserError
from rrt.model.families import family_of
from rrt.model.modeling import LoopSpans, RecursiveForCausalLM, module_view
from rrt.serving.cache import KVCache
from rrt.serving.request import Work

ATTENTION = "rrt_engine"
Rotary = tuple[torch.Tensor, torch.Tensor]  # cos and sin, [1, tokens, head_dim] each

# Source families whose greedy output through the engine is tested to equal `generate`'s.
SERVED = ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gpt_neox")


@dataclass
class Decode:
    """One-token works at one depth, at least half the slots: attended over every slot's keys
    at that depth (a view of the cache, no gather); slots not in the group attend only their
    first key, unused. Fewer rows are gathered with the chunks instead."""

    depth0: int  # virtual depth at the layer offset 0
    tokens: torch.Tensor  # [works] indices into the batch
    slots: torch.Tensor  # [works]
    query_pos: torch.Tensor  # [cache slots] each slot's query position (0 where unused)
    length: int  # keys read: the longest work's end


@dataclass
class Chunks:
    """Works (prompt chunks, and one-token works too few for a :class:`Decode`), padded to
    ``width`` queries; their keys are gathered per work."""

    tokens: torch.Tensor  # [works * width] indices into the batch (padding repeats token 0)
    valid: torch.Tensor  # [works * width] bool
    depth0: torch.Tensor  # [works] virtual depth at the layer offset 0
    slots: torch.Tensor  # [works]
    query_pos: torch.Tensor  # [works, width] position of each query
    length: int
    width: int


BUCKETS = (1, 4, 8, 16, 32, 64)
# The most rows the prompt chunks' graph takes (a step with more runs eager): a dynamic size needs
# a bound, and torch 2.13's guards on this graph admitted no more than 4096.
MAX_ROWS = 4096


def round_up(n: int, multiple: int = 64) -> int:
    """``n`` rounded up to a multiple of ``multiple``: the rows of a step past the last
    :data:`BUCKETS`, and on a GPU a prompt chunk's rows and a step's key length (CUDA graphs
    record one graph for each size they see, so sizes must be few)."""
    return -(-n // multiple) * multiple


def bucket(rows: int) -> int:
    """The row count a compiled step pads ``rows`` to: 1, 4, 8, 16, 32, 64, then a multiple of
    64. Few shapes, so few graphs to compile: x4 where a step is bound by reading the weights
    (a padding row is nearly free there), x2 above, where rows cost compute (the embedded
    model at 32 rows, padded to 64, ran slower compiled than eager)."""
    return next((b for b in BUCKETS if rows <= b), round_up(rows))


def chunk_rows(tokens: int, device: torch.device) -> int:
    """The rows a compiled prompt-chunk step of ``tokens`` tokens runs: as many on a CPU (the
    graph's rows are a dynamic size); on a GPU rounded up to a multiple of 64 (at most
    :data:`MAX_ROWS`), as CUDA graphs record one graph for each size they see."""
    return min(round_up(tokens), MAX_ROWS) if device.type == "cuda" else tokens


@dataclass
class Static:
    """The layout of a compiled graph's step: ``rows`` one-query rows (a :func:`bucket`), the
    padding ones at the cache's spare slot, position 0, loop 0; or a prompt chunk step's tokens,
    a row each (their number a dynamic size, :func:`chunk_rows`), which attend one another's
    keys through the cache as they are written first. Each row's
    first ``len(key_pos)`` keys are gathered at its depth and attended, masked: the step's
    longest row's, a length the graph takes as a dynamic size (:meth:`Runner._graph_of`), so
    one graph serves every length and reads no more keys than the step needs, and only the
    rows' own slots, however many the cache has. ``depth`` is the depth of every row at the
    layer offset 0 (sequence-wise: one loop of every row), or None (depth-wise: ``depth0``).
    ``key_pos`` is None in state propagation's step, which writes keys and reads none."""

    cache: KVCache
    key_pos: torch.Tensor | None  # [length] 0 .. length - 1
    pos: torch.Tensor  # [rows]
    depth0: torch.Tensor  # [rows] virtual depth at the layer offset 0
    slots: torch.Tensor  # [rows]
    depth: int | None  # sequence-wise: the depth at the layer offset 0 (the pass adds its own)


class Batch:
    """The layout of one step: where each token's keys go and which keys each token reads.

    A token of a work at loop j, run at layer offset d (the shared layer's index, plus loop * K
    when the pass runs one loop for every row), sits at virtual depth j * K + d.
    """

    def __init__(self, works: list[Work], cache: KVCache, shared: int, sequence: bool, device):
        self.cache = cache
        self.depth = 0 if sequence else None  # sequence-wise: every token at one depth a layer
        as_long = dict(dtype=torch.long, device=device)
        pos, depth0, slots, starts = [], [], [], []
        for w in works:
            starts.append(len(pos))
            d0 = 0 if sequence else w.loop * shared
            pos.extend(range(w.start, w.start + w.n))
            depth0.extend([d0] * w.n)
            slots.extend([w.request.slot] * w.n)
        self.pos = torch.tensor(pos, **as_long)
        self.depth0 = torch.tensor(depth0, **as_long)
        self.slots = torch.tensor(slots, **as_long)
        self.groups: list[Decode | Chunks] = []
        decode: dict[int, list[int]] = {}
        for i, w in enumerate(works):
            if w.n == 1:
                decode.setdefault(depth0[starts[i]], []).append(i)
        gathered = []
        for d0, members in decode.items():
            if 2 * len(members) < cache.slots:  # few rows at this depth: gather theirs
                gathered += members
                continue
            query_pos = [0] * cache.slots
            for i in members:
                query_pos[works[i].request.slot] = works[i].start
            self.groups.append(
                Decode(
                    depth0=d0,
                    tokens=torch.tensor([starts[i] for i in members], **as_long),
                    slots=torch.tensor([works[i].request.slot for i in members], **as_long),
                    query_pos=torch.tensor(query_pos, **as_long),
                    length=max(works[i].start + 1 for i in members),
                )
            )
        chunks = gathered + [i for i, w in enumerate(works) if w.n > 1]
        if chunks:
            self.groups.append(self._chunks(works, chunks, starts, depth0, as_long))

    @staticmethod
    def _chunks(works, members, starts, depth0, as_long) -> Chunks:
        width = max(works[i].n for i in members)
        tokens, valid, query_pos = [], [], []
        for i in members:
            w, at = works[i], starts[i]
            tokens += list(range(at, at + w.n)) + [at] * (width - w.n)
            valid += [True] * w.n + [False] * (width - w.n)
            query_pos.append([w.start + t for t in range(w.n)] + [w.start] * (width - w.n))
        return Chunks(
            tokens=torch.tensor(tokens, **as_long),
            valid=torch.tensor(valid, dtype=torch.bool, device=as_long["device"]),
            depth0=torch.tensor([depth0[starts[i]] for i in members], **as_long),
            slots=torch.tensor([works[i].request.slot for i in members], **as_long),
            query_pos=torch.tensor(query_pos, **as_long),
            length=max(works[i].start + works[i].n for i in members),
            width=width,
        )


@dataclass
class LayerCall:
    """What :func:`engine_attention` needs besides the layer's own tensors."""

    batch: Batch | Static
    offset: int  # the layer offset d of this call
    windows: torch.Tensor | None  # [depth] sliding window per virtual depth (0: none)
    keys_only: bool = False  # store keys and values, attend nothing (state propagation)


def engine_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    rrt_batch: LayerCall | None = None,
    **_: object,
) -> tuple[torch.Tensor, None]:
    """Store the step's new keys and values at each token's virtual depth, then attend each token
    to its own request's entries there (causal, and within the depth's sliding window).

    ``query`` is [1, heads, tokens, head_dim], ``key``/``value`` [1, kv_heads, tokens, head_dim];
    returns [1, tokens, heads, head_dim] as transformers' attention functions do.
    """
    if rrt_batch is None:
        raise RuntimeError("the rrt_engine attention runs inside rrt.serving only")
    call = rrt_batch
    batch, cache = call.batch, call.batch.cache
    cache.write(
        batch.depth0 + call.offset,
        batch.slots,
        batch.pos,
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
    )
    heads, head_dim = query.shape[1], query.shape[3]
    if call.keys_only:
        return query.new_zeros(1, query.shape[2], heads, head_dim), None
    if isinstance(batch, Static):
        return _static_attention(call, query[0], scaling, softcap).unsqueeze(0), None
    out = query.new_empty(query.shape[2], heads, head_dim)
    q_all = query[0]
    for g in batch.groups:
        key_pos = torch.arange(g.length, device=q_all.device)
        if isinstance(g, Decode):
            depth = g.depth0 + call.offset
            keys, values = cache.at_depth(depth, g.length)
            q = q_all.new_zeros(cache.slots, heads, 1, head_dim)
            q[g.slots] = q_all[:, g.tokens].transpose(0, 1).unsqueeze(2)
            query_pos = g.query_pos[:, None]  # [slots, 1]
            window = call.windows[depth][None] if call.windows is not None else None
        else:
            keys, values = cache.gather(g.depth0 + call.offset, g.slots, g.length)
            works = g.slots.shape[0]
            q = q_all[:, g.tokens].view(heads, works, g.width, head_dim).transpose(0, 1)
            query_pos = g.query_pos
            window = call.windows[g.depth0 + call.offset] if call.windows is not None else None
        allowed = key_pos <= query_pos[:, :, None]
        if window is not None:  # 0: no window
            lower = torch.where(window[:, None] > 0, query_pos - window[:, None], -1)
            allowed = allowed & (key_pos > lower[:, :, None])
        if isinstance(g, Chunks) and g.width > 1:  # padded queries attend the first key
            allowed = allowed | (~g.valid.view(works, g.width)[:, :, None] & (key_pos == 0))
        o = _attend(q, keys, values, allowed[:, None], scaling, softcap)
        if isinstance(g, Decode):
            out[g.tokens] = o[g.slots, :, 0]
        else:
            o = o.transpose(1, 2).reshape(works * g.width, heads, head_dim)
            out[g.tokens[g.valid]] = o[g.valid]
    return out.unsqueeze(0), None


def _static_attention(call: LayerCall, q_all: torch.Tensor, scaling, softcap) -> torch.Tensor:
    """Attention of a :class:`Static` step: [heads, rows, head_dim] queries, one each row;
    returns [rows, heads, head_dim]."""
    batch, cache = call.batch, call.batch.cache
    q = q_all.transpose(0, 1).unsqueeze(2)  # [rows, heads, 1, head_dim]
    key_pos = batch.key_pos
    length = key_pos.shape[0]
    # each row's depth: one for all of them sequence-wise
    depths = (batch.depth if batch.depth is not None else batch.depth0) + call.offset
    keys, values = cache.gather(depths, batch.slots, length)
    window = call.windows[depths] if call.windows is not None else None
    allowed = key_pos <= batch.pos[:, None]  # [rows, keys]
    if window is not None:  # 0: no window
        lower = torch.where(window > 0, batch.pos - window, -1)
        allowed = allowed & (key_pos > lower[..., None])
    return _attend_one(q, keys, values, allowed, scaling, softcap)


def _attend_one(q, keys, values, allowed, scaling, softcap) -> torch.Tensor:
    """Attention of one query a row, for the compiled step: ``q`` [n, heads, 1, head_dim],
    ``keys``/``values`` [n, kv_heads, length, head_dim], ``allowed`` [n, length]; returns
    [n, heads, head_dim]. Products summed over a dimension, which Inductor turns into fused
    reductions, rather than :func:`_attend`'s matmuls, each a GEMM for ``max_autotune`` to time
    and compile: the README's SmolLM2 benchmark at batch 4 compiled in a quarter less time
    (fp32 and bf16), its (c) steps 1.1x as fast."""
    n, heads, _, head_dim = q.shape
    kv_heads = keys.shape[1]
    q = q.view(n, kv_heads, heads // kv_heads, 1, head_dim)
    scores = (q * keys[:, :, None]).sum(-1, dtype=torch.float32) * scaling
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed[:, None, None], float("-inf"))
    probs = torch.softmax(scores, -1)  # [n, kv_heads, groups, length]
    out = (probs[..., None] * values[:, :, None].float()).sum(-2)
    return out.to(q.dtype).view(n, heads, head_dim)


def _attend(q, keys, values, mask, scaling, softcap) -> torch.Tensor:
    """Scaled dot-product attention with grouped-query heads, and Gemma 2's logit softcapping.

    ``q`` is [n, heads, width, head_dim], ``keys``/``values`` [n, kv_heads, length, head_dim],
    ``mask`` [n, 1, width, length]. Each KV head's query heads are one matmul over its keys (no
    copy of the cache per query head), the softmax in fp32. Written out rather than through
    ``F.scaled_dot_product_attention``: Inductor fuses it, where the CPU's SDPA kernel took half
    of a compiled bf16 decode step of SmolLM2 at 16 rows (one query a row over 96 keys; 24 steps
    took 2.18 s with it, 1.29 s written out).
    """
    n, heads, width, head_dim = q.shape
    kv_heads, length = keys.shape[1], keys.shape[2]
    groups = heads // kv_heads
    q = q.reshape(n, kv_heads, groups * width, head_dim)
    scores = torch.matmul(q, keys.transpose(-1, -2)) * scaling
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.view(n, kv_heads, groups, width, length)
    scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs.view(n, kv_heads, groups * width, length), values)
    return out.view(n, heads, width, head_dim)


AttentionInterface.register(ATTENTION, engine_attention)


class Runner:
    """Runs the model's parts for the engine: embeddings, the decoder layers over a batch of
    works, and the exit head (shared final norm and head, with the family's softcapping)."""

    def __init__(self, model: PreTrainedModel) -> None:
        recursive = isinstance(model, RecursiveForCausalLM)
        self.lm = model.lm if recursive else model
        text = self.lm.config
        if text.model_type not in SERVED:
            raise UserError(
                f"the engine cannot serve model_type {text.model_type!r}; it serves "
                f"{', '.join(SERVED)}"
            )
        self.family = family_of(text.model_type)
        layers = self.lm.get_submodule(self.family.layers)
        self.recursive = recursive
        self.shared = len(layers)
        self.loops = model.num_loops if recursive else 1
        self.depth = self.shared * self.loops
        # The engine's attention, chosen once: the attention blocks of the runner's own views
        # read a copy of the config that names it (transformers looks the function up from
        # ``config._attn_implementation`` at every call), the model's config is left alone.
        config = copy.deepcopy(text)
        config._attn_implementation = ATTENTION
        self.attention_override = {self.family.attention_block: {"config": config}}
        # The views run no forward hooks: transformers installs its output capture on a model's
        # layers the first time hidden states are asked for (as the benchmark's exit calibration
        # does), and its hook reads a ContextVar, which torch.compile cannot trace: the compiled
        # step fell back to a graph a layer.
        own = layers.positions if recursive else list(layers)
        self.positions = [module_view(v, self.attention_override, hooks=False) for v in own]
        self.layers = layers
        self.base = self.lm.get_submodule(self.family.layers.rsplit(".", 1)[0])
        # where and in what the weights are, once: asked of the model (``next(parameters())``)
        # at every step, it took 5% of a compiled decode step of the embedded model
        first = next(self.lm.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.rotary = self.base.rotary_emb
        self.graph_rotary: nn.Module = self.rotary  # a RotaryTable once compiled, where one serves
        typed = "layer_type" in inspect.signature(self.rotary.forward).parameters
        self.layer_types = list(text.layer_types) if typed else None
        windows = [_window(view) for view in self.positions]
        self.windows = (
            torch.tensor([w or 0 for w in windows], device=self.device) if any(windows) else None
        )
        self.final_norm = self.lm.get_submodule(self.family.final_norm)
        self.head = self.lm.get_output_embeddings()
        self.softcap = getattr(text, "final_logit_softcapping", None)
        self.hidden_size = text.hidden_size
        self.kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        self.head_dim = getattr(text, "head_dim", None) or (
            text.hidden_size // text.num_attention_heads
        )
        self.vocab_size = text.vocab_size
        self.context = getattr(text, "max_position_embeddings", None)
        self.compiled = False
        self.fill_rows = 0  # compiled: the bucket state propagation's rows are padded to
        self._loop_ids: dict[str, torch.Tensor] = {}  # of the step graph's views, by name
        # the same code as the compiled step's, eager, over a step's :class:`Batch`
        self.eager = StepGraph(self, self.rotary)

    def embed(self, ids: list[int]) -> torch.Tensor:
        return self.lm.get_input_embeddings()(torch.tensor(ids, device=self.device))

    def compile(self, positions: int, fills: int = 0) -> None:
        """Run every step as a compiled graph from now on (:func:`compile_options`): a decode
        step (every work one token) padded to a row bucket, with its state propagation's rows
        and the exit head in the same graph (:meth:`step`); a step with prompt chunks as one
        graph whose rows are dynamic (a row a token, up to :data:`MAX_ROWS`; more run eager).
        Their rows' positions are below ``positions``. A step's state propagation rows, at most
        ``fills``, are padded to one bucket, that of ``fills``: one graph a row bucket with
        them, not one for each of their buckets too (the embedded model at 4 slots, 2 loops:
        6 graphs, not 9), for a few more rows of keys and values only."""
        options = compile_options(self.device)
        if RotaryTable.serves(self.rotary):
            self.graph_rotary = RotaryTable(
                self.rotary, self.layer_types, positions, self.dtype, self.device
            )
        self._step = StepGraph(self, self.graph_rotary)
        self._graph = torch.compile(own_code(self._step.forward), dynamic=False, **options)
        # Every engine compiles its own graphs, one per row bucket (with fills or not, head or not).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        self.fill_rows = bucket(fills) if fills else 0
        self.compiled = True

    def serving(self) -> contextlib.AbstractContextManager:
        """:func:`compiling`'s settings, to hold over many steps (the engine's whole generation):
        a graph that is new is compiled with them, one compiled before runs without paying for
        them, and each graph call's own :func:`compiling` is then a no-op. Entered at every
        call, they cost a compiled two-linear module 108 microseconds a call against 50 held
        (torch 2.13, this CPU), where a compiled decode step of the embedded model takes about
        1.5 ms."""
        return compiling(self.device, self.dtype) if self.compiled else contextlib.nullcontext()

    @torch.inference_mode()
    def exit_tokens(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's greedy token at an exit after any loop and its confidence (the max
        softmax probability): the shared final norm and head (paper sec. 3.7). Compiled decode
        steps compute it in their graph (:meth:`step`); this runs it eager."""
        return _choice(self.head, self.final_norm, self.softcap, hidden)

    @torch.inference_mode()
    def step(
        self, works: list[Work], fills: list[Work], cache: KVCache, sequence: bool, asks: list[int]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """One engine step: ``works`` through their loops (:meth:`run`), the state propagation
        of ``fills`` (:meth:`propagate`), and the exit head's confidence and token at the rows
        ``asks`` of the hidden states returned (None and None where none is asked).

        Compiled, a decode step (every work one token) is one graph call: its rows, the fills'
        rows and the head over every row (only where a row asks). As graphs of their own, the
        fills' and the head's took 0.57 and 0.27 ms a step beside a 1.79 ms step graph
        (propagating exits on the embedded model, at 11d3f19)."""
        if self.compiled and works and all(w.n == 1 for w in works):
            hidden, choice = self._compiled(works, cache, sequence, fills, bool(asks))
            return (hidden, None, None) if choice is None else (hidden, *(c[asks] for c in choice))
        hidden = self.run(works, cache, sequence) if works else None
        if fills:
            self.propagate(fills, cache)
        if not asks:
            return hidden, None, None
        return hidden, *self.exit_tokens(hidden[asks])

    @torch.inference_mode()
    def run(self, works: list[Work], cache: KVCache, sequence: bool) -> torch.Tensor:
        """Each work's positions through its loop (sequence-wise: through every loop); returns
        the hidden states leaving it, [tokens, hidden_size], in the works' order (depth-wise,
        the works come sorted by loop).

        Depth-wise, one pass runs the K shared layers once over rows at different loops, each
        row with its loop's LoRA.
        """
        tokens = sum(w.n for w in works)  # a decode step (a token a work), or prompt chunks
        if self.compiled and (tokens == len(works) or tokens <= MAX_ROWS):
            return self._compiled(works, cache, sequence)[0]
        h = self._inputs(works)
        batch = Batch(works, cache, self.shared, sequence, self.device)
        k = self.shared
        if sequence:  # every loop in turn, each through its position views
            passes = [(j * k, self.positions[j * k : (j + 1) * k]) for j in range(self.loops)]
        else:
            passes = [(0, self._views(works))]
        for base, views in passes:
            h = self.eager.layers(h, batch, views, base)
        return h[0]

    def _compiled(
        self,
        works: list[Work],
        cache: KVCache,
        sequence: bool,
        fills: Sequence[Work] = (),
        head: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """``works`` through the compiled graphs (:meth:`_graph_of`): a decode step's rows padded
        to a bucket, with ``fills``' state propagation (their rows padded to :attr:`fill_rows`)
        and the exit head where ``head`` asks; prompt chunks' rows a token each. Returns the
        works' hidden states [tokens, hidden_size] and every row's exit choice, or None.

        The graph looks the embeddings of the works at the first loop up itself, from their
        token ids in the layout; the others' hidden states come beside them (none
        sequence-wise). The eager lookup, split and concatenation took 42 of the 80
        microseconds a (c) step spent outside the graph, timed with the graph stubbed out (the
        embedded model at 16 rows); the README gives what the change gained."""
        layout = self._layout(works, sequence)
        tokens = len(layout)
        decode = tokens == len(works)
        rows = bucket(tokens) if decode else chunk_rows(tokens, self.device)
        padded, layout = self._padded(self._carried(works, rows, sequence), layout, rows, cache)
        fill = None
        if fills:
            states = torch.cat([w.hidden.to(self.dtype) for w in fills]).unsqueeze(0)
            at = self.fill_rows if len(fills) <= self.fill_rows else bucket(len(fills))
            fill = self._padded(states, self._layout(fills, False), at, cache)
        length = max(w.start + w.n for w in works)
        out, choice = self._graph_of(
            padded, layout, cache, sequence, length, fill, head, chunk=not decode
        )
        return out[0, :tokens], choice

    def _inputs(self, works: list[Work]) -> torch.Tensor:
        """The works' input hidden states, [1, tokens, hidden_size]: embeddings of the token ids
        of works at the first loop, the previous loop's output for the others."""
        pieces: list[torch.Tensor | None] = [w.hidden for w in works]
        first = [i for i, w in enumerate(works) if w.ids is not None]
        if first:
            embedded = self.embed([t for i in first for t in works[i].ids])
            for i, e in zip(first, embedded.split([works[i].n for i in first]), strict=True):
                pieces[i] = e
        return torch.cat([p.to(self.dtype) for p in pieces]).unsqueeze(0)

    def _carried(self, works: list[Work], rows: int, sequence: bool) -> torch.Tensor | None:
        """The hidden states the works past the first loop bring, at their rows of ``rows``
        [1, rows, hidden] (zeros at the other rows, which the graph embeds); sequence-wise,
        where every work starts at the first loop, None."""
        if sequence:
            return None
        zeros = torch.zeros(rows, self.hidden_size, dtype=self.dtype, device=self.device)
        pieces = [zeros[: w.n] if w.ids is not None else w.hidden.to(self.dtype) for w in works]
        return torch.cat([*pieces, zeros[: rows - sum(w.n for w in works)]]).unsqueeze(0)

    @staticmethod
    def _layout(works: list[Work], sequence: bool) -> list[list[int]]:
        """The rows of ``works`` as a compiled graph takes them, a row a token: its position,
        loop (sequence-wise 0: each call runs one loop of every row), slot and token id (-1 for
        a work whose input is a hidden state)."""
        return [
            [w.start + t, 0 if sequence else w.loop, w.request.slot, w.ids[t] if w.ids else -1]
            for w in works
            for t in range(w.n)
        ]

    def _padded(
        self, h: torch.Tensor | None, layout: list[list[int]], rows: int, cache: KVCache
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Inputs ``h`` [1, tokens or rows, hidden] (or None) and their ``layout`` padded to
        ``rows`` rows, the padding ones at the cache's spare slot, position 0, loop 0, token 0
        (so they write no request's keys); the layout as one tensor [rows, 4] on the device."""
        n = len(layout)
        if h is not None and rows > h.shape[1]:
            padded = h.new_zeros(1, rows, h.shape[2])
            padded[:, :n] = h
            h = padded
        layout = layout + [[0, 0, cache.spare_slot, 0]] * (rows - n)
        return h, torch.tensor(layout, device=self.device)

    def _graph_of(
        self,
        h: torch.Tensor | None,
        layout: torch.Tensor,
        cache: KVCache,
        sequence: bool,
        length: int,
        fill: tuple[torch.Tensor, torch.Tensor] | None = None,
        head: bool = False,
        chunk: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Run the compiled pass on the rows of ``layout`` [rows, 4] (position, loop, slot and
        token id of each row: the graph embeds those whose token id is not -1) with ``h`` [1,
        rows, hidden] at the others (None: no others), attending over the first ``length``
        keys: one call, sequence-wise every loop in turn, depth-wise one pass. Returns the
        hidden states leaving it and, ``head``, every row's exit confidence and token.

        ``fill``: exit hidden states [1, fill rows, hidden] and their layout, whose state
        propagation (:meth:`propagate`) runs in the same call (depth-wise only).

        ``length`` reaches the graph as the size of a tensor marked dynamic (2 to the cache's
        ``max_len``), so each row bucket's graph is compiled once and then reads only the keys
        the step's longest row needs, not the whole cache: at 64 rows of the embedded model,
        attention over all 256 positions was most of a compiled step. On a GPU the length is
        rounded up to a multiple of 64, as CUDA graphs record one graph for each size they see.

        ``chunk``: the rows are a prompt-chunk step's tokens, unpadded, their number a dynamic
        size (one graph for every such step)."""
        pos, loops, slots, ids = layout.unbind(1)
        rows, depth0 = layout.shape[0], loops * self.shared
        if self.device.type == "cuda":
            length = round_up(length)
        key_pos = torch.arange(min(max(length, 2), cache.max_len), device=self.device)
        if cache.max_len > 2:
            torch._dynamo.mark_dynamic(key_pos, 0, min=2, max=cache.max_len)
        if chunk:
            if h is not None:
                torch._dynamo.mark_dynamic(h, 1, min=2, max=MAX_ROWS)
            for t in (ids, pos, depth0, slots):
                torch._dynamo.mark_dynamic(t, 0, min=2, max=MAX_ROWS)
        step = (ids, h, cache, key_pos, pos, depth0, slots)
        with compiling(self.device, self.dtype):
            if not self.recursive:
                return self._graph(*step, ("chunk" if chunk else "all",), 0, True, None, head)
            if not sequence:
                views = self._depthwise_views(loops, chunk)
                if fill is not None:
                    states, (fill_pos, fill_loops, fill_slots, _) = fill[0], fill[1].unbind(1)
                    fill_views = self._depthwise_views(fill_loops, fill=True)
                    depth = fill_loops * self.shared
                    fill = (states, fill_pos, depth, fill_slots, fill_views)
                return self._graph(*step, (views,), 0, False, fill, head)
            every = tuple(self._bucket_views(rows, loop, chunk) for loop in range(self.loops))
            return self._graph(*step, every, 0, True, None, head)

    def _bucket_views(
        self, rows: int, loop: int | None, chunk: bool = False, fill: bool = False
    ) -> str:
        """The name of a row bucket's views of the shared layers in the step graph, built at
        first use. Depth-wise (``loop`` None) their per-row loop ids are a tensor that each
        step's are copied into; sequence-wise, one loop's, its ids all that loop. Per-row loop
        ids even then, so that no LoRA is a slice of the stacked weight: with frozen weights
        and ``max_autotune``, Inductor computed ``F.linear(x, A[1])`` of a stacked parameter
        ``A`` wrong, and ``A[0]`` right (torch 2.13; a test checks the compiled tokens).

        ``chunk``: the prompt chunks' views, one set whatever the rows: their loop ids are
        resized to each step's ``rows``, a dynamic size of the graph. ``fill``: the state
        propagation's, apart from the step's rows' own."""
        name = "chunk" if chunk else f"fill{rows}" if fill else f"{rows}"
        name = name if loop is None else f"{name}/{loop}"
        if name not in self._loop_ids:
            ids = torch.full((1, rows), loop or 0, dtype=torch.long, device=self.device)
            fixed = self.attention_override
            views = [self.layers.at_loops(i, ids, fixed, hooks=False) for i in range(self.shared)]
            self._step.views[name] = nn.ModuleList(views)
            self._loop_ids[name] = ids
        ids = self._loop_ids[name]
        if chunk:
            if ids.shape[1] != rows:
                ids.resize_(1, rows).fill_(loop or 0)
            torch._dynamo.mark_dynamic(ids, 1, min=2, max=MAX_ROWS)
        return name

    def _depthwise_views(self, loops: torch.Tensor, chunk: bool = False, fill: bool = False) -> str:
        """The depth-wise views of the row bucket of ``loops`` [rows] (each row's loop), with
        those loops copied into their loop ids."""
        views = self._bucket_views(loops.shape[0], None, chunk, fill)
        self._loop_ids[views].copy_(loops[None])
        return views

    @torch.inference_mode()
    def warm_up(
        self,
        cache: KVCache,
        rows: int,
        sequence: bool,
        heads: tuple[bool, ...] = (False, True),
    ) -> None:
        """Compile now the graphs of every bucket a decode step of up to ``rows`` rows uses,
        with state propagation's rows (where :meth:`compile` was given fills) and without, with
        the exit head and without as ``heads`` says, and the prompt chunks' (padding rows only:
        they write at the spare slot)."""
        empty = torch.zeros(1, 0, self.hidden_size, dtype=self.dtype, device=self.device)
        filled = [None] + (
            [self._padded(empty, [], self.fill_rows, cache)] if self.fill_rows else []
        )
        inputs = None if sequence else empty  # sequence-wise every row's input is its token id
        for size in _buckets_to(rows):
            h, layout = self._padded(inputs, [], size, cache)
            for fill in filled:
                for head in heads:
                    self._graph_of(h, layout, cache, sequence, cache.max_len, fill, head)
        # the prompt chunks' graph: one, its rows dynamic (this first size is the hint that
        # max_autotune times its matmuls at: a prompt chunk and the decode rows beside it)
        if MAX_ROWS >= 2:
            size = chunk_rows(min(2 * rows + 16, MAX_ROWS), self.device)
            h, layout = self._padded(inputs, [], size, cache)
            self._graph_of(h, layout, cache, sequence, cache.max_len, chunk=True)

    @torch.inference_mode()
    def propagate(self, works: list[Work], cache: KVCache) -> None:
        """CALM's state propagation: the keys and values an exited token owes to the loops it
        skipped come from its exit hidden state, fed to each skipped layer's attention block
        (its norm, key/value projections and rotary) alone; the attention itself, the MLP and
        the residual stream are never computed for it. Compiled, a decode step's run in its
        graph (:meth:`step`); this runs it eager."""
        h = torch.cat([w.hidden.to(self.dtype) for w in works]).unsqueeze(0)
        batch = Batch(works, cache, self.shared, False, self.device)
        self.eager.store(h, batch, self._views(works))

    def _views(self, works: list[Work]) -> list[nn.Module]:
        """The K shared layers for one depth-wise pass over works sorted by loop: one loop's
        position views when every row is at that loop, else views whose rows (grouped by
        :class:`LoopSpans`) each run their own loop's LoRA."""
        k = self.shared
        if len({w.loop for w in works}) == 1:
            j = works[0].loop
            return self.positions[j * k : (j + 1) * k]
        spans = LoopSpans.of([w.loop for w in works for _ in range(w.n)])
        fixed = self.attention_override
        return [self.layers.at_loops(i, spans, fixed, hooks=False) for i in range(k)]


class RotaryTable(nn.Module):
    """The rotary cos and sin of every position below ``positions``, of each layer type,
    computed once by the model's rotary module, for the compiled graphs to gather their rows'
    from. Computed inside a graph, they were computed again for every key of attention's fused
    reduction (Inductor inlines them into the queries it reads there): a compiled decode step of
    the embedded model at 4 rows over 150 keys spent 0.5 of its 1.1 ms in attention."""

    def __init__(
        self,
        rotary: nn.Module,
        layer_types: list[str] | None,
        positions: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        like = torch.zeros(1, dtype=dtype, device=device)  # the rotary's dtype and device
        pos = torch.arange(positions, device=device)[None]
        kinds, self.kinds = layer_kinds(layer_types)
        embs = [rotary(like, pos) if t is None else rotary(like, pos, t) for t in kinds]
        self.register_buffer("cos", torch.stack([cos[0] for cos, _ in embs]))  # [kinds, pos, d]
        self.register_buffer("sin", torch.stack([sin[0] for _, sin in embs]))
        self.register_buffer("kind", torch.tensor(self.kinds, dtype=torch.long, device=device))

    @staticmethod
    def serves(rotary: nn.Module) -> bool:
        """Whether a table can stand for ``rotary``: not where it changes with the longest
        position seen (transformers' dynamic and LongRoPE types)."""
        kinds = getattr(rotary, "rope_type", "default")
        kinds = kinds.values() if isinstance(kinds, dict) else [kinds]
        return not any("dynamic" in k or k == "longrope" for k in kinds)

    def forward(self, layout: Static, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.kinds:
            kind: int | torch.Tensor = 0
        elif layout.depth is not None:  # every row at one depth
            kind = self.kinds[layout.depth + offset]
        else:
            kind = self.kind[layout.depth0 + offset]
        return self.cos[kind, layout.pos].unsqueeze(0), self.sin[kind, layout.pos].unsqueeze(0)


def layer_kinds(layer_types: list[str] | None) -> tuple[list[str | None], list[int]]:
    """The distinct layer types, sorted, and each virtual depth's index into them (``[None]``
    and no indices for a model whose layers share one rotary)."""
    if not layer_types:
        return [None], []
    kinds = sorted(set(layer_types))
    return kinds, [kinds.index(t) for t in layer_types]


def rotary_at(rotary: nn.Module, layer_types, h: torch.Tensor, layout, offset: int):
    """cos/sin at each token's position in ``layout`` (a :class:`Batch` or :class:`Static`), for
    the rotary of each token's layer type at the layer offset ``offset`` (``rotary`` the model's
    module, or a compiled graph's :class:`RotaryTable`). Rows at different depths pick their
    type's by indexing, so no tensor is read on the host (the compiled step stays one graph)."""
    if isinstance(rotary, RotaryTable):
        return rotary(layout, offset)
    pos = layout.pos.unsqueeze(0)
    if layer_types is None:
        return rotary(h, pos)
    if layout.depth is not None:  # every token at one depth
        return rotary(h, pos, layer_types[layout.depth + offset])
    kinds, ids = layer_kinds(layer_types)
    embs = [rotary(h, pos, t) for t in kinds]
    index = torch.tensor(ids, device=h.device)  # of each virtual depth
    pick = index[layout.depth0 + offset]  # [tokens] each token's layer type
    rows = torch.arange(pick.shape[0], device=h.device)
    cos = torch.stack([e[0] for e in embs])[pick, 0, rows]
    sin = torch.stack([e[1] for e in embs])[pick, 0, rows]
    return cos.unsqueeze(0), sin.unsqueeze(0)


class StepGraph(nn.Module):
    """A step laid out as :class:`Static`, what a compiled runner compiles: a
    module whose children are the runner's views of the layers, so that ``torch.compile`` sees
    their weights as a module's parameters and freezes them into the graph.

    ``views`` holds, by name, the K views one call runs: a plain model's layers (``"all"``),
    or views of a recursive model's shared layers whose rows carry their own loops
    (:meth:`Runner._bucket_views`). The eager runner runs the same :meth:`layers` and
    :meth:`store` (``Runner.eager``) over a :class:`Batch` and the views it builds each step."""

    def __init__(self, runner: Runner, rotary: nn.Module) -> None:
        super().__init__()
        self.views = nn.ModuleDict()
        if not runner.recursive:
            self.views["all"] = nn.ModuleList(runner.positions)
            # the same layers under a second name: dynamo guards on the name, so decode steps
            # (4 or 8 rows) never match the prompt chunks' graph, whose rows are dynamic
            self.views["chunk"] = self.views["all"]
        self.rotary = rotary  # the model's, or a RotaryTable
        self.windows, self.layer_types = runner.windows, runner.layer_types
        self.norm, self.block = runner.family.attention_norm, runner.family.attention_block
        self.final_norm, self.head, self.softcap = runner.final_norm, runner.head, runner.softcap
        self.embed = runner.lm.get_input_embeddings()

    def forward(
        self,
        ids: torch.Tensor,
        h: torch.Tensor | None,
        cache: KVCache,
        key_pos: torch.Tensor,
        pos: torch.Tensor,
        depth0: torch.Tensor,
        slots: torch.Tensor,
        views: tuple[str, ...],
        base: int,
        sequence: bool,
        fill: tuple | None = None,
        head: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The rows through each of the views named in ``views`` in turn, at layer offsets
        ``base`` on: sequence-wise each loop of every row (one depth a layer), else one
        depth-wise pass. A row's input is the embedding of its token id in ``ids`` [rows],
        looked up here, or where that is -1 its hidden state in ``h`` [1, rows, hidden] (None:
        no such row). ``fill``: the exit hidden states, positions, depths at offset 0, slots
        and views' name of rows whose state propagation runs first. Returns the hidden states
        and, ``head``, each row's exit confidence and token."""
        embedded = self.embed(ids.clamp(min=0))[None]
        h = embedded if h is None else torch.where((ids >= 0)[None, :, None], embedded, h)
        if fill is not None:
            states, fill_pos, fill_depth0, fill_slots, fill_views = fill
            at = Static(cache, None, fill_pos, fill_depth0, fill_slots, None)
            self.store(states, at, self.views[fill_views])
        layout = Static(cache, key_pos, pos, depth0, slots, 0 if sequence else None)
        for name in views:
            h = self.layers(h, layout, self.views[name], base)
            base += len(self.views[name])
        return h, _choice(self.head, self.final_norm, self.softcap, h[0]) if head else None

    def layers(
        self,
        h: torch.Tensor,
        layout: Batch | Static,
        views: Sequence[nn.Module],
        base: int,
    ) -> torch.Tensor:
        """``h`` through ``views`` (K layers) at layer offsets ``base`` on."""
        rotaries = self._rotaries(h, layout, base, len(views))
        for i, (layer, rotary) in enumerate(zip(views, rotaries, strict=True)):
            out = layer(
                h, position_embeddings=rotary, rrt_batch=LayerCall(layout, base + i, self.windows)
            )
            h = out[0] if isinstance(out, tuple) else out
        return h

    def store(
        self,
        h: torch.Tensor,
        layout: Batch | Static,
        views: Sequence[nn.Module],
    ) -> None:
        """State propagation (:meth:`Runner.propagate`): each of the K shared layers' attention
        block, behind its norm, over the rows' exit hidden states ``h``, storing their keys and
        values. Nothing else reads what it computes, so the compiler drops what the stored
        keys and values do not need (the queries, the output projection)."""
        rotaries = self._rotaries(h, layout, 0, len(views))
        for i, (layer, rotary) in enumerate(zip(views, rotaries, strict=True)):
            layer.get_submodule(self.block)(
                hidden_states=layer.get_submodule(self.norm)(h),
                position_embeddings=rotary,
                attention_mask=None,
                rrt_batch=LayerCall(layout, i, self.windows, keys_only=True),
            )

    def _rotaries(self, h: torch.Tensor, layout: Batch | Static, base: int, n: int) -> list[Rotary]:
        """The rotary cos/sin of ``n`` layers at offsets ``base`` on: one, computed once, where
        the model's layers share it (no ``layer_types``), else each layer's type's."""
        if self.layer_types is None:
            return [rotary_at(self.rotary, None, h, layout, base)] * n
        return [rotary_at(self.rotary, self.layer_types, h, layout, base + i) for i in range(n)]


def _choice(
    head: nn.Module, norm: nn.Module, softcap: float | None, hidden: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exit's confidence and token of each row of ``hidden``."""
    logits = head(norm(hidden)).float()
    logits = torch.tanh(logits / softcap) * softcap if softcap else logits
    confidence, token = torch.softmax(logits, -1).max(-1)
    return confidence, token


def compile_options(device: torch.device) -> dict:
    """``torch.compile``'s arguments for a decoding step, dynamo's guards cut to
    :func:`step_guards`: on a GPU, CUDA graphs (``mode="reduce-overhead"``'s own options, which
    ``torch.compile`` takes in place of the mode, as it takes no mode beside options); on a CPU,
    Inductor's defaults, with the settings of :func:`compiling` in force while it compiles."""
    options: dict = {"guard_filter_fn": step_guards}
    if device.type == "cuda":
        options |= torch._inductor.list_mode_options("reduce-overhead")
    return {"options": options}


def own_code(method: types.MethodType) -> types.MethodType:
    """``method`` with a code object of its own. Dynamo keeps the graphs it compiles from a
    function, and their guards, on the function's code object, so one engine's steps never look
    up another engine's graphs: :func:`step_guards` keeps too few guards to tell them apart. With
    weights that are not frozen (a GPU's steps), a Gemma 2 engine built after a Llama one in the
    same process otherwise checked the Llama engine's guards against its own modules and failed
    with ``KeyError: 'weight'``."""
    fn = method.__func__
    own = types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    own.__kwdefaults__, own.__qualname__ = fn.__kwdefaults__, fn.__qualname__
    return types.MethodType(own, method.__self__)


def step_guards(entries: list) -> list[bool]:
    """The dynamo guards a compiled step keeps: every guard but those on its modules'
    attributes, of which only identity (``ID_MATCH``) stays. Checking them picks one of the many
    graphs compiled from :meth:`StepGraph.forward` at every call, but the engine changes no
    module once it serves (and each engine's graphs are its own: :func:`own_code`). The
    embedded source's compiled (c) step at 4 rows: 1,383 of its 1,519 guards were on modules,
    and the lookup took 26 instead of 68 us of a 0.37 against 0.52 ms step (one run,
    torch.profiler)."""
    return [
        not entry.orig_guard.source.is_unspecialized_nn_module() or entry.guard_type == "ID_MATCH"
        for entry in entries
    ]


def compiling(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Inductor's settings for a CPU decoding step, to hold while its graphs are compiled (they
    are read then, not from ``torch.compile``'s options): the weights frozen into the graph
    (packed for oneDNN), and ``max_autotune``, which picks for each matmul shape between
    oneDNN and Inductor's own C++ GEMM. At a few rows a step that halves a matmul's time
    against eager (measured in the README). In bf16 (any dtype but fp32) it picks among
    oneDNN's kernels only: ``max_autotune`` times each candidate alone, its weights in the
    CPU's caches, where Inductor's bf16 GEMM wins, but a step reads every layer's weights from
    memory, where oneDNN's are faster: SmolLM2-135M's compiled bf16 decode step at 1 and 4 rows
    took 14.8 and 17.3 ms against 26.6 and 27.5, compiled in 170 against 295 s (one run,
    ``scripts/gemm_choice.py``). In fp32 Inductor's GEMM is kept: there it was the faster.
    A null context where they are in force already (:meth:`Runner.serving` holds them)."""
    config, settings = torch._inductor.config, cpu_settings(dtype)
    if device.type == "cuda" or all(getattr(config, k) == v for k, v in settings.items()):
        return contextlib.nullcontext()
    return config.patch(**settings)


def cpu_settings(dtype: torch.dtype) -> dict:
    """The Inductor settings :func:`compiling` holds for a CPU step in ``dtype``."""
    settings: dict = {"freezing": True, "max_autotune": True}
    if dtype != torch.float32:
        settings["max_autotune_gemm_backends"] = "ATEN"
    return settings


def _buckets_to(rows: int) -> list[int]:
    """Every row bucket a step of 1 to ``rows`` rows can use (none for 0)."""
    return [b for b in BUCKETS if b < bucket(rows)] + [bucket(rows)] if rows else []


def _window(layer: nn.Module) -> int | None:
    """The sliding window of a decoder layer's attention (None: global attention)."""
    for module in layer.modules():
        if hasattr(module, "sliding_window") and hasattr(module, "scaling"):
            return module.sliding_window
    return None
