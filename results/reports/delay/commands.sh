#!/usr/bin/env bash
# Delayed feedback (issue 16.4): PPO with the learned reward model and 4 online feedback rounds
# over 40 steps (labels requested at steps 8, 16, 24, 32), labels arriving D steps after they
# were requested, D = 0, 4, 8, 16; a control without online rounds; 3 seeds each, one job at a
# time with one torch thread (2 shared CPU cores). ~2 min per job.
set -euo pipefail
export HF_HUB_OFFLINE=1
COMMON=(algo=ppo reward=rm feedback.labels=100 budget.kind=steps budget.amount=40 eval.points=4
        threads=1 logger=none hydra/launcher=joblib hydra.launcher.n_jobs=1
        hydra.sweep.dir=results/sweeps/delay)
python -m alignbench "${COMMON[@]}" feedback.rounds=4 feedback.delay=0,4,8,16 seed=0,1,2 --multirun
# The control ran after other code of the repository had changed (batch.py, budget.py,
# stages.py): the cached stage-1 model was refused as built by other code, so it is rebuilt
# (same config and seed; see the README for whether the weights came out the same).
python -m alignbench "${COMMON[@]}" feedback.rounds=0 seed=0,1,2 cache_rebuild=true --multirun
# The proxy reward (test/reward) is the job's own reward model, which online rounds change: the
# gold utility is the comparable number.
python -m alignbench.compare results/sweeps/delay --out results/reports/delay/comparison.md \
  --group-by feedback.rounds --group-by feedback.delay --x steps --curve-metric test/gold_reward \
  --metric test/gold_reward --metric dev/gold_reward --metric test/accuracy_known \
  --metric test/hallucination_unknown --metric test/abstain_unknown --metric budget/flops \
  --baseline "feedback.rounds=4 feedback.delay=0" --no-plots
