#!/usr/bin/env bash
# The GPU checks of issues #12 and #14 as two calls of a borrowed GPU machine (the device tool).
# Such a machine has its own Python 3.12 and torch but no network, lacks simplejpeg and ruamel.yaml
# (forestseg imports them) and dvc, and gets only the working tree plus carried ignored paths.
#
#   bash bench/gpu_session.sh prepare      here, once: .gpu/sample (the real sample, ~41 MB) and
#                                          .gpu/whl (wheels for the GPU machine's Python 3.12), ~43 MB
#   device run: command "bash bench/gpu_session.sh run" (or "run cv", "run final"), carry [".gpu"], timeout_s 600
#   device run: then, on the warm machine, "bash bench/gpu_session.sh run compile", carry [".gpu"], timeout_s 600
#   bash bench/gpu_session.sh run --cpu-check   the same steps at tiny sizes on this CPU (checks the script)
#
# `run` writes session.log, and with cv or final the quality result (<mode>_gpu_<device>.md/.json), to $OUT (here by default
# /tmp/forestseg-gpu-session), in this order, each step under its own time limit so the call ends well inside
# its 600 s (steps 1 to 3; `run compile` steps 4 and 5). Two calls, not one: on an H100 (2026-12-05 19:41) a call
# of all five steps ended with the machine not answering after ~467 s of device time, and nothing came back.
# Split, the checks' results come back before the exploratory steps run, and each call leaves time to rerun:
#   1. bench/gpu.py --skip-grid: train (counting the host-device synchronisations of its training steps),
#      kill-like stop and resume on CUDA, CPU/CUDA prediction agreement, then bench/speed.py --study
#      --batch 160 --auto-only --nchw (training and predict MFU against the measured bf16 peak)
#   2. bench/profile_train.py --study --batch 160 --kernels: the top kernels by device time, and each
#      convolution's three kernels timed alone against the peak (what holds the MFU down)
#   3. with `run cv` or `run final` only: bench/quality.py cv gpu, the gpu recipe by 5-fold scene CV on the sample, or
#      bench/quality.py final gpu (`run final`): trained on the CV scenes, scored on the 8 set-aside scenes
#      (issue #12's GPU goal: forest IoU >= 0.85). Both are on record (H200, 2026-12-04:
#      bench/results/final_gpu_nvidia_h200.* and cv_gpu_nvidia_h200.*): a plain `run` leaves this step out and
#      gives step 1 170 s instead of 120
#   4. `run compile`: bench/speed.py --study --batch 160 --auto-only --compile-only: the same training with torch.compile
#      alone (where C and C++ compilers and Python.h are there: Inductor and Triton build C at run time)
#      (on the H200 eager bf16 reached 26.8 % of the peak, compiled 43.6 %: what fusing the memory-bound ops buys)
#   5. `run compile`: bench/profile_train.py --study --batch 160 --cudnn-limit 0: the step's time with cuDNN
#      trying every convolution algorithm, not torch's 10
# The queued study grid (bench/gpu.py without --skip-grid) needs dvc and its dependencies as wheels,
# which do not fit in one call beside the sample.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
GPU_DIR=.gpu
LACKED="simplejpeg|ruamel\.yaml|ruamel\.yaml\.clib"  # what forestseg imports and the GPU image lacks

prepare() {
    local sample=${FORESTSEG_SAMPLE:-$REPO/../shared/forest-sample}
    [[ -f $sample/meta_data.csv ]] || { echo "gpu_session: no sample at $sample (set FORESTSEG_SAMPLE)" >&2; exit 1; }
    git check-ignore -q "$GPU_DIR/" || { echo "gpu_session: $GPU_DIR is not ignored by git (.gitignore)" >&2; exit 1; }
    local wheels  # pinned as pyproject.toml pins them
    mapfile -t wheels < <(grep -oE "\"($LACKED)==[^\"]+\"" pyproject.toml | tr -d '"')
    [[ ${#wheels[@]} == 3 ]] || { echo "gpu_session: pyproject.toml pins ${#wheels[@]} of simplejpeg, ruamel.yaml, ruamel.yaml.clib, not 3" >&2; exit 1; }
    local tmp="$GPU_DIR.~new"
    rm -rf "$tmp" && mkdir -p "$tmp/whl"
    cp -r "$sample" "$tmp/sample"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$tmp/whl" "${wheels[@]}"
    # the old folder goes aside whole before it is deleted: a kill never leaves a partial sample at $GPU_DIR
    rm -rf "$GPU_DIR.~old"
    if [ -e "$GPU_DIR" ]; then mv "$GPU_DIR" "$GPU_DIR.~old"; fi
    mv "$tmp" "$GPU_DIR"
    rm -rf "$GPU_DIR.~old"
    local mib
    mib=$(du -sm "$GPU_DIR" | cut -f1)
    echo "gpu_session: $GPU_DIR holds the sample and $(ls "$GPU_DIR/whl" | wc -l) wheels, $mib MiB (a call carries at most 64 MiB with the tree)"
}

step() {  # step SECONDS NAME COMMAND...: one step under its own limit; a failed step does not stop the next
    local limit=$1 name=$2
    shift 2
    echo "=== $name (limit ${limit} s): $*"
    local t0=$SECONDS rc=0
    # each line stamped with the step's elapsed seconds: the next call's limits are set from them
    timeout -k 10 "$limit" "$@" 2>&1 | while IFS= read -r line; do printf '[%3d s] %s\n' $((SECONDS - t0)) "$line"; done ||
        rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s$([[ $rc == 124 || $rc == 137 ]] && echo ' (time limit)')"
}

results() {  # results MODE TAG: moved, not copied: a --cpu-check leaves the checkout's bench/results as it was
    mv bench/results/"$1_gpu_$2".* "$OUT"/ 2>/dev/null || echo "gpu_session: no quality result to move to $OUT"
}

compile_step() {  # compile_step SECONDS SPEED-ARGS...: training timed with torch.compile, where it can build
    # Inductor and Triton compile C at run time (Triton's launcher needs Python.h): without them the
    # step would fail after its imports, so it says why and leaves the time to the others
    if ! python3 -c "import os, shutil, sys, sysconfig
cc = any(map(shutil.which, ('cc', 'gcc'))) and any(map(shutil.which, ('c++', 'g++')))
sys.exit(not cc or not os.path.isfile(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"; then
        echo "=== speed compile: skipped (torch.compile needs C and C++ compilers and Python.h, which this machine lacks)"
        return
    fi
    local limit=$1
    shift
    step "$limit" "speed compile" python3 bench/speed.py "$@" --auto-only --compile-only
}

run() {
    local cpu_check="" mode="" arg
    for arg in "$@"; do
        case $arg in
            --cpu-check) cpu_check=1 ;;
            cv | final | compile) mode=$arg ;;
            *) echo "gpu_session: run takes cv or final (the quality step; none: the checks alone) or compile (the second call), and --cpu-check; not '$arg'" >&2; exit 2 ;;
        esac
    done
    export OUT=${OUT:-/tmp/forestseg-gpu-session} PYTHONUNBUFFERED=1  # not in .gpu, which travels to the device
    mkdir -p "$OUT"
    exec > >(tee -a "$OUT/session.log") 2>&1
    export FORESTSEG_SAMPLE=$REPO/$GPU_DIR/sample
    [[ -f $FORESTSEG_SAMPLE/meta_data.csv ]] || { echo "gpu_session: no $FORESTSEG_SAMPLE: run 'bash bench/gpu_session.sh prepare' here first and carry $GPU_DIR"; exit 1; }
    if ! python3 -c "import simplejpeg, ruamel.yaml" 2>/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/forestseg-site "$GPU_DIR"/whl/*.whl
        export PYTHONPATH=/tmp/forestseg-site${PYTHONPATH:+:$PYTHONPATH}
    fi
    date -u
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    local tag
    if [[ -n $cpu_check ]]; then
        tag=cpu_check
        [[ $mode == cv || $mode == final ]] || mode=cv  # every step of both calls is checked, the quality step too
        step 300 "gpu.py" python3 bench/gpu.py --device cpu --tiny --skip-grid
        step 300 "profile" python3 bench/profile_train.py --study --batch 2 --size 96 --steps 1 --kernels --device cpu
        # a CV's first fold alone: the script's steps, in minutes
        step 300 "quality $mode gpu" python3 bench/quality.py "$mode" gpu --threads 2 --name "${mode}_gpu_$tag" \
            $([[ $mode == cv ]] && echo --only 0) \
            -S model.width=4 -S model.depth=1 -S train.epochs=1 -S optimizer.warmup_epochs=0
        results "$mode" "$tag"
        compile_step 300 --width 4 --depth 2 --batch 4 --steps 2 --repeats 1
        step 300 "profile, every cuDNN algorithm" python3 bench/profile_train.py --study --batch 2 --size 96 --steps 1 \
            --cudnn-limit 0 --device cpu
    elif python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        tag=$(python3 -c "import re, torch; print(re.sub('[^a-z0-9]+', '_', torch.cuda.get_device_name().lower()).strip('_'))")
        # ~20 s before the steps (wheels, torch imports), then at most 430 s of steps (run cv; run final 315,
        # run 215, run compile 275), with the 10 s grace of each step well inside the call's 600 s. On the H200
        # (2026-12-04 18:31): gpu.py printed its last MFU line at 83 s (then the study-style loop, which no
        # step's time finished), the profile took 32 s, the CV 246 s (a final 62 s), the compiled bench its
        # MFU lines at 55 s; the cuDNN search outlasted 30 s. Both quality results are on record, so without
        # cv or final the quality step's time goes to gpu.py
        if [[ $mode == compile ]]; then
            compile_step 110 --study --batch 160
            # does cuDNN hold faster kernels than the 10 algorithms torch tries per convolution?
            step 165 "profile, every cuDNN algorithm" \
                python3 bench/profile_train.py --study --batch 160 --steps 4 --cudnn-limit 0
        else
            step "$([[ -n $mode ]] && echo 120 || echo 170)" "gpu.py" python3 bench/gpu.py --skip-grid
            step 45 "profile" python3 bench/profile_train.py --study --batch 160 --steps 4 --kernels
            if [[ -n $mode ]]; then
                # a CV saves its result after every fold: a step cut at its limit still leaves the folds it finished
                step "$([[ $mode == cv ]] && echo 265 || echo 150)" "quality $mode gpu" \
                    python3 bench/quality.py "$mode" gpu --name "${mode}_gpu_$tag"
                results "$mode" "$tag"
            fi
        fi
    else
        echo "gpu_session: torch sees no CUDA device here; for a check of this script on a CPU: run --cpu-check"
        exit 1
    fi
    echo "gpu_session: done; files in $OUT"
}

case ${1:-} in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash bench/gpu_session.sh prepare | run [cv|final|compile] [--cpu-check]" >&2; exit 2 ;;
esac
