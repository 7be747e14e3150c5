#!/usr/bin/env bash
# The commands behind results/reports/headline/ (run from the repository root, .venv active).
# The sweeps (hours on 2 CPU cores; each skips what already finished when run again):
#   python -m alignbench +experiment=headline --multirun hydra.sweep.dir=results/sweeps/headline
#   python -m alignbench +experiment=headline_budget --multirun hydra.sweep.dir=results/sweeps/headline_budget
#   python -m alignbench +experiment=headline_budget --multirun hydra.sweep.dir=results/sweeps/headline_budget16 budget.amount=9.6e12
# The tables and plots (seconds):
set -euo pipefail
R=results/reports/headline
S=results/sweeps
KIND=(--metric test/hallucination_unknown_partial --metric test/abstain_unknown_partial
      --metric test/hallucination_unknown_obscure --metric test/abstain_unknown_obscure
      --metric test/accuracy_known_partial --metric test/abstain_known_partial
      --metric test/accuracy_known_famous)
# Every group, both rewards; the cost section on the gold utility (same scale for both rewards).
python -m alignbench.compare $S/headline --baseline "algo=sft reward=abstention" \
  --metric test/accuracy_known --metric test/hallucination_unknown --metric test/abstain_unknown \
  --metric test/gold_reward --metric dev/gold_reward --metric eval_rl/hallucination_unknown \
  --metric budget/flops --metric steps --metric wall_time \
  --curve-metric test/gold_reward --out $R/comparison.md
# One reward at a time: its own reward's curves, and the cost question RRHF vs PPO.
for reward in abstention exact_match; do
  python -m alignbench.compare $S/headline --where reward=$reward --baseline algo=sft \
    --metric test/accuracy_known --metric test/hallucination_unknown --metric test/abstain_unknown \
    --metric test/reward --metric test/gold_reward --metric budget/flops \
    --reach algo=rrhf algo=ppo --out $R/$reward.md
  python -m alignbench.compare $S/headline --where reward=$reward --baseline algo=sft "${KIND[@]}" \
    --no-plots --out $R/${reward}_by_kind.md
done
# The budget sweep: 4x and 16x the default budget, read at 1/16, 1/4 and all of it.
python -m alignbench.compare $S/headline_budget --baseline algo=rrhf --reach algo=rrhf algo=ppo \
  --metric test/reward --metric test/hallucination_unknown --metric test/accuracy_known \
  --out $R/budget_4x.md
python -m alignbench.compare $S/headline_budget16 --baseline algo=rrhf --reach algo=rrhf algo=ppo \
  --metric test/reward --metric test/hallucination_unknown --metric test/accuracy_known \
  --out $R/budget_16x.md
