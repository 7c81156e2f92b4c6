/*
 * Signature engine internals shared by its units: sigs_parse.c (text to parts),
 * sigs_compile.c (parts to the flat database blob), sigs_db.c (opening and
 * validating a blob) and sigs_scan.c (the streaming scanner).
 *
 * A signature is split at its variable gaps ({n-m}, {-n}, {n-}, *) into
 * fixed-length parts.  Each part is found on its own: a literal "anchor"
 * inside it (its best run of fixed bytes, with small alternative groups
 * expanded) goes into a prefilter, and every prefilter hit is verified
 * exactly against the whole part.  A signature matches when its parts occur
 * in order with the gaps between them; that order is tracked per scan, so
 * parts may lie in different chunks and nothing but the last longest-part
 * bytes is ever kept.  This is ClamAV's own split, with a hashed prefilter
 * instead of its Aho-Corasick trie: the scan loop touches two small bitmaps
 * per input byte and nothing else (see docs/signatures.md).
 */
#ifndef MW_SIGS_INTERNAL_H
#define MW_SIGS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mailwarden.h"
#include "mw_sigs.h"

#define MAGIC "MWSIGDB\x01"
#define FORMAT_VERSION 1u
#define MAX_ANCHOR_COMBOS 64u
#define MAX_ANCHOR 11u /* key of up to 8 bytes at up to 4 strides */
#define MAX_BLOB ((uint64_t)1 << 31)
#define INLINE_GAP 32u /* {n} up to this stays inside a part as wildcards */
#define EOF_BUDGET (1u << 16) /* part checks per EOF signature */

/* multipliers of the prefilter's three hashes */
#define M1 0x9E3779B97F4A7C15ull
#define M2 0xC2B2AE3D27D4EB4Full
#define M3 0x165667B19E3779F9ull

/* ---------------------------------------------------------------- format */

/* All structs are made of naturally aligned fixed-width fields; the header
 * records their sizes so a blob from another build is refused, not misread. */
typedef struct {
    uint32_t sig;
    uint16_t index;    /* part number within the signature */
    uint16_t literal;  /* 1: every byte fixed, no groups: memcmp */
    uint32_t len;
    uint32_t pool;     /* val[len] then mask[len] */
    uint32_t grp_first;
    uint32_t grp_count;
    uint32_t gap_min;  /* gap before this part (unused for part 0) */
    uint32_t gap_max;  /* MW_SIG_GAP_INF for unbounded */
    uint32_t slot;     /* queue slot for the next part, UINT32_MAX for the last */
    uint32_t next_inf; /* the gap after this part is unbounded */
} dpart;

typedef struct {
    uint32_t pos;
    uint16_t len;
    uint8_t n;
    uint8_t negate;
    uint32_t pool; /* n * len values then n * len masks */
} dgroup;

typedef struct {
    uint32_t first_part;
    uint16_t n_parts;
    uint8_t target;
    uint8_t off_kind;
    uint64_t off;
    uint64_t shift;
} dsig;

typedef struct {
    uint64_t key;
    uint32_t part;
    uint32_t off; /* anchor offset within the part */
} dentry;

typedef struct {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint32_t sizes; /* sizeof part | group << 8 | sig << 16 | entry << 24 */
    uint32_t key_len;
    uint32_t stride;
    uint32_t filter_bits;
    uint32_t bucket_bits;
    uint32_t tiny_bucket_bits;
    uint32_t n_sigs;
    uint32_t n_parts;
    uint32_t n_groups;
    uint32_t n_entries;
    uint32_t n_tiny;
    uint32_t n_eof;
    uint32_t n_slots;
    uint32_t max_part;
    uint32_t max_eof;
    uint64_t pool_len;
    /* section offsets from the blob start */
    uint64_t o_bm1, o_bm2, o_bmt, o_buckets, o_entries, o_tbuckets, o_tiny;
    uint64_t o_parts, o_groups, o_sigs, o_eof, o_pool, total;
} dheader;

#define SIZES ((uint32_t)(sizeof(dpart) | sizeof(dgroup) << 8 | sizeof(dsig) << 16 | \
                          sizeof(dentry) << 24))

/* -------------------------------------------------------------- compiler */

typedef struct {
    void *p;
    size_t n, cap, size;
} vec;

typedef struct {
    uint8_t bytes[MAX_ANCHOR];
    uint32_t len; /* anchor bytes available (2..MAX_ANCHOR) */
    uint32_t part;
    uint32_t off;
} bentry;

struct mw_sigc {
    vec parts, groups, sigs, entries, eof, pool; /* pool: uint8_t */
    uint32_t n_slots, max_part, max_eof, min_key;
    /* scratch reused by every add: a signature's parts are large arrays */
    void *ps;
    void *toks;
    size_t toks_cap;
    uint8_t *gb;
};

/* ---------------------------------------------------------------- parser */

enum { T_BYTE, T_GAP, T_GROUP };

/* Alternatives of a group are stored in the compiler's scratch byte buffer
 * as (value, mask) pairs, alternative after alternative: every byte takes
 * at least two characters of text, so text length bounds the buffer. */
typedef struct {
    int kind;
    uint8_t val, mask;
    uint32_t gmin, gmax;
    uint8_t negate, n, len;
    uint32_t goff;
} token;

#define GVAL(gb, t, a, k) ((gb)[(t)->goff + 2u * ((uint32_t)(a) * (t)->len + (k))])
#define GMASK(gb, t, a, k) ((gb)[(t)->goff + 2u * ((uint32_t)(a) * (t)->len + (k)) + 1u])

/* ------------------------------------------------------- part building */

typedef struct ppart {
    uint8_t val[MW_SIG_MAX_PART];
    uint8_t mask[MW_SIG_MAX_PART];
    uint16_t in_group[MW_SIG_MAX_PART]; /* 1 + group index within the part, 0 none */
    uint32_t len;
    uint32_t n_groups;
    const token *groups[MW_SIG_MAX_PART];
    uint32_t gpos[MW_SIG_MAX_PART];
    uint32_t gap_min, gap_max;
} ppart;

typedef struct {
    ppart parts[MW_SIG_MAX_PARTS];
    uint32_t n;
} psig;

/* ---------------------------------------------------------------- opened */

struct mw_sigdb {
    dheader h;
    const uint8_t *bm1, *bm2, *bmt;
    const uint32_t *buckets, *tbuckets;
    const dentry *entries, *tiny;
    const dpart *parts;
    const dgroup *groups;
    const dsig *sigs;
    const uint32_t *eof;
    const uint8_t *pool;
    uint64_t kmask;
};

/* Shared by every unit: the prefilter keys and hashes of the compiler and the scanner must
 * agree bit for bit. */
static inline uint64_t key_mask(uint32_t kl) {
    uint8_t m[8] = {0};
    memset(m, 0xFF, kl);
    uint64_t v;
    memcpy(&v, m, 8);
    return v;
}

static inline uint64_t load_key(const uint8_t *p, uint64_t mask) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v & mask;
}

static inline uint32_t hash_bits(uint64_t key, uint64_t mult, uint32_t bits) {
    return bits ? (uint32_t)((key * mult) >> (64 - bits)) : 0;
}

/* sigs_parse.c: text to tokens, tokens to fixed-length parts. */
mw_status mw_sigp_tokenize(const char *s, size_t n, token *toks, size_t cap, size_t *ntok,
                           uint8_t *gb);
mw_status mw_sigp_split(token *toks, size_t ntok, psig *ps);

#endif
