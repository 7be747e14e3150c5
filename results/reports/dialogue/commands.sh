#!/usr/bin/env bash
# The commands behind results/reports/dialogue/ (run from the repository root, .venv active).
# The sweep (about an hour on 2 CPU cores; it skips what already finished when run again):
#   python -m alignbench +experiment=dialogue --multirun hydra.sweep.dir=results/sweeps/dialogue
# The tables and plots (seconds):
set -euo pipefail
R=results/reports/dialogue
S=results/sweeps/dialogue
M=(--metric test/hallucination_turn --metric test/hallucination_turn_unknown
   --metric test/accuracy_turn_known --metric test/abstain_turn_unknown
   --metric test/contradictions --metric test/consistency_violation_rate
   --metric test/goal_success --metric test/reference_accuracy --metric test/gold_reward)
# Every group against per-turn PPO: does training on the whole dialogue (reward=dialogue, or
# terminal credit) change coherence? Gold utility is on one scale for every reward.
python -m alignbench.compare $S --baseline "algo=ppo reward=turn" "${M[@]}" \
  --metric dev/gold_reward --metric budget/flops --metric steps --metric wall_time \
  --curve-metric test/gold_reward --out $R/comparison.md
# One reward at a time, against continued SFT at the same FLOPs (its own reward's curves).
for reward in turn dialogue mixed; do
  python -m alignbench.compare $S --where reward=$reward --baseline algo=sft "${M[@]}" \
    --metric test/reward --metric budget/flops --out $R/$reward.md
done
