/*
 * libFuzzer harness for the signature engine: the compiler on arbitrary
 * signature text, the database validator on damaged blobs, and the
 * streaming scanner.  Input: signature lines, a line "--", then the data.
 * Besides the sanitizers it checks that a scan in chunks finds exactly what
 * one call over the whole buffer finds, and that every hit is in bounds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mailwarden.h"
#include "mw_sigs.h"

#define CHECK(cond)                                                               \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                              \
        }                                                                         \
    } while (0)

#define MAXH 256

/* Scans d in chunks; *status gets the scan's result (the first failure, else MW_OK). */
static size_t scan_limited(const mw_sigdb *db, const uint8_t *d, size_t n, size_t chunk,
                           uint32_t max_hits, uint32_t max_partials, mw_sighit *out,
                           mw_status *status) {
    mw_sigscan *s = NULL;
    *status = mw_sigscan_new(db, &s);
    if (*status != MW_OK) return 0;
    CHECK(mw_sigscan_set_limits(s, max_hits, max_partials) == MW_OK);
    mw_sigscan_reset(s, 0xFFFFFFFFu);
    if (!chunk) chunk = n ? n : 1;
    mw_status rc = MW_OK;
    for (size_t at = 0; at < n; at += chunk) {
        mw_status f = mw_sigscan_feed(s, d + at, n - at < chunk ? n - at : chunk);
        /* a failure sticks: every later call repeats it */
        CHECK(rc == MW_OK || f == rc);
        rc = f;
    }
    mw_status fin = mw_sigscan_finish(s);
    CHECK(rc == MW_OK || fin == rc);
    *status = fin;
    size_t total = mw_sigscan_hits(s, out, MAXH);
    mw_sigscan_free(s);
    return total;
}

static size_t scan_all(const mw_sigdb *db, const uint8_t *d, size_t n, size_t chunk,
                       mw_sighit *out, mw_status *rc) {
    size_t total = scan_limited(db, d, n, chunk, 0, 0, out, rc);
    /* fuzz inputs stay far below the hit and partial limits; only an EOF signature's
     * backtracking budget can run out */
    CHECK(*rc == MW_OK || *rc == MW_ERR_SCAN_LIMIT);
    return total;
}

static int cmp_hit(const void *a, const void *b) {
    const mw_sighit *x = a, *y = b;
    return (x->sig_id > y->sig_id) - (x->sig_id < y->sig_id);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *sep = NULL;
    for (size_t i = 0; i + 3 <= size; i++)
        if (data[i] == '-' && data[i + 1] == '-' && data[i + 2] == '\n') {
            sep = data + i;
            break;
        }
    size_t text_len = sep ? (size_t)(sep - data) : size;
    const uint8_t *body = sep ? sep + 3 : data;
    size_t body_len = sep ? size - text_len - 3 : size;
    mw_sigc *c = NULL;
    if (mw_sigc_new(&c) != MW_OK) return 0;
    /* Each line is one signature; its first byte picks offset kind and target. */
    size_t start = 0;
    for (size_t i = 0; i <= text_len; i++) {
        if (i < text_len && data[i] != '\n') continue;
        if (i > start) {
            uint8_t ctl = data[start];
            uint32_t kind = ctl % 3, target = (ctl >> 2) % 3;
            uint64_t off = (uint64_t)(ctl >> 4), shift = (uint64_t)(ctl & 3);
            uint32_t id = 0;
            mw_status rc = mw_sigc_add(c, (const char *)data + start + 1, i - start - 1, target,
                                       kind, off, shift, &id);
            /* a refused signature says why with its own code, never a scan or db code */
            CHECK(rc == MW_OK || rc == MW_ERR_NOMEM ||
                  (rc >= MW_ERR_SIG_SYNTAX && rc <= MW_ERR_SIG_SPECIAL));
            CHECK(strcmp(mw_strerror(rc), "unknown status") != 0);
        }
        start = i + 1;
    }
    uint8_t *blob = NULL;
    size_t blen = 0;
    if (mw_sigc_build(c, &blob, &blen) == MW_OK) {
        /* mw_sigdb_open wants 8-byte alignment, which malloc gives */
        mw_sigdb *db = NULL;
        CHECK(mw_sigdb_open(blob, blen, &db) == MW_OK);
        mw_sigdb_info info;
        mw_sigdb_info_get(db, &info);
        CHECK(info.n_sigs == mw_sigc_count(c));
        static mw_sighit whole[MAXH], parts[MAXH];
        mw_status rw, rp;
        size_t nw = scan_all(db, body, body_len, 0, whole, &rw);
        size_t chunk = 1 + (body_len ? body[0] % 7 : 0);
        size_t np = scan_all(db, body, body_len, chunk, parts, &rp);
        CHECK(rw == rp); /* chunking changes neither the hits nor whether they are complete */
        CHECK(nw == np);
        if (nw <= MAXH) {
            qsort(whole, nw, sizeof *whole, cmp_hit);
            qsort(parts, np, sizeof *parts, cmp_hit);
            for (size_t i = 0; i < nw; i++) {
                CHECK(whole[i].sig_id < info.n_sigs);
                CHECK(whole[i].first_offset < body_len || body_len == 0);
                CHECK(whole[i].sig_id == parts[i].sig_id);
                CHECK(whole[i].first_offset == parts[i].first_offset);
                CHECK(whole[i].count == parts[i].count);
            }
        }
        /* Tight limits: either none was reached and the hits are the same, or the scan
         * says it is incomplete; never fewer hits with MW_OK. */
        static mw_sighit tight[MAXH];
        mw_status trc;
        size_t nt = scan_limited(db, body, body_len, chunk, 1, 1, tight, &trc);
        CHECK(trc == MW_OK || trc == MW_ERR_SCAN_LIMIT);
        CHECK(trc == MW_OK ? rw == MW_OK && nt == nw : nt <= 1 || rw != MW_OK);
        mw_sigdb_free(db);
        /* The validator on damage: flip bytes picked by the data. */
        for (size_t k = 0; k < body_len && k < 8 && blen; k++) {
            size_t at = ((size_t)body[k] * 2654435761u + k * 40503u) % blen;
            blob[at] ^= (uint8_t)(body[k] | 1);
        }
        if (mw_sigdb_open(blob, blen, &db) == MW_OK) {
            scan_all(db, body, body_len, 3, whole, &rw);
            mw_sigdb_free(db);
        }
        if (blen > 16 && mw_sigdb_open(blob, blen - 8, &db) == MW_OK) mw_sigdb_free(db);
        mw_sig_blob_free(blob);
    }
    mw_sigc_free(c);
    return 0;
}

#ifdef MW_FUZZ_STANDALONE
#include <time.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 60;
    time_t until = time(NULL) + (time_t)seconds;
    unsigned long long execs = 0;
    for (int round = 0; time(NULL) < until; round++) {
        for (int i = 2; i < argc && time(NULL) < until; i++) {
            FILE *f = fopen(argv[i], "rb");
            if (!f) continue;
            static uint8_t buf[1 << 16];
            size_t n = fread(buf, 1, sizeof buf, f);
            fclose(f);
            for (int k = 0; round && k < 1 + (int)(next_rand() % 8) && n; k++)
                buf[next_rand() % n] = "0123456789abcdef?*{}-()|!\n"[next_rand() % 26];
            LLVMFuzzerTestOneInput(buf, n);
            execs++;
        }
        if (argc <= 2) break;
    }
    printf("standalone fuzz: %llu execs\n", execs);
    return 0;
}
#endif
