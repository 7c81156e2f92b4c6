/*
 * mailwarden native core: words of ASCII text, as a tokenizer's regex cuts them.
 *
 * The antispam Bayes tokens are words cut from the message text; stored Bayes
 * databases are keyed by them, so this cuts exactly the words Python's
 * re.findall(r"[a-z0-9]{MIN,MAX}|\$[0-9]+", text.lower()) finds in ASCII text
 * (the "$" alternative only when amounts is set).
 */
#ifndef MW_WORDS_H
#define MW_WORDS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Writes to out, separated by one 0x20, the words of src in text order:
 * maximal runs of ASCII letters and digits, lowercased, cut into pieces of
 * max_len from their start, pieces shorter than min_len dropped; and, when
 * amounts is non-zero, "$" followed by every digit after it.  Bytes other
 * than ASCII letters, digits and "$" separate words.  Returns the bytes
 * written; out needs 2 * len bytes (a word and its separator never take more
 * than twice the text they come from).  0 when min_len is 0 or above max_len. */
size_t mw_ascii_words(const uint8_t *src, size_t len, uint32_t min_len, uint32_t max_len,
                      int amounts, uint8_t *out);

/* The same over code points: src holds len code points (UTF-32, host order),
 * word and digit the sorted, disjoint [start, end) ranges (nword and ndigit
 * pairs) of the code points Python's re counts as [^\W_] and \d, so that the
 * words are those re.findall(r"[^\W_]{MIN,MAX}|\$\d+", text) finds (no case
 * folding: the caller lowercases).  Writes the words to out as code points
 * separated by one 0x20 and returns how many code points it wrote; out needs
 * 2 * len of them. */
size_t mw_unicode_words(const uint32_t *src, size_t len, const uint32_t *word, size_t nword,
                        const uint32_t *digit, size_t ndigit, uint32_t min_len,
                        uint32_t max_len, int amounts, uint32_t *out);

/* The paragraphs of UTF-8 text src[0..len), one a line: written to out (len bytes are
 * enough) with every run of whitespace (Python's str.isspace() characters) made one "\n"
 * where it holds two line feeds (a blank line) and one " " elsewhere, none at either end.
 * So Python's "\n".join(" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if
 * p.split()).  Returns the bytes written. */
size_t mw_paragraph_lines(const uint8_t *src, size_t len, uint8_t *out);

#ifdef __cplusplus
}
#endif

#endif
