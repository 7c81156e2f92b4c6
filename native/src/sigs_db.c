/*
 * Signature engine, database: opening a blob in place after checking every
 * offset and index the scanner will follow.
 */
#include <stdlib.h>
#include <string.h>

#include "sigs_internal.h"

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

mw_status mw_sigdb_open(const uint8_t *blob, size_t len, mw_sigdb **out) {
    if (!out) return MW_ERR_ARG;
    *out = NULL;
    /* the blob is read in place as 8-byte fields */
    if (!blob || ((uintptr_t)blob & 7)) return MW_ERR_ARG;
    if (len < sizeof(dheader)) return MW_ERR_BAD_DB;
    mw_sigdb *db = calloc(1, sizeof *db);
    if (!db) return MW_ERR_NOMEM;
    memcpy(&db->h, blob, sizeof db->h);
    const dheader *h = &db->h;
    if (memcmp(h->magic, MAGIC, 8) || h->version != FORMAT_VERSION ||
        h->header_size != sizeof *h || h->sizes != SIZES || h->total != len) {
        free(db);
        return MW_ERR_BAD_DB;
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
        return MW_ERR_BAD_DB;
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

