/*
 * Signature engine, parser: ClamAV body-signature text to tokens, and tokens
 * to the fixed-length parts a signature is split into at its variable gaps.
 */
#include "sigs_internal.h"

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* One byte: two nibbles, each hex or '?'. */
static mw_status parse_byte(const char *s, size_t n, size_t *i, uint8_t *val, uint8_t *mask) {
    if (*i + 2 > n) return MW_ERR_SIG_SYNTAX;
    uint8_t v = 0, m = 0;
    for (int k = 0; k < 2; k++) {
        char ch = s[*i + (size_t)k];
        v = (uint8_t)(v << 4);
        m = (uint8_t)(m << 4);
        if (ch == '?') continue;
        int h = hexval(ch);
        if (h < 0) return MW_ERR_SIG_SYNTAX;
        v = (uint8_t)(v | h);
        m = (uint8_t)(m | 0xF);
    }
    *i += 2;
    *val = v;
    *mask = m;
    return MW_OK;
}

static mw_status parse_num(const char *s, size_t n, size_t *i, uint32_t *out) {
    if (*i >= n || s[*i] < '0' || s[*i] > '9') return MW_ERR_SIG_SYNTAX;
    uint64_t v = 0;
    while (*i < n && s[*i] >= '0' && s[*i] <= '9') {
        v = v * 10 + (uint64_t)(s[*i] - '0');
        if (v > MW_SIG_MAX_GAP) return MW_ERR_SIG_LIMIT;
        (*i)++;
    }
    *out = (uint32_t)v;
    return MW_OK;
}

/* {n} {-n} {n-} {n-m}, or [n-m] (ClamAV's single-byte-bounded form, same meaning). */
static mw_status parse_gap(const char *s, size_t n, size_t *i, char close, token *t) {
    (*i)++;
    uint32_t a = 0, b = 0;
    mw_status rc;
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
            if (close == ']') return MW_ERR_SIG_SYNTAX;
            b = a;
        }
    }
    if (*i >= n || s[*i] != close || b < a) return MW_ERR_SIG_SYNTAX;
    (*i)++;
    t->gmin = a;
    t->gmax = b;
    return MW_OK;
}

static mw_status parse_group(const char *s, size_t n, size_t *i, token *t, uint8_t *gb, size_t *gn) {
    (*i)++; /* '(' */
    if (*i + 2 <= n && (s[*i] == 'B' || s[*i] == 'L') && s[*i + 1] == ')') return MW_ERR_SIG_SPECIAL;
    t->kind = T_GROUP;
    t->n = 0;
    t->len = 0;
    t->goff = (uint32_t)*gn;
    uint32_t cur = 0;
    for (;;) {
        if (*i >= n) return MW_ERR_SIG_SYNTAX;
        char ch = s[*i];
        if (ch == '|' || ch == ')') {
            if (cur == 0) return MW_ERR_SIG_SYNTAX;
            if (t->n == 0) t->len = (uint8_t)cur;
            else if (cur != t->len) return MW_ERR_SIG_VARALT;
            t->n++;
            cur = 0;
            (*i)++;
            if (ch == ')') break;
            if (t->n >= MW_SIG_MAX_ALTS) return MW_ERR_SIG_LIMIT;
            continue;
        }
        if (cur >= MW_SIG_MAX_ALT_LEN) return MW_ERR_SIG_LIMIT;
        uint8_t v, m;
        mw_status rc = parse_byte(s, n, i, &v, &m);
        if (rc) return rc;
        /* a later alternative longer than the first is refused here */
        if (t->n > 0 && cur >= t->len) return MW_ERR_SIG_VARALT;
        gb[(*gn)++] = (uint8_t)(v & m);
        gb[(*gn)++] = m;
        cur++;
    }
    return MW_OK;
}

static int part_has_fixed(const ppart *p) {
    for (uint32_t k = 0; k < p->len; k++)
        if (p->mask[k] || p->in_group[k]) return 1;
    return 0;
}

mw_status mw_sigp_split(token *toks, size_t ntok, psig *ps) {
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
                return MW_ERR_SIG_SYNTAX;
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
                if (mx > MW_SIG_MAX_GAP) return MW_ERR_SIG_LIMIT;
                pend_max = (uint32_t)mx;
            }
            continue;
        }
        if (!cur || pending) {
            if (ps->n >= MW_SIG_MAX_PARTS) return MW_ERR_SIG_LIMIT;
            cur = &ps->parts[ps->n++];
            cur->len = 0;
            cur->n_groups = 0;
            cur->gap_min = pending ? pend_min : 0;
            cur->gap_max = pending ? pend_max : 0;
            pending = 0;
        }
        uint32_t add = tk->kind == T_BYTE ? 1 : tk->kind == T_GROUP ? tk->len : tk->gmin;
        if (cur->len + add > MW_SIG_MAX_PART) return MW_ERR_SIG_LIMIT;
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
    if (pending && !(pend_min == 0 && pend_max == MW_SIG_GAP_INF)) return MW_ERR_SIG_SYNTAX;
    if (ps->n == 0) return MW_ERR_SIG_SYNTAX;
    /* Fold parts that are only fixed-length wildcards into the gaps around
     * them: "a*??*b" is a{1-}b. */
    uint32_t w = 0;
    for (uint32_t r = 0; r < ps->n; r++) {
        ppart *p = &ps->parts[r];
        if (!part_has_fixed(p) && r > 0 && r + 1 < ps->n) {
            ppart *nx = &ps->parts[r + 1];
            uint64_t mn = (uint64_t)p->gap_min + p->len + nx->gap_min;
            if (mn > MW_SIG_MAX_GAP) return MW_ERR_SIG_LIMIT;
            uint32_t mx = MW_SIG_GAP_INF;
            if (p->gap_max != MW_SIG_GAP_INF && nx->gap_max != MW_SIG_GAP_INF) {
                uint64_t m64 = (uint64_t)p->gap_max + p->len + nx->gap_max;
                if (m64 > MW_SIG_MAX_GAP) return MW_ERR_SIG_LIMIT;
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
    return MW_OK;
}

mw_status mw_sigp_tokenize(const char *s, size_t n, token *toks, size_t cap, size_t *ntok,
                           uint8_t *gb) {
    size_t gn = 0;
    size_t i = 0, k = 0;
    while (i < n) {
        if (k >= cap) return MW_ERR_SIG_LIMIT;
        token *t = &toks[k];
        char ch = s[i];
        mw_status rc = MW_OK;
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
    return MW_OK;
}

