"""vLLM as alignbench's inference engine: ``run.sample``'s decoding on a GPU, through the
``alignbench_generate`` hook.

    pip install "alignbench[vllm]"
    python -m alignbench algo=grpo device=cuda plugin_dirs=[examples]

Untested by alignbench's suite (it has no GPU; the suite checks only that this file imports
without vLLM and refuses cleanly, at start-up through ``alignbench_engine_check``: no vLLM, or
no CUDA GPU for the job, is one line before stage 1). Written against vLLM's public API:
``vllm.LLM`` on the stage-1 model's folder, ``LLM.generate`` with ``{"prompt_token_ids": ...}``
prompts and ``vllm.SamplingParams``. What it does, and what it leaves to alignbench:

* It serves ``run.policy`` only; any other model sampled (RRHF's SFT source, a LoRA policy)
  gets None: the built-in sampler decodes it.
* Weight sync is the engine's job: before the first generation of each step the policy's
  current weights are loaded into vLLM (``load_weights``), else vLLM would sample the stage-1
  model forever. One process, one GPU, tensor parallelism 1: with vLLM's V1 engine set
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` so the model lives in this process.
* vLLM's random state is its own (seeded from ``seed=`` when the engine starts), outside
  alignbench's generator: a run through it is not bit-reproducible.
* alignbench checks every answer, computes the log-probs with the policy's own forward and
  charges the budget what its built-in sampler would have spent on the same tokens.

``ALIGNBENCH_VLLM_MEMORY`` (default 0.3): the share of GPU memory vLLM may take; the policy
trains on the same GPU.
"""

from __future__ import annotations

import os
from typing import Any

import alignbench

#: Per process: the vLLM engine, the run it serves (a sweep's next job in the same process
#: gets an engine of its own: another stage-1 model, seed and budget) and the step whose
#: weights it holds.
_STATE: dict[str, Any] = {"llm": None, "run": None, "synced_step": None}

# vLLM's V1 engine must run in this process for load_weights to reach the served model.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _vllm() -> Any:
    """The vllm module, or one line naming the extra to install."""
    try:
        import vllm
    except ImportError:
        raise alignbench.PluginError(
            "examples/vllm_engine.py needs vLLM, which is not installed — pip install "
            "alignbench[vllm] (on a machine with a CUDA GPU), or drop it from plugin_dirs"
        ) from None
    return vllm


def _engine(run: alignbench.Run) -> Any:
    """The vLLM engine on the stage-1 model's folder (started on first use)."""
    if _STATE["run"] is not run:  # another job of the sweep: not the last job's engine
        _STATE.update(llm=None, run=run, synced_step=None)
    if _STATE["llm"] is None:
        vllm = _vllm()
        _STATE["llm"] = vllm.LLM(
            model=str(run.sft_path),
            tokenizer=str(run.sft_path),
            seed=run.seed,
            gpu_memory_utilization=float(os.environ.get("ALIGNBENCH_VLLM_MEMORY", "0.3")),
        )
    return _STATE["llm"]


def _load_weights(llm: Any, model: Any) -> None:
    """Copy ``model``'s current weights into vLLM's copy of it (vLLM's ``load_weights`` takes
    Hugging Face names; where the model lives depends on vLLM's version)."""
    weights = [(name, tensor.detach()) for name, tensor in model.state_dict().items()]
    if hasattr(llm, "apply_model"):  # vLLM >= 0.8 (V1 in-process)
        llm.apply_model(lambda served: served.load_weights(weights))
    else:  # vLLM 0.6-0.7 (V0)
        served = llm.llm_engine.model_executor.driver_worker.model_runner.model
        served.load_weights(weights)


def _response(completion: Any, eos: list[int]) -> list[int]:
    """A completion's token ids ending with the stop id that ended it (vLLM may leave a stop
    token out of ``token_ids``; alignbench's sampler keeps it, and trains on it)."""
    ids = list(completion.token_ids)
    stopped = getattr(completion, "finish_reason", None) == "stop"
    if stopped and (not ids or ids[-1] not in eos):
        reason = getattr(completion, "stop_reason", None)
        ids.append(reason if isinstance(reason, int) else eos[0])
    return ids


@alignbench.hookimpl
def alignbench_engine_check(device: str) -> None:
    """At start-up, before stage 1: vLLM installed, and the job on a CUDA GPU."""
    _vllm()
    import torch

    if device == "cpu" or device == "mps" or not torch.cuda.is_available():
        raise alignbench.PluginError(
            f"examples/vllm_engine.py decodes on a CUDA GPU, but the job runs with "
            f"device={device} (CUDA available: {torch.cuda.is_available()}) — give "
            "device=cuda on a GPU machine, or drop it from plugin_dirs"
        )


@alignbench.hookimpl
def alignbench_generate(
    run: alignbench.Run,
    model: Any,
    prompt_ids: list[list[int]],
    num_samples: int,
    params: Any,
) -> list[list[int]] | None:
    """``num_samples`` responses per prompt from vLLM, prompt-major; None for a model other
    than the policy (the built-in sampler decodes it)."""
    if model is not run.policy or alignbench.is_lora(model):
        return None
    vllm = _vllm()
    llm = _engine(run)
    if _STATE["synced_step"] != run.step:  # the policy changed since the last sync
        _load_weights(llm, model)
        _STATE["synced_step"] = run.step
    eos = alignbench.eos_ids(model, run.tokenizer)
    # Greedy: each prompt repeated (vLLM refuses n > 1 without sampling in some versions).
    greedy = params.greedy
    sampling = vllm.SamplingParams(
        n=1 if greedy else num_samples,
        temperature=0.0 if greedy else params.temperature,
        top_k=params.top_k if params.top_k > 0 else -1,
        top_p=params.top_p,
        max_tokens=params.max_new_tokens,
        min_tokens=params.min_new_tokens,
        stop_token_ids=eos,
    )
    requests = [
        {"prompt_token_ids": ids} for ids in prompt_ids for _ in range(num_samples if greedy else 1)
    ]
    outputs = llm.generate(requests, sampling, use_tqdm=False)
    return [_response(c, eos) for output in outputs for c in output.outputs]
