/*
 * Signature engine: compiler, flat database, streaming scanner.
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
#include <stdlib.h>
#include <string.h>

#include "mailwarden.h"
#include "mw_sigs.h"

#define MAGIC "MWSIGDB\x01"
#define FORMAT_VERSION 1u
#define MAX_ANCHOR_COMBOS 64u
#define MAX_ANCHOR 11u /* key of up to 8 bytes at up to 4 strides */
#define MAX_BLOB ((uint64_t)1 << 31)
#define INLINE_GAP 32u /* {n} up to this stays inside a part as wildcards */
#define QCAP 8u        /* predecessor ends remembered per part per scan */
#define MAX_QUEUES (1u << 20)
#define MAX_HITS (1u << 20)
#define EOF_BUDGET (1u << 16) /* part checks per EOF signature */

static const uint64_t M1 = 0x9E3779B97F4A7C15ull;
static const uint64_t M2 = 0xC2B2AE3D27D4EB4Full;
static const uint64_t M3 = 0x165667B19E3779F9ull;

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

const char *mw_sig_strerror(int code) {
    switch (code) {
    case MW_SIG_OK: return "ok";
    case MW_SIG_E_SYNTAX: return "not valid body-signature syntax";
    case MW_SIG_E_NOANCHOR: return "a part has fewer than 2 fixed bytes to anchor on";
    case MW_SIG_E_LIMIT: return "over a length, gap, part or offset limit";
    case MW_SIG_E_VARALT: return "alternatives of different lengths";
    case MW_SIG_E_SPECIAL: return "(B)/(L) boundary markers are not supported";
    case MW_SIG_E_NOMEM: return "out of memory";
    default: return "unknown error";
    }
}

/* ------------------------------------------------------------- growables */

typedef struct {
    void *p;
    size_t n, cap, size;
} vec;

static void *vec_push(vec *v, size_t k) {
    if (v->n + k > v->cap) {
        size_t cap = v->cap ? v->cap : 64;
        while (cap < v->n + k) cap *= 2;
        void *q = realloc(v->p, cap * v->size);
        if (!q) return NULL;
        v->p = q;
        v->cap = cap;
    }
    void *at = (char *)v->p + v->n * v->size;
    v->n += k;
    return at;
}

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

int mw_sigc_new(mw_sigc **out) {
    if (!out) return MW_ERR_ARG;
    mw_sigc *c = calloc(1, sizeof *c);
    if (!c) return MW_ERR_NOMEM;
    c->parts.size = sizeof(dpart);
    c->groups.size = sizeof(dgroup);
    c->sigs.size = sizeof(dsig);
    c->entries.size = sizeof(bentry);
    c->eof.size = sizeof(uint32_t);
    c->pool.size = 1;
    c->min_key = MAX_ANCHOR;
    *out = c;
    return MW_OK;
}

void mw_sigc_free(mw_sigc *c) {
    if (!c) return;
    free(c->parts.p);
    free(c->groups.p);
    free(c->sigs.p);
    free(c->entries.p);
    free(c->eof.p);
    free(c->pool.p);
    free(c->ps);
    free(c->toks);
    free(c->gb);
    free(c);
}

uint32_t mw_sigc_count(const mw_sigc *c) { return c ? (uint32_t)c->sigs.n : 0; }

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

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* One byte: two nibbles, each hex or '?'. */
static int parse_byte(const char *s, size_t n, size_t *i, uint8_t *val, uint8_t *mask) {
    if (*i + 2 > n) return MW_SIG_E_SYNTAX;
    uint8_t v = 0, m = 0;
    for (int k = 0; k < 2; k++) {
        char ch = s[*i + (size_t)k];
        v = (uint8_t)(v << 4);
        m = (uint8_t)(m << 4);
        if (ch == '?') continue;
        int h = hexval(ch);
        if (h < 0) return MW_SIG_E_SYNTAX;
        v = (uint8_t)(v | h);
        m = (uint8_t)(m | 0xF);
    }
    *i += 2;
    *val = v;
    *mask = m;
    return MW_SIG_OK;
}

static int parse_num(const char *s, size_t n, size_t *i, uint32_t *out) {
    if (*i >= n || s[*i] < '0' || s[*i] > '9') return MW_SIG_E_SYNTAX;
    uint64_t v = 0;
    while (*i < n && s[*i] >= '0' && s[*i] <= '9') {
        v = v * 10 + (uint64_t)(s[*i] - '0');
        if (v > MW_SIG_MAX_GAP) return MW_SIG_E_LIMIT;
        (*i)++;
    }
    *out = (uint32_t)v;
    return MW_SIG_OK;
}

/* {n} {-n} {n-} {n-m}, or [n-m] (ClamAV's single-byte-bounded form, same meaning). */
static int parse_gap(const char *s, size_t n, size_t *i, char close, token *t) {
    (*i)++;
    uint32_t a = 0, b = 0;
    int rc;
    t->kind = T_GAP;
    if (*i < n && s[*i] == '-') {
        (*i)++;
        if ((rc = parse_num(s, n, i, &b))) return rc;
        a = 0;
    } else {
        if ((rc = parse_num(s, n, i, &a))) return rc;
        if (*i < n && s[*i] == '-') {
            (*i)++;
            if (*i < n && s[*i] == close) {
                b = MW_SIG_GAP_INF;
            } else if ((rc = parse_num(s, n, i, &b))) {
                return rc;
            }
        } else {
            if (close == ']') return MW_SIG_E_SYNTAX;
            b = a;
        }
    }
    if (*i >= n || s[*i] != close || b < a) return MW_SIG_E_SYNTAX;
    (*i)++;
    t->gmin = a;
    t->gmax = b;
    return MW_SIG_OK;
}

static int parse_group(const char *s, size_t n, size_t *i, token *t, uint8_t *gb, size_t *gn) {
    (*i)++; /* '(' */
    if (*i + 2 <= n && (s[*i] == 'B' || s[*i] == 'L') && s[*i + 1] == ')') return MW_SIG_E_SPECIAL;
    t->kind = T_GROUP;
    t->n = 0;
    t->len = 0;
    t->goff = (uint32_t)*gn;
    uint32_t cur = 0;
    for (;;) {
        if (*i >= n) return MW_SIG_E_SYNTAX;
        char ch = s[*i];
        if (ch == '|' || ch == ')') {
            if (cur == 0) return MW_SIG_E_SYNTAX;
            if (t->n == 0) t->len = (uint8_t)cur;
            else if (cur != t->len) return MW_SIG_E_VARALT;
            t->n++;
            cur = 0;
            (*i)++;
            if (ch == ')') break;
            if (t->n >= MW_SIG_MAX_ALTS) return MW_SIG_E_LIMIT;
            continue;
        }
        if (cur >= MW_SIG_MAX_ALT_LEN) return MW_SIG_E_LIMIT;
        uint8_t v, m;
        int rc = parse_byte(s, n, i, &v, &m);
        if (rc) return rc;
        /* a later alternative longer than the first is refused here */
        if (t->n > 0 && cur >= t->len) return MW_SIG_E_VARALT;
        gb[(*gn)++] = (uint8_t)(v & m);
        gb[(*gn)++] = m;
        cur++;
    }
    return MW_SIG_OK;
}

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

static int byte_common(uint8_t b) { return b == 0x00 || b == 0xFF || b == 0x20 || b == 0x0A; }

/* Picks the anchor window of a part: consecutive fixed bytes and groups of
 * fixed alternatives, at most MAX_ANCHOR bytes (what the strided prefilter
 * can use),
 * with at most MAX_ANCHOR_COMBOS expansions.  Longer is better; among equal
 * lengths fewer expansions, then fewer very common bytes. */
static int pick_anchor(const ppart *p, const uint8_t *gb, uint32_t *best_s, uint32_t *best_len) {
    int64_t best_score = -1;
    for (uint32_t s = 0; s < p->len;) {
        uint32_t step = 1;
        if (p->in_group[s]) {
            /* windows start only at a group's first byte */
            uint32_t g = p->in_group[s] - 1u;
            if (p->gpos[g] != s) {
                s++;
                continue;
            }
        }
        uint32_t len = 0, product = 1, common = 0;
        for (uint32_t e = s; e < p->len && len < MAX_ANCHOR;) {
            if (p->in_group[e]) {
                uint32_t g = p->in_group[e] - 1u;
                const token *t = p->groups[g];
                int fixed = !t->negate;
                for (uint32_t a = 0; fixed && a < t->n; a++)
                    for (uint32_t k = 0; k < t->len; k++)
                        if (GMASK(gb, t, a, k) != 0xFF) fixed = 0;
                if (!fixed || product * t->n > MAX_ANCHOR_COMBOS) break;
                product *= t->n;
                len += t->len;
                e += t->len;
            } else {
                if (p->mask[e] != 0xFF) break;
                common += (uint32_t)byte_common(p->val[e]);
                len++;
                e++;
            }
            uint32_t l = len > MAX_ANCHOR ? MAX_ANCHOR : len;
            int64_t score = (int64_t)l * 100000 - (int64_t)product * 100 - common;
            if (l >= 2 && score > best_score) {
                best_score = score;
                *best_s = s;
                *best_len = l;
            }
        }
        s += step;
    }
    return best_score >= 0;
}

/* Emits one builder entry per expansion of the anchor window. */
static int emit_anchor(mw_sigc *c, const ppart *p, const uint8_t *gb, uint32_t part_id,
                       uint32_t s, uint32_t len) {
    /* choice[g] enumerates like an odometer over the groups in the window */
    uint32_t gidx[MAX_ANCHOR], ng = 0, choice[MAX_ANCHOR] = {0};
    for (uint32_t e = s; e < s + len;) {
        if (p->in_group[e]) {
            gidx[ng++] = p->in_group[e] - 1u;
            e += p->groups[p->in_group[e] - 1u]->len;
        } else {
            e++;
        }
    }
    for (;;) {
        bentry *be = vec_push(&c->entries, 1);
        if (!be) return MW_SIG_E_NOMEM;
        memset(be, 0, sizeof *be);
        uint32_t k = 0, gi = 0;
        for (uint32_t e = s; k < len;) {
            if (p->in_group[e]) {
                const token *t = p->groups[gidx[gi]];
                for (uint32_t j = 0; j < t->len && k < len; j++)
                    be->bytes[k++] = GVAL(gb, t, choice[gi], j);
                e += t->len;
                gi++;
            } else {
                be->bytes[k++] = p->val[e++];
            }
        }
        be->len = len;
        be->part = part_id;
        be->off = s;
        uint32_t g = 0;
        while (g < ng) {
            if (++choice[g] < p->groups[gidx[g]]->n) break;
            choice[g++] = 0;
        }
        if (g == ng) break;
    }
    if (len >= 4 && len < c->min_key) c->min_key = len;
    return MW_SIG_OK;
}

static int part_has_fixed(const ppart *p) {
    for (uint32_t k = 0; k < p->len; k++)
        if (p->mask[k] || p->in_group[k]) return 1;
    return 0;
}

static int build_sig(token *toks, size_t ntok, psig *ps) {
    ps->n = 0;
    ppart *cur = NULL;
    uint32_t pend_min = 0, pend_max = 0;
    int pending = 0;
    for (size_t t = 0; t < ntok; t++) {
        token *tk = &toks[t];
        int inline_gap = tk->kind == T_GAP && tk->gmin == tk->gmax && tk->gmin <= INLINE_GAP &&
                         cur && !pending;
        if (tk->kind == T_GAP && !inline_gap) {
            if (!cur) {
                /* a leading '*' means nothing; any other leading gap would
                 * move the start of the match, which ClamAV refuses too */
                if (tk->gmin == 0 && tk->gmax == MW_SIG_GAP_INF) continue;
                return MW_SIG_E_SYNTAX;
            }
            if (!pending) {
                pending = 1;
                pend_min = pend_max = 0;
            }
            uint64_t mn = (uint64_t)pend_min + tk->gmin;
            pend_min = mn > MW_SIG_MAX_GAP ? MW_SIG_MAX_GAP : (uint32_t)mn;
            if (pend_max == MW_SIG_GAP_INF || tk->gmax == MW_SIG_GAP_INF)
                pend_max = MW_SIG_GAP_INF;
            else {
                uint64_t mx = (uint64_t)pend_max + tk->gmax;
                if (mx > MW_SIG_MAX_GAP) return MW_SIG_E_LIMIT;
                pend_max = (uint32_t)mx;
            }
            continue;
        }
        if (!cur || pending) {
            if (ps->n >= MW_SIG_MAX_PARTS) return MW_SIG_E_LIMIT;
            cur = &ps->parts[ps->n++];
            cur->len = 0;
            cur->n_groups = 0;
            cur->gap_min = pending ? pend_min : 0;
            cur->gap_max = pending ? pend_max : 0;
            pending = 0;
        }
        uint32_t add = tk->kind == T_BYTE ? 1 : tk->kind == T_GROUP ? tk->len : tk->gmin;
        if (cur->len + add > MW_SIG_MAX_PART) return MW_SIG_E_LIMIT;
        if (tk->kind == T_GROUP) {
            cur->groups[cur->n_groups] = tk;
            cur->gpos[cur->n_groups] = cur->len;
            cur->n_groups++;
            for (uint32_t k = 0; k < add; k++) {
                cur->val[cur->len] = 0;
                cur->mask[cur->len] = 0;
                cur->in_group[cur->len++] = (uint16_t)cur->n_groups;
            }
        } else {
            for (uint32_t k = 0; k < add; k++) {
                cur->val[cur->len] = tk->kind == T_BYTE ? (uint8_t)(tk->val & tk->mask) : 0;
                cur->mask[cur->len] = tk->kind == T_BYTE ? tk->mask : 0;
                cur->in_group[cur->len++] = 0;
            }
        }
    }
    /* a trailing '*' means nothing; other trailing gaps are refused */
    if (pending && !(pend_min == 0 && pend_max == MW_SIG_GAP_INF)) return MW_SIG_E_SYNTAX;
    if (ps->n == 0) return MW_SIG_E_SYNTAX;
    /* Fold parts that are only fixed-length wildcards into the gaps around
     * them: "a*??*b" is a{1-}b. */
    uint32_t w = 0;
    for (uint32_t r = 0; r < ps->n; r++) {
        ppart *p = &ps->parts[r];
        if (!part_has_fixed(p) && r > 0 && r + 1 < ps->n) {
            ppart *nx = &ps->parts[r + 1];
            uint64_t mn = (uint64_t)p->gap_min + p->len + nx->gap_min;
            if (mn > MW_SIG_MAX_GAP) return MW_SIG_E_LIMIT;
            uint32_t mx = MW_SIG_GAP_INF;
            if (p->gap_max != MW_SIG_GAP_INF && nx->gap_max != MW_SIG_GAP_INF) {
                uint64_t m64 = (uint64_t)p->gap_max + p->len + nx->gap_max;
                if (m64 > MW_SIG_MAX_GAP) return MW_SIG_E_LIMIT;
                mx = (uint32_t)m64;
            }
            nx->gap_min = (uint32_t)mn;
            nx->gap_max = mx;
            continue;
        }
        if (w != r) ps->parts[w] = *p;
        w++;
    }
    ps->n = w;
    return MW_SIG_OK;
}

static int tokenize(const char *s, size_t n, token *toks, size_t cap, size_t *ntok, uint8_t *gb) {
    size_t gn = 0;
    size_t i = 0, k = 0;
    while (i < n) {
        if (k >= cap) return MW_SIG_E_LIMIT;
        token *t = &toks[k];
        char ch = s[i];
        int rc = MW_SIG_OK;
        if (ch == '*') {
            t->kind = T_GAP;
            t->gmin = 0;
            t->gmax = MW_SIG_GAP_INF;
            i++;
        } else if (ch == '{') {
            rc = parse_gap(s, n, &i, '}', t);
        } else if (ch == '[') {
            rc = parse_gap(s, n, &i, ']', t);
        } else if (ch == '!' && i + 1 < n && s[i + 1] == '(') {
            i++;
            rc = parse_group(s, n, &i, t, gb, &gn);
            t->negate = 1;
        } else if (ch == '(') {
            rc = parse_group(s, n, &i, t, gb, &gn);
            t->negate = 0;
        } else {
            t->kind = T_BYTE;
            rc = parse_byte(s, n, &i, &t->val, &t->mask);
        }
        if (rc) return rc;
        k++;
    }
    *ntok = k;
    return MW_SIG_OK;
}

int mw_sigc_add(mw_sigc *c, const char *text, size_t len, uint32_t target, uint32_t off_kind,
                uint64_t off, uint64_t shift, uint32_t *id) {
    if (!c || (!text && len)) return MW_SIG_E_SYNTAX;
    if (len > MW_SIG_MAX_TEXT || target > MW_SIG_MAX_TARGET || off_kind > MW_SIG_OFF_EOF ||
        c->sigs.n >= MW_SIG_MAX_SIGS)
        return MW_SIG_E_LIMIT;
    if (off > ((uint64_t)1 << 48) || shift > ((uint64_t)1 << 48)) return MW_SIG_E_LIMIT;
    if (off_kind == MW_SIG_OFF_EOF && off > MW_SIG_MAX_EOF) return MW_SIG_E_LIMIT;
    /* A pattern of n characters has at most n tokens ('*' takes one
     * character) and n/2 group bytes (two scratch bytes each); scratch grows
     * to the longest pattern seen. */
    size_t cap = len + 2;
    if (!c->ps && !(c->ps = malloc(sizeof(psig)))) return MW_SIG_E_NOMEM;
    if (cap > c->toks_cap) {
        token *t = realloc(c->toks, cap * sizeof *t);
        uint8_t *g = realloc(c->gb, cap + 2);
        if (t) c->toks = t;
        if (g) c->gb = g;
        if (!t || !g) return MW_SIG_E_NOMEM;
        c->toks_cap = cap;
    }
    token *toks = c->toks;
    psig *ps = c->ps;
    const uint8_t *gb = c->gb;
    size_t ntok = 0;
    int rc = tokenize(text, len, toks, cap, &ntok, c->gb);
    if (rc) return rc;
    rc = build_sig(toks, ntok, ps);
    if (rc) return rc;
    uint32_t anchor_s[MW_SIG_MAX_PARTS], anchor_len[MW_SIG_MAX_PARTS];
    uint32_t maxlen = 0;
    for (uint32_t p = 0; p < ps->n; p++) {
        if (!pick_anchor(&ps->parts[p], gb, &anchor_s[p], &anchor_len[p]))
            return MW_SIG_E_NOANCHOR;
        if (ps->parts[p].len > maxlen) maxlen = ps->parts[p].len;
    }
    /* Commit: everything below only appends. */
    size_t save_parts = c->parts.n, save_groups = c->groups.n, save_entries = c->entries.n,
           save_pool = c->pool.n;
    uint32_t save_key = c->min_key;
    uint32_t sig_id = (uint32_t)c->sigs.n;
    uint32_t first_part = (uint32_t)c->parts.n;
    rc = MW_SIG_E_NOMEM;
    for (uint32_t p = 0; p < ps->n; p++) {
        ppart *pp = &ps->parts[p];
        if (c->pool.n + 2u * pp->len + 2u * MW_SIG_MAX_ALTS * MW_SIG_MAX_ALT_LEN * pp->n_groups >
            (size_t)1 << 30) {
            rc = MW_SIG_E_LIMIT;
            goto rollback;
        }
        dpart *dp = vec_push(&c->parts, 1);
        if (!dp) goto rollback;
        memset(dp, 0, sizeof *dp);
        dp->sig = sig_id;
        dp->index = (uint16_t)p;
        dp->len = pp->len;
        dp->gap_min = pp->gap_min;
        dp->gap_max = pp->gap_max;
        dp->grp_first = (uint32_t)c->groups.n;
        dp->grp_count = pp->n_groups;
        dp->pool = (uint32_t)c->pool.n;
        uint8_t *pool = vec_push(&c->pool, 2u * pp->len);
        if (!pool) goto rollback;
        memcpy(pool, pp->val, pp->len);
        memcpy(pool + pp->len, pp->mask, pp->len);
        int literal = pp->n_groups == 0;
        for (uint32_t k = 0; k < pp->len && literal; k++)
            if (pp->mask[k] != 0xFF) literal = 0;
        dp->literal = (uint16_t)literal;
        if (p + 1 < ps->n) {
            dp->slot = c->n_slots++;
            dp->next_inf = ps->parts[p + 1].gap_max == MW_SIG_GAP_INF;
        } else {
            dp->slot = UINT32_MAX;
        }
        for (uint32_t g = 0; g < pp->n_groups; g++) {
            const token *t = pp->groups[g];
            dgroup *dg = vec_push(&c->groups, 1);
            if (!dg) goto rollback;
            dg->pos = pp->gpos[g];
            dg->len = t->len;
            dg->n = t->n;
            dg->negate = t->negate;
            size_t sz = (size_t)t->n * t->len;
            dg->pool = (uint32_t)c->pool.n;
            uint8_t *gp = vec_push(&c->pool, 2 * sz);
            if (!gp) goto rollback;
            for (uint32_t a = 0; a < t->n; a++) {
                for (uint32_t k = 0; k < t->len; k++) {
                    gp[a * t->len + k] = GVAL(gb, t, a, k);
                    gp[sz + a * t->len + k] = GMASK(gb, t, a, k);
                }
            }
        }
        if (off_kind != MW_SIG_OFF_EOF) {
            int e = emit_anchor(c, pp, gb, first_part + p, anchor_s[p], anchor_len[p]);
            if (e) goto rollback;
        }
    }
    dsig *ds = vec_push(&c->sigs, 1);
    if (!ds) goto rollback;
    ds->first_part = first_part;
    ds->n_parts = (uint16_t)ps->n;
    ds->target = (uint8_t)target;
    ds->off_kind = (uint8_t)off_kind;
    ds->off = off;
    ds->shift = shift;
    if (off_kind == MW_SIG_OFF_EOF) {
        uint32_t *e = vec_push(&c->eof, 1);
        if (!e) {
            c->sigs.n--;
            goto rollback;
        }
        *e = sig_id;
        if (off > c->max_eof) c->max_eof = (uint32_t)off;
    }
    if (maxlen > c->max_part) c->max_part = maxlen;
    if (id) *id = sig_id;
    return MW_SIG_OK;
rollback:
    /* slots handed out for this signature are simply left unused */
    c->parts.n = save_parts;
    c->groups.n = save_groups;
    c->entries.n = save_entries;
    c->pool.n = save_pool;
    c->min_key = save_key;
    return rc;
}

/* ----------------------------------------------------------------- build */

static uint64_t key_mask(uint32_t kl) {
    uint8_t m[8] = {0};
    memset(m, 0xFF, kl);
    uint64_t v;
    memcpy(&v, m, 8);
    return v;
}

static uint64_t load_key(const uint8_t *p, uint64_t mask) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v & mask;
}

static uint32_t ceil_log2(uint64_t x) {
    uint32_t b = 0;
    while (((uint64_t)1 << b) < x) b++;
    return b;
}

static inline uint32_t hash_bits(uint64_t key, uint64_t mult, uint32_t bits) {
    return bits ? (uint32_t)((key * mult) >> (64 - bits)) : 0;
}

static int cmp_dentry(const void *a, const void *b) {
    const dentry *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    if (x->part != y->part) return x->part < y->part ? -1 : 1;
    return (x->off > y->off) - (x->off < y->off);
}

/* Entries sorted by key, duplicates (same key, part and offset: e.g. two
 * alternatives that agree on the hashed bytes) dropped, then laid out by
 * bucket (counting sort) into dst. */
static size_t bucketize(dentry *src, size_t n, uint32_t bits, uint32_t *buckets, dentry *dst) {
    qsort(src, n, sizeof *src, cmp_dentry);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (m == 0 || cmp_dentry(&src[m - 1], &src[i]) != 0) src[m++] = src[i];
    size_t nb = (size_t)1 << bits;
    memset(buckets, 0, (nb + 1) * sizeof *buckets);
    for (size_t i = 0; i < m; i++) buckets[hash_bits(src[i].key, M3, bits) + 1]++;
    for (size_t b = 0; b < nb; b++) buckets[b + 1] += buckets[b];
    uint32_t *fill = malloc(nb * sizeof *fill);
    if (!fill) return SIZE_MAX;
    memcpy(fill, buckets, nb * sizeof *fill);
    for (size_t i = 0; i < m; i++) dst[fill[hash_bits(src[i].key, M3, bits)]++] = src[i];
    free(fill);
    return m;
}

static uint64_t align8(uint64_t x) { return (x + 7) & ~(uint64_t)7; }

int mw_sigc_build(const mw_sigc *c, uint8_t **blob, size_t *len) {
    if (!c || !blob || !len) return MW_ERR_ARG;
    *blob = NULL;
    *len = 0;
    const bentry *be = c->entries.p;
    size_t n_all = c->entries.n, n_reg = 0, n_tiny = 0;
    /* Stride: with every anchor at least kl + stride - 1 bytes long, each
     * occurrence has one of its first `stride` kl-byte windows at a position
     * divisible by the stride, so the scan loop looks at every stride-th
     * position only, and each anchor enters the filter `stride` times.
     * Shortest anchor 8: 4 strides of 5-byte keys; 11 and more: 8-byte keys. */
    uint32_t lmin = c->min_key;
    uint32_t stride = lmin > 4 ? lmin - 4 : 1;
    if (stride > 4) stride = 4;
    uint32_t kl = lmin - stride + 1;
    if (kl > 8) kl = 8;
    for (size_t i = 0; i < n_all; i++) {
        if (be[i].len >= 4) n_reg += stride;
        else n_tiny++;
    }
    uint64_t kmask = key_mask(kl);
    /* Bitmaps sized for about 1/32 fill, within [2^14, 2^22] bits: at 100k
     * anchors each is 512 KiB, so both fit the L2 cache with room left. */
    uint32_t fbits = ceil_log2(n_reg ? n_reg * 32 : 1);
    if (fbits < 14) fbits = 14;
    if (fbits > 22) fbits = 22;
    uint32_t bbits = ceil_log2(n_reg ? n_reg : 1) + 1;
    uint32_t tbits = ceil_log2(n_tiny ? n_tiny : 1) + 1;
    if (bbits > 26 || tbits > 26) return MW_ERR_TOO_LARGE;

    dentry *reg = malloc((n_reg ? n_reg : 1) * sizeof *reg);
    dentry *tiny = malloc((n_tiny ? n_tiny : 1) * sizeof *tiny);
    if (!reg || !tiny) {
        free(reg);
        free(tiny);
        return MW_ERR_NOMEM;
    }
    size_t r = 0, t = 0;
    for (size_t i = 0; i < n_all; i++) {
        uint8_t tmp[MAX_ANCHOR + 8] = {0};
        memcpy(tmp, be[i].bytes, be[i].len);
        if (be[i].len >= 4)
            for (uint32_t j = 0; j < stride; j++)
                reg[r++] = (dentry){load_key(tmp + j, kmask), be[i].part, be[i].off + j};
        else /* the scan loop forms 2-byte keys the same explicit way */
            tiny[t++] = (dentry){(uint64_t)tmp[0] | (uint64_t)tmp[1] << 8, be[i].part, be[i].off};
    }

    dheader h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, MAGIC, 8);
    h.version = FORMAT_VERSION;
    h.header_size = sizeof h;
    h.sizes = SIZES;
    h.key_len = kl;
    h.stride = stride;
    h.filter_bits = fbits;
    h.bucket_bits = bbits;
    h.tiny_bucket_bits = tbits;
    h.n_sigs = (uint32_t)c->sigs.n;
    h.n_parts = (uint32_t)c->parts.n;
    h.n_groups = (uint32_t)c->groups.n;
    h.n_eof = (uint32_t)c->eof.n;
    h.n_slots = c->n_slots;
    h.max_part = c->max_part;
    h.max_eof = c->max_eof;
    h.pool_len = c->pool.n;
    uint64_t o = align8(sizeof h);
    uint64_t bm_bytes = ((uint64_t)1 << fbits) / 8;
    h.o_bm1 = o;
    o += bm_bytes;
    h.o_bm2 = o;
    o += bm_bytes;
    h.o_bmt = o;
    o += 65536 / 8;
    h.o_buckets = o;
    o = align8(o + (((uint64_t)1 << bbits) + 1) * 4);
    h.o_entries = o;
    o += (uint64_t)n_reg * sizeof(dentry);
    h.o_tbuckets = o;
    o = align8(o + (((uint64_t)1 << tbits) + 1) * 4);
    h.o_tiny = o;
    o += (uint64_t)n_tiny * sizeof(dentry);
    h.o_parts = o;
    o += (uint64_t)c->parts.n * sizeof(dpart);
    h.o_groups = o;
    o += (uint64_t)c->groups.n * sizeof(dgroup);
    o = align8(o);
    h.o_sigs = o;
    o += (uint64_t)c->sigs.n * sizeof(dsig);
    h.o_eof = o;
    o = align8(o + (uint64_t)c->eof.n * 4);
    h.o_pool = o;
    o = align8(o + c->pool.n);
    h.total = o;
    if (o > MAX_BLOB) {
        free(reg);
        free(tiny);
        return MW_ERR_TOO_LARGE;
    }
    uint8_t *b = calloc(1, (size_t)o);
    if (!b) {
        free(reg);
        free(tiny);
        return MW_ERR_NOMEM;
    }
    size_t m_reg = bucketize(reg, n_reg, bbits, (uint32_t *)(b + h.o_buckets),
                             (dentry *)(b + h.o_entries));
    size_t m_tiny = bucketize(tiny, n_tiny, tbits, (uint32_t *)(b + h.o_tbuckets),
                              (dentry *)(b + h.o_tiny));
    free(reg);
    free(tiny);
    if (m_reg == SIZE_MAX || m_tiny == SIZE_MAX) {
        free(b);
        return MW_ERR_NOMEM;
    }
    /* Deduplication may have shortened the entry arrays; the space after
     * stays zero and is simply not referenced. */
    h.n_entries = (uint32_t)m_reg;
    h.n_tiny = (uint32_t)m_tiny;
    const dentry *de = (const dentry *)(b + h.o_entries);
    for (size_t i = 0; i < m_reg; i++) {
        uint32_t b1 = hash_bits(de[i].key, M1, fbits), b2 = hash_bits(de[i].key, M2, fbits);
        b[h.o_bm1 + b1 / 8] |= (uint8_t)(1u << (b1 % 8));
        b[h.o_bm2 + b2 / 8] |= (uint8_t)(1u << (b2 % 8));
    }
    const dentry *dt = (const dentry *)(b + h.o_tiny);
    for (size_t i = 0; i < m_tiny; i++) {
        uint32_t k = (uint32_t)dt[i].key & 0xFFFF;
        b[h.o_bmt + k / 8] |= (uint8_t)(1u << (k % 8));
    }
    if (c->parts.n) memcpy(b + h.o_parts, c->parts.p, c->parts.n * sizeof(dpart));
    if (c->groups.n) memcpy(b + h.o_groups, c->groups.p, c->groups.n * sizeof(dgroup));
    if (c->sigs.n) memcpy(b + h.o_sigs, c->sigs.p, c->sigs.n * sizeof(dsig));
    if (c->eof.n) memcpy(b + h.o_eof, c->eof.p, c->eof.n * 4);
    if (c->pool.n) memcpy(b + h.o_pool, c->pool.p, c->pool.n);
    memcpy(b, &h, sizeof h);
    *blob = b;
    *len = (size_t)o;
    return MW_OK;
}

void mw_sig_blob_free(uint8_t *blob) { free(blob); }

/* ------------------------------------------------------------------ open */

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

static int section_ok(const dheader *h, uint64_t off, uint64_t size, uint64_t align) {
    return off % align == 0 && off >= sizeof *h && off <= h->total && size <= h->total - off;
}

/* Checks every offset and index the scanner will follow, so a damaged or
 * hostile file is refused here and the scan loop needs no bounds checks. */
static int validate(const mw_sigdb *db) {
    const dheader *h = &db->h;
    if (h->key_len < 4 || h->key_len > 8 || h->stride < 1 || h->stride > 4 || h->filter_bits < 14 || h->filter_bits > 22 ||
        h->bucket_bits > 26 || h->tiny_bucket_bits > 26 || h->max_part > MW_SIG_MAX_PART ||
        h->max_eof > MW_SIG_MAX_EOF || h->n_sigs > MW_SIG_MAX_SIGS ||
        /* one slot per part that has a next part: more slots than parts is a forged header,
         * and the scanner allocates a queue index per slot */
        h->n_slots > h->n_parts)
        return 0;
    uint64_t bm = ((uint64_t)1 << h->filter_bits) / 8;
    uint64_t nb = ((uint64_t)1 << h->bucket_bits) + 1, nt = ((uint64_t)1 << h->tiny_bucket_bits) + 1;
    if (!section_ok(h, h->o_bm1, bm, 1) || !section_ok(h, h->o_bm2, bm, 1) ||
        !section_ok(h, h->o_bmt, 8192, 1) || !section_ok(h, h->o_buckets, nb * 4, 4) ||
        !section_ok(h, h->o_entries, (uint64_t)h->n_entries * sizeof(dentry), 8) ||
        !section_ok(h, h->o_tbuckets, nt * 4, 4) ||
        !section_ok(h, h->o_tiny, (uint64_t)h->n_tiny * sizeof(dentry), 8) ||
        !section_ok(h, h->o_parts, (uint64_t)h->n_parts * sizeof(dpart), 8) ||
        !section_ok(h, h->o_groups, (uint64_t)h->n_groups * sizeof(dgroup), 4) ||
        !section_ok(h, h->o_sigs, (uint64_t)h->n_sigs * sizeof(dsig), 8) ||
        !section_ok(h, h->o_eof, (uint64_t)h->n_eof * 4, 4) ||
        !section_ok(h, h->o_pool, h->pool_len, 1))
        return 0;
    for (int which = 0; which < 2; which++) {
        const uint32_t *bk = which ? db->tbuckets : db->buckets;
        uint64_t n = which ? nt : nb, lim = which ? h->n_tiny : h->n_entries;
        if (bk[0] != 0 || bk[n - 1] != lim) return 0;
        for (uint64_t i = 1; i < n; i++)
            if (bk[i] < bk[i - 1]) return 0;
        const dentry *e = which ? db->tiny : db->entries;
        for (uint64_t i = 0; i < lim; i++)
            if (e[i].part >= h->n_parts || e[i].off >= db->parts[e[i].part].len) return 0;
    }
    for (uint32_t i = 0; i < h->n_parts; i++) {
        const dpart *p = &db->parts[i];
        if (p->sig >= h->n_sigs || p->len == 0 || p->len > h->max_part ||
            (uint64_t)p->pool + 2ull * p->len > h->pool_len ||
            (uint64_t)p->grp_first + p->grp_count > h->n_groups ||
            (p->slot != UINT32_MAX && p->slot >= h->n_slots) || p->gap_min > MW_SIG_MAX_GAP ||
            (p->gap_max != MW_SIG_GAP_INF && p->gap_max < p->gap_min))
            return 0;
        const dsig *s = &db->sigs[p->sig];
        if (p->index >= s->n_parts || s->first_part + p->index != i) return 0;
        if ((p->index + 1u < s->n_parts) != (p->slot != UINT32_MAX)) return 0;
        for (uint32_t g = 0; g < p->grp_count; g++) {
            const dgroup *dg = &db->groups[p->grp_first + g];
            uint64_t sz = (uint64_t)dg->n * dg->len;
            if (dg->n == 0 || dg->len == 0 || dg->negate > 1 ||
                (uint64_t)dg->pos + dg->len > p->len ||
                (uint64_t)dg->pool + 2 * sz > h->pool_len)
                return 0;
        }
    }
    for (uint32_t i = 0; i < h->n_sigs; i++) {
        const dsig *s = &db->sigs[i];
        if (s->n_parts == 0 || (uint64_t)s->first_part + s->n_parts > h->n_parts ||
            s->target > MW_SIG_MAX_TARGET || s->off_kind > MW_SIG_OFF_EOF ||
            (s->off_kind == MW_SIG_OFF_EOF && s->off > h->max_eof))
            return 0;
        if (db->parts[s->first_part].sig != i) return 0;
    }
    for (uint32_t i = 0; i < h->n_eof; i++)
        if (db->eof[i] >= h->n_sigs || db->sigs[db->eof[i]].off_kind != MW_SIG_OFF_EOF) return 0;
    return 1;
}

int mw_sigdb_open(const uint8_t *blob, size_t len, mw_sigdb **out) {
    if (!out) return MW_ERR_ARG;
    *out = NULL;
    if (!blob || len < sizeof(dheader) || ((uintptr_t)blob & 7)) return MW_ERR_ARG;
    mw_sigdb *db = calloc(1, sizeof *db);
    if (!db) return MW_ERR_NOMEM;
    memcpy(&db->h, blob, sizeof db->h);
    const dheader *h = &db->h;
    if (memcmp(h->magic, MAGIC, 8) || h->version != FORMAT_VERSION ||
        h->header_size != sizeof *h || h->sizes != SIZES || h->total != len) {
        free(db);
        return MW_ERR_ARG;
    }
    db->bm1 = blob + h->o_bm1;
    db->bm2 = blob + h->o_bm2;
    db->bmt = blob + h->o_bmt;
    db->buckets = (const uint32_t *)(blob + h->o_buckets);
    db->entries = (const dentry *)(blob + h->o_entries);
    db->tbuckets = (const uint32_t *)(blob + h->o_tbuckets);
    db->tiny = (const dentry *)(blob + h->o_tiny);
    db->parts = (const dpart *)(blob + h->o_parts);
    db->groups = (const dgroup *)(blob + h->o_groups);
    db->sigs = (const dsig *)(blob + h->o_sigs);
    db->eof = (const uint32_t *)(blob + h->o_eof);
    db->pool = blob + h->o_pool;
    /* validate checks every section's bounds before reading from it */
    if (!validate(db)) {
        free(db);
        return MW_ERR_ARG;
    }
    db->kmask = key_mask(h->key_len);
    *out = db;
    return MW_OK;
}

void mw_sigdb_free(mw_sigdb *db) { free(db); }

void mw_sigdb_info_get(const mw_sigdb *db, mw_sigdb_info *out) {
    if (!db || !out) return;
    out->bytes = db->h.total;
    out->n_sigs = db->h.n_sigs;
    out->n_parts = db->h.n_parts;
    out->n_anchors = db->h.n_entries + db->h.n_tiny;
    out->n_tiny = db->h.n_tiny;
    out->n_eof = db->h.n_eof;
    out->key_len = db->h.key_len;
    out->filter_bits = db->h.filter_bits;
    out->max_part = db->h.max_part;
    out->stride = db->h.stride;
}

/* ------------------------------------------------------------------ scan */

typedef struct {
    uint32_t slot;
    uint8_t n, head;
    uint64_t end[QCAP];
    uint64_t start[QCAP];
} queue;

struct mw_sigscan {
    const mw_sigdb *db;
    uint32_t mask;
    int finished;
    uint64_t pos; /* bytes fed so far */
    /* last max_part-1 bytes, then room for as many new ones */
    uint8_t *joint;
    size_t carry, cap;
    uint8_t *tail; /* last max_eof bytes, for EOF signatures */
    size_t tail_len;
    uint32_t *slot_q; /* slot -> 1 + queue index, 0 none */
    queue *q;
    size_t nq, capq;
    uint32_t *hit_of; /* sig -> 1 + hit index, 0 none */
    mw_sighit *hits;
    size_t nhits, caphits;
};

int mw_sigscan_new(const mw_sigdb *db, mw_sigscan **out) {
    if (!db || !out) return MW_ERR_ARG;
    *out = NULL;
    mw_sigscan *s = calloc(1, sizeof *s);
    if (!s) return MW_ERR_NOMEM;
    s->db = db;
    s->cap = 2 * (size_t)(db->h.max_part ? db->h.max_part : 1) + 8;
    s->joint = malloc(s->cap);
    s->tail = malloc(db->h.max_eof ? db->h.max_eof : 1);
    s->slot_q = calloc(db->h.n_slots ? db->h.n_slots : 1, sizeof *s->slot_q);
    s->hit_of = calloc(db->h.n_sigs ? db->h.n_sigs : 1, sizeof *s->hit_of);
    if (!s->joint || !s->tail || !s->slot_q || !s->hit_of) {
        mw_sigscan_free(s);
        return MW_ERR_NOMEM;
    }
    mw_sigscan_reset(s, 1);
    *out = s;
    return MW_OK;
}

void mw_sigscan_free(mw_sigscan *s) {
    if (!s) return;
    free(s->joint);
    free(s->tail);
    free(s->slot_q);
    free(s->q);
    free(s->hit_of);
    free(s->hits);
    free(s);
}

void mw_sigscan_reset(mw_sigscan *s, uint32_t target_mask) {
    if (!s) return;
    /* Only what the last object touched is cleared, so a reset costs in
     * proportion to its hits, not to the size of the database. */
    for (size_t i = 0; i < s->nq; i++) s->slot_q[s->q[i].slot] = 0;
    for (size_t i = 0; i < s->nhits; i++) s->hit_of[s->hits[i].sig_id] = 0;
    s->nq = 0;
    s->nhits = 0;
    s->mask = target_mask | 1u;
    s->finished = 0;
    s->pos = 0;
    s->carry = 0;
    s->tail_len = 0;
}

static void record_hit(mw_sigscan *s, uint32_t sig, uint64_t start) {
    uint32_t h = s->hit_of[sig];
    if (h) {
        mw_sighit *x = &s->hits[h - 1];
        if (x->count != UINT32_MAX) x->count++;
        if (start < x->first_offset) x->first_offset = start;
        return;
    }
    if (s->nhits >= MAX_HITS) return;
    if (s->nhits == s->caphits) {
        size_t cap = s->caphits ? s->caphits * 2 : 16;
        mw_sighit *n = realloc(s->hits, cap * sizeof *n);
        if (!n) return; /* out of memory: the hit is lost, never a crash */
        s->hits = n;
        s->caphits = cap;
    }
    s->hits[s->nhits] = (mw_sighit){start, sig, 1};
    s->hit_of[sig] = (uint32_t)++s->nhits;
}

static queue *get_queue(mw_sigscan *s, uint32_t slot, int create) {
    uint32_t qi = s->slot_q[slot];
    if (qi) return &s->q[qi - 1];
    if (!create || s->nq >= MAX_QUEUES) return NULL;
    if (s->nq == s->capq) {
        size_t cap = s->capq ? s->capq * 2 : 16;
        queue *n = realloc(s->q, cap * sizeof *n);
        if (!n) return NULL;
        s->q = n;
        s->capq = cap;
    }
    queue *q = &s->q[s->nq];
    q->slot = slot;
    q->n = 0;
    q->head = 0;
    s->slot_q[slot] = (uint32_t)++s->nq;
    return q;
}

/* A part matched at [start, start+len) (absolute offsets): chain it. */
static void part_matched(mw_sigscan *s, const dpart *p, uint64_t start) {
    const mw_sigdb *db = s->db;
    const dsig *sig = &db->sigs[p->sig];
    uint64_t chain = start;
    if (p->index == 0) {
        if (sig->off_kind == MW_SIG_OFF_ABS && (start < sig->off || start - sig->off > sig->shift))
            return;
    } else {
        const dpart *prev = p - 1;
        queue *q = get_queue(s, prev->slot, 0);
        if (!q || q->n == 0) return;
        if (prev->next_inf) {
            /* unbounded gap: the earliest predecessor is the only one kept */
            if (q->end[0] + p->gap_min > start) return;
            chain = q->start[0];
        } else {
            /* ends arrive in increasing order and so do our starts: drop
             * those now too far behind, then the oldest left is the best */
            while (q->n && q->end[q->head] + p->gap_max < start) {
                q->head = (uint8_t)((q->head + 1) % QCAP);
                q->n--;
            }
            if (!q->n || q->end[q->head] + p->gap_min > start) return;
            chain = q->start[q->head];
        }
    }
    if (p->slot == UINT32_MAX) {
        record_hit(s, p->sig, chain);
        return;
    }
    queue *q = get_queue(s, p->slot, 1);
    if (!q) return;
    uint64_t end = start + p->len;
    if (p->next_inf) {
        if (q->n == 0) {
            q->end[0] = end;
            q->start[0] = chain;
            q->n = 1;
        }
        return;
    }
    if (q->n == QCAP) { /* full: forget the oldest (it expires first anyway) */
        q->head = (uint8_t)((q->head + 1) % QCAP);
        q->n--;
    }
    uint32_t at = (q->head + q->n) % QCAP;
    q->end[at] = end;
    q->start[at] = chain;
    q->n++;
}

static int verify(const mw_sigdb *db, const dpart *p, const uint8_t *at) {
    const uint8_t *val = db->pool + p->pool, *mask = val + p->len;
    if (p->literal) return memcmp(at, val, p->len) == 0;
    for (uint32_t k = 0; k < p->len; k++)
        if ((at[k] & mask[k]) != val[k]) return 0;
    for (uint32_t g = 0; g < p->grp_count; g++) {
        const dgroup *dg = &db->groups[p->grp_first + g];
        const uint8_t *gv = db->pool + dg->pool, *gm = gv + (size_t)dg->n * dg->len;
        const uint8_t *x = at + dg->pos;
        int any = 0;
        for (uint32_t a = 0; a < dg->n && !any; a++) {
            int ok = 1;
            for (uint32_t k = 0; k < dg->len && ok; k++)
                ok = (x[k] & gm[a * dg->len + k]) == gv[a * dg->len + k];
            any = ok;
        }
        if (any == dg->negate) return 0;
    }
    return 1;
}

typedef struct {
    const uint8_t *buf;
    size_t len;
    uint64_t base;      /* absolute offset of buf[0] */
    size_t max_start;   /* parts must start before this (buffer index) */
    size_t min_end;     /* and end after this */
} window;

static void check_entries(mw_sigscan *s, const window *w, size_t i, const dentry *e, uint32_t lo,
                          uint32_t hi, uint64_t key) {
    const mw_sigdb *db = s->db;
    for (uint32_t k = lo; k < hi; k++) {
        if (e[k].key != key) continue;
        const dpart *p = &db->parts[e[k].part];
        if (!((s->mask >> db->sigs[p->sig].target) & 1u)) continue;
        if (e[k].off > i) continue;
        size_t st = i - e[k].off;
        if (st >= w->max_start || st + p->len > w->len || st + p->len <= w->min_end) continue;
        if (verify(db, p, w->buf + st)) part_matched(s, p, w->base + st);
    }
}

static inline int bit(const uint8_t *bm, uint32_t h) { return (bm[h >> 3] >> (h & 7)) & 1; }

/* The prefilter loop: one 8-byte load, two multiplies and two bitmap bits
 * per position; only positions passing both go to the bucket table. */
static inline void check_regular(mw_sigscan *s, const window *w, size_t i, uint64_t key) {
    const mw_sigdb *db = s->db;
    const uint32_t fb = db->h.filter_bits;
    if (!bit(db->bm1, hash_bits(key, M1, fb)) || !bit(db->bm2, hash_bits(key, M2, fb))) return;
    uint32_t b = hash_bits(key, M3, db->h.bucket_bits);
    check_entries(s, w, i, db->entries, db->buckets[b], db->buckets[b + 1], key);
}

static inline void check_tiny(mw_sigscan *s, const window *w, size_t i) {
    const mw_sigdb *db = s->db;
    uint32_t k = (uint32_t)w->buf[i] | (uint32_t)w->buf[i + 1] << 8;
    if (!bit(db->bmt, k)) return;
    uint32_t b = hash_bits(k, M3, db->h.tiny_bucket_bits);
    check_entries(s, w, i, db->tiny, db->tbuckets[b], db->tbuckets[b + 1], k);
}

/* The prefilter loop: at every stride-th position one 8-byte load, two
 * multiplies and two bitmap bits; only positions passing both go on to the
 * bucket table.  Positions are visited in order (a signature's parts must
 * be seen in order), so 2-3 byte anchors, which need every position, share
 * one loop with the rest when a database has any. */
static void scan_window(mw_sigscan *s, const window *w) {
    const mw_sigdb *db = s->db;
    const uint8_t *buf = w->buf;
    const size_t len = w->len, kl = db->h.key_len, stride = db->h.stride;
    const uint64_t kmask = db->kmask;
    const int reg = db->h.n_entries > 0, tiny = db->h.n_tiny > 0;
    if (!tiny) {
        if (!reg || len < kl) return;
        size_t i = 0;
        const uint32_t fb = db->h.filter_bits;
        const uint8_t *bm1 = db->bm1;
        for (; i + 8 <= len; i += stride) {
            uint64_t key = load_key(buf + i, kmask);
            if (!bit(bm1, hash_bits(key, M1, fb))) continue;
            check_regular(s, w, i, key);
        }
        for (; i + kl <= len; i += stride) {
            uint8_t tmp[8] = {0};
            memcpy(tmp, buf + i, len - i);
            check_regular(s, w, i, load_key(tmp, kmask));
        }
        return;
    }
    for (size_t i = 0; i + 2 <= len; i++) {
        check_tiny(s, w, i);
        if (reg && i % stride == 0 && i + kl <= len) {
            uint8_t tmp[8] = {0};
            memcpy(tmp, buf + i, len - i < 8 ? len - i : 8);
            check_regular(s, w, i, load_key(tmp, kmask));
        }
    }
}

static void keep_tail(mw_sigscan *s, const uint8_t *data, size_t len) {
    size_t cap = s->db->h.max_eof;
    if (!cap) return;
    if (len >= cap) {
        memcpy(s->tail, data + len - cap, cap);
        s->tail_len = cap;
        return;
    }
    if (s->tail_len + len > cap) {
        size_t drop = s->tail_len + len - cap;
        memmove(s->tail, s->tail + drop, s->tail_len - drop);
        s->tail_len -= drop;
    }
    memcpy(s->tail + s->tail_len, data, len);
    s->tail_len += len;
}

int mw_sigscan_feed(mw_sigscan *s, const uint8_t *data, size_t len) {
    if (!s || (!data && len)) return MW_ERR_ARG;
    if (s->finished || len == 0) return MW_OK;
    size_t keep = s->db->h.max_part ? s->db->h.max_part - 1 : 0;
    /* 1. Parts that start in the carried bytes and end in this chunk. */
    if (s->carry) {
        size_t head = len < keep ? len : keep;
        memcpy(s->joint + s->carry, data, head);
        window w = {s->joint, s->carry + head, s->pos - s->carry, s->carry, s->carry};
        scan_window(s, &w);
    }
    /* 2. Parts wholly inside this chunk. */
    window w = {data, len, s->pos, len, 0};
    scan_window(s, &w);
    /* 3. Carry the last bytes that a later part could start in. */
    if (keep) {
        if (len >= keep) {
            memcpy(s->joint, data + len - keep, keep);
            s->carry = keep;
        } else {
            if (!s->carry) memcpy(s->joint, data, len); /* else step 1 put it there */
            size_t total = s->carry + len; /* joint holds carry+data */
            size_t from = total > keep ? total - keep : 0;
            memmove(s->joint, s->joint + from, total - from);
            s->carry = total - from;
        }
    }
    keep_tail(s, data, len);
    s->pos += len;
    return MW_OK;
}

/* Whole-signature match with parts starting at tail[at], for EOF signatures
 * (bounded backtracking over the gaps). */
static int match_from(const mw_sigdb *db, const dsig *sig, uint32_t pi, const uint8_t *t, size_t n,
                      size_t at, uint32_t *budget) {
    const dpart *p = &db->parts[sig->first_part + pi];
    if (at > n || p->len > n - at || !*budget) return 0;
    (*budget)--;
    if (!verify(db, p, t + at)) return 0;
    if (pi + 1u == sig->n_parts) return 1;
    const dpart *nx = p + 1;
    size_t end = at + p->len;
    uint64_t lo = end + (uint64_t)nx->gap_min;
    uint64_t hi = nx->gap_max == MW_SIG_GAP_INF ? n : end + (uint64_t)nx->gap_max;
    for (uint64_t a = lo; a <= hi && a < n && *budget; a++)
        if (match_from(db, sig, pi + 1, t, n, (size_t)a, budget)) return 1;
    return 0;
}

int mw_sigscan_finish(mw_sigscan *s) {
    if (!s) return MW_ERR_ARG;
    if (s->finished) return MW_OK;
    s->finished = 1;
    const mw_sigdb *db = s->db;
    uint64_t size = s->pos, tail0 = size - s->tail_len;
    for (uint32_t i = 0; i < db->h.n_eof; i++) {
        uint32_t id = db->eof[i];
        const dsig *sig = &db->sigs[id];
        if (!((s->mask >> sig->target) & 1u) || sig->off > size) continue;
        uint64_t lo = size - sig->off, hi = lo + sig->shift;
        uint32_t budget = EOF_BUDGET;
        for (uint64_t st = lo; st <= hi && st < size && budget; st++) {
            if (st < tail0) continue;
            if (match_from(db, sig, 0, s->tail, s->tail_len, (size_t)(st - tail0), &budget))
                record_hit(s, id, st);
        }
    }
    return MW_OK;
}

size_t mw_sigscan_hits(const mw_sigscan *s, mw_sighit *out, size_t cap) {
    if (!s) return 0;
    size_t n = s->nhits < cap ? s->nhits : cap;
    if (out && n) memcpy(out, s->hits, n * sizeof *out);
    return s->nhits;
}

int mw_sigscan_buffer(mw_sigscan *s, uint32_t target_mask, const uint8_t *data, size_t len) {
    if (!s) return MW_ERR_ARG;
    mw_sigscan_reset(s, target_mask);
    int rc = mw_sigscan_feed(s, data, len);
    if (rc) return rc;
    return mw_sigscan_finish(s);
}
