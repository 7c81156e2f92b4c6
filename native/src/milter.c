/* The milter's header packets taken in one call, and TCP_QUICKACK without a socket object
 * (see mw_milter.h). */
#define _DEFAULT_SOURCE
#include "mw_milter.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>

size_t mw_milter_headers(uint8_t *buf, size_t len, size_t offset, uint32_t limit) {
    size_t written = 0, at = offset;
    while (at <= len && len - at >= 5) {
        const uint8_t *p = buf + at;
        uint32_t length = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
                          (uint32_t)p[3];
        if (length < 1 || length > limit || p[4] != 'L' || len - at - 4 < length)
            break;
        size_t size = length - 1;
        const uint8_t *data = p + 5;
        /* name NUL value NUL: the last byte a NUL and exactly one NUL before it */
        if (size < 2 || data[size - 1] != 0)
            break;
        const uint8_t *first = memchr(data, 0, size - 1);
        if (first == NULL || memchr(first + 1, 0, (size_t)(data + size - 1 - (first + 1))))
            break;
        /* Down by 5 bytes per packet taken so far: never past what is still to be read. */
        memmove(buf + offset + written, data, size);
        written += size;
        at += 4 + (size_t)length;
    }
    return written;
}

int mw_milter_quickack(int fd) {
#ifdef TCP_QUICKACK
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one) == 0 ? 0 : errno;
#else
    (void)fd;
    return ENOPROTOOPT;
#endif
}
