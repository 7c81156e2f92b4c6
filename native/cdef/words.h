/* cffi declarations of mw_words.h: words of ASCII text. */
size_t mw_ascii_words(const uint8_t *src, size_t len, uint32_t min_len, uint32_t max_len,
                      int amounts, uint8_t *out);
