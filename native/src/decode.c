/*
 * Content-Transfer-Encoding decoders.  Both are tolerant: mail in the wild
 * is often slightly broken and a security gateway must see the same bytes
 * a lenient mail client would show, while still reporting the breakage.
 */
#include <string.h>

#include "mailwarden.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
/* AVX2 version of the base64 check, chosen at run time (see mime.c). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MW_HAVE_AVX2 1
#include <immintrin.h>
#endif

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
 * Decoding tables for the fast path (constant, built by the preprocessor):
 * the value of a character at position k of a group, already shifted to its
 * place in the three output bytes, which are laid out in memory order (byte
 * 0 lowest), so a group costs four loads, three ORs and one test instead of
 * shifts per character.  A non-alphabet character has bit 24 set.
 */
#define B64V(c)                                                                                \
    ((c) >= 'A' && (c) <= 'Z'   ? (c) - 'A'                                                     \
     : (c) >= 'a' && (c) <= 'z' ? (c) - 'a' + 26                                                \
     : (c) >= '0' && (c) <= '9' ? (c) - '0' + 52                                                \
     : (c) == '+'               ? 62                                                            \
     : (c) == '/'               ? 63                                                            \
                                : 64)
#define B64_BAD 0x01000000u
#define DV(c, expr) (B64V(c) < 64 ? (uint32_t)(expr) : B64_BAD)
#define D0V(c) DV(c, (uint32_t)B64V(c) << 2)
#define D1V(c) DV(c, ((uint32_t)B64V(c) >> 4) | (((uint32_t)B64V(c) & 0x0Fu) << 12))
#define D2V(c) DV(c, (((uint32_t)B64V(c) >> 2) << 8) | (((uint32_t)B64V(c) & 0x03u) << 22))
#define D3V(c) DV(c, (uint32_t)B64V(c) << 16)
#define R4(M, b) M(b), M((b) + 1), M((b) + 2), M((b) + 3)
#define R16(M, b) R4(M, b), R4(M, (b) + 4), R4(M, (b) + 8), R4(M, (b) + 12)
#define R64(M, b) R16(M, b), R16(M, (b) + 16), R16(M, (b) + 32), R16(M, (b) + 48)
#define R256(M) R64(M, 0), R64(M, 64), R64(M, 128), R64(M, 192)
static const uint32_t D0[256] = {R256(D0V)};
static const uint32_t D1[256] = {R256(D1V)};
static const uint32_t D2[256] = {R256(D2V)};
static const uint32_t D3[256] = {R256(D3V)};

/* Stores the three bytes of a table-built group (byte 0 lowest). */
static void store3(uint8_t *dst, uint32_t x) {
    dst[0] = (uint8_t)x;
    dst[1] = (uint8_t)(x >> 8);
    dst[2] = (uint8_t)(x >> 16);
}

/* Stores two groups as one 8-byte write where the byte order allows it;
 * the two bytes past the six written are overwritten later or lie past the
 * result, and stay inside dst: output never exceeds 3/4 of the input read,
 * and the fast path keeps 12 input bytes ahead, so with dst holding
 * mw_base64_max_len bytes there are at least 8 left. */
static void store6(uint8_t *dst, uint32_t x, uint32_t y) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v = (uint64_t)x | ((uint64_t)y << 24);
    memcpy(dst, &v, 8);
#else
    store3(dst, x);
    store3(dst + 3, y);
#endif
}

#if MW_HAVE_AVX2
/* Mask of the bytes of x that are base64 alphabet characters. */
__attribute__((target("avx2"))) static __m256i b64_alpha_avx2(__m256i x) {
    const __m256i up = _mm256_set1_epi8((char)('A' + 128)), lo = _mm256_set1_epi8((char)('a' + 128));
    const __m256i dg = _mm256_set1_epi8((char)('0' + 128));
    const __m256i n26 = _mm256_set1_epi8((char)(-128 + 26)), n10 = _mm256_set1_epi8((char)(-128 + 10));
    /* Unsigned range tests with signed compares: x - (lo + 128) wraps the
     * range [lo, lo + n) onto [-128, -128 + n). */
    return _mm256_or_si256(
            _mm256_or_si256(_mm256_cmpgt_epi8(n26, _mm256_sub_epi8(x, up)),
                            _mm256_cmpgt_epi8(n26, _mm256_sub_epi8(x, lo))),
            _mm256_or_si256(_mm256_cmpgt_epi8(n10, _mm256_sub_epi8(x, dg)),
                            _mm256_or_si256(_mm256_cmpeq_epi8(x, _mm256_set1_epi8('+')),
                                            _mm256_cmpeq_epi8(x, _mm256_set1_epi8('/')))));
}

/*
 * Decodes 32-character blocks of alphabet characters (W. Mula and D. Lemire's
 * AVX2 method: per-range offsets by high nibble, two multiply-adds to pack
 * 4 x 6 bits, a shuffle to put bytes in order).  In the block holding the
 * first other byte only the whole groups before it are kept, and the scalar
 * code takes over there with full state, so a 76-character mail line is
 * three blocks and a line break.  Returns bytes written, *used the input
 * consumed.  Each block stores 24 bytes at d + o: the caller keeps 32 input
 * bytes ahead, so with o <= 3 * (i / 4) that stays within
 * mw_base64_max_len of the input.
 */
__attribute__((target("avx2"))) static size_t b64_decode_avx2(const uint8_t *s, size_t n,
                                                             uint8_t *d, size_t *used) {
    const __m256i roll = _mm256_setr_epi8(0, 16, 19, 4, -65, -65, -71, -71, 0, 0, 0, 0, 0, 0, 0,
                                          0, 0, 16, 19, 4, -65, -65, -71, -71, 0, 0, 0, 0, 0, 0,
                                          0, 0);
    const __m256i nib = _mm256_set1_epi8(0x0F), slash = _mm256_set1_epi8('/');
    const __m256i order = _mm256_setr_epi8(2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1,
                                           2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 7, 7);
    size_t i = 0, o = 0;
    while (n - i >= 32) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(s + i));
        uint32_t alpha = (uint32_t)_mm256_movemask_epi8(b64_alpha_avx2(x));
        __m256i hi = _mm256_and_si256(_mm256_srli_epi32(x, 4), nib);
        __m256i v = _mm256_add_epi8(x, _mm256_shuffle_epi8(roll, _mm256_add_epi8(
                                                                         _mm256_cmpeq_epi8(x, slash), hi)));
        v = _mm256_maddubs_epi16(v, _mm256_set1_epi32(0x01400140));
        v = _mm256_madd_epi16(v, _mm256_set1_epi32(0x00011000));
        v = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, order), lanes);
        _mm_storeu_si128((__m128i *)(void *)(d + o), _mm256_castsi256_si128(v));
        _mm_storel_epi64((__m128i *)(void *)(d + o + 16), _mm256_extracti128_si256(v, 1));
        if (alpha != 0xFFFFFFFFu) {
            /* Keep the whole groups before the first other byte (a line
             * break, usually); the bytes stored for the rest are garbage
             * that later writes overwrite or that lie past the result. */
            size_t k = (size_t)__builtin_ctz(~alpha) / 4;
            i += 4 * k;
            o += 3 * k;
            break;
        }
        i += 32;
        o += 24;
    }
    *used = i;
    return o;
}
#endif

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
#if MW_HAVE_AVX2
    int avx2 = dst && len >= 32 && __builtin_cpu_supports("avx2");
#endif
    for (size_t i = 0; i < len; i++) {
#if MW_HAVE_AVX2
        if (avx2 && q == 0 && !padded && len - i >= 32) {
            size_t used;
            o += b64_decode_avx2(src + i, len - i, dst + o, &used);
            i += used;
        }
#endif
        /* Fast path: whole groups on a group boundary, two at a time, until
         * a line break or anything else stops it. */
        while (dst && q == 0 && !padded && len - i >= 12) {
            const uint8_t *s = src + i;
            uint32_t x = D0[s[0]] | D1[s[1]] | D2[s[2]] | D3[s[3]];
            uint32_t y = D0[s[4]] | D1[s[5]] | D2[s[6]] | D3[s[7]];
            if ((x | y) & B64_BAD) {
                if (x & B64_BAD) break;
                store3(dst + o, x);
                o += 3;
                i += 4;
                break;
            }
            store6(dst + o, x, y);
            o += 6;
            i += 8;
        }
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
            /* A line break is two bytes: skip the run here rather than go
             * through the fast paths' entry tests once per byte. */
            while (i + 1 < len && B64[src[i + 1]] == B64_WS) i++;
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

/* Bit count of a 16-bit mask without a libgcc call (no -mpopcnt here). */
static unsigned popcount16(unsigned m) {
    m = m - ((m >> 1) & 0x5555u);
    m = (m & 0x3333u) + ((m >> 2) & 0x3333u);
    m = (m + (m >> 4)) & 0x0F0Fu;
    return (m + (m >> 8)) & 0x1Fu;
}

/* One byte of the decoder's state machine with dst == NULL; returns 1 when
 * the byte makes the input unclean.  Kept identical to mw_base64_decode. */
static int b64_step(uint8_t c, int *q, int *padded) {
    uint8_t v = B64[c];
    if (v < 64) {
        if (*padded) return 1;
        *q = (*q + 1) & 3;
        return 0;
    }
    if (v == B64_WS) return 0;
    if (v == B64_PAD) {
        if (*q == 2 || *q == 3) {
            *q = 0;
            *padded = 1;
            return 0;
        }
        return !*padded;
    }
    return 1;
}

/*
 * Validation is a per-part pass the parser makes over every base64 body, so
 * it runs block-wise: 16 bytes are classified at once (alphabet or line
 * whitespace), and only a block holding anything else ('=' or junk) goes
 * through the byte-wise state machine.  Inside a clean block only the count
 * of alphabet characters matters (the group position q), and an alphabet
 * character after padding is already a verdict, so the answer is returned
 * as soon as it is known.
 */
static unsigned popcount32(uint32_t m) {
    return popcount16(m & 0xFFFFu) + popcount16(m >> 16);
}

#if MW_HAVE_AVX2
/* 32-byte blocks of the loop in mw_base64_junk; returns 1 on a verdict of
 * junk, else 0 with *at the offset reached and *qp, *padp updated. */
__attribute__((target("avx2"))) static int b64_junk_avx2(const uint8_t *src, size_t len,
                                                         size_t *at, int *qp, int *padp) {
    const __m256i sp = _mm256_set1_epi8(' '), tab = _mm256_set1_epi8('\t');
    const __m256i cr = _mm256_set1_epi8('\r'), lf = _mm256_set1_epi8('\n');
    size_t i = *at;
    int q = *qp, padded = *padp;
    while (len - i >= 32) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(src + i));
        __m256i a = b64_alpha_avx2(x);
        __m256i w = _mm256_or_si256(
                _mm256_or_si256(_mm256_cmpeq_epi8(x, sp), _mm256_cmpeq_epi8(x, tab)),
                _mm256_or_si256(_mm256_cmpeq_epi8(x, cr), _mm256_cmpeq_epi8(x, lf)));
        uint32_t am = (uint32_t)_mm256_movemask_epi8(a);
        uint32_t wm = (uint32_t)_mm256_movemask_epi8(w);
        if ((am | wm) == 0xFFFFFFFFu) {
            if (am) {
                if (padded) return 1;
                /* am and wm split the block, and 32 alphabet characters
                 * leave q unchanged: only blocks with blanks need a count. */
                if (wm) q = (int)((unsigned)q + 32u - popcount32(wm)) & 3;
            }
        } else {
            for (size_t k = i; k < i + 32; k++)
                if (b64_step(src[k], &q, &padded)) return 1;
        }
        i += 32;
    }
    *at = i;
    *qp = q;
    *padp = padded;
    return 0;
}
#endif

int mw_base64_junk(const uint8_t *src, size_t len) {
    int q = 0, padded = 0;
    size_t i = 0;
#if MW_HAVE_AVX2
    if (len >= 32 && __builtin_cpu_supports("avx2") && b64_junk_avx2(src, len, &i, &q, &padded))
        return 1;
#endif
#if defined(__SSE2__)
    /* Unsigned range tests with signed compares: x - (lo + 128) wraps the
     * range [lo, lo + n) onto [-128, -128 + n). */
    const __m128i up = _mm_set1_epi8((char)('A' + 128)), lo = _mm_set1_epi8((char)('a' + 128));
    const __m128i dg = _mm_set1_epi8((char)('0' + 128));
    const __m128i n26 = _mm_set1_epi8((char)(-128 + 26)), n10 = _mm_set1_epi8((char)(-128 + 10));
    const __m128i plus = _mm_set1_epi8('+'), slash = _mm_set1_epi8('/');
    const __m128i sp = _mm_set1_epi8(' '), tab = _mm_set1_epi8('\t');
    const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
    while (len - i >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(src + i));
        __m128i a = _mm_or_si128(
                _mm_or_si128(_mm_cmplt_epi8(_mm_sub_epi8(x, up), n26),
                             _mm_cmplt_epi8(_mm_sub_epi8(x, lo), n26)),
                _mm_or_si128(_mm_cmplt_epi8(_mm_sub_epi8(x, dg), n10),
                             _mm_or_si128(_mm_cmpeq_epi8(x, plus), _mm_cmpeq_epi8(x, slash))));
        __m128i w = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, sp), _mm_cmpeq_epi8(x, tab)),
                                 _mm_or_si128(_mm_cmpeq_epi8(x, cr), _mm_cmpeq_epi8(x, lf)));
        unsigned am = (unsigned)_mm_movemask_epi8(a);
        unsigned wm = (unsigned)_mm_movemask_epi8(w);
        if ((am | wm) == 0xFFFFu) {
            if (am) {
                if (padded) return 1;
                q = (int)((unsigned)q + popcount16(am)) & 3;
            }
        } else {
            for (size_t k = i; k < i + 16; k++)
                if (b64_step(src[k], &q, &padded)) return 1;
        }
        i += 16;
    }
#endif
    for (; i < len; i++)
        if (b64_step(src[i], &q, &padded)) return 1;
    return q == 1; /* six dangling bits cannot form a byte */
}

size_t mw_qp_max_len(size_t len) { return len; }

/* Hex digit values (either case); 0xFF for anything else.  A table because
 * mail in non-Latin scripts is mostly escapes (one '=' per 7 bytes in the
 * corpus), so the escape path is the hot one. */
#define HEXV(c)                                                                                \
    ((c) >= '0' && (c) <= '9'   ? (c) - '0'                                                     \
     : (c) >= 'A' && (c) <= 'F' ? (c) - 'A' + 10                                               \
     : (c) >= 'a' && (c) <= 'f' ? (c) - 'a' + 10                                                \
                                : 0xFF)
static const uint8_t HEX[256] = {R256(HEXV)};

/*
 * "=XX" decodes a byte (either hex case), "=" plus optional blanks plus a
 * line break (CRLF, LF or CR) or the end of input is a soft break, and any
 * other "=" is kept literally, which is what mail clients display.
 */
size_t mw_qp_decode(const uint8_t *src, size_t len, uint8_t *dst) {
    size_t o = 0, i = 0;
    while (i < len) {
        uint8_t c = src[i];
#if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
        /* Literal bytes 16 at a time: copy the block whole, then keep only
         * the part before its first '='.  dst may take the 16 bytes because
         * o <= i (decoding never grows) and i + 16 <= len. */
        if (c != '=' && len - i >= 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(src + i));
            _mm_storeu_si128((__m128i *)(void *)(dst + o), x);
            unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8('=')));
            size_t run = m ? (size_t)__builtin_ctz(m) : 16;
            o += run;
            i += run;
            continue;
        }
#endif
        if (c != '=') {
            dst[o++] = c;
            i++;
            continue;
        }
        if (i + 2 < len) {
            uint8_t hi = HEX[src[i + 1]], lo = HEX[src[i + 2]];
            if ((hi | lo) < 16) {
                dst[o++] = (uint8_t)(hi << 4 | lo);
                i += 3;
                continue;
            }
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

size_t mw_decode_span(const uint8_t *buf, size_t start, size_t end, int base64, uint8_t *dst) {
    if (!buf || !dst || end <= start) return 0;
    return base64 ? mw_base64_decode(buf + start, end - start, dst, NULL)
                  : mw_qp_decode(buf + start, end - start, dst);
}
