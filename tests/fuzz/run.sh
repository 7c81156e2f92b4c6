#!/usr/bin/env bash
# Build and run the native-core fuzzer for SECONDS (default 60).
#   bash tests/fuzz/run.sh [SECONDS]
# With clang: libFuzzer + ASan + UBSan, seeded from the MIME corpus
# ($MAILWARDEN_CORPUS or ../shared/corpus).  Without clang: a gcc ASan+UBSan
# build of the same harness replaying the corpus with random mutations.
set -euo pipefail
SECONDS_TO_RUN="${1:-60}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CORPUS="${MAILWARDEN_CORPUS:-$ROOT/../shared/corpus}"
BUILD="$ROOT/tests/fuzz/build"
OUT="$ROOT/tests/fuzz/out"   # grown corpus and crash files (git-ignored)
mkdir -p "$BUILD" "$OUT/corpus"
SRC=("$ROOT"/native/src/*.c "$ROOT/tests/fuzz/fuzz_parse.c")
CFLAGS=(-std=c11 -g -O1 -Wall -Wextra -I"$ROOT/native/include")

SEEDS=()
for d in "$CORPUS/mime" "$CORPUS/mime-expected"; do
    [ -d "$d" ] && SEEDS+=("$d")
done
if [ ${#SEEDS[@]} -eq 0 ]; then
    echo "note: no seed corpus at $CORPUS (set MAILWARDEN_CORPUS); starting empty" >&2
fi

if command -v clang >/dev/null 2>&1; then
    clang "${CFLAGS[@]}" -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        "${SRC[@]}" -o "$BUILD/fuzz_parse"
    # New inputs go to $OUT/corpus; the seed dirs are only read.
    exec "$BUILD/fuzz_parse" -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$OUT/" -print_final_stats=1 \
        "$OUT/corpus" "${SEEDS[@]}"
else
    echo "clang not found: gcc ASan+UBSan build with a mutation driver" >&2
    gcc "${CFLAGS[@]}" -DMW_FUZZ_STANDALONE -fsanitize=address,undefined \
        -fno-sanitize-recover=undefined "${SRC[@]}" -o "$BUILD/fuzz_parse_standalone"
    mapfile -t FILES < <(find "${SEEDS[@]}" -type f ! -name '*.json' 2>/dev/null | sort)
    exec "$BUILD/fuzz_parse_standalone" "$SECONDS_TO_RUN" "${FILES[@]}"
fi
