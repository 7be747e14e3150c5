"""Decode steps after the prompt pass: one token per sequence in, next-token logits out.

:func:`decoder` picks how :func:`alignbench.sampling.sample` runs them:

* :class:`StaticCacheDecoder`, for Llama-shaped models (``LlamaForCausalLM`` with SDPA
  attention, no hooks inside): the keys and values live in buffers preallocated for the whole
  response, the attention mask is built once, and one step runs the model's own weights and
  attention function layer by layer, without Hugging Face's per-call wrappers (output
  capturing, mask rebuilding, cache bookkeeping), which cost more than the arithmetic on small
  models. It performs the same floating-point operations in the same order as the model's
  ``forward``, so its logits are bit-identical (``tests/test_fast_paths.py`` checks it against the
  plain loop). The model's forward hooks (the FLOP counter's among them) see each step as the
  forward ``model(input_ids=token)`` it replaces.
* :class:`ModelDecoder`, for every other model: each step is a call ``model(...)`` with the
  model's own cache; the attention mask is a view into one preallocated mask (no copy per token).

This is also the seam for an external inference engine: an object with the same ``step`` could
be returned by :func:`decoder` for models it serves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch

# transformers' modelling code is imported where a decoder is built, not with this module: it
# costs seconds of CPU that importing alignbench (and every plugin) should not pay.
if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedModel


class ModelDecoder:
    """Decode steps through ``model(...)`` and its own KV cache (any Hugging Face causal LM)."""

    def __init__(
        self, model: PreTrainedModel, cache: Any, full_mask: torch.Tensor, prompt_length: int
    ) -> None:
        self.model, self.cache = model, cache
        self.full_mask = full_mask  # [N, P + steps]: the prompt's mask, then ones
        self.prompt_length = prompt_length

    def step(self, token: torch.Tensor, position: torch.Tensor, t: int) -> torch.Tensor:
        """Logits ``[N, V]`` after feeding ``token`` ``[N]`` at ``position`` ``[N, 1]`` (step t)."""
        length = self.prompt_length + t + 1
        out = self.model(
            input_ids=token[:, None],
            attention_mask=self.full_mask[:, :length],
            position_ids=position,
            cache=self.cache,
            use_cache=True,
        )
        self.cache = out.cache
        return out.logits[:, -1]


class _Layer(NamedTuple):
    """One decoder layer's weights and its key/value buffers ``[N, H_kv, P + R, D]``."""

    attention: torch.nn.Module
    norm1: torch.nn.Module
    q: tuple[torch.Tensor, torch.Tensor | None]
    k: tuple[torch.Tensor, torch.Tensor | None]
    v: tuple[torch.Tensor, torch.Tensor | None]
    o: tuple[torch.Tensor, torch.Tensor | None]
    norm2: torch.nn.Module
    gate: tuple[torch.Tensor, torch.Tensor | None]
    up: tuple[torch.Tensor, torch.Tensor | None]
    down: tuple[torch.Tensor, torch.Tensor | None]
    act: Any
    keys: torch.Tensor
    values: torch.Tensor


def _weights(linear: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of a linear layer."""
    return linear.weight, linear.bias


class StaticCacheDecoder:
    """Decode steps of a Llama-shaped model over preallocated key/value buffers."""

    def __init__(
        self, model: LlamaForCausalLM, cache: Any, full_mask: torch.Tensor, prompt_length: int
    ) -> None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self.model = model
        self.base = model.model
        self.attention = ALL_ATTENTION_FUNCTIONS[model.config._attn_implementation]
        self.prompt_length = prompt_length
        self.head = _weights(model.lm_head)
        self.layers: list[_Layer] = []
        total = full_mask.shape[1]
        for layer, cached in zip(
            self.base.layers[: model.config.num_hidden_layers], cache.layers, strict=False
        ):
            keys = cached.keys.new_empty((*cached.keys.shape[:2], total, cached.keys.shape[3]))
            values = cached.values.new_empty((*keys.shape[:3], cached.values.shape[3]))
            keys[:, :, :prompt_length] = cached.keys
            values[:, :, :prompt_length] = cached.values
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                _Layer(
                    attn,
                    layer.input_layernorm,
                    _weights(attn.q_proj),
                    _weights(attn.k_proj),
                    _weights(attn.v_proj),
                    _weights(attn.o_proj),
                    layer.post_attention_layernorm,
                    _weights(mlp.gate_proj),
                    _weights(mlp.up_proj),
                    _weights(mlp.down_proj),
                    mlp.act_fn,
                    keys,
                    values,
                )
            )
        # Without padding the model passes no mask at all (SDPA then attends to every key); with
        # padding, a boolean [N, 1, 1, L] mask. Masks are made contiguous per length, as the
        # model's own are, because SDPA's kernel choice (and rounding) depends on the layout.
        padded = not bool(full_mask.all())
        self.masks = full_mask.bool()[:, None, None, :] if padded else None

    @staticmethod
    def supports(model: PreTrainedModel) -> bool:
        """Whether ``model`` is a plain Llama whose decode step this class reproduces exactly."""
        from transformers import LlamaForCausalLM

        config = model.config
        if type(model) is not LlamaForCausalLM or model.training:
            return False
        if getattr(config, "_attn_implementation", None) != "sdpa" or config.hidden_act != "silu":
            return False
        if torch.nn.modules.module._global_forward_hooks or model._forward_pre_hooks:
            return False
        # Hooks inside (adapters, offloading, device placement) would be skipped by this path.
        linear = torch.nn.Linear
        for name, module in model.named_modules():
            if module is not model and (active_hooks(module) or module._forward_pre_hooks):
                return False
            if name.endswith("_proj") and type(module) is not linear:
                return False
        return type(model.lm_head) is linear and not hasattr(model, "_hf_hook")

    @staticmethod
    def _rms_norm(norm: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """``LlamaRMSNorm`` operation for operation (the casts are no-ops in float32)."""
        dtype = hidden.dtype
        if dtype != torch.float32:
            hidden = hidden.to(torch.float32)
        variance = hidden.pow(2).mean(-1, keepdim=True)
        hidden = hidden * torch.rsqrt(variance + norm.variance_epsilon)
        return norm.weight * (hidden if dtype == torch.float32 else hidden.to(dtype))

    def step(self, token: torch.Tensor, position: torch.Tensor, t: int) -> torch.Tensor:
        """Logits ``[N, V]`` after feeding ``token`` ``[N]`` at ``position`` ``[N, 1]`` (step t)."""
        linear = torch.nn.functional.linear
        sdpa = torch.nn.functional.scaled_dot_product_attention
        n, length = token.shape[0], self.prompt_length + t + 1
        input_ids = token[:, None]
        hidden = self.base.embed_tokens(input_ids)
        cos, sin = self.base.rotary_emb(hidden, position_ids=position)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        # rotate_half(x) * sin == roll(x, half) * [-sin_1, sin_2]: the same products, one op less.
        half = cos.shape[-1] // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        mask = None if self.masks is None else self.masks[..., :length].contiguous()
        for layer in self.layers:
            attn = layer.attention
            residual = hidden
            x = self._rms_norm(layer.norm1, hidden)
            q = linear(x, *layer.q).view(n, 1, -1, attn.head_dim).transpose(1, 2)
            k = linear(x, *layer.k).view(n, 1, -1, attn.head_dim).transpose(1, 2)
            v = linear(x, *layer.v).view(n, 1, -1, attn.head_dim).transpose(1, 2)
            q = (q * cos) + (q.roll(half, -1) * sin)
            k = (k * cos) + (k.roll(half, -1) * sin)
            layer.keys.narrow(2, length - 1, 1).copy_(k)
            layer.values.narrow(2, length - 1, 1).copy_(v)
            keys, values = layer.keys.narrow(2, 0, length), layer.values.narrow(2, 0, length)
            if attn.num_key_value_groups == 1:
                # What the model's SDPA function does for one query without grouped heads; its
                # [N, H, 1, D] output is already laid out as [N, 1, H * D].
                out = sdpa(q, keys, values, attn_mask=mask, dropout_p=0.0, scale=attn.scaling)
                out = out.view(n, 1, -1)
            else:
                out, _ = self.attention(
                    attn, q, keys, values, mask, dropout=0.0, scaling=attn.scaling
                )
                out = out.reshape(n, 1, -1).contiguous()
            hidden = residual + linear(out, *layer.o)
            residual = hidden
            x = self._rms_norm(layer.norm2, hidden)
            gated = layer.act(linear(x, *layer.gate)) * linear(x, *layer.up)
            hidden = residual + linear(gated, *layer.down)
        hidden = self._rms_norm(self.base.norm, hidden)
        logits = linear(hidden, *self.head)
        self._after_forward(input_ids, position, logits)
        return logits[:, -1]

    def _after_forward(
        self, input_ids: torch.Tensor, position: torch.Tensor, logits: torch.Tensor
    ) -> None:
        """Run the model's forward hooks as ``model(input_ids=..., ...)`` would have."""
        model = self.model
        if not model._forward_hooks:
            return
        from transformers.modeling_outputs import CausalLMOutputWithPast

        kwargs = {"input_ids": input_ids, "position_ids": position, "use_cache": True}
        output = CausalLMOutputWithPast(logits=logits)
        for key, hook in list(model._forward_hooks.items()):
            if key in model._forward_hooks_with_kwargs:
                result = hook(model, (), kwargs, output)
            else:
                result = hook(model, (), output)
            if result is not None:
                raise RuntimeError(
                    "a forward hook on the model replaced its output; the static-cache decoder "
                    "cannot honour that (remove the hook or decode through model(...))"
                )


def active_hooks(module: torch.nn.Module) -> list[Any]:
    """``module``'s forward hooks, less Hugging Face's output-capturing ones: a forward with
    ``output_hidden_states=True`` installs those on every layer for good, and they do nothing
    outside such a forward (this path never asks for hidden states through them), so they must
    not turn the fast paths off for the rest of a run (PPO's shared critic makes that call)."""
    return [
        hook
        for hook in module._forward_hooks.values()
        if getattr(hook, "__module__", None) != "transformers.utils.output_capturing"
    ]


def decoder(
    model: PreTrainedModel, cache: Any, prompt_mask: torch.Tensor, steps: int
) -> ModelDecoder | StaticCacheDecoder:
    """The decoder for ``steps`` steps after a prompt pass (mask ``[N, P]``) that left ``cache``."""
    ones = prompt_mask.new_ones(prompt_mask.shape[0], steps)
    full_mask = torch.cat([prompt_mask, ones], dim=1)
    prompt_length = prompt_mask.shape[1]
    if StaticCacheDecoder.supports(model) and hasattr(cache, "layers"):
        return StaticCacheDecoder(model, cache, full_mask, prompt_length)
    return ModelDecoder(model, cache, full_mask, prompt_length)
