#!/usr/bin/env bash
# Build and run the native-core fuzzer for SECONDS (default 60); CI runs it as-is.
#   bash tests/fuzz/run.sh [SECONDS]
# With clang: libFuzzer + ASan + UBSan, seeded from the MIME corpus
# ($MAILWARDEN_CORPUS or ../shared/corpus).  When clang is missing it is installed with
# apt-get; if that fails too, a gcc ASan+UBSan build of the same harness replays the corpus
# with random mutations.
# Exit status: 0 when the time ran out without a finding, non-zero on any crash, sanitizer
# report, invariant failure, leak, timeout or out-of-memory (libFuzzer's own codes), or on a
# build failure, so a CI step fails on any finding.
set -euo pipefail
SECONDS_TO_RUN="${1:-60}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CORPUS="${MAILWARDEN_CORPUS:-$ROOT/../shared/corpus}"
BUILD="$ROOT/tests/fuzz/build"
OUT="$ROOT/tests/fuzz/out"   # grown corpus and crash files (git-ignored)
mkdir -p "$BUILD" "$OUT/corpus"
SRC=("$ROOT"/native/src/*.c "$ROOT/tests/fuzz/fuzz_parse.c")
CFLAGS=(-std=c11 -g -O1 -Wall -Wextra -Werror -I"$ROOT/native/include")

SEEDS=()
for d in "$CORPUS/mime" "$CORPUS/mime-expected"; do
    [ -d "$d" ] && SEEDS+=("$d")
done
if [ ${#SEEDS[@]} -eq 0 ]; then
    echo "note: no seed corpus at $CORPUS (set MAILWARDEN_CORPUS); starting empty" >&2
fi

# A CI image without clang gets it from the distribution; a failed install is not fatal
# because the gcc fallback below still runs the harness under both sanitizers.
if ! command -v clang >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "clang not found: installing it with apt-get" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang; } \
        >&2 || echo "clang install failed; using the gcc fallback" >&2
fi

if command -v clang >/dev/null 2>&1 \
    && clang "${CFLAGS[@]}" -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        "${SRC[@]}" -o "$BUILD/fuzz_parse"; then
    # New inputs go to $OUT/corpus; the seed dirs are only read.  -max_total_time bounds the
    # run; a finding stops it early with a non-zero status and a crash-* file in $OUT.
    exec "$BUILD/fuzz_parse" -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$OUT/" -print_final_stats=1 \
        "$OUT/corpus" "${SEEDS[@]}"
fi
echo "libFuzzer build unavailable: gcc ASan+UBSan build with a mutation driver" >&2
gcc "${CFLAGS[@]}" -DMW_FUZZ_STANDALONE -fsanitize=address,undefined \
    -fno-sanitize-recover=undefined "${SRC[@]}" -o "$BUILD/fuzz_parse_standalone"
FILES=()
if [ ${#SEEDS[@]} -gt 0 ]; then
    mapfile -t FILES < <(find "${SEEDS[@]}" -type f ! -name '*.json' 2>/dev/null | sort)
fi
# ASan/UBSan abort the process on a finding, which makes the exit status non-zero.
exec "$BUILD/fuzz_parse_standalone" "$SECONDS_TO_RUN" "${FILES[@]}"
