"""Lean full-sequence forwards for Llama-shaped models: the response's logits or values only.

PPO's scoring and training forwards read a model's output only at the positions that predict
response tokens. :func:`lean_logits` and :func:`lean_values` compute exactly those, layer by layer
on the model's own weights (as :class:`alignbench.decoding.StaticCacheDecoder` does for a decode
step), without Hugging Face's per-call wrappers (output capturing, mask rebuilding, config
merging), and with less arithmetic:

* the final token is not fed: its output predicts nothing the response has;
* the last layer runs its queries (and its MLP) only on the kept positions: its keys and values
  still come from every position, so the kept outputs are the same;
* the output layer (or value head) runs only on the kept positions, as ``logits_to_keep`` does.

:func:`last_values` reads a scalar-head model (a reward model) at one position per sequence, its
last real token: there the last layer's queries and MLP run on that position alone.

On the CPU, in float32, the linear layers with at least :data:`ONEDNN_MIN_ROWS` rows and
outputs run through oneDNN's matrix multiply (:func:`linear`; forward and backward) rather than
``torch.nn.functional.linear``'s BLAS call (MKL in PyTorch's wheels). MKL picks its kernels by
CPU vendor: on AMD CPUs it runs its AVX2 code, where oneDNN runs AVX-512 (measured on this
project's AMD EPYC VM, one thread: 2.04x the multiply-adds per second, the median of a PPO
step's products, ``benchmarks/matmul.py``); on Intel CPUs, where MKL takes its own AVX-512
kernels, expect them about even (not measured here).

The result equals the Hugging Face forward up to floating-point rounding, not bit for bit: the
last layer's attention runs on fewer query rows with an explicit mask, and oneDNN's kernels add
in another order than MKL's. ``tests/test_lean_forward.py``
holds the tolerance: logits, log-probabilities and values within 1e-5 of ``model(...)``, with and
without padding, and PPO's losses over a few steps within 1e-4 relative. So it is opt-in
(``algo.lean_forward=true`` for PPO).

FLOPs: the model's forward hooks (the FLOP counter's among them) see the call as the Hugging Face
forward that gives the same outputs, ``model(input_ids=input_ids[:, :-1], ..., logits_to_keep=R)``
(for a :class:`~alignbench.models.ScalarHeadModel`: ``positions_to_keep=R``): the tokens fed and
the positions projected. The counter charges every layer per token fed, so the last layer's
skipped prompt positions are still charged (at most 1/layers of a forward's body, conservative).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: The fewest rows (tokens) and output features for which :func:`linear` calls oneDNN: below
#: them (a decode step's 16 rows, a value head's one output) its call overhead eats the gain.
ONEDNN_MIN_ROWS = 64
#: "onednn": :func:`linear` takes oneDNN's kernels where they apply (CPU, float32, big enough);
#: "torch": always ``torch.nn.functional.linear`` (set it to compare, or to match ``model(...)``'s
#: BLAS rounding).
CPU_KERNEL = "onednn"


def _onednn_op() -> Any:
    """``torch.ops.mkldnn._linear_pointwise`` (PyTorch's oneDNN linear), or None without it."""
    try:
        if torch.backends.mkldnn.is_available():
            return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without oneDNN or without the op
        pass
    return None


_ONEDNN = _onednn_op()
# Bound once: a caller may route torch.nn.functional.linear itself through linear() (the
# benchmark's lower bound does), and the fallback must not call back into it.
_TORCH_LINEAR = torch.nn.functional.linear


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x [M, K] @ weight [N, K]^T + bias`` through oneDNN (strided operands read in place)."""
    return _ONEDNN(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """``torch.nn.functional.linear`` with oneDNN's multiplies for the output and both
    gradients (input: ``g @ W``; weight: ``g^T @ x``)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        # x itself is saved, not a view of it made here (grad mode is off in forward): an
        # in-place change of x is then named by autograd's own version check.
        ctx.save_for_backward(x, weight)
        ctx.with_bias = bias is not None
        rows = x.reshape(-1, x.shape[-1])
        return _onednn(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        rows = x.reshape(-1, x.shape[-1])
        grad = grad.reshape(-1, grad.shape[-1])
        needs = ctx.needs_input_grad
        dx = _onednn(grad, weight.t(), None).view(x.shape) if needs[0] else None
        dw = _onednn(grad.t(), rows.t(), None) if needs[1] else None
        db = grad.sum(0) if ctx.with_bias and needs[2] else None
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.nn.functional.linear(x, weight, bias)``, through oneDNN's kernels on the CPU in
    float32 when the product is big enough (:data:`ONEDNN_MIN_ROWS`); equal within rounding.
    Anything else (another device or dtype, autocast, ``torch.backends.mkldnn.enabled=False``,
    :data:`CPU_KERNEL` ``"torch"``) is exactly ``torch.nn.functional.linear``."""
    if (
        _ONEDNN is None
        or CPU_KERNEL != "onednn"
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or (bias is not None and bias.dtype != torch.float32)
        or weight.shape[0] < ONEDNN_MIN_ROWS
        or x.shape[-1] == 0
        or x.numel() < ONEDNN_MIN_ROWS * x.shape[-1]
        or torch.is_autocast_enabled("cpu")
        or not torch.backends.mkldnn.enabled
    ):
        return _TORCH_LINEAR(x, weight, bias)
    trained = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if torch.is_grad_enabled() and trained:
        return _OneDNNLinear.apply(x, weight, bias)
    return _onednn(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])


def _trunk(model: torch.nn.Module) -> torch.nn.Module | None:
    """The Llama trunk (``LlamaModel``) of a causal LM or a scalar-head model, else None."""
    from transformers import LlamaForCausalLM, LlamaModel

    from alignbench.models import ScalarHeadModel

    if type(model) is LlamaForCausalLM:
        return model.model
    if type(model) is ScalarHeadModel and type(model.trunk) is LlamaModel:
        return model.trunk
    return None


def supports(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a plain Llama (causal LM or scalar-head model) this module can run:
    SDPA attention, SiLU, no dropout, no gradient checkpointing, no hooks inside it."""
    from alignbench.decoding import active_hooks

    trunk = _trunk(model)
    if trunk is None:
        return False
    config = trunk.config
    if getattr(config, "_attn_implementation", None) != "sdpa" or config.hidden_act != "silu":
        return False
    if model.training and (config.attention_dropout or trunk.gradient_checkpointing):
        return False
    # Float32 only (the norms here skip Llama's casts), never under autocast.
    if trunk.embed_tokens.weight.dtype != torch.float32 or any(
        torch.is_autocast_enabled(device) for device in ("cpu", "cuda")
    ):
        return False
    if torch.nn.modules.module._global_forward_hooks or model._forward_pre_hooks:
        return False
    linear = torch.nn.Linear
    for module in model.modules():
        if module is not model and (active_hooks(module) or module._forward_pre_hooks):
            return False
    for layer in trunk.layers:
        attn, mlp = layer.self_attn, layer.mlp
        projections = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)
        if any(type(p) is not linear for p in (*projections, mlp.gate_proj, mlp.up_proj)):
            return False
        if type(mlp.down_proj) is not linear:
            return False
    head = model.get_output_embeddings()
    return type(head) is linear and not hasattr(model, "_hf_hook")


def _rms_norm(norm: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``LlamaRMSNorm`` in float32."""
    variance = hidden.pow(2).mean(-1, keepdim=True)
    return norm.weight * (hidden * torch.rsqrt(variance + norm.variance_epsilon))


def hidden_states(
    trunk: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    keep: int,
    at: torch.Tensor | None = None,
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """The trunk's final hidden states ``[N, keep, H]`` at the last ``keep`` positions; with
    ``at`` (``[N]`` indices), ``[N, 1, H]`` at one position per sequence (``keep`` unused);
    with ``kv``, each layer's keys and values ``[N, H_kv, T, D]`` (rotated) appended to it."""
    from alignbench.models import position_ids

    sdpa = torch.nn.functional.scaled_dot_product_attention
    n, length = input_ids.shape
    if at is None and not 1 <= keep <= length:
        raise ValueError(f"keep={keep}: the lean forward keeps 1 to {length} positions")
    padded = not bool(attention_mask.all())
    hidden = trunk.embed_tokens(input_ids)
    cos, sin = trunk.rotary_emb(hidden, position_ids=position_ids(attention_mask))
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [N, 1, T, D]
    half = cos.shape[-1] // 2
    # rotate_half(x) * sin == roll(x, half) * [-sin_1, sin_2]
    sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
    if padded:
        # Padding keys are hidden; a padding query sees itself (no empty row: no NaN anywhere).
        valid = attention_mask.bool()[:, None, None, :]
        eye = torch.eye(length, dtype=torch.bool, device=input_ids.device)
        mask = causal & (valid | eye)  # [N, 1, T, T]
    else:
        mask = None  # causal through is_causal: the kernel skips the masked half
    last = len(trunk.layers[: trunk.config.num_hidden_layers]) - 1
    for i, layer in enumerate(trunk.layers[: last + 1]):
        attn, mlp = layer.self_attn, layer.mlp
        d, heads = attn.head_dim, attn.config.num_attention_heads
        kv_heads = attn.config.num_key_value_heads
        x = _rms_norm(layer.input_layernorm, hidden)
        q = linear(x, *_weights(attn.q_proj)).view(n, length, heads, d).transpose(1, 2)
        k = linear(x, *_weights(attn.k_proj)).view(n, length, kv_heads, d).transpose(1, 2)
        v = linear(x, *_weights(attn.v_proj)).view(n, length, kv_heads, d).transpose(1, 2)
        k = (k * cos) + (k.roll(half, -1) * sin)
        if kv is not None:
            kv.append((k, v))
        gqa = heads != kv_heads
        if i == last and at is not None:
            # One query per sequence, each at its own position: gathered, not sliced.
            q, c, s = (_at(t, at, 2) for t in (q, cos, sin))
            q = (q * c) + (q.roll(half, -1) * s)
            rows = causal[at][:, None, None] if mask is None else _at(mask, at, 2)
            out = sdpa(q, k, v, attn_mask=rows, scale=attn.scaling, enable_gqa=gqa)
            hidden = _at(hidden, at, 1) + linear(
                out.transpose(1, 2).reshape(n, 1, -1), *_weights(attn.o_proj)
            )
            x = _rms_norm(layer.post_attention_layernorm, hidden)
            gated = mlp.act_fn(linear(x, *_weights(mlp.gate_proj))) * linear(
                x, *_weights(mlp.up_proj)
            )
            hidden = hidden + linear(gated, *_weights(mlp.down_proj))
            break
        queries = length if i < last else keep
        q = q[:, :, -queries:]
        q = (q * cos[:, :, -queries:]) + (q.roll(half, -1) * sin[:, :, -queries:])
        if queries == length:
            if mask is None:
                out = sdpa(q, k, v, is_causal=True, scale=attn.scaling, enable_gqa=gqa)
            else:
                out = sdpa(q, k, v, attn_mask=mask, scale=attn.scaling, enable_gqa=gqa)
        else:
            rows = causal[-queries:] if mask is None else mask[:, :, -queries:]
            out = sdpa(q, k, v, attn_mask=rows, scale=attn.scaling, enable_gqa=gqa)
        out = out.transpose(1, 2).reshape(n, queries, heads * d)
        hidden = hidden[:, -queries:] + linear(out, *_weights(attn.o_proj))
        x = _rms_norm(layer.post_attention_layernorm, hidden)
        gated = mlp.act_fn(linear(x, *_weights(mlp.gate_proj))) * linear(x, *_weights(mlp.up_proj))
        hidden = hidden + linear(gated, *_weights(mlp.down_proj))
    return _rms_norm(trunk.norm, hidden if at is not None else hidden[:, -keep:])


def _at(x: torch.Tensor, at: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` at index ``at[b]`` of dimension ``dim`` in each batch row ``b`` (the size there 1)."""
    shape = list(x.shape)
    shape[0], shape[dim] = len(at), 1
    index = at.view(-1, *([1] * (x.dim() - 1))).expand(shape)
    return x.expand(len(at), *x.shape[1:]).gather(dim, index)


def _weights(linear: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    return linear.weight, linear.bias


def _after_forward(
    model: torch.nn.Module, kwargs: dict[str, Any], output: Any, result: torch.Tensor
) -> None:
    """Run ``model``'s forward hooks as ``model(**kwargs)`` returning ``output`` would have."""
    for key, hook in list(model._forward_hooks.items()):
        if key in model._forward_hooks_with_kwargs:
            replaced = hook(model, (), kwargs, output)
        else:
            replaced = hook(model, (), output)
        if replaced is not None:
            raise RuntimeError(
                "a forward hook on the model replaced its output; the lean forward cannot "
                "honour that (remove the hook or leave algo.lean_forward off)"
            )


def lean_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    with_hidden: bool = False,
) -> Any:
    """Logits ``[N, R, V]`` predicting each response token, as
    :func:`alignbench.models.response_logits` gives them (within rounding); with ``with_hidden``,
    also the final hidden states ``[N, R, H]`` at those positions."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    r = input_ids.shape[1] - prompt_length
    ids, mask = input_ids[:, :-1], attention_mask[:, :-1]
    hidden = hidden_states(model.model, ids, mask, r)
    logits = linear(hidden, *_weights(model.lm_head))
    if model._forward_hooks:
        kwargs = {"input_ids": ids, "attention_mask": mask, "logits_to_keep": r}
        _after_forward(model, kwargs, CausalLMOutputWithPast(logits=logits), logits)
    return (logits, hidden) if with_hidden else logits


def prefill(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, Any]:
    """The sampler's prompt pass over left-padded prompts: next-token logits ``[N, V]`` at the
    last position, and a cache whose ``layers[i].keys`` / ``.values`` ``[N, H_kv, P, D]`` the
    static-cache decoder continues from (the last layer's queries and MLP at that position
    only). FLOPs as ``model(input_ids=input_ids, ..., use_cache=True, logits_to_keep=1)``."""
    from types import SimpleNamespace

    from transformers.modeling_outputs import CausalLMOutputWithPast

    kv: list[tuple[torch.Tensor, torch.Tensor]] = []
    hidden = hidden_states(model.model, input_ids, attention_mask, 1, kv=kv)
    logits = linear(hidden, *_weights(model.lm_head))
    if model._forward_hooks:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "logits_to_keep": 1}
        _after_forward(model, kwargs, CausalLMOutputWithPast(logits=logits), logits)
    cache = SimpleNamespace(layers=[SimpleNamespace(keys=k, values=v) for k, v in kv])
    return logits[:, -1], cache


def lean_values(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
) -> torch.Tensor:
    """Scalars ``[N, R]`` of a scalar-head model at the positions that predict each response
    token, as :func:`alignbench.models.response_values` gives them (within rounding)."""
    r = input_ids.shape[1] - prompt_length
    ids, mask = input_ids[:, :-1], attention_mask[:, :-1]
    hidden = hidden_states(model.trunk, ids, mask, r)
    values = linear(hidden, *_weights(model.head)).squeeze(-1)
    if model._forward_hooks:
        kwargs = {"input_ids": ids, "attention_mask": mask, "positions_to_keep": r}
        _after_forward(model, kwargs, values, values)
    return values


def last_values(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Scalars ``[N]`` of a scalar-head model at each sequence's last real token, as
    :func:`alignbench.rm.training.sequence_rewards` gives them (within rounding): a reward."""
    from alignbench.ops import last_positions

    at = last_positions(attention_mask).clamp(min=0)  # a row without tokens reads position 0
    hidden = hidden_states(model.trunk, input_ids, attention_mask, 1, at=at)
    values = linear(hidden, *_weights(model.head)).squeeze(-1)
    if model._forward_hooks:
        # Charged as the call that runs every token and projects one position per sequence.
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "positions_to_keep": 1}
        _after_forward(model, kwargs, values, values)
    return values[:, 0]
