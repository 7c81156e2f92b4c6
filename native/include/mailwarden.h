/*
 * mailwarden native core: MIME structure parser, transfer decoders and a
 * literal multi-pattern matcher.
 *
 * Everything here works on caller-owned byte buffers and never copies the
 * input: the parser returns offsets into the buffer it was given.  No
 * function keeps global state, so all of them may run concurrently on
 * different inputs (the Python binding releases the GIL around them).
 */
#ifndef MAILWARDEN_H
#define MAILWARDEN_H

#include <stddef.h>
#include <stdint.h>

#include "mw_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Malformation flags (bitmask).  A flag never makes parsing fail: it only
 * records what was wrong so that policy can act on it. */
#define MW_FLAG_MISSING_BOUNDARY (1u << 0)    /* multipart without boundary= */
#define MW_FLAG_NO_CLOSING_BOUNDARY (1u << 1) /* "--b--" never seen */
#define MW_FLAG_BOUNDARY_NOT_FOUND (1u << 2)  /* no "--b" line at all */
#define MW_FLAG_DEPTH_LIMIT (1u << 3)
#define MW_FLAG_PART_LIMIT (1u << 4)
#define MW_FLAG_HEADER_LIMIT (1u << 5)
#define MW_FLAG_NUL_BYTES (1u << 6)
#define MW_FLAG_BARE_CR_OR_LF_MIX (1u << 7) /* more than one line-ending style */
#define MW_FLAG_BAD_BASE64 (1u << 8)
#define MW_FLAG_TRUNCATED_HEADERS (1u << 9) /* header block without blank line */
#define MW_FLAG_BAD_HEADER_LINE (1u << 10)  /* neither a field nor a continuation */
/* Set by the Python face, never by mw_parse: decoding this part would have
 * passed the per-message decoded-bytes limit, so its decoded body was cut. */
#define MW_FLAG_DECODED_LIMIT (1u << 11)
/* MIME evasions: headers and bodies that readers disagree on.  The parser
 * keeps its one reading (the first Content-Type, the first boundary, comments
 * nested as RFC 5322 nests them); scanners must try the others too. */
#define MW_FLAG_DUPLICATE_CONTENT_TYPE (1u << 12) /* two Content-Type fields */
#define MW_FLAG_DUPLICATE_BOUNDARY (1u << 13)     /* boundary= given twice */
#define MW_FLAG_HEADER_NAME_JUNK (1u << 14)       /* "Content-Type(x):" */
#define MW_FLAG_NESTED_COMMENT (1u << 15)         /* "(a (b) c)" in Content-Type */
#define MW_FLAG_PART_OUTSIDE_BOUNDARIES (1u << 16) /* preamble/epilogue with part headers */

/* mw_part.param_flags: which precomputed parameter spans cannot stand for
 * the header's value (RFC 2231 forms, backslash escapes, 8-bit or control
 * bytes, a line break inside the value); the binding then parses that
 * header itself.  The spans exist so the common case needs no per-part
 * header parsing in Python. */
#define MW_PARAMS_CD_COMPLEX (1u << 0) /* Content-Disposition: type, filename */
#define MW_PARAMS_CT_COMPLEX (1u << 1) /* Content-Type: charset, name */

/* What the parser did with a part's body. */
#define MW_KIND_LEAF 0
#define MW_KIND_MULTIPART 1 /* body was split on its boundary into children */
#define MW_KIND_MESSAGE 2   /* body was parsed as one nested message (child) */

/* Content-Transfer-Encoding as the parser understood it. */
#define MW_CTE_NONE 0 /* no header: 7bit */
#define MW_CTE_7BIT 1
#define MW_CTE_8BIT 2
#define MW_CTE_BINARY 3
#define MW_CTE_BASE64 4
#define MW_CTE_QP 5
#define MW_CTE_OTHER 6

/* Default content type when a part has no (valid) Content-Type. */
#define MW_DEFAULT_TEXT_PLAIN 0
#define MW_DEFAULT_MESSAGE_RFC822 1 /* children of multipart/digest */

#define MW_DEFAULT_MAX_DEPTH 32
#define MW_DEFAULT_MAX_PARTS 10000
#define MW_DEFAULT_MAX_HEADER_BYTES (1u << 20)
/* Recursion depth is bounded by max_depth; this hard cap keeps the C stack
 * safe whatever a caller asks for. */
#define MW_HARD_MAX_DEPTH 1024

typedef struct {
    uint32_t max_depth;        /* nesting levels below the root */
    uint32_t max_parts;        /* parts in the table, root included */
    uint64_t max_header_bytes; /* header block size per part */
} mw_limits;

/* One header field.  Offsets index the raw buffer.  The value span runs from
 * the first non-blank byte after the colon to the end of the last
 * continuation line (line break excluded), so folded values keep their raw
 * CRLF+WSP sequences. */
typedef struct {
    int64_t name_off;
    int64_t name_len;
    int64_t value_off;
    int64_t value_len;
} mw_header;

/* One MIME entity.  Every field is a 64-bit integer on purpose: the Python
 * binding copies the whole table with a single buffer cast. */
typedef struct {
    int64_t parent; /* -1 for the root */
    int64_t depth;
    int64_t header_start;
    int64_t header_end; /* start of the blank separator line */
    int64_t body_start;
    int64_t body_end;
    int64_t first_header; /* index into mw_message.headers */
    int64_t n_headers;
    int64_t flags; /* MW_FLAG_* found in this part itself */
    int64_t kind;  /* MW_KIND_* */
    int64_t cte;   /* MW_CTE_* */
    int64_t type_off; /* Content-Type type token, len 0 when absent/invalid */
    int64_t type_len;
    int64_t subtype_off;
    int64_t subtype_len;
    int64_t boundary_off; /* boundary parameter (unquoted), len 0 if none */
    int64_t boundary_len;
    int64_t default_type; /* MW_DEFAULT_* */
    /* Spans below follow the binding's parameter rules exactly (split on
     * ';' outside quotes, first plain occurrence wins, quotes removed) and
     * are only valid when the matching MW_PARAMS_*_COMPLEX bit is clear.
     * Offset -1 means absent. */
    int64_t disposition_off; /* Content-Disposition type, trimmed */
    int64_t disposition_len;
    int64_t filename_off; /* disposition filename, else Content-Type name */
    int64_t filename_len;
    int64_t charset_off; /* Content-Type charset */
    int64_t charset_len;
    int64_t param_flags; /* MW_PARAMS_* */
    /* The content type (the default one when absent or invalid) as an index
     * into mw_content_type_name() when it is one of the common types there, else 0:
     * the binding then needs no string work for most parts. */
    int64_t type_code;
} mw_part;

typedef struct {
    mw_part *parts;
    size_t n_parts;
    size_t cap_parts;
    mw_header *headers;
    size_t n_headers;
    size_t cap_headers;
    uint32_t flags; /* OR of all part flags plus message-level ones */
} mw_message;

void mw_limits_default(mw_limits *limits);
/* The lowercase "type/subtype" of a type_code, "" for 0 and codes past the
 * table (MW_CONTENT_TYPE_CODES entries). */
#define MW_CONTENT_TYPE_CODES 32
const char *mw_content_type_name(int64_t code);

/* Parses buf[0..len).  On MW_OK *out owns a table the caller releases with
 * mw_message_free.  Malformed input never fails; only MW_ERR_NOMEM and
 * MW_ERR_ARG are returned. */
mw_status mw_parse(const uint8_t *buf, size_t len, const mw_limits *limits, mw_message **out);
void mw_message_free(mw_message *msg);
/* mw_parse for bindings: the tables are copied into out and freed at once.
 * out[0] = message flags, out[1] = n_parts, out[2] = n_headers, then the
 * parts (mw_part records as int64_t) and the header fields (mw_header).
 * Returns the number of int64_t that takes; when it exceeds cap only the
 * first three are written (if cap >= 3) and the caller asks again with a
 * larger array.  A negative return is the negated mw_status of the failure.  One call per message
 * instead of parse, field reads and free: that fixed cost is paid by every
 * message. */
int64_t mw_parse_table(const uint8_t *buf, size_t len, const mw_limits *limits, int64_t *out,
                       size_t cap);

/* Transfer decoders: dst must hold at least *_max_len(len) bytes. */
size_t mw_base64_max_len(size_t len);
/* Tolerant decoder; returns bytes written.  *junk (if non-NULL) is set to 1
 * when anything other than alphabet, whitespace and well-placed padding was
 * seen.  dst may be NULL to only validate. */
size_t mw_base64_decode(const uint8_t *src, size_t len, uint8_t *dst, int *junk);
/* The same verdict as mw_base64_decode's *junk without decoding: 1 when the
 * input is not clean base64.  Block-wise, for the parser's per-part check. */
int mw_base64_junk(const uint8_t *src, size_t len);
size_t mw_qp_max_len(size_t len);
size_t mw_qp_decode(const uint8_t *src, size_t len, uint8_t *dst);
/* For bindings: buf[start..end) decoded as base64 (base64 != 0, no junk
 * report) or quoted-printable into dst, sized as above for end - start;
 * returns bytes written, 0 when the span is empty or inverted.  Offsets
 * instead of a pointer made per part by the caller. */
size_t mw_decode_span(const uint8_t *buf, size_t start, size_t end, int base64, uint8_t *dst);

/* Literal multi-pattern matcher (Aho-Corasick compiled to a DFA over byte
 * equivalence classes). */
typedef struct mw_matcher mw_matcher;

typedef struct {
    uint64_t start; /* offset of the first byte of the match */
    uint32_t pattern_id;
    uint32_t reserved;
} mw_match;

/* patterns[i] of length lens[i] gets id i; empty patterns are rejected
 * (MW_ERR_ARG), a set whose table would pass 1 GiB gives MW_ERR_TOO_LARGE. */
mw_status mw_matcher_new(const uint8_t *const *patterns, const size_t *lens, size_t n,
                   mw_matcher **out);
void mw_matcher_free(mw_matcher *m);
size_t mw_matcher_count(const mw_matcher *m);
/* Writes up to cap matches sorted by (start, pattern_id) and returns the
 * total number found.  When the total exceeds cap the array holds an
 * unspecified subset: call again with a larger array. */
size_t mw_matcher_scan(const mw_matcher *m, const uint8_t *data, size_t len, mw_match *out,
                       size_t cap);
/* The first match in scan order: the one ending earliest, and among those
 * the longest, then the lowest id.  Returns 1 and fills *out, or 0. */
int mw_matcher_first(const mw_matcher *m, const uint8_t *data, size_t len, mw_match *out);

#ifdef __cplusplus
}
#endif

#endif
