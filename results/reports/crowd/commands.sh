#!/usr/bin/env bash
# Crowd aggregation (issue 16.3): five simulated annotators of unequal care — error rates
# 0.05, 0.1, 0.4, 0.45, 0.45, the last one also favouring long answers (length bias 0.5) — three
# of them (drawn at random) label each group; the stage-2 reward model is trained on labels
# aggregated by mean rank, majority vote and Dawid-Skene, at 50, 100 and 200 labelled groups,
# 3 seeds each (27 reward models from one stage-1 SFT model, ~5 min on 2 shared CPU cores).
# cache_rebuild=true: reward models cached by older code of stage 2 are rebuilt, not refused.
set -euo pipefail
export HF_HUB_OFFLINE=1
python -m alignbench.crowd_study --seeds 3 --budgets 50,100,200 \
  --out results/reports/crowd/report.md \
  "feedback.annotator_noise=[0.05,0.1,0.4,0.45,0.45]" \
  "feedback.annotator_length_bias=[0,0,0,0,0.5]" \
  feedback.annotators_per_group=3 threads=1 cache_rebuild=true
# The same with the abstention phrase in every group (feedback.include_abstention=true): many
# more strictly ordered pairs, so more for the annotators to disagree on.
python -m alignbench.crowd_study --seeds 3 --budgets 50,100,200 \
  --out results/reports/crowd/with_abstention.md \
  "feedback.annotator_noise=[0.05,0.1,0.4,0.45,0.45]" \
  "feedback.annotator_length_bias=[0,0,0,0,0.5]" \
  feedback.annotators_per_group=3 feedback.include_abstention=true threads=1 cache_rebuild=true

# Downstream (issue 16.3, second part): PPO-ptx (the default PPO) at the default FLOP budget
# (6e11) on a reward model trained on each aggregation of the same crowd, at 50 and 200 labelled
# groups, seeds 0, 1, 2 (each also sets feedback.seed and stage.rm.seed, as above), one world
# (world 0, the stage-1 SFT model abc4795f), evaluated on dev and test at the start, twice
# during and at the end of the budget. The sweep is conf/experiment/crowd_rl.yaml (2 jobs at a
# time, one torch thread each; 18 jobs, ~7 min on the 2 shared cores, the SFT build included).
python -m alignbench +experiment=crowd_rl --multirun hydra.sweep.dir=results/sweeps/crowd_rl
# Control: one annotator without noise or bias (labels = the gold order), same budgets and seeds
# (6 jobs, ~3 min): what a perfect crowd would give this reward model and PPO.
python -m alignbench +experiment=crowd_rl --multirun hydra.sweep.dir=results/sweeps/crowd_rl \
  "feedback.annotator_noise=[]" "feedback.annotator_length_bias=[]" \
  feedback.annotators_per_group=0 feedback.aggregate=mean_rank
# The same sweep with the abstention phrase in every group (18 jobs, ~7 min).
python -m alignbench +experiment=crowd_rl --multirun \
  hydra.sweep.dir=results/sweeps/crowd_rl_abstention feedback.include_abstention=true
# Tables: alignbench.compare per label budget (the control is the group with
# annotators_per_group=0), and the reward model of each job beside its policy with the
# differences to the mean rank paired by seed.
METRICS=(--metric test/hallucination_unknown --metric test/abstain_unknown
         --metric test/accuracy_known --metric test/gold_reward --metric dev/gold_reward
         --metric dev/hallucination_unknown --metric budget/flops)
for sweep in crowd_rl crowd_rl_abstention; do
  suffix=${sweep#crowd_rl}
  for labels in 50 200; do
    python -m alignbench.compare results/sweeps/$sweep --where feedback.labels=$labels \
      --group-by feedback.aggregate --group-by feedback.annotators_per_group \
      --baseline "feedback.aggregate=mean_rank feedback.annotators_per_group=3" \
      --curve-metric test/gold_reward "${METRICS[@]}" --no-plots --out results/reports/crowd/downstream${suffix}_${labels}labels.md
  done
  python results/reports/crowd/downstream_tables.py results/sweeps/$sweep \
    --out results/reports/crowd/downstream${suffix}.md
done
