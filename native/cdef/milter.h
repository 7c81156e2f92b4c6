/* cffi declarations of mw_milter.h: the milter's header packets and quick ACKs. */
size_t mw_milter_headers(const uint8_t *buf, size_t len, size_t offset, uint32_t limit,
                         uint8_t *out, size_t *end, size_t *count);
int mw_milter_quickack(int fd);
