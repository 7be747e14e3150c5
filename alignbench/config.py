"""Structured-config schema: one dataclass per config group, stored in Hydra's ConfigStore.

These dataclasses hold the keys, their types and their defaults (the only copy of each default:
the YAML files under ``conf/`` compose, name variants that change a few values, and hold
experiments and searches), so a typo or a wrong type is an error naming the key at start-up.
Plugins subclass :class:`AlgorithmConfig`, :class:`RewardConfig` or :class:`TaskConfig`; the
registry stores each subclass under ``<group>/base_<name>`` (and under ``<group>/<name>`` when
no YAML of that name ships), which is what makes ``algo=<name>`` work for a plugin that ships no
YAML at all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

CONF_PACKAGE = "alignbench_conf"


class BudgetKind(str, enum.Enum):
    """The unit a compute budget is counted in."""

    steps = "steps"
    samples = "samples"
    tokens = "tokens"
    flops = "flops"
    seconds = "seconds"


@dataclass
class SamplingConfig:
    """How responses are sampled: one schema for every algorithm (``algo.sampling``) and for the
    reward model's feedback groups (``feedback.sampling``); read by
    :meth:`alignbench.SamplingParams.from_config`. Evaluation is greedy and has only a length
    (``eval.max_new_tokens``), the same for every algorithm of a comparison."""

    # Sampling temperature; a training forward recomputes the sampler's log-probs from
    # logits / temperature [H24: Huang et al. 2024, "The N+ Implementation Details of RLHF"].
    temperature: float = 1.0
    # 0 = off: PPO's and the policy-gradient methods' log-probs assume sampling from the full
    # distribution [H24].
    top_k: int = 0
    # 1 = off, for the same reason.
    top_p: float = 1.0
    # Answers are at most 4 words + eos on the facts task.
    max_new_tokens: int = 8
    # How each token is drawn: multinomial = torch.multinomial (as Hugging Face's generate: one
    # exponential draw per vocabulary entry); inverse_cdf = one uniform per token located in the
    # cumulative distribution: the same distribution, other tokens for a seed, about 1/20 of the
    # draw's time on the CPU (issue 17). Left out of fingerprints while multinomial.
    draw: str = field(default="multinomial", metadata={"choices": ("multinomial", "inverse_cdf")})


@dataclass
class AlgorithmConfig:
    """Keys every algorithm has; an algorithm's own config dataclass subclasses this."""

    name: str = MISSING
    # Prompts drawn from the task per step; the same for every algorithm of a comparison.
    prompts_per_step: int = 16
    # Which task split the prompts come from (`rl` prompts, or `sft` demonstrations).
    prompt_split: str = "rl"
    # How the algorithm samples (an algorithm that never samples, such as offline DPO, ignores it).
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class RewardConfig:
    """Keys every reward has; a reward's config dataclass subclasses this."""

    name: str = MISSING


@dataclass
class TaskConfig:
    """Keys every task has; a task's config dataclass subclasses this."""

    name: str = MISSING
    # Seed of the task's data generation: fixed across job seeds so every job sees one world.
    seed: int = 0


class OnNonFinite(str, enum.Enum):
    """What a NaN or inf in a loss, gradient or reward does to the job."""

    stop = "stop"
    skip = "skip"


class Selection(str, enum.Enum):
    """Which candidate groups are sent for labelling."""

    random = "random"
    uncertainty = "uncertainty"
    diversity = "diversity"


class Decoding(str, enum.Enum):
    """How the K responses of a group are produced."""

    sample = "sample"
    beam = "beam"


@dataclass
class FeedbackConfig:
    """Keys every feedback source has; a source's config dataclass subclasses this."""

    name: str = MISSING
    # Responses per group, and how they are produced from the SFT (or current) policy:
    # sample | beam.
    k: int = 4
    decoding: Decoding = Decoding.sample
    # Sampling of the K responses (`decoding: beam` reads only max_new_tokens).
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # The label budget: ranked groups bought from the source.
    labels: int = 400
    # Which groups are labelled: random, the current RM's least confident, or spread over prompts.
    selection: Selection = Selection.random
    # Candidate groups per label for uncertainty/diversity selection.
    pool_factor: int = 4
    # Contrast in groups, from declared sources: the prompt's human demonstration (the task
    # row's `response`, when it has one) and the task's abstention phrase (when it has one) each
    # take the place of one sample, so a group still holds `k` responses.
    include_demonstration: bool = True
    include_abstention: bool = False
    # Online feedback: re-collect rankings from the current policy this many times during RL.
    rounds: int = 0
    # Delayed feedback: labels requested at step t of an online round arrive (and retrain the
    # reward model) at step t + delay; labels due after the run's last step are never used.
    delay: int = 0
    seed: int = 0


#: What ``model.lora.targets`` may name: the models that can train as adapters.
LORA_TARGETS = ("policy", "critic", "reward_model")


@dataclass
class LoraConfig:
    """LoRA adapters (through PEFT) on the models in ``targets``; ``r=0`` trains whole models."""

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    # Module names to adapt (e.g. [q_proj, v_proj]); empty = PEFT's default for the architecture.
    target_modules: list[str] = field(default_factory=list)
    # Export the merged model (loadable without peft) beside the adapter.
    merge_on_export: bool = False
    # The models that train as adapters: policy (after stage 1; the reference is then its base),
    # critic (PPO's separate critic: adapters on its trunk, its value head whole), reward_model
    # (stage 2: adapters on the trunk + the head, merged into the cached model).
    targets: list[str] = field(default_factory=lambda: ["policy"])


@dataclass
class ModelConfig:
    """The base language model: built from these numbers (a ~0.7 M-parameter Llama, random init,
    trained in stage 1), or loaded from ``name_or_path``. The default choice ``model=tiny``."""

    # A local folder saved with save_pretrained (any causal LM and its tokenizer; a hub id is
    # refused: nothing is downloaded at run time); empty builds a small Llama from the keys below.
    name_or_path: str = field(default="", metadata={"input": True})
    # Prompts go through the tokenizer's chat template when it has one (`auto`), or as plain
    # text (`none`). The built-in word tokenizer has none.
    chat_template: str = field(default="auto", metadata={"choices": ("auto", "none")})
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    max_position_embeddings: int = 64
    tie_word_embeddings: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Gradient (activation) checkpointing of the trained models (policy, critic): each layer's
    # activations are recomputed in the backward pass instead of kept, less memory for more
    # compute; the budget charges the recomputation (README: Your hardware).
    gradient_checkpointing: bool = False
    # torch.compile each transformer layer of the job's models (opt-in: compiling takes time).
    compile: bool = False


@dataclass
class BudgetConfig:
    """How much compute each job may spend, in one unit shared by every algorithm (the default
    choice ``budget=default``)."""

    # steps | samples | tokens | flops | seconds. FLOPs by default: every forward and backward of
    # every model is charged (generation included), so an algorithm that runs more models gets
    # fewer steps. 6e11 is ~100 RRHF steps (~10 s here).
    kind: BudgetKind = BudgetKind.flops
    amount: float = 6e11


@dataclass
class WandbConfig:
    """Weights & Biases settings; offline unless the user asks for online."""

    enabled: bool = True
    mode: str = field(
        default="offline", metadata={"choices": ("offline", "online", "disabled", "shared")}
    )
    project: str = "alignbench"
    entity: str | None = None


@dataclass
class LoggerConfig:
    """Where a job reports besides ``metrics.jsonl`` and ``summary.json``: by default
    (``logger=wandb``) an offline W&B run per job (no account, no network);
    ``logger.wandb.mode=online`` uploads, ``logger=none`` turns W&B off."""

    wandb: WandbConfig = field(default_factory=WandbConfig)
    progress_bar: bool = True


@dataclass
class SFTStageConfig:
    """Stage 1: supervised fine-tuning of the base model on the task's demonstrations."""

    epochs: int = 60
    lr: float = 3e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    # Kept apart from the job seed: every job of a comparison starts from the same SFT model.
    seed: int = 0


@dataclass
class RMStageConfig:
    """Stage 2: the reward model trained on the ranked groups."""

    # Initialise the trunk from the SFT model, or train from scratch.
    init: str = field(default="sft", metadata={"choices": ("sft", "scratch")})
    epochs: int = 20
    lr: float = 3e-4
    batch_size: int = 16
    weight_decay: float = 0.01
    # Share of labelled groups held out to measure pairwise accuracy.
    heldout_share: float = 0.2
    # Early stopping: stop after this many epochs without a lower loss on the held-out groups'
    # labels and keep the best epoch's weights (epoch 0 = untrained); 0 = keep the last epoch.
    patience: int = 3
    seed: int = 0


@dataclass
class StageConfig:
    """Settings of the stages that run before RL (cached by a hash of what determines them)."""

    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    rm: RMStageConfig = field(default_factory=RMStageConfig)


@dataclass
class PruneConfig:
    """Pruning of a hyperparameter search's trials at the intermediate evaluations (Optuna's
    pruners over the search's earlier trials; :class:`alignbench.tuning.TrialPruner`)."""

    # none | median | percentile | halving (Optuna's MedianPruner, PercentilePruner,
    # SuccessiveHalvingPruner); needs `optimized_metric` and `eval.points` >= 2.
    pruner: str = field(
        default="none", metadata={"choices": ("none", "median", "percentile", "halving")}
    )
    # Finished trials before any trial is pruned, and the first evaluation point (1, 2, ... of
    # `eval.points`) at which a trial may be.
    startup_trials: int = 3
    warmup_points: int = 1
    # percentile: prune a trial below this percentile of the earlier trials at the same point.
    percentile: float = 25.0


@dataclass
class EvalConfig:
    """Greedy evaluation on the task's eval sets (dev, test, ...), at fixed budget points."""

    # Evaluations spread evenly over the budget, in the budget's own unit (FLOPs by default), so
    # every algorithm of a comparison is evaluated at the same compute; plus one at the start.
    # 0 = only at the start and the end.
    points: int = 10
    # Greedy answers of at most this many tokens. Not read from `algo.sampling`: evaluation is
    # the same for every algorithm of a comparison, whatever each one samples with.
    max_new_tokens: int = 8
    batch_size: int = 256


@dataclass
class PlacementConfig:
    """Where each frozen or auxiliary model runs (alignbench/placement.py): empty = the job's
    ``device=``; ``cpu``, ``cuda``, ``cuda:<index>`` or ``mps`` moves it there (its inputs and
    outputs cross at its boundary)."""

    # The frozen reference (the KL anchor), the learned reward model (reward=rm), the critic.
    reference: str = ""
    reward: str = ""
    critic: str = ""


@dataclass
class Config:
    """The whole job: the schema of ``conf/config.yaml``."""

    algo: Any = MISSING
    task: Any = MISSING
    reward: Any = MISSING
    feedback: Any = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    # The world: the task's data seed and the stage-1 SFT seed (task.seed and stage.sft.seed
    # default to it). Sweep it beside `seed`: results vary between worlds more than between seeds.
    world: int = 0
    # Folders whose *.py files are loaded as plugins (read from the command line before Hydra).
    plugin_dirs: list[str] = field(default_factory=list)
    # Where stage artefacts (the SFT model, ...) are cached, shared by every job and sweep.
    cache_dir: str = "results/cache"
    # Where the models run: auto = cuda if available, else mps, else cpu (alignbench/hardware.py).
    device: str = field(default="cpu", metadata={"choices": ("auto", "cpu", "cuda", "mps")})
    # Autocast around rollout, score, update and evaluation; weights stay fp32.
    precision: str = field(default="fp32", metadata={"choices": ("fp32", "bf16", "fp16")})
    # Per-model devices (e.g. placement.reference=cpu beside device=cuda); empty = `device`.
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    # torch intra-op threads; 0 leaves torch's default.
    threads: int = 0
    # Save a resumable checkpoint every this many steps (and on SIGTERM / Ctrl-C); 0 = only then.
    checkpoint_every: int = 50
    # A NaN or inf in a loss, gradient or reward: `stop` the job (last checkpoint kept) or `skip`
    # the batch and go on.
    on_nonfinite: OnNonFinite = OnNonFinite.stop
    # Run again even if this job's folder holds a finished run (the old results are moved aside).
    rerun: bool = False
    # Rebuild a cached stage that fails its checks (a changed file, other core code or torch /
    # transformers version) instead of refusing it; the old folder is moved to `<key>.old-<time>`.
    cache_rebuild: bool = False
    # Hyperparameter search: the final-evaluation metric a job returns to the sweeper (a dev/
    # metric, e.g. dev/gold_reward; set by conf/hparams_search/*.yaml); empty returns nothing.
    optimized_metric: str = ""
    # Stop a search's trial early at an intermediate evaluation when it is behind the earlier
    # trials at the same budget point (off by default; conf/hparams_search/*.yaml turn it on).
    prune: PruneConfig = field(default_factory=PruneConfig)


#: The core groups: each one's schema and the name of its default choice (conf/config.yaml).
_SCHEMAS: dict[str, tuple[type, str]] = {
    "model": (ModelConfig, "tiny"),
    "budget": (BudgetConfig, "default"),
    "logger": (LoggerConfig, "wandb"),
}


def store_core_schemas() -> None:
    """Put the core dataclasses into Hydra's ConfigStore (idempotent): each group's schema as
    ``<group>/base_<group>`` (what a YAML variant starts from) and, as its default choice, the
    dataclass itself: its defaults are the only ones, no YAML repeats them."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, (schema, default) in _SCHEMAS.items():
        cs.store(group=group, name=f"base_{group}", node=schema)
        cs.store(group=group, name=default, node=schema)


def ships_yaml(group: str, name: str) -> bool:
    """Whether ``conf/<group>/<name>.yaml`` exists in the packaged config folder."""
    try:
        return resources.files(CONF_PACKAGE).joinpath(group, f"{name}.yaml").is_file()
    except ModuleNotFoundError:
        return False


def shipped_yaml_names(group: str) -> list[str]:
    """The names of the ``conf/<group>/*.yaml`` files in the packaged config folder."""
    try:
        folder = resources.files(CONF_PACKAGE).joinpath(group)
        return sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml"))
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        return []


def store_plugin_schema(group: str, name: str, schema: type) -> None:
    """Store a plugin config as `<group>/base_<name>`, and as `<group>/<name>` if no YAML ships."""
    node = OmegaConf.structured(schema)
    node.name = name
    cs = ConfigStore.instance()
    cs.store(group=group, name=f"base_{name}", node=node)
    if not ships_yaml(group, name):
        cs.store(group=group, name=name, node=node)


#: Algorithm options added after results existed, off by default (PPO's speed switches): left
#: out of a config's fingerprint and record while false.
ALGO_OFF_SWITCHES = ("lean_forward", "fused_adamw")
#: Reward options added after results existed, off by default (``reward.lean_forward``).
REWARD_OFF_SWITCHES = ("lean_forward",)
#: Model-folder keys added after results existed (``algo.critic_path``, ``reward.path``): left
#: out of a config's fingerprint and record while empty.
MODEL_FOLDER_KEYS = (("algo", "critic_path"), ("reward", "path"))
#: task=dataset's keys added after results existed (its conversations: ``task.system_prompt``,
#: ``task.columns.messages`` / ``system``), with their unset value: left out of a config's
#: fingerprint, stage keys and record while unset (another task's fields are left alone).
TASK_UNSET_KEYS = (
    (("system_prompt",), ""),
    (("columns", "messages"), None),
    (("columns", "system"), None),
)


def omit_off_switches(plain: dict[str, Any]) -> dict[str, Any]:
    """A plain config without ``precision=fp32``, ``prune.pruner=none``, ``model.lora`` with
    ``r=0`` (switches that are off) or its default ``targets=[policy]``, and the
    :data:`ALGO_OFF_SWITCHES` that are false, so that results and checkpoints made before those
    keys existed keep their fingerprint and recorded config."""
    plain = dict(plain)
    if plain.get("precision") == "fp32":
        plain.pop("precision")
    if (plain.get("prune") or {}).get("pruner") == "none":
        plain.pop("prune")
    # Also off: every model on the job's device, no gradient checkpointing, no torch.compile.
    if not any((plain.get("placement") or {}).values()):
        plain.pop("placement", None)
    model = plain.get("model")
    if isinstance(model, dict):
        off = {k for k in ("gradient_checkpointing", "compile") if model.get(k) is False}
        lora = model.get("lora") or {}
        if not lora.get("r"):
            off.add("lora")
        elif lora.get("targets") == ["policy"]:  # the default: LoRA results made before targets
            model = {**model, "lora": {k: v for k, v in lora.items() if k != "targets"}}
        plain["model"] = {k: v for k, v in model.items() if k not in off}
    algo = plain.get("algo")
    if isinstance(algo, dict):
        plain["algo"] = {
            k: v for k, v in algo.items() if not (k in ALGO_OFF_SWITCHES and v is False)
        }
    reward = plain.get("reward")
    if isinstance(reward, dict):
        plain["reward"] = {
            k: v for k, v in reward.items() if not (k in REWARD_OFF_SWITCHES and v is False)
        }
    # The sampler's default draw (multinomial) leaves older records alone, in every sampling node.
    for group, node in list(plain.items()):
        sampling = node.get("sampling") if isinstance(node, dict) else None
        if isinstance(sampling, dict) and sampling.get("draw") == "multinomial":
            sampling = {k: v for k, v in sampling.items() if k != "draw"}
            plain[group] = {**node, "sampling": sampling}
    # A critic or reward model from its own folder: off (empty) leaves older records alone.
    for group, key in MODEL_FOLDER_KEYS:
        node = plain.get(group)
        if isinstance(node, dict) and node.get(key) == "":
            plain[group] = {k: v for k, v in node.items() if k != key}
    if isinstance(plain.get("task"), dict):
        plain["task"] = omit_unset_task_keys(plain["task"])
    return plain


def omit_unset_task_keys(task: dict[str, Any]) -> dict[str, Any]:
    """A plain task node without the :data:`TASK_UNSET_KEYS` that hold their unset value (of
    ``task=dataset`` only: another task's fields of the same names were always keyed)."""
    if task.get("name") != "dataset":
        return task
    for path, unset in TASK_UNSET_KEYS:
        *parents, key = path
        node = task
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if not isinstance(node, dict) or key not in node or node[key] != unset:
            continue
        # Copied on the way down: the caller's dict is left as it was.
        task = dict(task)
        inner = task
        for parent in parents:
            inner[parent] = dict(inner[parent])
            inner = inner[parent]
        inner.pop(key)
    return task


def to_object(node: DictConfig) -> Any:
    """Turn a structured config node back into its dataclass instance (typed, attribute access)."""
    return OmegaConf.to_object(node)
