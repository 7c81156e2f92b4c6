/*
 * mailwarden native core: fuzzy-hash sketches of message text.
 *
 * The antispam stage's fuzzy store compares messages by the bottom-k MinHash
 * of their word shingles (plugins/mailwarden_antispam/fuzzy.py).  Stored
 * sketches depend on the exact digests, so the digest is BLAKE2b with an
 * 8-byte output and no key, salt or personalisation (hashlib.blake2b(s,
 * digest_size=8)), read as a big-endian integer.
 */
#ifndef MW_FUZZY_H
#define MW_FUZZY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MW_SKETCH_MAX_SHINGLE 64 /* words per shingle */
#define MW_SKETCH_MAX_K 1024     /* digests per sketch */

/* Unkeyed BLAKE2b-64 of src as the big-endian integer of its 8 digest bytes. */
uint64_t mw_blake2b64(const uint8_t *src, size_t len);

/* Bottom-k sketch of the shingles of a word list.  words holds the words
 * separated by 0x20 (the UTF-8 of Python's " ".join(words)); a shingle is
 * `shingle` consecutive words with their separators, so its bytes are those
 * of " ".join(words[i:i+shingle]).encode().  Writes to out the k smallest
 * distinct mw_blake2b64 digests of the shingles in ascending order and
 * returns how many were written (fewer than k when the text has fewer
 * distinct shingles; 0 when shingle or k is 0 or above its maximum). */
size_t mw_shingle_sketch(const uint8_t *words, size_t len, uint32_t shingle, uint32_t k,
                         uint64_t *out);

#ifdef __cplusplus
}
#endif

#endif
