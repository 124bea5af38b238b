#!/usr/bin/env bash
# The GPU checks and experiments of results/README.md on a device machine, each step under its own time limit so
# that one slow step cannot take the others' logs with it. One device call (10 min) holds only some steps: see
# results/README.md ("Re-running everything on a device") for the order. Logs and CSVs go to OUT/logs
# (default $OUT, else results/device), tarred at the end. Wheels: scripts/device_wheels.sh, installed first.
#   scripts/device_suite.sh [STEP ...]     steps: tests triton triton_eager triton_instance engine fig10 scale
#                                          fig12 limit limit_eager residency host_death host_death_no_standby
#                                          host_death_no_images host_death_warm_now host_death_parallel
#                                          host_death_cold_standby arena
#                                          (default: all but limit_eager, residency, arena and the host_death ones)
# SUITE_BUDGET_S (default 580): the whole run's limit; a step gets at most what is left of it, minus 15 s for
# the tar, so that a device call's own limit never kills the run before its logs are packed.
# FIG12_INSTANCES / FIG12_RATE / FIG12_DURATION_S (default "20 40 80" / 100 / 20): the paper's 4-GPU point set;
# on 2 GPUs, "10 20 40" at 50 req/s keeps the per-GPU instance count and request rate. FIG12_ENGINES (default
# "pipeline deepplan deepplan+pt").
# HOST_DEATH_ARGS (default "--instances 80 --engines deepplan+pt --rate 100"): the load under which host_death kills
# GPU 0's engine host 8 s in; on one GPU, "--instances 20 --engines deepplan --rate 25" is that GPU's share. Given
# last, so they override the step's own options too (e.g. --drain-s 20 for a recovery longer than the run).
# LIMIT_ARGS (default "--all --dtypes float32 float16"): models and dtypes of `limit` (DeepPlan follows graph-regime
# plans) and `limit_eager` (the same with plans profiled eagerly, for comparison).
set -uo pipefail
deadline=$(( $(date +%s) + ${SUITE_BUDGET_S:-580} - 15 ))  # first: the install below counts too
OUT=${OUT:-results/device}
L="$OUT/logs"
mkdir -p "$L"
W=.whl
if [ -f .whl/bundle.tar.xz ]; then  # scripts/device_wheels.sh packs the wheels into one tarball by default
    rm -rf /tmp/wheels && W=/tmp/wheels
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
        .whl/bundle.tar.xz "$W"
fi
if ls "$W"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$W"/*.whl > "$L/pip.log" 2>&1
    # tritonclient's wheel pins a grpcio/protobuf the device lacks; scripts/device_wheels.sh unpacks it instead
    [ -d "$W/site/tritonclient" ] && cp -r "$W/site/tritonclient" /tmp/site/
    export PYTHONPATH="/tmp/site:$PWD" PATH="/tmp/site/bin:$PATH"
fi
nvidia-smi > "$L/nvidia-smi.txt" 2>&1
# Where temporary folders and /dev/shm live: a residency state file on a disk costs a cold start ~1 ms per update.
df -hT /tmp /dev/shm > "$L/filesystems.txt" 2>&1
# Whether a crashing process would write a core (it holds the residency lock while it does: runtime/crash_policy.py).
{ echo "ulimit -c: $(ulimit -c)"; echo "core_pattern: $(cat /proc/sys/kernel/core_pattern)"; } > "$L/core_dumps.txt" 2>&1
steps=${*:-tests triton triton_eager engine scale fig12 limit}
run() {  # run NAME SECONDS CMD...
    local name=$1 limit=$2 left=$(( deadline - $(date +%s) ))
    shift 2
    (( left < limit )) && limit=$left
    (( limit -= 10 ))  # room for timeout's kill grace
    if (( limit < 10 )); then echo "== $name skipped: no time left" | tee -a "$L/steps.log"; return; fi
    echo "== $name (limit ${limit}s): $*" | tee -a "$L/steps.log"
    ( time timeout -k 10 "$limit" "$@" ) > "$L/$name.log" 2>&1
    echo "   exit $?" | tee -a "$L/steps.log"
}
for step in $steps; do
    case $step in
        tests) run gpu_tests 240 env DEEPPLAN_GPU_REPORT_DIR="$L" python3 -m pytest -q -rs tests/gpu ;;
        triton) run triton_coldstart 240 python3 -m benchmark.triton_coldstart --out "$L/triton" \
            --models bert-base resnet50 --instances 8 --budget 2GiB ;;
        triton_eager) run triton_coldstart_eager 240 python3 -m benchmark.triton_coldstart --eager \
            --out "$L/triton_eager" --models bert-base resnet50 --instances 8 --budget 2GiB --skip-load-compare ;;
        # The same with each model's engine in its own stub (no hop to an engine host; a CUDA context per model).
        triton_instance) run triton_coldstart_instance 240 python3 -m benchmark.triton_coldstart --process instance \
            --out "$L/triton_instance" --models bert-base resnet50 --instances 8 --budget 2GiB --skip-load-compare ;;
        engine) run engine_standalone 120 python3 -m benchmark --table -m bert-base -m resnet50 --make-plans \
            -p "$L/plans" --configs demand:0 deepplan:0,1 -n 8 --warmup 2 -o "$L/engine_standalone.csv" ;;
        # --graphs: the backend's default regime; FIG10_ARGS="" gives the eager table of session 1.
        # FIG10_MODELS (default --all) orders or narrows the models, e.g. "-m resnet50 -m bert-base".
        # shellcheck disable=SC2086
        fig10) run fig10 560 python3 -m benchmark --table ${FIG10_MODELS:---all} --make-plans -p "$L/plans" \
            ${FIG10_ARGS---graphs -n 8 --warmup 2} -o "$L/fig10.csv" ;;
        scale) run scale 300 python3 -m benchmark.triton_scale --model bert-base \
            --points shared:8 shared:200 instance:4 instance:8 --budget 2GiB --out "$L/scale" ;;
        # FIG12_ENGINES narrows the engines; DEEPPLAN_STALL_DUMP_MS=60 in the environment makes each engine host
        # print its stacks when a device job runs past 60 ms (how session 10's early stall was caught): a diagnosis,
        # off by default so that the figures are measured without it.
        # shellcheck disable=SC2086  # FIG12_INSTANCES and FIG12_ENGINES are lists
        fig12) run fig12 560 python3 -m loadtest.experiments.sweep --model bert-base \
            --instances ${FIG12_INSTANCES:-20 40 80} --engines ${FIG12_ENGINES:-pipeline deepplan deepplan+pt} --devices auto \
            --rate "${FIG12_RATE:-100}" --duration-s "${FIG12_DURATION_S:-20}" --drain-s 5 \
            --slo-ms 100 --warmup-s 2 --budget 2GiB --out "$L/fig12" ;;
        # shellcheck disable=SC2086  # LIMIT_ARGS is a list of options
        limit) run coldstart_limit 560 python3 -m benchmark.coldstart_limit ${LIMIT_ARGS:---all --dtypes float32 float16} \
            -p "$L/plans" -n 8 --warmup 2 -o "$L/coldstart_limit.csv" ;;
        # shellcheck disable=SC2086
        limit_eager) run coldstart_limit_eager 560 python3 -m benchmark.coldstart_limit --eager-plans \
            ${LIMIT_ARGS:---all --dtypes float32 float16} -p "$L/plans" -n 8 --warmup 2 \
            -o "$L/coldstart_limit_eager_plans.csv" ;;
        # What mapping and evicting an arena cost in driver calls, with the physical memory released or kept.
        arena) run arena_mapping 120 python3 -m benchmark.arena_mapping --sizes-mib 100 344 1280 \
            --chunks-mib 0 32 64 -n 10 -o "$L/arena_mapping.csv" ;;
        # CPU only (the device host's cores, not the GPUs): the residency's state-file layout, 4 hosts at once.
        residency) run residency_layout 90 python3 -m benchmark.residency_layout --hosts 4 \
            -o "$L/residency_layout.csv" ;;
        # host_death_no_standby: the same with DEEPPLAN_STANDBY=0 (a new process replaces the host: the baseline);
        # host_death_no_images: with the standby but DEEPPLAN_WEIGHT_IMAGES=0 (the replacement builds the weights);
        # host_death_warm_now: DEEPPLAN_RECOVERY_WARM_UP=now (models warm up inside their registration again);
        # host_death_parallel: DEEPPLAN_RECOVERY_REGISTRATION=parallel (models register again all at once);
        # host_death_cold_standby: DEEPPLAN_STANDBY=cold (the standby holds no CUDA context until it is woken).
        # shellcheck disable=SC2086  # HOST_DEATH_ARGS is a list of options
        host_death|host_death_no_standby|host_death_no_images|host_death_warm_now|host_death_parallel|\
        host_death_cold_standby) run "$step" 300 \
            env DEEPPLAN_STANDBY="$(case $step in host_death_no_standby) echo 0 ;; host_death_cold_standby) echo cold ;;
                                    *) echo primed ;; esac)" \
            DEEPPLAN_WEIGHT_IMAGES="$([ "$step" = host_death_no_images ] && echo 0 || echo 1)" \
            DEEPPLAN_RECOVERY_WARM_UP="$([ "$step" = host_death_warm_now ] && echo now || echo later)" \
            DEEPPLAN_RECOVERY_REGISTRATION="$([ "$step" = host_death_parallel ] && echo parallel || echo serial)" \
            python3 -m loadtest.experiments.host_death --model bert-base --duration-s 20 --kill-at-s 8 \
            --drain-s 5 --warmup-s 2 --budget 2GiB --out "$L/$step" \
            ${HOST_DEATH_ARGS:---instances 80 --engines deepplan+pt --rate 100} ;;
        *) echo "unknown step $step" >&2; exit 2 ;;
    esac
done
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
