/* cffi declarations of mw_milter.h: the milter's header packets and quick ACKs. */
size_t mw_milter_headers(uint8_t *buf, size_t len, size_t offset, uint32_t limit);
int mw_milter_quickack(int fd);
