/*
 * Signature engine, compiler: a signature's parts get their anchors picked
 * and stored, then the whole set is laid out as one flat database blob.
 */
#include <stdlib.h>
#include <string.h>

#include "sigs_internal.h"

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

mw_status mw_sigc_new(mw_sigc **out) {
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
static mw_status emit_anchor(mw_sigc *c, const ppart *p, const uint8_t *gb, uint32_t part_id,
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
        if (!be) return MW_ERR_NOMEM;
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
    return MW_OK;
}

mw_status mw_sigc_add(mw_sigc *c, const char *text, size_t len, uint32_t target,
                      uint32_t off_kind, uint64_t off, uint64_t shift, uint32_t *id) {
    if (!c || (!text && len)) return MW_ERR_ARG;
    if (len > MW_SIG_MAX_TEXT || target > MW_SIG_MAX_TARGET || off_kind > MW_SIG_OFF_EOF ||
        c->sigs.n >= MW_SIG_MAX_SIGS)
        return MW_ERR_SIG_LIMIT;
    if (off > ((uint64_t)1 << 48) || shift > ((uint64_t)1 << 48)) return MW_ERR_SIG_LIMIT;
    if (off_kind == MW_SIG_OFF_EOF && off > MW_SIG_MAX_EOF) return MW_ERR_SIG_LIMIT;
    /* A pattern of n characters has at most n tokens ('*' takes one
     * character) and n/2 group bytes (two scratch bytes each); scratch grows
     * to the longest pattern seen. */
    size_t cap = len + 2;
    if (!c->ps && !(c->ps = malloc(sizeof(psig)))) return MW_ERR_NOMEM;
    if (cap > c->toks_cap) {
        token *t = realloc(c->toks, cap * sizeof *t);
        uint8_t *g = realloc(c->gb, cap + 2);
        if (t) c->toks = t;
        if (g) c->gb = g;
        if (!t || !g) return MW_ERR_NOMEM;
        c->toks_cap = cap;
    }
    token *toks = c->toks;
    psig *ps = c->ps;
    const uint8_t *gb = c->gb;
    size_t ntok = 0;
    mw_status rc = mw_sigp_tokenize(text, len, toks, cap, &ntok, c->gb);
    if (rc) return rc;
    rc = mw_sigp_split(toks, ntok, ps);
    if (rc) return rc;
    uint32_t anchor_s[MW_SIG_MAX_PARTS], anchor_len[MW_SIG_MAX_PARTS];
    uint32_t maxlen = 0;
    for (uint32_t p = 0; p < ps->n; p++) {
        if (!pick_anchor(&ps->parts[p], gb, &anchor_s[p], &anchor_len[p]))
            return MW_ERR_SIG_NOANCHOR;
        if (ps->parts[p].len > maxlen) maxlen = ps->parts[p].len;
    }
    /* Commit: everything below only appends. */
    size_t save_parts = c->parts.n, save_groups = c->groups.n, save_entries = c->entries.n,
           save_pool = c->pool.n;
    uint32_t save_key = c->min_key;
    uint32_t sig_id = (uint32_t)c->sigs.n;
    uint32_t first_part = (uint32_t)c->parts.n;
    rc = MW_ERR_NOMEM;
    for (uint32_t p = 0; p < ps->n; p++) {
        ppart *pp = &ps->parts[p];
        if (c->pool.n + 2u * pp->len + 2u * MW_SIG_MAX_ALTS * MW_SIG_MAX_ALT_LEN * pp->n_groups >
            (size_t)1 << 30) {
            rc = MW_ERR_SIG_LIMIT;
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
            mw_status e = emit_anchor(c, pp, gb, first_part + p, anchor_s[p], anchor_len[p]);
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
    return MW_OK;
rollback:
    /* slots handed out for this signature are simply left unused */
    c->parts.n = save_parts;
    c->groups.n = save_groups;
    c->entries.n = save_entries;
    c->pool.n = save_pool;
    c->min_key = save_key;
    return rc;
}

static uint32_t ceil_log2(uint64_t x) {
    uint32_t b = 0;
    while (((uint64_t)1 << b) < x) b++;
    return b;
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

mw_status mw_sigc_build(const mw_sigc *c, uint8_t **blob, size_t *len) {
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

