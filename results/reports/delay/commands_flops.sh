#!/usr/bin/env bash
# Delayed feedback at equal FLOPs (issue 16.4, second sweep): the first sweep (commands.sh) gave
# every arm 40 policy steps, so arms whose labels had not arrived also spent fewer FLOPs. Here
# every job gets the same FLOP budget (2e12: about 40 steps of the undelayed arm), so an arm that
# retrains its reward model less often takes more policy steps. PPO, learned reward model (100
# labelled groups), 4 online rounds (at 1/5, 2/5, 3/5, 4/5 of the budget), labels arriving
# D = 0, 8, 16 steps after they were requested; control without online rounds. 2 worlds x 4
# seeds per arm (32 jobs), two jobs at a time with one torch thread each (2 CPU cores).
set -euo pipefail
export HF_HUB_OFFLINE=1
COMMON=(algo=ppo reward=rm feedback.labels=100 budget.kind=flops budget.amount=2e12 eval.points=4
        threads=1 logger=none hydra/launcher=joblib hydra.launcher.n_jobs=2
        hydra.sweep.dir=results/sweeps/delay_flops world=0,1 seed=0,1,2,3)
python -m alignbench "${COMMON[@]}" feedback.rounds=4 feedback.delay=0,8,16 --multirun
python -m alignbench "${COMMON[@]}" feedback.rounds=0 --multirun
# The proxy reward (test/reward) is each job's own reward model, which online rounds change: the
# gold utility is the comparable number. Cells bootstrap over worlds, then seeds.
python -m alignbench.compare results/sweeps/delay_flops \
  --out results/reports/delay/comparison_flops.md \
  --group-by feedback.rounds --group-by feedback.delay --x flops --curve-metric test/gold_reward \
  --metric test/gold_reward --metric dev/gold_reward --metric test/accuracy_known \
  --metric test/hallucination_unknown --metric test/abstain_unknown --metric budget/steps \
  --baseline "feedback.rounds=4 feedback.delay=0" --no-plots
