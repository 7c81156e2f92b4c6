/*
 * Bottom-k sketches of word shingles, hashed with BLAKE2b-64.
 *
 * BLAKE2b is implemented here from its specification, RFC 7693 (sections
 * 2 and 3: the G mixing function, the compression function F and the
 * parameter block); the IV and SIGMA tables are the RFC's constants.  No
 * code was copied from the RFC's appendix or from the BLAKE2 reference
 * implementation (CC0 / Apache-2.0 / OpenSSL), so there is no licence to
 * carry.  Only what the sketch needs is here: unkeyed, whole input at once,
 * an 8-byte digest.  tests/unit/test_fuzzy_native.py checks it against
 * hashlib.blake2b(digest_size=8) on inputs of every block-boundary length.
 *
 * Why C: in Python each shingle cost a join, an encode, a hashlib call and a
 * set insertion (about 0.3 ms for a message of ordinary length); here one
 * call hashes them all with no allocation and keeps the k smallest.
 */
#include <string.h>

#include "mw_fuzzy.h"

static const uint64_t IV[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL,
    0xA54FF53A5F1D36F1ULL, 0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL,
    0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL,
};

static const uint8_t SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

#define BLOCK 128

static uint64_t rotr64(uint64_t x, unsigned n) { return (x >> n) | (x << (64 - n)); }

/* Little-endian whatever the host: compilers turn this into one load. */
static uint64_t load64(const uint8_t *p) {
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}

#define G(a, b, c, d, x, y)                                                                   \
    do {                                                                                      \
        v[a] = v[a] + v[b] + (x);                                                             \
        v[d] = rotr64(v[d] ^ v[a], 32);                                                       \
        v[c] = v[c] + v[d];                                                                   \
        v[b] = rotr64(v[b] ^ v[c], 24);                                                       \
        v[a] = v[a] + v[b] + (y);                                                             \
        v[d] = rotr64(v[d] ^ v[a], 16);                                                       \
        v[c] = v[c] + v[d];                                                                   \
        v[b] = rotr64(v[b] ^ v[c], 63);                                                       \
    } while (0)

/* F of RFC 7693 section 3.2; t is the byte count so far (inputs here are far below 2^64). */
static void compress(uint64_t h[8], const uint8_t block[BLOCK], uint64_t t, int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++)
        m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = IV[i];
    }
    v[12] ^= t;
    if (last)
        v[14] = ~v[14];
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = SIGMA[r];
        G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++)
        h[i] ^= v[i] ^ v[i + 8];
}

uint64_t mw_blake2b64(const uint8_t *src, size_t len) {
    uint64_t h[8];
    memcpy(h, IV, sizeof h);
    /* Parameter block: digest length 8, key length 0, fanout 1, depth 1. */
    h[0] ^= 0x01010000ULL ^ 8u;
    uint64_t t = 0;
    while (len > BLOCK) {
        t += BLOCK;
        compress(h, src, t, 0);
        src += BLOCK;
        len -= BLOCK;
    }
    uint8_t last[BLOCK] = {0};
    if (len)
        memcpy(last, src, len);
    compress(h, last, t + len, 1);
    /* The digest is h[0]'s 8 bytes little-endian; as a big-endian integer that is h[0]
     * byte-swapped, and Python's sketch orders digests that way. */
    uint64_t x = h[0], out = 0;
    for (int i = 0; i < 8; i++) {
        out = out << 8 | (x & 0xff);
        x >>= 8;
    }
    return out;
}

/* Keeps the k smallest distinct values in out[0..*n), ascending. */
static void keep_smallest(uint64_t *out, size_t *n, size_t k, uint64_t value) {
    size_t count = *n;
    if (count == k && value >= out[k - 1])
        return;
    size_t lo = 0, hi = count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (out[mid] < value)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < count && out[lo] == value)
        return; /* the same shingle again */
    size_t end = count < k ? count : k - 1;
    memmove(out + lo + 1, out + lo, (end - lo) * sizeof *out);
    out[lo] = value;
    if (count < k)
        *n = count + 1;
}

size_t mw_shingle_sketch(const uint8_t *words, size_t len, uint32_t shingle, uint32_t k,
                         uint64_t *out) {
    if (shingle == 0 || shingle > MW_SKETCH_MAX_SHINGLE || k == 0 || k > MW_SKETCH_MAX_K)
        return 0;
    /* Where the last `shingle` words began, as a ring: a shingle runs from the start of the
     * word shingle-1 back to the end of the current one. */
    size_t starts[MW_SKETCH_MAX_SHINGLE];
    size_t seen = 0, n = 0, i = 0;
    while (i < len) {
        while (i < len && words[i] == ' ')
            i++;
        if (i == len)
            break;
        size_t start = i;
        const uint8_t *space = memchr(words + i, ' ', len - i);
        i = space ? (size_t)(space - words) : len;
        starts[seen % shingle] = start;
        seen++;
        if (seen >= shingle) {
            size_t first = starts[(seen - shingle) % shingle];
            keep_smallest(out, &n, k, mw_blake2b64(words + first, i - first));
        }
    }
    return n;
}
