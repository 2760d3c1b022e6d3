#!/usr/bin/env bash
# The BLEU-latency table of docs/cost.md: every row, from two finished runs.
#   bash bench/cost_table.sh workdir/best workdir/distill costs.jsonl [bleu|latency]
# TEACHER: a configs/multi30k_best.py run; STUDENT: its `make distill` student.
# The optional last argument runs one half (BLEU needs no quiet machine, timings do);
# rows append to OUT; `python bench/cost_table.py --table=OUT` prints the table.
set -euo pipefail
TEACHER=$1 STUDENT=$2 OUT=$3 MEASURE=${4:-bleu,latency}
PY=${PY:-.venv/bin/python}
row() { "$PY" bench/cost_table.py --measure="$MEASURE" --output="$OUT" "$@"; }
row --workdir="$TEACHER" --name="teacher"
row --workdir="$TEACHER" --name="teacher beam 3 alpha 1.0" --beam_size=3 --alpha=1.0
row --workdir="$TEACHER" --name="teacher int8" --quantize=int8
row --workdir="$TEACHER" --name="teacher CTranslate2 int8, 1 thread" --engine=ctranslate2 \
    --intra_threads=1
row --workdir="$STUDENT" --name="student beam 4" --beam_size=4 --alpha=0.6
row --workdir="$STUDENT" --name="student"   # its config: beam 2, alpha 1.0
row --workdir="$STUDENT" --name="student greedy" --beam_size=1
row --workdir="$STUDENT" --name="student int8" --quantize=int8
row --workdir="$STUDENT" --name="student int8 greedy" --quantize=int8 --beam_size=1
row --workdir="$STUDENT" --name="student CTranslate2 int8, 1 thread" --engine=ctranslate2 \
    --intra_threads=1
# Other settings the table can hold: --dtype=bfloat16, --quantize=int8_weights,
# --engine=ctranslate2 with the default threads (the cores).
