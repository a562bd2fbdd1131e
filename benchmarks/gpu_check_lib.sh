# shellcheck shell=bash
# The stage runner of benchmarks/gpu_check.sh: sourced, not run.
#
# Every stage runs under `timeout` with at most min(its cap, the time left before one overall
# deadline), so a hung stage cannot eat the others' time; a failed stage does not stop the
# next. A stage's output goes straight into the log file (no pipe: a process that outlives
# its stage, such as a torchrun worker in its own session, cannot hold a pipe open and hang
# the script) and is copied to stdout when the stage ends. gc_summary prints the table of
# outcomes and writes it as JSON.
#
#   gc_init OUTDIR DEADLINE_S [MIN_STAGE_S]  log OUTDIR/gpu_check.log, summary
#                                            OUTDIR/gpu_check.json; the deadline counts from
#                                            bash's SECONDS (reset it at the script's start)
#   gc_stage NAME CAP_S CMD [ARG...]         run CMD (a program, not shell code); with less
#                                            than MIN_STAGE_S (default 15) left: skipped
#   gc_not_applicable NAME REASON            a stage that does not apply here (not a failure)
#   gc_say TEXT...                           a line on stdout and in the log
#   gc_summary                               the table and the JSON; returns 0 when every
#                                            stage passed or did not apply, else 1
#
# GC_DRY_RUN=1 (set before gc_init): print each stage's limit and command, run nothing,
# write nothing. gc_summary writes the JSON with $PYTHON (default python3).

gc_init() {
    GC_OUTDIR=$1
    GC_DEADLINE_S=$2
    GC_MIN_STAGE_S=${3:-15}
    GC_DRY_RUN=${GC_DRY_RUN:-0}
    # shellcheck disable=SC2034  # the files it writes, read by the sourcing script
    GC_FILES=(gpu_check.log gpu_check.json)
    GC_NAMES=() GC_OUTCOMES=() GC_EXITS=() GC_TOOK=() GC_LIMITS=() GC_NOTES=()
    if ((GC_DRY_RUN)); then
        GC_LOG=/dev/null
    else
        GC_LOG=$GC_OUTDIR/gpu_check.log
        : >"$GC_LOG"
    fi
}

gc_say() {
    printf '%s\n' "$*" | tee -a "$GC_LOG"
}

gc_record() { # NAME OUTCOME EXIT SECONDS LIMIT NOTE
    GC_NAMES+=("$1") GC_OUTCOMES+=("$2") GC_EXITS+=("$3") GC_TOOK+=("$4") GC_LIMITS+=("$5")
    GC_NOTES+=("$6")
}

gc_stage() {
    local name=$1 cap=$2
    shift 2
    local left=$((GC_DEADLINE_S - SECONDS))
    local limit=$((cap < left ? cap : left))
    local command
    command=$(printf '%q ' "$@")
    if ((GC_DRY_RUN)); then
        gc_say "== $name (at most ${cap}s): ${command% }"
        gc_record "$name" planned - 0 "$cap" ""
        return 0
    fi
    if ((limit < GC_MIN_STAGE_S)); then
        gc_say "== $name: skipped, ${left}s left before the ${GC_DEADLINE_S}s deadline"
        gc_record "$name" skipped - 0 "$limit" "${left}s left"
        return 0
    fi
    gc_say ""
    gc_say "== $name (at most ${limit}s, at ${SECONDS}s): ${command% }"
    local offset start=$SECONDS rc
    offset=$(wc -c <"$GC_LOG")
    # timeout signals its whole process group (pytest workers, compile workers) and kills
    # what ignores SIGTERM 5 s later.
    timeout --kill-after=5 "$limit" "$@" </dev/null >>"$GC_LOG" 2>&1
    rc=$?
    tail -c +"$((offset + 1))" "$GC_LOG"
    local took=$((SECONDS - start)) outcome=failed
    if ((rc == 0)); then
        outcome=ok
    elif (((rc == 124 || rc == 137) && took >= limit - 1)); then
        outcome=timeout
    fi
    gc_say "== $name: $outcome (exit $rc, ${took}s)"
    gc_record "$name" "$outcome" "$rc" "$took" "$limit" ""
}

gc_not_applicable() {
    gc_say "== $1: not applicable ($2)"
    gc_record "$1" "n/a" - 0 0 "$2"
}

gc_summary() {
    local i status=0 flat=()
    gc_say ""
    gc_say "== summary: ${SECONDS}s in all, deadline ${GC_DEADLINE_S}s"
    gc_say "$(printf '| %-12s | %-8s | %4s | %7s | %7s | %s' stage outcome exit seconds limit note)"
    gc_say "|--------------|----------|------|---------|---------|------"
    for i in "${!GC_NAMES[@]}"; do
        gc_say "$(printf '| %-12s | %-8s | %4s | %7s | %7s | %s' "${GC_NAMES[i]}" \
            "${GC_OUTCOMES[i]}" "${GC_EXITS[i]}" "${GC_TOOK[i]}" "${GC_LIMITS[i]}" \
            "${GC_NOTES[i]}")"
        case ${GC_OUTCOMES[i]} in
            failed | timeout | skipped) status=1 ;;
        esac
        flat+=("${GC_NAMES[i]}" "${GC_OUTCOMES[i]}" "${GC_EXITS[i]}" "${GC_TOOK[i]}"
            "${GC_LIMITS[i]}" "${GC_NOTES[i]}")
    done
    if ((GC_DRY_RUN)); then
        gc_say "dry run: nothing was run"
        return 0
    fi
    "${PYTHON:-python3}" - "$GC_OUTDIR/gpu_check.json" "$SECONDS" "$GC_DEADLINE_S" "$status" \
        "${flat[@]}" <<'EOF' || gc_say "(could not write gpu_check.json)"
import json
import sys

path, total, deadline, status, *flat = sys.argv[1:]
keys = ("stage", "outcome", "exit", "seconds", "limit_s", "note")
stages = [dict(zip(keys, flat[i : i + len(keys)])) for i in range(0, len(flat), len(keys))]
for stage in stages:
    for key in ("exit", "seconds", "limit_s"):
        stage[key] = int(stage[key]) if stage[key].lstrip("-").isdigit() else None
summary = {"passed": status == "0", "seconds": int(total), "deadline_s": int(deadline)}
with open(path, "w", encoding="utf-8") as f:
    json.dump({**summary, "stages": stages}, f, indent=1)
    f.write("\n")
EOF
    if ((status == 0)); then
        gc_say "gpu check: PASSED"
    else
        gc_say "gpu check: FAILED (a stage failed, timed out or had no time left)"
    fi
    return "$status"
}
