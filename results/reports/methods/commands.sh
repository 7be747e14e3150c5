#!/usr/bin/env bash
# The commands behind results/reports/methods/ (run from the repository root, .venv active).
# 1. The dev search of every trained method (about 45 minutes on 2 CPU cores); its best trials
#    are committed as conf/algo/<algo>_facts.yaml and results/reports/methods/tuning/:
#      bash results/reports/methods/tune.sh
# 2. The comparison sweep, 108 jobs (about an hour on 2 CPU cores; it skips what already
#    finished when run again):
#      python -m alignbench +experiment=methods --multirun hydra.sweep.dir=results/sweeps/methods
#    (run here in two halves, `seed=1` then `seed=2` added to that line, the same 108 jobs in the
#    same folder: 22 minutes each on the 2 cores; the reports' "Made by" line shows the last half)
# 3. The tables and plots (seconds):
set -euo pipefail
R=results/reports/methods
S=results/sweeps/methods
M=(--metric test/accuracy_known --metric test/hallucination_unknown
   --metric test/abstain_unknown --metric test/gold_reward --metric dev/gold_reward)
# Every group, both rewards, against continued SFT under the abstention reward.
python -m alignbench.compare $S --baseline "algo=sft_facts reward=abstention" "${M[@]}" \
  --metric test/flops_per_question --metric budget/flops --metric steps --metric wall_time \
  --curve-metric test/gold_reward --out $R/comparison.md
# One reward at a time, against continued SFT at the same FLOPs, with that reward's curves.
for reward in abstention exact_match; do
  python -m alignbench.compare $S --where reward=$reward --baseline algo=sft_facts "${M[@]}" \
    --metric test/reward --metric test/flops_per_question --out $R/$reward.md
done
# Against PPO-ptx (the method the others are usually compared with), abstention reward.
python -m alignbench.compare $S --where reward=abstention --baseline algo=ppo_facts "${M[@]}" \
  --metric test/reward --no-plots --out $R/vs_ppo.md
