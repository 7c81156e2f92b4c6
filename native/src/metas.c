/*
 * Expressions over numbered flags: the antispam metas, resolved in one call.
 *
 * Why C: SpamAssassin's stock set has 1,200 metas; a message changes a few
 * dozen of them from their value when nothing hits, each a Python function
 * called cold (its code and constants out of cache after the regex scans),
 * 0.05-0.08 ms a message.  Here every expression is a short stack program in
 * one array, the flags one byte each, and only the expressions an input
 * changed for are evaluated (from their no-hit values, as the Python
 * propagation does), found through a bitmap walked in order instead of a heap.
 *
 * Values are doubles with an error mark: Python's int and bool arithmetic on
 * these small values is exact in a double, its "/" is a double division, and
 * its comparisons of ints and floats agree with the doubles' for them.  The
 * mark stands for Python's ZeroDivisionError: it spreads through arithmetic,
 * "not" and comparisons, and "and"/"or" drop it with an operand they do not
 * give (Python would not have evaluated it).  tests/unit/test_antispam_metas.py
 * compares with Python's evaluation on random expressions and hit sets.
 */
#include "mw_metas.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    double v;
    int err;
} value;

/* Expression i's value over flags: 1 hit, 0 not, -1 error (not hit); -2 on a
 * malformed program. */
static int evaluate(const int32_t *pc, const double *constants, const uint8_t *flags) {
    value stack[MW_META_STACK];
    size_t top = 0;
    for (;;) {
        int32_t op = *pc++;
        if (op == MW_OP_END)
            break;
        if (op == MW_OP_HIT || op == MW_OP_CONST) {
            if (top == MW_META_STACK)
                return -2;
            int32_t arg = *pc++;
            stack[top].v = op == MW_OP_HIT ? (double)(flags[arg] & 1) : constants[arg];
            stack[top].err = 0;
            top++;
            continue;
        }
        if (op == MW_OP_NOT || op == MW_OP_NEG || op == MW_OP_POS) {
            if (top < 1)
                return -2;
            value *a = &stack[top - 1];
            if (op == MW_OP_NOT)
                a->v = a->v == 0.0 ? 1.0 : 0.0;
            else if (op == MW_OP_NEG)
                a->v = -a->v;
            else
                a->v = a->v + 0.0; /* +True is 1; -0.0 stays falsy either way */
            continue;
        }
        if (top < 2)
            return -2;
        value *a = &stack[top - 2];
        const value *b = &stack[top - 1];
        top--;
        if (op == MW_OP_AND) {
            /* a and b: a when a is an error or false, else b. */
            if (!a->err && a->v != 0.0)
                *a = *b;
            continue;
        }
        if (op == MW_OP_OR) {
            if (!a->err && a->v == 0.0)
                *a = *b;
            continue;
        }
        int err = a->err || b->err;
        double x = a->v, y = b->v, r;
        switch (op) {
        case MW_OP_ADD:
            r = x + y;
            break;
        case MW_OP_SUB:
            r = x - y;
            break;
        case MW_OP_MUL:
            r = x * y;
            break;
        case MW_OP_DIV:
            if (y == 0.0) {
                err = 1;
                r = 0.0;
            } else {
                r = x / y;
            }
            break;
        case MW_OP_LT:
            r = x < y;
            break;
        case MW_OP_LE:
            r = x <= y;
            break;
        case MW_OP_GT:
            r = x > y;
            break;
        case MW_OP_GE:
            r = x >= y;
            break;
        case MW_OP_EQ:
            r = x == y;
            break;
        case MW_OP_NE:
            r = x != y;
            break;
        default:
            return -2;
        }
        a->v = err ? 0.0 : r;
        a->err = err;
    }
    if (top != 1)
        return -2;
    if (stack[0].err)
        return -1;
    return stack[0].v != 0.0;
}

size_t mw_meta_changed(const int32_t *code, const uint32_t *entry, const uint32_t *out_flag,
                       const uint8_t *base, size_t nmeta, const double *constants,
                       const uint32_t *readers, const uint32_t *reader_at,
                       const uint8_t *flag_base, size_t nflags, const uint32_t *set, size_t nset,
                       int every, uint32_t *changed) {
    /* flags: bit 0 the value, bit 1 "given by the caller" (kept, unevaluated). */
    size_t words = nmeta / 64 + 1;
    uint8_t *flags = malloc(nflags ? nflags : 1);
    uint64_t *queued = calloc(words, sizeof *queued);
    if (flags == NULL || queued == NULL) {
        free(flags);
        free(queued);
        return (size_t)-1;
    }
    memcpy(flags, flag_base, nflags);
    for (size_t i = 0; i < nset; i++) {
        uint32_t f = set[i];
        if (f >= nflags || (flags[f] & 2))
            continue;
        int was = flags[f] & 1;
        flags[f] = 3;
        if (!was) {
            for (uint32_t k = reader_at[f]; k < reader_at[f + 1]; k++)
                queued[readers[k] / 64] |= (uint64_t)1 << (readers[k] % 64);
        }
    }
    if (every) {
        for (size_t i = 0; i < nmeta; i++)
            queued[i / 64] |= (uint64_t)1 << (i % 64);
    }
    size_t n = 0;
    /* Readers come after what they read: a reader queued while its word is being walked
     * has a higher bit, read on the next turn of the loop. */
    for (size_t w = 0; w < words; w++) {
        uint64_t bits;
        while ((bits = queued[w]) != 0) {
            unsigned bit = (unsigned)__builtin_ctzll(bits);
            queued[w] &= queued[w] - 1;
            size_t i = w * 64 + bit;
            uint32_t own = out_flag[i];
            if (flags[own] & 2)
                continue;
            int found = evaluate(code + entry[i], constants, flags);
            if (found == -2) {
                free(flags);
                free(queued);
                return (size_t)-1;
            }
            int hit = found == 1;
            flags[own] = (uint8_t)hit;
            if (hit == base[i])
                continue;
            changed[n++] = (uint32_t)i;
            for (uint32_t k = reader_at[own]; k < reader_at[own + 1]; k++)
                queued[readers[k] / 64] |= (uint64_t)1 << (readers[k] % 64);
        }
    }
    free(flags);
    free(queued);
    return n;
}

/* Why C: the pattern sets scan a non-ASCII text as one byte per character, its class's;
 * in Python that was a big-integer AND/OR per 256-character page present, 12-13 us for a
 * 2 KB generated body, each of body and rawbody. */
int mw_code_point_bytes(const uint32_t *src, size_t n, const uint8_t *table, size_t ntable,
                        uint8_t *out) {
    for (size_t i = 0; i < n; i++) {
        uint32_t c = src[i];
        if (c >= ntable)
            return -1;
        out[i] = table[c];
    }
    return 0;
}
