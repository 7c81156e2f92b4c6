/*
 * mailwarden native core: the milter's packet loop for header packets.
 *
 * With the no-reply flags an MTA sends a message's header fields as one packet each
 * (u32 length in network order counting the command byte, 'L', name NUL value NUL),
 * usually several in one read. Decoding them one by one in Python cost a few
 * microseconds each; this takes every complete, well-formed header packet in a row
 * in one call and hands their data back packed, for one decode.
 */
#ifndef MW_MILTER_H
#define MW_MILTER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* From buf[offset], while the next packet is complete, its length is 1..limit, its
 * command is 'L' and its data is exactly two NUL-terminated strings (name, value),
 * moves each packet's data down to buf[offset + written], one after the other (the
 * packets taken are consumed: their bytes are overwritten, nothing after them is), and
 * goes on after it. Stops before anything else: an incomplete packet, a bad length,
 * another command, a malformed header packet (the caller's own codec then reports it).
 * Returns the bytes of data now at buf[offset] (0 when the first packet is not taken);
 * the packets taken are as many as the pairs of NUL bytes in them, and they ended at
 * offset + written + 5 * that many. No output parameters: cffi releases the GIL for
 * each call, so a buffer shared between calls would need a lock. */
size_t mw_milter_headers(uint8_t *buf, size_t len, size_t offset, uint32_t limit);

/* Sets TCP_QUICKACK on the socket fd (the acknowledgement of what was read leaves now
 * instead of up to 40 ms later). Returns 0, or errno when the kernel refused. */
int mw_milter_quickack(int fd);

#ifdef __cplusplus
}
#endif

#endif
