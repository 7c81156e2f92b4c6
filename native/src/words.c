/*
 * Words of ASCII text, cut as the antispam tokenizer's regex cuts them.
 *
 * Why C: the Bayes tokens of a message start with re.findall over its whole
 * text (about half of their cost in Python: the regex engine steps through
 * every character); here one pass over the bytes lowercases and cuts them, and
 * Python makes the word strings with one split.
 *
 * The regex r"[a-z0-9]{MIN,MAX}|\$[0-9]+" over lowercased text, as findall
 * runs it: at each position the first alternative takes as many letters and
 * digits as there are, up to MAX, and matches when that is at least MIN; else
 * the second takes "$" and every digit after it; a match resumes the search
 * at its end, no match at the next position.  tests/unit/test_bayes_tokens.py
 * checks this against the regex on random ASCII text.
 */
#include "mw_words.h"

static int is_alnum(uint8_t c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

size_t mw_ascii_words(const uint8_t *src, size_t len, uint32_t min_len, uint32_t max_len,
                      int amounts, uint8_t *out) {
    if (min_len == 0 || min_len > max_len)
        return 0;
    size_t n = 0, i = 0;
    while (i < len) {
        uint8_t c = src[i];
        if (is_alnum(c)) {
            size_t run = 1;
            while (run < max_len && i + run < len && is_alnum(src[i + run]))
                run++;
            if (run < min_len) {
                /* The run ended short: no position inside it starts a word either
                 * (and none of its bytes is "$"). */
                i += run;
                continue;
            }
            if (n)
                out[n++] = ' ';
            for (size_t j = 0; j < run; j++) {
                uint8_t b = src[i + j];
                out[n++] = (b >= 'A' && b <= 'Z') ? (uint8_t)(b + 32) : b;
            }
            i += run;
            continue;
        }
        if (c == '$' && amounts && i + 1 < len && is_digit(src[i + 1])) {
            size_t end = i + 2;
            while (end < len && is_digit(src[end]))
                end++;
            if (n)
                out[n++] = ' ';
            for (size_t j = i; j < end; j++)
                out[n++] = src[j];
            i = end;
            continue;
        }
        i++;
    }
    return n;
}

/* In one of the n sorted [start, end) ranges of r (2 * n values). */
static int in_ranges(uint32_t c, const uint32_t *r, size_t n) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c < r[2 * mid])
            hi = mid;
        else if (c >= r[2 * mid + 1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

static int is_word(uint32_t c, const uint32_t *word, size_t nword) {
    /* ASCII without the search: letters and digits (as Python's re has them). */
    return c < 0x80 ? is_alnum((uint8_t)c) : in_ranges(c, word, nword);
}

size_t mw_unicode_words(const uint32_t *src, size_t len, const uint32_t *word, size_t nword,
                        const uint32_t *digit, size_t ndigit, uint32_t min_len,
                        uint32_t max_len, int amounts, uint32_t *out) {
    if (min_len == 0 || min_len > max_len)
        return 0;
    size_t n = 0, i = 0;
    while (i < len) {
        uint32_t c = src[i];
        if (is_word(c, word, nword)) {
            size_t run = 1;
            while (run < max_len && i + run < len && is_word(src[i + run], word, nword))
                run++;
            if (run < min_len) {
                i += run;
                continue;
            }
            if (n)
                out[n++] = ' ';
            for (size_t j = 0; j < run; j++)
                out[n++] = src[i + j];
            i += run;
            continue;
        }
        if (c == '$' && amounts && i + 1 < len && in_ranges(src[i + 1], digit, ndigit)) {
            size_t end = i + 2;
            while (end < len && in_ranges(src[end], digit, ndigit))
                end++;
            if (n)
                out[n++] = ' ';
            for (size_t j = i; j < end; j++)
                out[n++] = src[j];
            i = end;
            continue;
        }
        i++;
    }
    return n;
}
