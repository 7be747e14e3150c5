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
