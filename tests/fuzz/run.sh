#!/usr/bin/env bash
# Build and run the native-core fuzzers for SECONDS each (default 60); CI runs it as-is.
#   bash tests/fuzz/run.sh [SECONDS] [TARGET...]
# Targets: parse (MIME parser, decoders, literal matcher; seeded from the MIME corpus) and
# sigs (signature compiler, database validator, streaming scanner; seeded from
# tests/fuzz/seeds_sigs). Default: both, side by side where there is a core for each.
# With clang: libFuzzer + ASan + UBSan ($MAILWARDEN_CORPUS or ../shared/corpus for seeds).
# When clang is missing it is installed with apt-get; if that fails too, a gcc ASan+UBSan build
# of the same harness replays the seeds with random mutations.
# Exit status: 0 when the time ran out without a finding, non-zero on any crash, sanitizer
# report, invariant failure, leak, timeout or out-of-memory (libFuzzer's own codes), or on a
# build failure, so a CI step fails on any finding.
set -euo pipefail
SECONDS_TO_RUN="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(parse sigs)
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CORPUS="${MAILWARDEN_CORPUS:-$ROOT/../shared/corpus}"
BUILD="$ROOT/tests/fuzz/build"
OUT="$ROOT/tests/fuzz/out"   # grown corpora and crash files (git-ignored)
mkdir -p "$BUILD"
CFLAGS=(-std=c11 -g -O1 -Wall -Wextra -Werror -I"$ROOT/native/include")

# A CI image without clang gets it from the distribution; a failed install is not fatal
# because the gcc fallback below still runs the harness under both sanitizers.
if ! command -v clang >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "clang not found: installing it with apt-get" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang; } \
        >&2 || echo "clang install failed; using the gcc fallback" >&2
fi

run_target() {
    local name="$1" max_len="$2"
    shift 2
    local seeds=("$@")
    local src=("$ROOT"/native/src/*.c "$ROOT/tests/fuzz/fuzz_$name.c")
    mkdir -p "$OUT/$name"
    echo "== fuzz target $name for $SECONDS_TO_RUN s" >&2
    if command -v clang >/dev/null 2>&1 \
        && clang "${CFLAGS[@]}" -fsanitize=fuzzer,address,undefined \
            -fno-sanitize-recover=undefined "${src[@]}" -o "$BUILD/fuzz_$name"; then
        # New inputs go to $OUT/$name; the seed dirs are only read. A finding stops the run
        # early with a non-zero status and a crash-* file in $OUT.
        "$BUILD/fuzz_$name" -max_total_time="$SECONDS_TO_RUN" -max_len="$max_len" -timeout=10 \
            -rss_limit_mb=2048 -artifact_prefix="$OUT/" -print_final_stats=1 \
            "$OUT/$name" "${seeds[@]}"
        return
    fi
    echo "libFuzzer build unavailable: gcc ASan+UBSan build with a mutation driver" >&2
    gcc "${CFLAGS[@]}" -DMW_FUZZ_STANDALONE -fsanitize=address,undefined \
        -fno-sanitize-recover=undefined "${src[@]}" -o "$BUILD/fuzz_${name}_standalone"
    local files=()
    if [ ${#seeds[@]} -gt 0 ]; then
        mapfile -t files < <(find "${seeds[@]}" -type f ! -name '*.json' 2>/dev/null | sort)
    fi
    # ASan/UBSan abort the process on a finding, which makes the exit status non-zero.
    "$BUILD/fuzz_${name}_standalone" "$SECONDS_TO_RUN" "${files[@]}"
}

run_named() {
    case "$1" in
    parse)
        SEEDS=()
        for d in "$CORPUS/mime" "$CORPUS/mime-expected"; do
            [ -d "$d" ] && SEEDS+=("$d")
        done
        if [ ${#SEEDS[@]} -eq 0 ]; then
            echo "note: no seed corpus at $CORPUS (set MAILWARDEN_CORPUS); starting empty" >&2
        fi
        run_target parse 65536 "${SEEDS[@]}"
        ;;
    sigs)
        run_target sigs 8192 "$ROOT/tests/fuzz/seeds_sigs"
        ;;
    *)
        echo "unknown fuzz target $1 (parse, sigs)" >&2
        exit 2
        ;;
    esac
}

# Each target is one single-threaded process: with a core for each they run side by side, each
# for its full SECONDS, and the step takes the time of one. Their outputs are kept apart and
# printed in order; any target's failure is the step's.
if [ ${#TARGETS[@]} -gt 1 ] && [ "$(nproc)" -ge ${#TARGETS[@]} ]; then
    mkdir -p "$OUT"
    pids=()
    for target in "${TARGETS[@]}"; do
        run_named "$target" >"$OUT/$target.log" 2>&1 &
        pids+=($!)
    done
    status=0
    for i in "${!TARGETS[@]}"; do
        wait "${pids[$i]}" || status=$?
        cat "$OUT/${TARGETS[$i]}.log" >&2
    done
    exit "$status"
fi
for target in "${TARGETS[@]}"; do
    run_named "$target"
done
