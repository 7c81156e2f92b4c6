/*
 * Signature engine: ClamAV body signatures compiled into one flat database
 * and matched with a hashed-anchor prefilter plus exact verification.
 *
 * The database is a single position-independent byte blob (offsets, never
 * pointers), so it can be written to a file and memory-mapped read-only by
 * every worker process: mw_sigdb_open only validates it and points into it.
 * Scanning is streaming: a mw_sigscan carries the few bytes and partial
 * matches that a chunk boundary can split, so any chunking of the input
 * gives the same results as one call over the whole object.
 */
#ifndef MW_SIGS_H
#define MW_SIGS_H

#include <stddef.h>
#include <stdint.h>

#include "mw_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Limits: everything a signature file can ask for is bounded. */
#define MW_SIG_MAX_TEXT (1u << 16)      /* characters of one pattern */
#define MW_SIG_MAX_PART (4096u)         /* bytes of one fixed-length part */
#define MW_SIG_MAX_PARTS 64u            /* parts (split at variable gaps) per signature */
#define MW_SIG_MAX_ALTS 64u             /* alternatives in one group */
#define MW_SIG_MAX_ALT_LEN 64u          /* bytes of one alternative */
#define MW_SIG_MAX_GAP (1u << 24)       /* bound of a {n-m} gap */
#define MW_SIG_MAX_EOF (1u << 20)       /* n of an EOF-n offset: bytes kept for the end */
#define MW_SIG_MAX_SIGS (1u << 22)      /* signatures in one database */
#define MW_SIG_MAX_TARGET 31u
/* Default bounds of one scan (mw_sigscan_set_limits): distinct signatures found, and
 * partial matches remembered: every place a signature's next part may still chain from
 * (a run of evenly spaced repeats of a part counts once; places that fell behind the gap
 * are forgotten), and signatures with any such place.  A scan that reaches either stops
 * recording and returns MW_ERR_SCAN_LIMIT: its hits are incomplete.  So does an EOF
 * signature whose parts and gaps need more than 65,536 part checks to place. */
#define MW_SIG_MAX_HITS (1u << 20)
#define MW_SIG_MAX_PARTIALS (1u << 20)

/* Offset kinds: where the first byte of a match may be. */
#define MW_SIG_OFF_ANY 0 /* anywhere */
#define MW_SIG_OFF_ABS 1 /* in [off, off + shift] */
#define MW_SIG_OFF_EOF 2 /* in [size - off, size - off + shift] */

#define MW_SIG_GAP_INF UINT32_MAX

typedef struct mw_sigc mw_sigc;
typedef struct mw_sigdb mw_sigdb;
typedef struct mw_sigscan mw_sigscan;

typedef struct {
    uint64_t first_offset; /* start of the first match */
    uint32_t sig_id;
    uint32_t count; /* matches seen (saturates) */
} mw_sighit;

typedef struct {
    uint64_t bytes;      /* size of the blob */
    uint32_t n_sigs;
    uint32_t n_parts;
    uint32_t n_anchors;  /* prefilter entries (alternatives expand) */
    uint32_t n_tiny;     /* entries anchored on only 2-3 bytes */
    uint32_t n_eof;      /* signatures evaluated at end of data */
    uint32_t key_len;    /* bytes hashed by the prefilter */
    uint32_t filter_bits; /* log2 of each prefilter bitmap's bits */
    uint32_t max_part;   /* longest part: bytes carried across chunks */
    uint32_t stride;     /* the prefilter looks at every stride-th position */
} mw_sigdb_info;

/* Compiler: add signatures one by one, then build the blob. */
mw_status mw_sigc_new(mw_sigc **out);
void mw_sigc_free(mw_sigc *c);
/* Adds one body signature (hex text as in .ndb).  On MW_OK *id is its id (ids
 * count up from 0 over successful adds only); a signature that is refused gives
 * one of MW_ERR_SIG_* (why) or MW_ERR_NOMEM, and leaves the compiler as it was. */
mw_status mw_sigc_add(mw_sigc *c, const char *text, size_t len, uint32_t target,
                      uint32_t off_kind, uint64_t off, uint64_t shift, uint32_t *id);
uint32_t mw_sigc_count(const mw_sigc *c);
/* Builds the database blob (malloc'd; release with mw_sig_blob_free).
 * Returns MW_OK, MW_ERR_NOMEM or MW_ERR_TOO_LARGE. */
mw_status mw_sigc_build(const mw_sigc *c, uint8_t **blob, size_t *len);
void mw_sig_blob_free(uint8_t *blob);

/* Opens a blob in place (no copy): the blob must outlive the db.  Any byte
 * string is safe to pass: a blob that fails validation gives MW_ERR_BAD_DB
 * (MW_ERR_ARG: NULL, or not 8-byte aligned). */
mw_status mw_sigdb_open(const uint8_t *blob, size_t len, mw_sigdb **out);
void mw_sigdb_free(mw_sigdb *db);
void mw_sigdb_info_get(const mw_sigdb *db, mw_sigdb_info *out);

/* A scan of one object, fed in chunks.  target_mask: bit t set means
 * signatures with target t apply (target 0 always applies). */
mw_status mw_sigscan_new(const mw_sigdb *db, mw_sigscan **out);
void mw_sigscan_free(mw_sigscan *s);
/* Bounds of every later object's scan; 0 keeps the default (MW_SIG_MAX_HITS,
 * MW_SIG_MAX_PARTIALS). */
mw_status mw_sigscan_set_limits(mw_sigscan *s, uint32_t max_hits, uint32_t max_partials);
/* Starts a new object; clears the previous one's hits and failure. */
void mw_sigscan_reset(mw_sigscan *s, uint32_t target_mask);
/* feed, finish and buffer return MW_OK, or the object's first failure
 * (MW_ERR_SCAN_LIMIT, MW_ERR_NOMEM) on this and every later call until a
 * reset: the hits recorded so far are then a subset of the real ones, and
 * must be treated as a scan that did not complete, never as a clean one. */
mw_status mw_sigscan_feed(mw_sigscan *s, const uint8_t *data, size_t len);
/* Ends the object: evaluates EOF-anchored signatures.  Idempotent. */
mw_status mw_sigscan_finish(mw_sigscan *s);
/* Copies up to cap hits (in order of first detection) and returns the total. */
size_t mw_sigscan_hits(const mw_sigscan *s, mw_sighit *out, size_t cap);
/* reset + feed + finish in one call, for objects already in memory. */
mw_status mw_sigscan_buffer(mw_sigscan *s, uint32_t target_mask, const uint8_t *data,
                            size_t len);

#ifdef __cplusplus
}
#endif

#endif
