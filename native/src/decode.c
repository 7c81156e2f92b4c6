/*
 * Content-Transfer-Encoding decoders.  Both are tolerant: mail in the wild
 * is often slightly broken and a security gateway must see the same bytes
 * a lenient mail client would show, while still reporting the breakage.
 */
#include "mailwarden.h"

/* 0..63 for alphabet characters, 64 for whitespace, 65 for '=', 66 junk. */
#define B64_WS 64
#define B64_PAD 65
#define B64_JUNK 66

/* Alphabet value per byte; W whitespace, P padding, J junk. */
#define W B64_WS
#define P B64_PAD
#define J B64_JUNK
static const uint8_t B64[256] = {
        J, J, J, J, J, J, J, J, J, W, W, J, J, W, J, J,
        J, J, J, J, J, J, J, J, J, J, J, J, J, J, J, J,
        W, J, J, J, J, J, J, J, J, J, J, 62, J, J, J, 63,
        52, 53, 54, 55, 56, 57, 58, 59, 60, 61, J, J, J, P, J, J,
        J, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
        15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, J, J, J, J, J,
        J, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
        41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, J, J, J, J, J,
        J, J, J, J, J, J, J, J, J, J, J, J, J, J, J, J,
        J, J, J, J, J, J, J, J, J, J, J, J, J, J, J, J,
        J, J, J, J, J, J, J, J, J, J, J, J, J, J, J, J,
        J, J, J, J, J, J, J, J, J, J, J, J, J, J, J, J,
        J, J, J, J, J, J, J, J, J, J, J, J, J, J, J, J,
        J, J, J, J, J, J, J, J, J, J, J, J, J, J, J, J,
        J, J, J, J, J, J, J, J, J, J, J, J, J, J, J, J,
        J, J, J, J, J, J, J, J, J, J, J, J, J, J, J, J,
};
#undef W
#undef P
#undef J

size_t mw_base64_max_len(size_t len) { return (len / 4) * 3 + 3; }

/*
 * Whitespace is skipped silently; other foreign bytes are skipped and
 * reported.  Padding closes the current group; data after padding is still
 * decoded (concatenated base64 blobs occur in real mail and hiding content
 * behind an early '=' is an evasion trick) but reported as junk.  A missing
 * final padding is accepted silently.
 */
size_t mw_base64_decode(const uint8_t *src, size_t len, uint8_t *dst, int *junk) {
    uint32_t acc = 0;
    int q = 0, bad = 0, padded = 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        /* Fast path: four alphabet characters on a group boundary. */
        while (q == 0 && !padded && len - i >= 4) {
            uint8_t a = B64[src[i]], b = B64[src[i + 1]], c = B64[src[i + 2]], d = B64[src[i + 3]];
            if ((a | b | c | d) >= 64) break;
            uint32_t v4 = ((uint32_t)a << 18) | ((uint32_t)b << 12) | ((uint32_t)c << 6) | d;
            if (dst) {
                dst[o] = (uint8_t)(v4 >> 16);
                dst[o + 1] = (uint8_t)(v4 >> 8);
                dst[o + 2] = (uint8_t)v4;
            }
            o += 3;
            i += 4;
        }
        if (i >= len) break;
        uint8_t v = B64[src[i]];
        if (v < 64) {
            if (padded) {
                bad = 1;
                padded = 0;
            }
            acc = (acc << 6) | v;
            if (++q == 4) {
                if (dst) {
                    dst[o] = (uint8_t)(acc >> 16);
                    dst[o + 1] = (uint8_t)(acc >> 8);
                    dst[o + 2] = (uint8_t)acc;
                }
                o += 3;
                q = 0;
                acc = 0;
            }
        } else if (v == B64_WS) {
            continue;
        } else if (v == B64_PAD) {
            if (q == 2 || q == 3) {
                if (dst) dst[o] = (uint8_t)(acc >> (q == 2 ? 4 : 10));
                if (dst && q == 3) dst[o + 1] = (uint8_t)(acc >> 2);
                o += (size_t)(q - 1);
                q = 0;
                acc = 0;
                padded = 1;
            } else if (!padded) {
                bad = 1; /* '=' where no group needs closing */
            }
        } else {
            bad = 1;
        }
    }
    if (q == 2 || q == 3) { /* unpadded tail */
        if (dst) dst[o] = (uint8_t)(acc >> (q == 2 ? 4 : 10));
        if (dst && q == 3) dst[o + 1] = (uint8_t)(acc >> 2);
        o += (size_t)(q - 1);
    } else if (q == 1) {
        bad = 1; /* six dangling bits cannot form a byte */
    }
    if (junk) *junk = bad;
    return o;
}

size_t mw_qp_max_len(size_t len) { return len; }

static int hexval(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/*
 * "=XX" decodes a byte (either hex case), "=" plus optional blanks plus a
 * line break (CRLF, LF or CR) or the end of input is a soft break, and any
 * other "=" is kept literally, which is what mail clients display.
 */
size_t mw_qp_decode(const uint8_t *src, size_t len, uint8_t *dst) {
    size_t o = 0, i = 0;
    while (i < len) {
        uint8_t c = src[i];
        if (c != '=') {
            dst[o++] = c;
            i++;
            continue;
        }
        if (i + 2 < len && hexval(src[i + 1]) >= 0 && hexval(src[i + 2]) >= 0) {
            dst[o++] = (uint8_t)(hexval(src[i + 1]) * 16 + hexval(src[i + 2]));
            i += 3;
            continue;
        }
        size_t k = i + 1;
        while (k < len && (src[k] == ' ' || src[k] == '\t')) k++;
        if (k >= len) { /* soft break at the very end */
            i = len;
        } else if (src[k] == '\n') {
            i = k + 1;
        } else if (src[k] == '\r') {
            i = (k + 1 < len && src[k + 1] == '\n') ? k + 2 : k + 1;
        } else {
            dst[o++] = c;
            i++;
        }
    }
    return o;
}
