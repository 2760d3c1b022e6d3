#!/usr/bin/env bash
# The BLEU-latency table of README "Inference cost": every row, from two finished runs.
#   bash bench/cost_table.sh workdir/best workdir/distill costs.jsonl [bleu|latency]
# TEACHER: a configs/multi30k_best.py run; STUDENT: its `make distill` student.
# The optional last argument runs one half (BLEU needs no quiet machine, timings do);
# rows append to OUT; `python bench/cost_table.py --table=OUT` prints the table.
set -euo pipefail
TEACHER=$1 STUDENT=$2 OUT=$3 MEASURE=${4:-bleu,latency}
PY=${PY:-.venv/bin/python}
row() { "$PY" bench/cost_table.py --measure="$MEASURE" --output="$OUT" "$@"; }
row --workdir="$TEACHER" --name="teacher"
row --workdir="$TEACHER" --name="teacher bf16" --dtype=bfloat16
row --workdir="$TEACHER" --name="teacher int8" --quantize=int8
row --workdir="$TEACHER" --name="teacher int8 weight-only" --quantize=int8_weights
row --workdir="$TEACHER" --name="teacher greedy" --beam_size=1
row --workdir="$TEACHER" --name="teacher CTranslate2 int8" --engine=ctranslate2
row --workdir="$TEACHER" --name="teacher CTranslate2 int8, 1 thread" --engine=ctranslate2 \
    --intra_threads=1
row --workdir="$TEACHER" --name="teacher CTranslate2 float32, 1 thread" \
    --engine=ctranslate2 --compute_type=float32 --intra_threads=1
row --workdir="$STUDENT" --name="student"
row --workdir="$STUDENT" --name="student int8" --quantize=int8
row --workdir="$STUDENT" --name="student greedy" --beam_size=1
row --workdir="$STUDENT" --name="student int8 greedy" --quantize=int8 --beam_size=1
row --workdir="$STUDENT" --name="student CTranslate2 int8" --engine=ctranslate2
row --workdir="$STUDENT" --name="student CTranslate2 int8, 1 thread" --engine=ctranslate2 \
    --intra_threads=1
