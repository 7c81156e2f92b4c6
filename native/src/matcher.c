/*
 * Literal multi-pattern matcher: Aho-Corasick compiled into a complete DFA.
 *
 * Bytes that occur in no pattern all behave the same, so the alphabet is
 * reduced to equivalence classes (one per distinct pattern byte plus one
 * for "any other byte").  The transition table is then states x classes,
 * which keeps typical signature sets (ASCII words, hex strings) small while
 * the scan loop stays one table lookup per input byte with no branches on
 * failure links.
 */
#include <stdlib.h>
#include <string.h>

#include "mailwarden.h"

/* Transition tables above this size are refused rather than allocated. */
#define MW_MATCHER_MAX_TABLE_BYTES ((size_t)1 << 30)

struct mw_matcher {
    size_t n_patterns;
    uint32_t n_states;
    uint32_t n_classes;
    uint8_t cls[256];
    uint32_t *next;    /* n_states * n_classes */
    uint8_t *has_out;  /* state reports something (own or via dict link) */
    int32_t *own;      /* first own output node of a state, -1 if none */
    uint32_t *dict;    /* nearest proper suffix state with own output, 0 none */
    int32_t *out_next; /* output node chain, node index == pattern id */
    size_t *plen;      /* pattern lengths */
};

void mw_matcher_free(mw_matcher *m) {
    if (!m) return;
    free(m->next);
    free(m->has_out);
    free(m->own);
    free(m->dict);
    free(m->out_next);
    free(m->plen);
    free(m);
}

size_t mw_matcher_count(const mw_matcher *m) { return m ? m->n_patterns : 0; }

mw_status mw_matcher_new(const uint8_t *const *patterns, const size_t *lens, size_t n,
                         mw_matcher **out) {
    if (!out || (n && (!patterns || !lens)) || n > UINT32_MAX - 1) return MW_ERR_ARG;
    *out = NULL;
    size_t total = 1;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] == 0 || !patterns[i]) return MW_ERR_ARG;
        if (lens[i] > UINT32_MAX - 1 - total) return MW_ERR_TOO_LARGE;
        total += lens[i];
    }
    mw_matcher *m = calloc(1, sizeof *m);
    if (!m) return MW_ERR_NOMEM;
    m->n_patterns = n;

    /* Class 0 is every byte absent from all patterns.  Counted in 16 bits:
     * when all 256 byte values occur there are 257 provisional classes, but
     * class 0 is then unused, so everything shifts down to 0..255. */
    uint16_t tmp[256] = {0};
    uint32_t ncls = 1;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < lens[i]; j++)
            if (tmp[patterns[i][j]] == 0) tmp[patterns[i][j]] = (uint16_t)ncls++;
    int shift = ncls == 257;
    if (shift) ncls = 256;
    for (int c = 0; c < 256; c++) m->cls[c] = (uint8_t)(tmp[c] - shift);
    m->n_classes = ncls;

    if (total > MW_MATCHER_MAX_TABLE_BYTES / sizeof(uint32_t) / ncls) {
        mw_matcher_free(m);
        return MW_ERR_TOO_LARGE;
    }
    m->next = malloc(total * ncls * sizeof(uint32_t));
    m->has_out = calloc(total, 1);
    m->own = malloc(total * sizeof(int32_t));
    m->dict = calloc(total, sizeof(uint32_t));
    m->out_next = malloc((n ? n : 1) * sizeof(int32_t));
    m->plen = malloc((n ? n : 1) * sizeof(size_t));
    uint32_t *queue = malloc(total * sizeof(uint32_t));
    if (!m->next || !m->has_out || !m->own || !m->dict || !m->out_next || !m->plen || !queue) {
        free(queue);
        mw_matcher_free(m);
        return MW_ERR_NOMEM;
    }
    /* 0xFF bytes make every entry UINT32_MAX, the "no trie edge" marker. */
    memset(m->next, 0xFF, total * ncls * sizeof(uint32_t));
    for (size_t s = 0; s < total; s++) m->own[s] = -1;

    /* Trie.  Output lists keep ids ascending: each new id goes to the tail. */
    uint32_t nstates = 1;
    int32_t *tail = malloc(total * sizeof(int32_t));
    if (!tail) {
        free(queue);
        mw_matcher_free(m);
        return MW_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t s = 0;
        for (size_t j = 0; j < lens[i]; j++) {
            uint32_t *slot = &m->next[(size_t)s * ncls + m->cls[patterns[i][j]]];
            if (*slot == UINT32_MAX) *slot = nstates++;
            s = *slot;
        }
        m->plen[i] = lens[i];
        m->out_next[i] = -1;
        if (m->own[s] < 0)
            m->own[s] = (int32_t)i;
        else
            m->out_next[tail[s]] = (int32_t)i;
        tail[s] = (int32_t)i;
        m->has_out[s] = 1;
    }
    free(tail);
    m->n_states = nstates;

    /* Breadth-first: failure links, dictionary links and the DFA fill.  A
     * row is completed when its state is dequeued, and its failure state is
     * shallower, hence already complete. */
    uint32_t *fail = calloc(nstates, sizeof(uint32_t));
    if (!fail) {
        free(queue);
        mw_matcher_free(m);
        return MW_ERR_NOMEM;
    }
    size_t qh = 0, qt = 0;
    queue[qt++] = 0;
    while (qh < qt) {
        uint32_t u = queue[qh++];
        uint32_t *row = &m->next[(size_t)u * ncls];
        const uint32_t *frow = &m->next[(size_t)fail[u] * ncls];
        for (uint32_t c = 0; c < ncls; c++) {
            uint32_t v = row[c];
            if (v == UINT32_MAX) {
                row[c] = (u == 0) ? 0 : frow[c];
                continue;
            }
            uint32_t f = (u == 0) ? 0 : frow[c];
            fail[v] = f;
            m->dict[v] = (m->own[f] >= 0) ? f : m->dict[f];
            if (m->dict[v]) m->has_out[v] = 1;
            queue[qt++] = v;
        }
    }
    free(fail);
    free(queue);
    *out = m;
    return MW_OK;
}

static int cmp_match(const void *a, const void *b) {
    const mw_match *x = a, *y = b;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    return (x->pattern_id > y->pattern_id) - (x->pattern_id < y->pattern_id);
}

size_t mw_matcher_scan(const mw_matcher *m, const uint8_t *data, size_t len, mw_match *out,
                       size_t cap) {
    if (!m || !m->n_patterns || (!data && len)) return 0;
    const uint32_t *next = m->next;
    const uint8_t *cls = m->cls;
    const uint32_t ncls = m->n_classes;
    size_t found = 0;
    uint32_t s = 0;
    for (size_t i = 0; i < len; i++) {
        s = next[(size_t)s * ncls + cls[data[i]]];
        if (!m->has_out[s]) continue;
        for (uint32_t t = s; t; t = m->dict[t]) {
            for (int32_t id = m->own[t]; id >= 0; id = m->out_next[id]) {
                if (found < cap) {
                    out[found].start = (uint64_t)(i + 1 - m->plen[id]);
                    out[found].pattern_id = (uint32_t)id;
                    out[found].reserved = 0;
                }
                found++;
            }
        }
    }
    if (found <= cap && found > 1) qsort(out, found, sizeof *out, cmp_match);
    return found;
}

int mw_matcher_first(const mw_matcher *m, const uint8_t *data, size_t len, mw_match *out) {
    if (!m || !m->n_patterns || (!data && len)) return 0;
    uint32_t s = 0;
    for (size_t i = 0; i < len; i++) {
        s = m->next[(size_t)s * m->n_classes + m->cls[data[i]]];
        if (!m->has_out[s]) continue;
        /* Along the dictionary chain states get shallower, so the first
         * state with its own outputs holds the longest match; its list is
         * in ascending id order. */
        uint32_t t = (m->own[s] >= 0) ? s : m->dict[s];
        int32_t id = m->own[t];
        if (out) {
            out->start = (uint64_t)(i + 1 - m->plen[id]);
            out->pattern_id = (uint32_t)id;
            out->reserved = 0;
        }
        return 1;
    }
    return 0;
}
