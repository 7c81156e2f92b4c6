/* cffi declarations of mw_words.h: words of ASCII text, paragraph lines. */
size_t mw_ascii_words(const uint8_t *src, size_t len, uint32_t min_len, uint32_t max_len,
                      int amounts, uint8_t *out);
size_t mw_unicode_words(const uint32_t *src, size_t len, const uint32_t *word, size_t nword,
                        const uint32_t *digit, size_t ndigit, uint32_t min_len,
                        uint32_t max_len, int amounts, uint32_t *out);
size_t mw_paragraph_lines(const uint8_t *src, size_t len, uint8_t *out);
