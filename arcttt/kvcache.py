"""A key/value cache with room reserved ahead, for the search and the scoring.

transformers' ``DynamicCache`` concatenates every new token onto its tensors (``torch.cat``: each
decode step copies the whole cache of every layer) and crops by slicing. :class:`SlabCache` keeps
each layer's keys and values in a buffer with room for more positions: an update writes the new
positions in place, a crop only moves the length, and the attention layers see views of the first
``length`` positions -- the same shapes and values as a ``DynamicCache`` holding the same tokens, so
the logits are the same. When the room runs out the buffer grows once by a reserve that doubles.

The model's attention layers call ``cache.update(keys, values, layer_idx)`` and the mask code reads
``get_seq_length`` / ``get_mask_sizes``; both are ``DynamicLayer``'s (the layer subclasses it and
keeps ``keys``/``values`` as those views), so any model that takes a ``DynamicCache`` of full
attention layers takes this one. Models with sliding-window layers get their own cache instead
(:func:`new_cache` returns None for them), and so do backends that convert caches to tuples of
their own (unsloth's GPU path): the search and scoring work with either.

Writes go into shared memory: a crop followed by an update overwrites the cropped positions, so
nothing may keep a view of a cache's tensors across calls (the search and scoring do not).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from transformers.cache_utils import Cache, DynamicLayer

RESERVE = 256
"""Positions of room added past what a layer needs, at first and whenever it grows (then doubled)."""


class SlabLayer(DynamicLayer):
    """One layer's keys and values in buffers ``[batch, heads, capacity, head_dim]``; ``keys`` and
    ``values`` are views of their first ``length`` positions."""

    def __init__(self, reserve: int = RESERVE):
        super().__init__()
        self.reserve = reserve
        self.key_buf: torch.Tensor | None = None
        self.value_buf: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        return 0 if self.key_buf is None else self.key_buf.shape[-2]

    def _set_length(self, n: int) -> None:
        self.keys, self.values = self.key_buf[..., :n, :], self.value_buf[..., :n, :]

    def _make_room(self, needed: int, like_k: torch.Tensor, like_v: torch.Tensor) -> None:
        if needed <= self.capacity:
            return
        n, cap = self.get_seq_length(), needed + self.reserve
        rows, heads = like_k.shape[:2]
        key_buf = like_k.new_empty(rows, heads, cap, like_k.shape[-1])
        value_buf = like_v.new_empty(rows, heads, cap, like_v.shape[-1])
        if n:
            key_buf[..., :n, :].copy_(self.keys)
            value_buf[..., :n, :].copy_(self.values)
        if self.key_buf is not None:
            self.reserve *= 2  # it grew: give the next growth more room, so growing stays rare
        self.key_buf, self.value_buf = key_buf, value_buf
        self._set_length(n)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, k = self.get_seq_length(), key_states.shape[-2]
        self._make_room(n + k, key_states, value_states)
        self.key_buf[..., n:n + k, :].copy_(key_states)
        self.value_buf[..., n:n + k, :].copy_(value_states)
        self._set_length(n + k)
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last ``-tokens_to_remove`` positions (a negative count, as transformers 5.x
        reads it; a positive one is the length to keep, as 4.4x did): only the length moves."""
        n = self.get_seq_length()
        keep = max(0, n - abs(tokens_to_remove)) if tokens_to_remove <= 0 else min(n, tokens_to_remove)
        if self.key_buf is not None:
            self._set_length(keep)

    def keep_columns(self, columns: torch.Tensor) -> None:
        """Keep only the positions ``columns`` (increasing), moved to the front of the buffer."""
        kept_k, kept_v = self.keys.index_select(-2, columns), self.values.index_select(-2, columns)
        self.key_buf[..., :len(columns), :].copy_(kept_k)
        self.value_buf[..., :len(columns), :].copy_(kept_v)
        self._set_length(len(columns))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._expand(repeats, self.reserve)

    def _expand(self, repeats: int, room: int) -> None:
        """Each row repeated ``repeats`` times, with ``room`` free positions after the length: one copy."""
        n = self.get_seq_length()
        if self.key_buf is None:
            return
        rows, heads = self.keys.shape[:2]
        bufs = []
        for src in (self.keys, self.values):
            buf = src.new_empty(rows * repeats, heads, n + room, src.shape[-1])
            buf.view(rows, repeats, heads, n + room, src.shape[-1])[..., :n, :].copy_(src[:, None])
            bufs.append(buf)
        self.key_buf, self.value_buf = bufs
        self._set_length(n)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.key_buf is None:
            return
        n = self.get_seq_length()
        self.key_buf = self.key_buf.index_select(0, indices.to(self.key_buf.device))
        self.value_buf = self.value_buf.index_select(0, indices.to(self.value_buf.device))
        self._set_length(n)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def first_rows(self, rows: int) -> "SlabLayer":
        """A layer over the first ``rows`` rows of the same buffers (a view: writes are shared)."""
        out = SlabLayer(self.reserve)
        out.lazy_initialization(self.keys, self.values)
        out.key_buf, out.value_buf = self.key_buf[:rows], self.value_buf[:rows]
        out._set_length(self.get_seq_length())
        return out

    def copy_of(self, row: int, start: int, stop: int, room: int) -> "SlabLayer":
        """A new batch-of-one layer holding a copy of positions ``start:stop`` of ``row``, with
        exactly ``room`` free positions after them."""
        out = SlabLayer(self.reserve)
        out.lazy_initialization(self.keys, self.values)
        n = stop - start
        out.key_buf, out.value_buf = (src.new_empty(1, src.shape[1], n + room, src.shape[-1])
                                      for src in (self.keys, self.values))
        out.key_buf[..., :n, :].copy_(self.keys[row:row + 1, :, start:stop])
        out.value_buf[..., :n, :].copy_(self.values[row:row + 1, :, start:stop])
        out._set_length(n)
        return out


class SlabCache(Cache):
    """A cache of :class:`SlabLayer` s, one per model layer (created as the model first calls them)."""

    def __init__(self, reserve: int = RESERVE, layers: list[SlabLayer] | None = None):
        if layers is None:
            super().__init__(layer_class_to_replicate=functools.partial(SlabLayer, reserve))
        else:
            super().__init__(layers=layers)
        self.reserve = reserve

    def keep_columns(self, columns: torch.Tensor) -> None:
        for layer in self.layers:
            layer.keep_columns(columns)

    def expanded(self, rows: int, room: int) -> "SlabCache":
        """This batch-of-one cache repeated ``rows`` times, each row with ``room`` free positions
        (a new cache; this one is left as it is)."""
        out = SlabCache(self.reserve, layers=[_clone_meta(layer) for layer in self.layers])
        for layer in out.layers:
            layer._expand(rows, room)
        return out

    def first_rows(self, rows: int) -> "SlabCache":
        """The first ``rows`` rows, sharing this cache's memory (see :meth:`SlabLayer.first_rows`)."""
        return SlabCache(self.reserve, layers=[layer.first_rows(rows) for layer in self.layers])

    def copy_of(self, row: int, start: int, stop: int, room: int = 0) -> "SlabCache":
        """Positions ``start:stop`` of batch row ``row`` as a new batch-of-one cache."""
        return SlabCache(self.reserve, layers=[layer.copy_of(row, start, stop, room) for layer in self.layers])


def _clone_meta(layer: SlabLayer) -> SlabLayer:
    """A layer pointing at the same buffers (expanding it then makes its own)."""
    out = SlabLayer(layer.reserve)
    out.lazy_initialization(layer.keys, layer.values)
    out.key_buf, out.value_buf = layer.key_buf, layer.value_buf
    out._set_length(layer.get_seq_length())
    return out


def full_attention_only(model) -> bool:
    """Every layer of the model attends to all earlier positions (no sliding window, no linear
    attention); true for a model without a config (a stand-in or a wrapper: it gets our cache)."""
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs
    except ImportError:  # another transformers than pyproject's: the model's own cache is used
        return False
    config = getattr(model, "config", None)
    if config is None:
        return True
    try:
        layer_types, _ = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    except (AttributeError, TypeError):
        return False
    return all(t == "full_attention" for t in layer_types)


def new_cache(model, reserve: int | None = None) -> SlabCache | None:
    """An empty :class:`SlabCache` to give the model's prefill (``reserve``: default :data:`RESERVE`),
    or None where the model should build its own (sliding-window or other layer types)."""
    return SlabCache(RESERVE if reserve is None else reserve) if full_attention_only(model) else None


def rows_within(kv_bytes_per_token: float, prompt_len: int, longest: int, vocab: int, batch_size: int,
                max_bytes: int | None) -> int:
    """Rows of an expanded cache that fit a budget (scoring's candidates at once, ``select.batch_rows``;
    ``memory.estimate``): ``batch_size``, or fewer when the rows' caches (prompt + longest answer
    tokens) and their float32 logits (longest answer x vocabulary) would pass ``max_bytes``; at least one."""
    if max_bytes is None:
        return batch_size
    row = kv_bytes_per_token * (prompt_len + longest) + longest * vocab * 4
    return max(1, min(batch_size, int(max_bytes // max(row, 1))))


def cache_bytes(cache) -> int:
    """Bytes of the keys and values a cache holds at its current length (a ``Cache`` or a tuple of
    (key, value) per layer); 0 for one whose layers are not plain tensors."""
    if isinstance(cache, (tuple, list)):
        pairs = cache
    else:
        pairs = [(layer.keys, layer.values) for layer in getattr(cache, "layers", [])]
    total = 0
    for k, v in pairs:
        if isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor):
            total += k.numel() * k.element_size() + v.numel() * v.element_size()
    return total


def crop_to(cache, length: int):
    """The cache cut back to ``length`` positions: a ``Cache`` in place, or a legacy tuple of
    (key, value) per layer (which some patched backends return) as a new tuple."""
    if isinstance(cache, (tuple, list)):
        return tuple((k[..., :length, :], v[..., :length, :]) for k, v in cache)
    excess = cache.get_seq_length() - length
    if excess > 0:
        cache.crop(-excess)  # negative: remove that many positions (transformers 4.4x and 5.x alike)
    return cache


def batchable(cache) -> bool:
    """The cache is made of plain ``DynamicLayer``s or :class:`SlabLayer`s only: rows can then leave
    it and columns be dropped from it (the search's lock-step views)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, SlabLayer) for layer in layers)


def drop_columns(cache, keep: torch.Tensor) -> None:
    """Keep only the positions ``keep`` (increasing) of a :func:`batchable` cache, in place."""
    if isinstance(cache, SlabCache):
        cache.keep_columns(keep)  # moved to the front of its buffers
        return
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(-2, keep)
        layer.values = layer.values.index_select(-2, keep)


class PromptCaches:
    """Prompt caches the search built, kept for the scoring of the same prompts (the identity view
    is among both the search's and the scoring's views): the scoring then skips their prefill.

    Made per test input with the prompts the scoring will use; the search puts a copy of each
    such prompt's cache (batch of one, no padding) and its last position's logits, while the kept
    bytes stay under ``max_bytes``; the scoring takes them out (so each is freed once used).
    """

    def __init__(self, prompts, max_bytes: int | None = None):
        self.wanted = {_prompt_key(p) for p in prompts}
        self.max_bytes = max_bytes
        self.kept: dict[bytes, tuple[SlabCache, torch.Tensor]] = {}
        self.bytes = 0
        self.reused = 0   # prompts whose prefill the scoring skipped

    def wants(self, prompt, nbytes: float = 0) -> bool:
        """The scoring will use this prompt, it is not kept yet, and ``nbytes`` more fit the budget
        (asked before the copy is made, so a copy over the budget is never allocated)."""
        key = _prompt_key(prompt)
        fits = self.max_bytes is None or self.bytes + nbytes <= self.max_bytes
        return key in self.wanted and key not in self.kept and fits

    def put(self, prompt, cache: SlabCache, last_logits: torch.Tensor) -> bool:
        """Keep ``cache`` (the caller's own copy) if it fits the budget; whether it was kept."""
        size = cache_bytes(cache)
        if not self.wants(prompt) or self.max_bytes is not None and self.bytes + size > self.max_bytes:
            return False
        self.kept[_prompt_key(prompt)] = (cache, last_logits.detach().clone())
        self.bytes += size
        return True

    def take(self, prompt) -> tuple[SlabCache, torch.Tensor] | None:
        """The prompt's (cache, last position's logits), removed from the store; None if not kept."""
        got = self.kept.pop(_prompt_key(prompt), None)
        if got is not None:
            self.bytes -= cache_bytes(got[0])
            self.reused += 1
        return got


    def clear(self) -> None:
        """Drop every kept cache (to free memory, e.g. after an out-of-memory error)."""
        self.kept.clear()
        self.bytes = 0


def _prompt_key(prompt) -> bytes:
    return np.asarray(prompt, dtype=np.int64).tobytes()
