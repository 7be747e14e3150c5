#!/usr/bin/env bash
# Step 1 of results/reports/methods/: tune every trained method on dev, the same way
# (conf/hparams_search/facts.yaml: 8 Optuna trials, the default FLOP budget per trial, world 0,
# seed 0, dev/gold_reward under the abstention reward; the learning rate on a log scale over
# 3e-5..1e-3, and each method's own regularisation strength over 1/10..10x its recipe-card
# default). Best-of-N trains nothing and is not tuned (N = 16, its recipe card).
# Run from the repository root with .venv active; two searches at a time, one thread each
# (about 30 minutes on 2 cores). Each search writes results/sweeps/tune/<algo>/<algo>_facts_best.yaml.
set -euo pipefail
search() {  # search ALGO [STRENGTH-KEY RANGE]
  local algo=$1
  shift
  python -m alignbench hparams_search=facts algo="$algo" "$@" \
    hydra.callbacks.best_trial.name="${algo}_facts" hydra.sweeper.study_name="${algo}_facts" \
    hydra.sweep.dir="results/sweeps/tune/$algo" --multirun > "results/sweeps/tune/$algo.log" 2>&1
}
mkdir -p results/sweeps/tune
search sft &
search rrhf 'algo.rank_weight=tag(log, interval(0.1, 10))' &
wait
search ppo 'algo.kl_coef=tag(log, interval(0.005, 0.5))' &
search dpo 'algo.beta=tag(log, interval(0.01, 1))' &
wait
search online_dpo 'algo.beta=tag(log, interval(0.01, 1))' &
search grpo 'algo.beta=tag(log, interval(0.004, 0.4))' &
wait
search rloo 'algo.beta=tag(log, interval(0.005, 0.5))' &
search reinforce_pp 'algo.beta=tag(log, interval(0.001, 0.1))' &
wait
grep -h "tuning:" results/sweeps/tune/*.log
