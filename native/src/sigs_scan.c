/*
 * Signature engine, scanner: the prefilter loop over each chunk, exact
 * verification of prefilter hits, chaining of parts across gaps and chunks,
 * and EOF-anchored signatures at the end of the object.
 */
#include <stdlib.h>
#include <string.h>

#include "sigs_internal.h"

/* Where the next part of a signature may chain from: the ends lo, lo + step, ..., hi of
 * one part's matches (a run of evenly spaced repeats is one entry, whatever its length),
 * each with the start of the earliest whole chain leading to it: chain at lo, and growing
 * with the end when lin is set (each repeat starts its own chain), constant otherwise. */
typedef struct {
    uint64_t lo, hi, chain;
    uint32_t step, lin;
} run;

/* The runs of one part, in increasing order of end: a ring of cap (a power of two) runs,
 * kept with its allocation when the next object reuses this queue. */
typedef struct {
    uint32_t slot;
    uint32_t head, n, cap;
    run *r;
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
    size_t nruns; /* runs held by all queues, bounded by max_queues too */
    uint64_t slack; /* how far behind a part just found a later one can still start */
    uint32_t *hit_of; /* sig -> 1 + hit index, 0 none */
    mw_sighit *hits;
    size_t nhits, caphits;
    size_t max_hits, max_queues;
    /* the first failure of this object: a hit or a partial match that could not be kept
     * makes the whole result incomplete, which must never read as "nothing found" */
    mw_status status;
};

mw_status mw_sigscan_new(const mw_sigdb *db, mw_sigscan **out) {
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
    s->max_hits = MW_SIG_MAX_HITS;
    s->max_queues = MW_SIG_MAX_PARTIALS;
    /* Whatever is found after a part that starts at st (later in its window, or in a later
     * window) starts at or after st - max_part - stride, and that part ends at most max_part
     * after st: an end this far behind the latest one can expire (see remember). */
    s->slack = 2 * (uint64_t)db->h.max_part + db->h.stride + 8;
    mw_sigscan_reset(s, 1);
    *out = s;
    return MW_OK;
}

void mw_sigscan_free(mw_sigscan *s) {
    if (!s) return;
    free(s->joint);
    free(s->tail);
    free(s->slot_q);
    for (size_t i = 0; i < s->capq; i++) free(s->q[i].r);
    free(s->q);
    free(s->hit_of);
    free(s->hits);
    free(s);
}

void mw_sigscan_reset(mw_sigscan *s, uint32_t target_mask) {
    if (!s) return;
    /* Only what the last object touched is cleared, so a reset costs in
     * proportion to its hits, not to the size of the database. */
    for (size_t i = 0; i < s->nq; i++) {
        queue *q = &s->q[i];
        s->slot_q[q->slot] = 0;
        /* a pathological object's large rings are not kept for the next one */
        if (q->cap > 64) {
            free(q->r);
            q->r = NULL;
            q->cap = 0;
        }
    }
    for (size_t i = 0; i < s->nhits; i++) s->hit_of[s->hits[i].sig_id] = 0;
    s->nq = 0;
    s->nruns = 0;
    s->nhits = 0;
    s->status = MW_OK;
    s->mask = target_mask | 1u;
    s->finished = 0;
    s->pos = 0;
    s->carry = 0;
    s->tail_len = 0;
}

mw_status mw_sigscan_set_limits(mw_sigscan *s, uint32_t max_hits, uint32_t max_partials) {
    if (!s) return MW_ERR_ARG;
    s->max_hits = max_hits ? max_hits : MW_SIG_MAX_HITS;
    s->max_queues = max_partials ? max_partials : MW_SIG_MAX_PARTIALS;
    return MW_OK;
}

static void fail(mw_sigscan *s, mw_status why) {
    if (s->status == MW_OK) s->status = why;
}

static void record_hit(mw_sigscan *s, uint32_t sig, uint64_t start) {
    uint32_t h = s->hit_of[sig];
    if (h) {
        mw_sighit *x = &s->hits[h - 1];
        if (x->count != UINT32_MAX) x->count++;
        if (start < x->first_offset) x->first_offset = start;
        return;
    }
    if (s->nhits >= s->max_hits) {
        fail(s, MW_ERR_SCAN_LIMIT);
        return;
    }
    if (s->nhits == s->caphits) {
        size_t cap = s->caphits ? s->caphits * 2 : 16;
        mw_sighit *n = realloc(s->hits, cap * sizeof *n);
        if (!n) {
            fail(s, MW_ERR_NOMEM);
            return;
        }
        s->hits = n;
        s->caphits = cap;
    }
    s->hits[s->nhits] = (mw_sighit){start, sig, 1};
    s->hit_of[sig] = (uint32_t)++s->nhits;
}

static queue *get_queue(mw_sigscan *s, uint32_t slot, int create) {
    uint32_t qi = s->slot_q[slot];
    if (qi) return &s->q[qi - 1];
    if (!create) return NULL;
    if (s->nq >= s->max_queues) {
        fail(s, MW_ERR_SCAN_LIMIT);
        return NULL;
    }
    if (s->nq == s->capq) {
        size_t cap = s->capq ? s->capq * 2 : 16;
        queue *n = realloc(s->q, cap * sizeof *n);
        if (!n) {
            fail(s, MW_ERR_NOMEM);
            return NULL;
        }
        memset(n + s->capq, 0, (cap - s->capq) * sizeof *n);
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

static run *q_at(const queue *q, uint32_t k) { return &q->r[(q->head + k) & (q->cap - 1)]; }

/* Drops the runs whose ends e all have e + gap_max < from: no part starting at or after
 * from can chain to them.  With `trim`, a run that straddles from - gap_max starts again at
 * its first end beyond it, so that its first end is the earliest one still in reach. */
static void drop_behind(mw_sigscan *s, queue *q, uint64_t from, uint32_t gap_max, int trim) {
    while (q->n) {
        run *r = q_at(q, 0);
        if (r->hi + gap_max >= from) {
            if (trim && r->lo + gap_max < from) {
                uint64_t k = (from - gap_max - r->lo + r->step - 1) / r->step;
                if (r->lin) r->chain += k * r->step;
                r->lo += k * r->step;
            }
            return;
        }
        q->head = (q->head + 1) & (q->cap - 1);
        q->n--;
        s->nruns--;
    }
}

/* Remembers that the next part may chain from `end`, the end of a match whose chain
 * began at `chain`.  Ends arrive in increasing order, chains in non-decreasing order. */
static void remember(mw_sigscan *s, queue *q, const dpart *p, uint64_t end, uint64_t chain) {
    if (q->n) {
        /* unbounded gap: the earliest end serves every later part, with the earliest chain */
        if (p->next_inf) return;
        run *r = q_at(q, q->n - 1);
        if (end <= r->hi) return; /* the same match again (an alternative twice) */
        uint64_t d = end - r->hi;
        if (r->lo != r->hi) {
            if (d == r->step && chain - r->chain == (r->lin ? end - r->lo : 0)) {
                r->hi = end;
                return;
            }
        } else if (d <= UINT32_MAX && (chain == r->chain || chain - r->chain == d)) {
            r->step = (uint32_t)d;
            r->lin = chain != r->chain;
            r->hi = end;
            return;
        }
        /* Expire here too, not only when the next part shows up: a part found many times
         * whose next part never comes must not fill memory.  Nothing found from now on
         * starts before end - slack. */
        if (end > s->slack) drop_behind(s, q, end - s->slack, p[1].gap_max, 0);
    }
    /* a new run: the bound is on what is remembered, so reaching it ends the scan
     * (incomplete) rather than forgetting a place a match could continue from */
    if (s->nruns >= s->max_queues) {
        fail(s, MW_ERR_SCAN_LIMIT);
        return;
    }
    if (q->n == q->cap) {
        if (q->cap > UINT32_MAX / 2) {
            fail(s, MW_ERR_NOMEM);
            return;
        }
        uint32_t cap = q->cap ? q->cap * 2 : 4;
        run *n = malloc((size_t)cap * sizeof *n);
        if (!n) {
            fail(s, MW_ERR_NOMEM);
            return;
        }
        for (uint32_t k = 0; k < q->n; k++) n[k] = *q_at(q, k);
        free(q->r);
        q->r = n;
        q->cap = cap;
        q->head = 0;
    }
    run *r = &q->r[(q->head + q->n) & (q->cap - 1)];
    *r = (run){end, end, chain, 0, 0};
    q->n++;
    s->nruns++;
}

/* A part matched at [start, start+len) (absolute offsets): chain it.  Matches of one part
 * come in increasing order of start (see check_entries). */
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
        if (!q) return;
        /* the earliest end still in reach is the best: its chain is the earliest */
        if (!prev->next_inf) drop_behind(s, q, start, p->gap_max, 1);
        if (!q->n) return;
        const run *r = q_at(q, 0);
        if (r->lo + p->gap_min > start) return;
        chain = r->chain;
    }
    if (p->slot == UINT32_MAX) {
        record_hit(s, p->sig, chain);
        return;
    }
    queue *q = get_queue(s, p->slot, 1);
    if (q) remember(s, q, p, start + p->len, chain);
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
    /* A bucket is sorted by (key, part, offset), and one position can verify one part at up
     * to `stride` starts (an anchor enters the prefilter at `stride` offsets): walked
     * backwards, each part's starts come in increasing order, which is what lets every queue
     * keep its ends sorted and expire them exactly. */
    for (uint32_t k = hi; k-- > lo;) {
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

mw_status mw_sigscan_feed(mw_sigscan *s, const uint8_t *data, size_t len) {
    if (!s || (!data && len)) return MW_ERR_ARG;
    if (s->status != MW_OK) return s->status;
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
    return s->status;
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

mw_status mw_sigscan_finish(mw_sigscan *s) {
    if (!s) return MW_ERR_ARG;
    if (s->finished || s->status != MW_OK) return s->status;
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
        /* the backtracking was cut short: a match may be among the placements not tried */
        if (!budget) fail(s, MW_ERR_SCAN_LIMIT);
    }
    return s->status;
}

size_t mw_sigscan_hits(const mw_sigscan *s, mw_sighit *out, size_t cap) {
    if (!s) return 0;
    size_t n = s->nhits < cap ? s->nhits : cap;
    if (out && n) memcpy(out, s->hits, n * sizeof *out);
    return s->nhits;
}

mw_status mw_sigscan_buffer(mw_sigscan *s, uint32_t target_mask, const uint8_t *data,
                            size_t len) {
    if (!s) return MW_ERR_ARG;
    mw_sigscan_reset(s, target_mask);
    mw_status rc = mw_sigscan_feed(s, data, len);
    if (rc) return rc;
    return mw_sigscan_finish(s);
}

