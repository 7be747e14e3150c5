"""Model helpers: the built-in tokenizer and small Llama, loading, freezing, per-token log-probs.

Sequences everywhere share one layout: the prompt left-padded to ``P`` tokens, then the response
right-padded to ``R`` tokens (``input_ids`` is ``[N, P + R]``). Position ids come from the
attention mask, so padding never shifts a token's position and the sampler, the training
forward and evaluation all see identical logits for the same tokens.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from alignbench import lean_forward
from alignbench.config import ModelConfig
from alignbench.errors import ConfigError

# transformers is imported inside the functions that build or load a model: its modelling code
# costs seconds at import, which `import alignbench`, the CLI's config checks and
# `python -m alignbench.plugins` do not need.
if TYPE_CHECKING:
    from transformers import (
        LlamaForCausalLM,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
    )

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
#: Role tokens of the built-in tokenizer's chat template (conversation tasks).
ROLES = ("<user>", "<assistant>")
#: The built-in chat template: ``<user> question <assistant> answer <eos> <user> ...``; each
#: assistant reply ends with eos, and the generation prompt is ``<assistant>``.
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} "
    "{% if m['role'] == 'assistant' %}" + EOS + " {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def build_tokenizer(words: list[str], chat: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` (whitespace-split), with pad, eos and unk tokens;
    with ``chat``, also the role tokens and :data:`CHAT_TEMPLATE` (for conversations)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for word in [*ROLES, *words] if chat else words:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A randomly initialised Llama sized by ``cfg``, with dropout off and the tokenizer's ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


#: ``model.chat_template``: use the tokenizer's chat template when it has one, or never.
CHAT_TEMPLATE_CHOICES = ("auto", "none")


def _unloadable(path: str | Path, why: str) -> ConfigError:
    """The one line for a ``model.name_or_path`` that cannot be used."""
    return ConfigError(
        f"model.name_or_path={str(path)!r} cannot be loaded ({why}) — give a local folder saved "
        "with save_pretrained (download a hub model once, e.g. `hf download <id> --local-dir "
        "models/<name>`, and pass that folder), or leave it empty for the built-in model"
    )


def check_loadable(path: str | Path) -> None:
    """Raise ConfigError (the same line as :func:`load_pretrained`) unless ``path`` is a local
    folder holding a causal LM config and a tokenizer with an eos token; reads no weights and
    never the network (a hub id is refused: nothing is downloaded at run time)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not Path(path).is_dir():
        raise _unloadable(path, "not a local folder")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise _unloadable(path, str(exc).splitlines()[0]) from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(
        config, "is_encoder_decoder", False
    ):
        raise _unloadable(path, f"model_type {config.model_type!r} is not a causal LM")
    _load_tokenizer(path)


def _load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The folder's tokenizer, with an eos token (which ends every response) checked."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise _unloadable(path, f"no usable tokenizer: {str(exc).splitlines()[0]}") from None
    if tokenizer.eos_token_id is None:
        raise _unloadable(
            path, "its tokenizer has no eos token; set eos_token in tokenizer_config.json"
        )
    return tokenizer


def load_pretrained(
    path: str | Path, chat_template: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local folder (never the network).

    A tokenizer without a pad token pads with eos: padding is always masked by length, never
    found by its id, so eos stays visible where it ends a response. Prompts are left-padded.
    ``chat_template="none"`` drops the tokenizer's chat template, so prompts are encoded as
    plain text (:func:`alignbench.batch.encode_prompts`); the SFT folder saves the tokenizer
    as used, so every later stage sees the same choice.
    """
    from transformers import AutoModelForCausalLM

    if chat_template not in CHAT_TEMPLATE_CHOICES:
        raise ConfigError(
            f"model.chat_template={chat_template!r} is not a choice — use one of: "
            + ", ".join(CHAT_TEMPLATE_CHOICES)
        )
    if not Path(path).is_dir():
        raise _unloadable(path, "not a local folder")
    tokenizer = _load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise _unloadable(path, str(exc).splitlines()[0]) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template == "none":
        tokenizer.chat_template = None
    tokenizer.padding_side = "left"
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def random_like(path: str | Path) -> PreTrainedModel:
    """A randomly initialised model of the architecture saved in ``path`` (config only)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def save_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """Save a model and its tokenizer into ``path`` in the Hugging Face format (safetensors)."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Put ``model`` in eval mode with no trainable parameters (a reference or reward model)."""
    model.eval()
    model.requires_grad_(False)
    return model


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A frozen deep copy of ``model`` (for example the reference of a KL penalty)."""
    return freeze(copy.deepcopy(model))


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    lean: bool = False,
) -> torch.Tensor:
    """Logits ``[N, R, V]`` predicting each response token (prompt positions are not projected);
    ``lean``: through :func:`alignbench.lean_forward.lean_logits` where the model allows it
    (equal within rounding, not bit for bit)."""
    if lean and input_ids.shape[1] > prompt_length and lean_forward.supports(model):
        return lean_forward.lean_logits(model, input_ids, attention_mask, prompt_length)
    response_length = input_ids.shape[1] - prompt_length
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        logits_to_keep=response_length + 1,
        use_cache=False,
    )
    return out.logits[:, :-1]


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``log softmax(logits / temperature)`` picked at ``tokens``: ``[N, R, V]`` -> ``[N, R]``.

    Equivalent to ``torch.log_softmax(logits / t, -1).gather(-1, tokens[..., None])[..., 0]``,
    computed as ``logit - logsumexp`` to avoid materialising the whole log-softmax twice.
    """
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def response_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    temperature: float = 1.0,
    lean: bool = False,
) -> torch.Tensor:
    """Per-token log-probabilities ``[N, R]`` of the response tokens under ``model`` (``lean``:
    see :func:`response_logits`)."""
    logits = response_logits(model, input_ids, attention_mask, prompt_length, lean)
    return token_logprobs(logits, input_ids[:, prompt_length:], temperature)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class ScalarHeadModel(torch.nn.Module):
    """A transformer trunk with a linear head giving one scalar per position (critic, reward model).

    ``backbone`` is a causal LM whose ``base_model`` is the trunk (its LM head is dropped).
    ``forward`` returns ``[N, keep]`` scalars for the last ``positions_to_keep`` positions (all
    when 0), so a critic can score exactly the positions that predict response tokens.
    """

    def __init__(self, backbone: PreTrainedModel) -> None:
        super().__init__()
        self.trunk = backbone.base_model
        self.config = backbone.config
        self.head = torch.nn.Linear(backbone.config.hidden_size, 1)
        # A zero head starts every value at 0: no arbitrary initial estimates to unlearn.
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def get_input_embeddings(self) -> torch.nn.Module:
        """The trunk's token embedding (a lookup: no FLOPs)."""
        return self.trunk.get_input_embeddings()

    def get_output_embeddings(self) -> torch.nn.Module:
        """The scalar head (charged only on the positions it scores)."""
        return self.head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions_to_keep: int = 0,
    ) -> torch.Tensor:
        """Scalars ``[N, keep]`` at the last ``positions_to_keep`` positions."""
        hidden = self.trunk(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
        ).last_hidden_state
        if positions_to_keep:
            hidden = hidden[:, -positions_to_keep:]
        return self.head(hidden).squeeze(-1)


def response_values(
    model: ScalarHeadModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    lean: bool = False,
) -> torch.Tensor:
    """Scalars ``[N, R]`` at the positions that predict each response token (states before it);
    ``lean``: through :func:`alignbench.lean_forward.lean_values` where the model allows it."""
    if lean and input_ids.shape[1] > prompt_length and lean_forward.supports(model):
        return lean_forward.lean_values(model, input_ids, attention_mask, prompt_length)
    response_length = input_ids.shape[1] - prompt_length
    return model(input_ids, attention_mask, positions_to_keep=response_length + 1)[:, :-1]
