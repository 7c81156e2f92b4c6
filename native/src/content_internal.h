/* Internal glue between html.c and url.c (not part of the public API). */
#ifndef MW_CONTENT_INTERNAL_H
#define MW_CONTENT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

typedef struct mw_url_ctx mw_url_ctx;

/* A link attribute's value, already entity-decoded (url.c). */
void mw_url_from_attr(mw_url_ctx *u, const uint8_t *v, size_t n, int source, uint32_t flags);
/* Every URL in a run of UTF-8 text (url.c). */
void mw_urls_in_text(mw_url_ctx *u, const uint8_t *s, size_t n, int source);
/* HTML walker (html.c): writes the visible text to dst (at most cap bytes)
 * and, when u is not NULL, reports link attributes to it. */
size_t mw_html_walk(const uint8_t *src, size_t len, uint8_t *dst, size_t cap, mw_url_ctx *u);
/* Decodes character references in an attribute value into dst (capacity
 * cap, always >= 2*n + 4 by the caller); returns the length and sets *had
 * when at least one reference was decoded. */
size_t mw_html_decode_attr(const uint8_t *v, size_t n, uint8_t *dst, size_t cap, int *had);

#endif
