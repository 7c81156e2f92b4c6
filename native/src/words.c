/*
 * Words of text, cut as the antispam tokenizer's regex cuts them.
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
 * at its end, no match at the next position.  mw_unicode_words does the same
 * over code points with the classes Python's re gives it ([^\W_] and \d).
 * tests/unit/test_bayes_tokens.py checks both against the regex on random
 * ASCII and Unicode text.
 */
#include "mw_words.h"

static int is_alnum(uint8_t c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

static uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

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

/* The loop of both functions over src[0..len) into out (elements of one type), with
 * IS_WORD(c) and IS_DIGIT(c) the classes and FOLD(c) what a word's element is written as.
 * A run shorter than min_len ended short: no position inside it starts a word either (and
 * none of its elements is "$"), so the search resumes after it. */
#define CUT_WORDS(IS_WORD, IS_DIGIT, FOLD)                                                    \
    do {                                                                                      \
        while (i < len) {                                                                     \
            if (IS_WORD(src[i])) {                                                            \
                size_t run = 1;                                                               \
                while (run < max_len && i + run < len && IS_WORD(src[i + run]))              \
                    run++;                                                                    \
                if (run >= min_len) {                                                         \
                    if (n)                                                                    \
                        out[n++] = ' ';                                                       \
                    for (size_t j = 0; j < run; j++)                                          \
                        out[n++] = FOLD(src[i + j]);                                          \
                }                                                                             \
                i += run;                                                                     \
            } else if (src[i] == '$' && amounts && i + 1 < len && IS_DIGIT(src[i + 1])) {     \
                size_t end = i + 2;                                                           \
                while (end < len && IS_DIGIT(src[end]))                                       \
                    end++;                                                                    \
                if (n)                                                                        \
                    out[n++] = ' ';                                                           \
                for (size_t j = i; j < end; j++)                                              \
                    out[n++] = src[j];                                                        \
                i = end;                                                                      \
            } else {                                                                          \
                i++;                                                                          \
            }                                                                                 \
        }                                                                                     \
    } while (0)

size_t mw_ascii_words(const uint8_t *src, size_t len, uint32_t min_len, uint32_t max_len,
                      int amounts, uint8_t *out) {
    if (min_len == 0 || min_len > max_len)
        return 0;
    size_t n = 0, i = 0;
    CUT_WORDS(is_alnum, is_digit, lower);
    return n;
}

#define UNICODE_WORD(c) is_word((c), word, nword)
#define UNICODE_DIGIT(c) in_ranges((c), digit, ndigit)
#define AS_IS(c) (c)

size_t mw_unicode_words(const uint32_t *src, size_t len, const uint32_t *word, size_t nword,
                        const uint32_t *digit, size_t ndigit, uint32_t min_len,
                        uint32_t max_len, int amounts, uint32_t *out) {
    if (min_len == 0 || min_len > max_len)
        return 0;
    size_t n = 0, i = 0;
    CUT_WORDS(UNICODE_WORD, UNICODE_DIGIT, AS_IS);
    return n;
}

/* ---- paragraph lines ------------------------------------------------------ */

/* Why C: antispam's body text ("body" of the rules, Bayes and the fuzzy sketch) is each
 * text part cut into paragraphs at blank lines, every whitespace run inside one made a
 * single space: in Python a regex split and a str.split()/join per paragraph, which made
 * an object per word (0.03 ms a generated message, a tenth of the rules hook with the
 * shipped rules).  Here one pass over the UTF-8 bytes writes the lines. */

/* Length of the whitespace character at s[0..n) as Python's str.isspace() (and re's \s)
 * has them (U+0009-000D, U+001C-0020, U+0085, U+00A0, U+1680, U+2000-200A, U+2028,
 * U+2029, U+202F, U+205F, U+3000), 0 when s does not start with one.  The Python side
 * checks this set against the running interpreter's before it uses this function. */
static size_t space_len(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    if (c < 0x80)
        return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20);
    if (c == 0xC2)
        return n >= 2 && (s[1] == 0x85 || s[1] == 0xA0) ? 2 : 0;
    if (n < 3)
        return 0;
    if (c == 0xE1)
        return s[1] == 0x9A && s[2] == 0x80 ? 3 : 0;
    if (c == 0xE2) {
        if (s[1] == 0x80)
            return (s[2] >= 0x80 && s[2] <= 0x8A) || s[2] == 0xA8 || s[2] == 0xA9 ||
                           s[2] == 0xAF
                       ? 3
                       : 0;
        return s[1] == 0x81 && s[2] == 0x9F ? 3 : 0;
    }
    if (c == 0xE3)
        return s[1] == 0x80 && s[2] == 0x80 ? 3 : 0;
    return 0;
}

/* Per byte: 0 copied as it is, 1 an ASCII space, 2 a line feed, 3 may start a longer one. */
static const uint8_t BYTE_KIND[256] = {
    [0x09] = 1, [0x0A] = 2, [0x0B] = 1, [0x0C] = 1, [0x0D] = 1, [0x1C] = 1, [0x1D] = 1,
    [0x1E] = 1, [0x1F] = 1, [0x20] = 1, [0xC2] = 3, [0xE1] = 3, [0xE2] = 3, [0xE3] = 3};

size_t mw_paragraph_lines(const uint8_t *src, size_t len, uint8_t *out) {
    size_t n = 0, i = 0;
    int pending = 0;  /* a whitespace run since the last character copied */
    int newlines = 0; /* its line feeds (two make a blank line) */
    while (i < len) {
        uint8_t kind = BYTE_KIND[src[i]];
        size_t sp = kind == 0 ? 0 : kind < 3 ? 1 : space_len(src + i, len - i);
        if (sp) {
            pending = 1;
            if (kind == 2 && newlines < 2)
                newlines++;
            i += sp;
            continue;
        }
        /* Nothing before the first character or after the last; one byte for each run
         * between: a run holding a blank line ends a paragraph. */
        if (pending && n)
            out[n++] = newlines >= 2 ? '\n' : ' ';
        pending = newlines = 0;
        /* A byte that starts no space is copied (UTF-8 continuation bytes start none). */
        out[n++] = src[i++];
    }
    return n;
}
