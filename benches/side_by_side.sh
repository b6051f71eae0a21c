#!/usr/bin/env bash
# Conclave against llama.cpp on the same GGUF files, 2 threads, one model after the other so
# that both see the same machine (its speed drifts; compare within one run only).
#
#   LLAMA_CPP_BIN=/tmp/llama.cpp/build/bin benches/side_by_side.sh [model ...]
#
# llama.cpp is built outside the repo (see issue 4 or the README's "Speed" paragraph):
# `llama-bench` gives pp128 and tg64, `llama-batched-bench` decode at 1 and 8 sequences of one
# prompt; `conclave bench-speed` the same for N = 1 and 8 samples, with sampling, the mean of
# 3 runs as llama-bench's -r 3 (the sizes taking turns). Both batched runs make 128 new tokens
# per sequence, as issue 4's target (N = 8 costs at most 2× the wall time of N = 1) is stated.
#
# CONCLAVE_BASE=path/to/an/earlier/conclave compares a change with the binary before it: the two
# binaries' bench-speed runs take turns, ROUNDS times each (default 2), after llama.cpp's, so
# that every figure of the change has a figure of its base from the same minutes beside it.
set -euo pipefail
bin=${LLAMA_CPP_BIN:?set LLAMA_CPP_BIN to the folder with llama-bench and llama-batched-bench}
conclave=${CONCLAVE:-$(dirname "$0")/../target/release/conclave}
declare -A file=(
    [smollm2-135m]=SmolLM2-135M-Instruct.Q4_1.gguf
    [qwen2.5-coder-0.5b]=qwen2.5-coder-0.5b-instruct-q4.gguf
    [gemma3-270m]=gemma-3-270m-q4_k_m.gguf
)
base=${CONCLAVE_BASE:-}
rounds=${ROUNDS:-2}
models=${CONCLAVE_MODELS:-$HOME/.cache/conclave/models}
for m in "${@:-smollm2-135m qwen2.5-coder-0.5b gemma3-270m}"; do
    for name in $m; do
        gguf=$models/${file[$name]}
        echo "=== $name"
        LD_LIBRARY_PATH=$bin "$bin/llama-bench" -m "$gguf" -t 2 -p 128 -n 64 -r 3 2>/dev/null | grep -E '^\|'
        LD_LIBRARY_PATH=$bin "$bin/llama-batched-bench" -m "$gguf" -t 2 -c 4096 -b 2048 -ub 512 \
            -npp 128 -ntg 128 -npl 1,8 -pps 2>/dev/null | grep -E '^\|'
        speed() { "$1" bench-speed --model "$name" --sizes 1,8 --max-tokens 128 --prompt-tokens 128 --repeats 3; }
        if [[ -z $base ]]; then
            speed "$conclave"
            continue
        fi
        for ((r = 1; r <= rounds; r++)); do
            echo "--- round $r: base ($base)"
            speed "$base"
            echo "--- round $r: this ($conclave)"
            speed "$conclave"
        done
    done
done
