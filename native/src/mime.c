/*
 * MIME structure parser.
 *
 * Produces a table of parts (document order, root first) holding offsets
 * into the caller's buffer.  Design rules:
 *  - never read outside [buf, buf+len), never abort, never fail on bad mail:
 *    every oddity becomes an MW_FLAG_* bit on the part where it was found;
 *  - CRLF, LF and bare CR all end a line, in any mix;
 *  - cost is linear in the input for each nesting level of multiparts, and
 *    nesting is capped by max_depth, so total work is O(len * max_depth)
 *    with no input-controlled blow-up;
 *  - only allocation failure is an error.
 */
#include <stdlib.h>
#include <string.h>

#include "mailwarden.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
/* AVX2 versions of the whole-buffer passes, chosen at run time: the build
 * targets baseline x86-64, and AVX2 halves the cost of these passes. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MW_HAVE_AVX2 1
#include <immintrin.h>
#endif

typedef struct {
    const uint8_t *buf;
    size_t len;
    mw_limits lim;
    mw_message *msg;
    int nomem;
    int has_nul; /* from the whole-message pass: per-part NUL searches only when set */
    /* The tables still live in the caller's (stack) storage: growing them
     * then means malloc and copy, never realloc or free. */
    const mw_part *parts_inline;
    const mw_header *headers_inline;
} parser;

/* Moves an array out of inline storage or reallocates it; NULL on failure
 * (the old array stays valid). */
static void *grow(void *old, const void *inl, size_t used, size_t cap, size_t size) {
    if (cap > SIZE_MAX / size) return NULL;
    if (old != inl) return realloc(old, cap * size);
    void *n = malloc(cap * size);
    if (n && used) memcpy(n, old, used * size);
    return n;
}

static int is_wsp(uint8_t c) { return c == ' ' || c == '\t'; }
static int is_eol(uint8_t c) { return c == '\r' || c == '\n'; }

static uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

static int ieq(const uint8_t *s, size_t n, const char *lit) {
    size_t m = strlen(lit);
    if (n != m) return 0;
    for (size_t i = 0; i < n; i++)
        if (lower(s[i]) != (uint8_t)lit[i]) return 0;
    return 1;
}

/* RFC 2045 token characters: printable ASCII except space and tspecials. */
#define TOKV(c)                                                                                \
    ((c) > 32 && (c) < 127 && (c) != '(' && (c) != ')' && (c) != '<' && (c) != '>' &&         \
     (c) != '@' && (c) != ',' && (c) != ';' && (c) != ':' && (c) != '\\' && (c) != '"' &&     \
     (c) != '/' && (c) != '[' && (c) != ']' && (c) != '?' && (c) != '=')
#define R4(M, b) M(b), M((b) + 1), M((b) + 2), M((b) + 3)
#define R16(M, b) R4(M, b), R4(M, (b) + 4), R4(M, (b) + 8), R4(M, (b) + 12)
#define R64(M, b) R16(M, b), R16(M, (b) + 16), R16(M, (b) + 32), R16(M, (b) + 48)
#define R256(M) R64(M, 0), R64(M, 64), R64(M, 128), R64(M, 192)
/* A table, built by the preprocessor, because every Content-Type token and
 * parameter name goes through this test. */
static const uint8_t TOKEN[256] = {R256(TOKV)};
static int is_token(uint8_t c) { return TOKEN[c]; }

/* Offset of the first of bytes c1, c2, c3 in [p, e), or e: header values
 * are mostly plain bytes between the few a scanner stops at. */
static size_t find3(const uint8_t *b, size_t p, size_t e, uint8_t c1, uint8_t c2, uint8_t c3) {
#if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
    const __m128i v1 = _mm_set1_epi8((char)c1), v2 = _mm_set1_epi8((char)c2);
    const __m128i v3 = _mm_set1_epi8((char)c3);
    while (e - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(b + p));
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(x, v1), _mm_cmpeq_epi8(x, v2)), _mm_cmpeq_epi8(x, v3)));
        if (m) return p + (size_t)__builtin_ctz(m);
        p += 16;
    }
#endif
    while (p < e && b[p] != c1 && b[p] != c2 && b[p] != c3) p++;
    return p;
}

/* Finds the end of the line starting at p: returns the offset of the line
 * break (or end) and stores the break length (0, 1 or 2) in *eol.  With
 * colon non-NULL it also finds the line's first ':' (*colon = its offset, or
 * the line end when there is none): a header line is read once instead of a
 * line-end search plus a memchr for the colon. */
#if defined(__GNUC__) || defined(__clang__)
/* Inlined into both callers, so line_end's NULL colon folds away. */
__attribute__((always_inline))
#endif
static inline size_t header_line(const uint8_t *b, size_t p, size_t end, size_t *eol,
                                 size_t *colon) {
    size_t c = colon ? SIZE_MAX : 0; /* not SIZE_MAX: no colon wanted */
#if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
    /* Header lines are tens of bytes: 16 at a time, no call overhead. */
    const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n'), co = _mm_set1_epi8(':');
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(b + p));
        unsigned m = (unsigned)_mm_movemask_epi8(
                _mm_or_si128(_mm_cmpeq_epi8(x, cr), _mm_cmpeq_epi8(x, lf)));
        if (c == SIZE_MAX) {
            unsigned k = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, co));
            /* Only a colon before the line break counts. */
            if (m) k &= (m & (0u - m)) - 1u;
            if (k) c = p + (size_t)__builtin_ctz(k);
        }
        if (m) {
            p += (size_t)__builtin_ctz(m);
            goto found;
        }
        p += 16;
    }
#endif
    while (p < end && !is_eol(b[p])) {
        if (b[p] == ':' && c == SIZE_MAX) c = p;
        p++;
    }
#if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
found:
#endif
    if (colon) *colon = c == SIZE_MAX ? p : c;
    if (p >= end)
        *eol = 0;
    else if (b[p] == '\r' && p + 1 < end && b[p + 1] == '\n')
        *eol = 2;
    else
        *eol = 1;
    return p;
}

static size_t line_end(const uint8_t *b, size_t p, size_t end, size_t *eol) {
    return header_line(b, p, end, eol, NULL);
}

/* Field-name bytes: 1 for printable ASCII (RFC 5322 ftext, and ':' cannot
 * occur before the first colon), 3 for the parentheses, which are ftext too
 * but make the HEADER_NAME_JUNK evasion. */
#define NAMEV(c) ((c) > 32 && (c) < 127 ? ((c) == '(' || (c) == ')' ? 3 : 1) : 0)
static const uint8_t NAMECH[256] = {R256(NAMEV)};

/* *all = 1 when every byte of [p, ne) is a field-name byte, *any has bit 2
 * when one is a parenthesis.  limit bounds the 16-byte loads. */
static void name_bytes(const uint8_t *b, size_t p, size_t ne, size_t limit, unsigned *all,
                       unsigned *any) {
    unsigned a = 1, y = 0;
#if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
    const __m128i lo = _mm_set1_epi8(32), hi = _mm_set1_epi8(127);
    const __m128i op = _mm_set1_epi8('('), cp = _mm_set1_epi8(')');
    while (p < ne && limit - p >= 16) {
        size_t n = ne - p < 16 ? ne - p : 16;
        unsigned keep = n == 16 ? 0xFFFFu : (1u << n) - 1u;
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(b + p));
        /* Signed compares: 8-bit bytes are negative, so not above 32. */
        unsigned ok = (unsigned)_mm_movemask_epi8(
                _mm_and_si128(_mm_cmpgt_epi8(x, lo), _mm_cmplt_epi8(x, hi)));
        unsigned par = (unsigned)_mm_movemask_epi8(
                _mm_or_si128(_mm_cmpeq_epi8(x, op), _mm_cmpeq_epi8(x, cp)));
        if ((ok & keep) != keep) a = 0;
        if (par & keep) y = 2;
        p += n;
    }
#endif
    for (; p < ne; p++) {
        a &= NAMECH[b[p]];
        y |= NAMECH[b[p]];
    }
    *all = a;
    *any = y;
}

static int64_t add_part(parser *ps, int64_t parent, int64_t depth) {
    mw_message *m = ps->msg;
    if (m->n_parts == m->cap_parts) {
        size_t nc = m->cap_parts ? m->cap_parts * 2 : 8;
        if (nc > SIZE_MAX / sizeof(mw_part)) {
            ps->nomem = 1;
            return -1;
        }
        mw_part *np = grow(m->parts, ps->parts_inline, m->n_parts, nc, sizeof(mw_part));
        if (!np) {
            ps->nomem = 1;
            return -1;
        }
        m->parts = np;
        m->cap_parts = nc;
    }
    /* A struct copy, not memset: gcc made "rep stos" of the memset, which
     * showed in profiles at this size. */
    static const mw_part blank = {.disposition_off = -1, .filename_off = -1, .charset_off = -1};
    mw_part *p = &m->parts[m->n_parts];
    *p = blank;
    p->parent = parent;
    p->depth = depth;
    p->first_header = (int64_t)m->n_headers;
    return (int64_t)m->n_parts++;
}

static int add_header(parser *ps, size_t no, size_t nl, size_t vo, size_t vl) {
    mw_message *m = ps->msg;
    if (m->n_headers == m->cap_headers) {
        size_t nc = m->cap_headers ? m->cap_headers * 2 : 32;
        if (nc > SIZE_MAX / sizeof(mw_header)) {
            ps->nomem = 1;
            return 0;
        }
        mw_header *nh = grow(m->headers, ps->headers_inline, m->n_headers, nc, sizeof(mw_header));
        if (!nh) {
            ps->nomem = 1;
            return 0;
        }
        m->headers = nh;
        m->cap_headers = nc;
    }
    mw_header *h = &m->headers[m->n_headers++];
    h->name_off = (int64_t)no;
    h->name_len = (int64_t)nl;
    h->value_off = (int64_t)vo;
    h->value_len = (int64_t)vl;
    return 1;
}

/* Parses the header block of part idx starting at start.  Returns 1 when the
 * header limit was hit (the part must then not be descended into). */
static int parse_headers(parser *ps, int64_t idx, size_t start, size_t end) {
    const uint8_t *b = ps->buf;
    mw_part *part = &ps->msg->parts[idx];
    size_t p = start, eol;
    int have_field = 0, any_line = 0, limited = 0;
    uint32_t flags = 0;

    part->header_start = (int64_t)start;
    part->body_end = (int64_t)end;

    /* An mbox "From " envelope line may precede a message's headers (the
     * root, or a message/rfc822 body saved from a mailbox). */
    int message_start = part->parent < 0 || ps->msg->parts[part->parent].kind == MW_KIND_MESSAGE;
    if (message_start && end - start >= 5 && memcmp(b + start, "From ", 5) == 0) {
        size_t q = line_end(b, p, end, &eol);
        p = q + eol;
    }

    while (p < end) {
        size_t colon_at;
        size_t q = header_line(b, p, end, &eol, &colon_at);
        size_t next = q + eol;
        any_line = 1;
        if (q == p) { /* blank line: end of the header block */
            part = &ps->msg->parts[idx];
            part->header_end = (int64_t)p;
            part->body_start = (int64_t)next;
            part->flags |= flags;
            return limited;
        }
        if (!limited && next - start > ps->lim.max_header_bytes) {
            /* Keep scanning for the separator so the body offset stays
             * right, but record no more fields. */
            limited = 1;
            flags |= MW_FLAG_HEADER_LIMIT;
        }
        if (is_wsp(b[p])) {
            if (have_field && !limited) {
                mw_header *h = &ps->msg->headers[ps->msg->n_headers - 1];
                h->value_len = (int64_t)q - h->value_off;
            } else if (!have_field) {
                flags |= MW_FLAG_BAD_HEADER_LINE;
            }
            p = next;
            continue;
        }
        int has_colon = colon_at < q;
        size_t ne = has_colon ? colon_at : p;
        while (ne > p && is_wsp(b[ne - 1])) ne--;
        unsigned all, any;
        name_bytes(b, p, ne, end, &all, &any);
        int valid = has_colon && ne > p && all;
        if (!valid) {
            /* Like Python's email package: a line that is not a field ends
             * the headers and starts the body (no separator consumed). */
            part = &ps->msg->parts[idx];
            part->header_end = (int64_t)p;
            part->body_start = (int64_t)p;
            part->flags |= flags | MW_FLAG_BAD_HEADER_LINE;
            return limited;
        }
        /* "Content-Type(x):" is a legal field name that no reader takes for
         * Content-Type, yet some mail clients strip the comment and do. */
        if (any & 2) flags |= MW_FLAG_HEADER_NAME_JUNK;
        if (!limited) {
            size_t v = colon_at + 1;
            while (v < q && is_wsp(b[v])) v++;
            if (!add_header(ps, p, ne - p, v, q - v)) return 1;
            ps->msg->parts[idx].n_headers++;
            have_field = 1;
        }
        p = next;
    }
    part = &ps->msg->parts[idx];
    part->header_end = (int64_t)end;
    part->body_start = (int64_t)end;
    if (any_line) flags |= MW_FLAG_TRUNCATED_HEADERS;
    part->flags |= flags;
    return limited;
}

/* Skips whitespace, line breaks and (nested) comments. */
static size_t skip_cfws(const uint8_t *b, size_t p, size_t end) {
    for (;;) {
        while (p < end && (is_wsp(b[p]) || is_eol(b[p]))) p++;
        if (p >= end || b[p] != '(') return p;
        size_t nest = 0;
        while (p < end) {
            if (b[p] == '\\' && p + 1 < end) {
                p += 2;
                continue;
            }
            if (b[p] == '(') nest++;
            if (b[p] == ')' && --nest == 0) {
                p++;
                break;
            }
            p++;
        }
    }
}

static size_t skip_token(const uint8_t *b, size_t p, size_t end) {
    while (p < end && is_token(b[p])) p++;
    return p;
}

static int find_delimiter(const uint8_t *b, size_t bstart, size_t pos, size_t end,
                          const uint8_t *bd, size_t blen, size_t *dstart, size_t *dnext,
                          int *is_close);

/* RFC 2231 forms of the boundary ("boundary*=utf-8''%41%42", "boundary*0=A; boundary*1=B",
 * "boundary*1*=%42"): joined by the rules of mailwarden_native/_params.py (index order, the
 * first piece of an index wins, percent-decoding where the name ends in '*', the
 * charset'lang' prefix dropped from the first piece).  A boundary longer than RFC 2046's 70
 * characters, several times over, is not a boundary. */
#define B2231_PIECES 32
#define B2231_MAX 256

typedef struct {
    size_t off, len, idx;
    int enc;
} b2231_piece;

static int hexval(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    c = lower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Returns 1 and fills *idx / *enc when name is "boundary*", "boundary*N" or "boundary*N*". */
static int b2231_name(const uint8_t *n, size_t nl, size_t *idx, int *enc) {
    if (nl < 9 || !ieq(n, 8, "boundary") || n[8] != '*') return 0;
    if (nl == 9) {
        *idx = 0;
        *enc = 1;
        return 1;
    }
    size_t i = 9, v = 0;
    for (; i < nl && n[i] >= '0' && n[i] <= '9'; i++) {
        if (v > 1000) return 0;
        v = v * 10 + (size_t)(n[i] - '0');
    }
    if (i == 9) return 0;
    if (i == nl) *enc = 0;
    else if (i + 1 == nl && n[i] == '*') *enc = 1;
    else return 0;
    *idx = v;
    return 1;
}

/* Joins the pieces into out (B2231_MAX bytes); returns the length, 0 when unusable. */
static size_t b2231_join(const uint8_t *b, b2231_piece *pc, size_t n, uint8_t *out) {
    for (size_t i = 1; i < n; i++) /* stable: the first piece of an index stays first */
        for (size_t j = i; j > 0 && pc[j - 1].idx > pc[j].idx; j--) {
            b2231_piece t = pc[j];
            pc[j] = pc[j - 1];
            pc[j - 1] = t;
        }
    size_t len = 0, used = 0;
    for (size_t k = 0; k < n; k++) {
        if (k > 0 && pc[k].idx == pc[k - 1].idx) continue;
        const uint8_t *s = b + pc[k].off;
        size_t sl = pc[k].len, i = 0;
        if (pc[k].enc && used == 0) {
            size_t quotes = 0, after = 0;
            for (size_t q = 0; q < sl && quotes < 2; q++)
                if (s[q] == '\'') {
                    quotes++;
                    after = q + 1;
                }
            if (quotes == 2) i = after;
        }
        used++;
        while (i < sl) {
            uint8_t c = s[i++];
            if (pc[k].enc && c == '%' && i + 1 < sl) {
                int hi = hexval(s[i]), lo = hexval(s[i + 1]);
                if (hi >= 0 && lo >= 0) {
                    c = (uint8_t)(hi * 16 + lo);
                    i += 2;
                }
            }
            if (len == B2231_MAX) return 0;
            out[len++] = c;
        }
    }
    return len;
}

/* Extracts type, subtype and the first boundary parameter from a
 * Content-Type value span. */
/* Whether a comment inside [v, ve) holds another comment (outside quoted
 * strings): readers that do not nest comments see a different value. */
static int nested_comment(const uint8_t *b, size_t v, size_t ve) {
    size_t nest = 0;
    int quoted = 0;
    for (size_t p = v; p < ve; p++) {
        if (b[p] == '\\' && p + 1 < ve) {
            p++;
        } else if (quoted) {
            if (b[p] == '"') quoted = 0;
        } else if (b[p] == '"' && nest == 0) {
            quoted = 1;
        } else if (b[p] == '(') {
            if (++nest > 1) return 1;
        } else if (b[p] == ')' && nest > 0) {
            nest--;
        }
    }
    return 0;
}

static void parse_content_type(parser *ps, mw_part *part, size_t v, size_t ve) {
    const uint8_t *b = ps->buf;
    if (memchr(b + v, '(', ve - v) && nested_comment(b, v, ve))
        part->flags |= MW_FLAG_NESTED_COMMENT;
    size_t p = skip_cfws(b, v, ve), t = p;
    p = skip_token(b, p, ve);
    size_t tl = p - t;
    p = skip_cfws(b, p, ve);
    if (tl == 0 || p >= ve || b[p] != '/') return;
    p = skip_cfws(b, p + 1, ve);
    size_t s = p;
    p = skip_token(b, p, ve);
    if (p == s) return;
    part->type_off = (int64_t)t;
    part->type_len = (int64_t)tl;
    part->subtype_off = (int64_t)s;
    part->subtype_len = (int64_t)(p - s);
    b2231_piece pieces[B2231_PIECES];
    size_t npieces = 0;

    while (p < ve) {
        /* Advance to the next ';' outside quoted strings and comments. */
        while ((p = find3(b, p, ve, ';', '"', '(')) < ve && b[p] != ';') {
            if (b[p] == '"') {
                p++;
                while (p < ve && b[p] != '"') p += (b[p] == '\\' && p + 1 < ve) ? 2 : 1;
                if (p < ve) p++;
            } else {
                p = skip_cfws(b, p, ve); /* '(' */
            }
        }
        if (p >= ve) break;
        p = skip_cfws(b, p + 1, ve);
        size_t n = p;
        p = skip_token(b, p, ve);
        size_t nl = p - n;
        p = skip_cfws(b, p, ve);
        if (nl == 0 || p >= ve || b[p] != '=') continue;
        p = skip_cfws(b, p + 1, ve);
        size_t vs, vl;
        if (p < ve && b[p] == '"') {
            vs = ++p;
            while (p < ve && b[p] != '"') p += (b[p] == '\\' && p + 1 < ve) ? 2 : 1;
            vl = (p < ve ? p : ve) - vs;
            if (p < ve) p++;
        } else {
            /* Lenient: real mail has unquoted boundaries with '=' or '/'. */
            vs = p;
            while (p < ve && b[p] != ';' && !is_eol(b[p])) p++;
            vl = p - vs;
            while (vl > 0 && is_wsp(b[vs + vl - 1])) vl--;
        }
        size_t idx;
        int enc;
        if (b2231_name(b + n, nl, &idx, &enc)) {
            if (npieces < B2231_PIECES) pieces[npieces++] = (b2231_piece){vs, vl, idx, enc};
            continue;
        }
        if (part->boundary_len != 0 && ieq(b + n, nl, "boundary")) {
            part->flags |= MW_FLAG_DUPLICATE_BOUNDARY;
        } else if (part->boundary_len == 0 && ieq(b + n, nl, "boundary")) {
            /* A boundary with a line break can never match a delimiter
             * line; treating it as absent keeps scanning linear. */
            int ok = vl > 0;
            for (size_t i = 0; ok && i < vl; i++)
                if (is_eol(b[vs + i])) ok = 0;
            if (ok) {
                part->boundary_off = (int64_t)vs;
                part->boundary_len = (int64_t)vl;
            }
        }
    }
    if (part->boundary_len == 0 && npieces > 0) {
        /* The joined boundary is not a span of the header, but a usable one is written in
         * the body as the first delimiter line: the part points there instead. */
        uint8_t joined[B2231_MAX];
        size_t jl = b2231_join(b, pieces, npieces, joined), ds, dn;
        int close;
        for (size_t i = 0; i < jl; i++)
            if (is_eol(joined[i])) jl = 0;
        size_t bs = (size_t)part->body_start, be = (size_t)part->body_end;
        if (jl > 0 && find_delimiter(b, bs, bs, be, joined, jl, &ds, &dn, &close)) {
            part->boundary_off = (int64_t)(ds + 2);
            part->boundary_len = (int64_t)jl;
        }
    }
}

/*
 * Parameter spans for the binding.  The Python face used to parse
 * Content-Type and Content-Disposition of every part it was asked about; the
 * spans computed here let it slice the answer instead.  They follow the
 * binding's own rules (mailwarden_native/_params.py) exactly, not RFC 2045's
 * comment syntax, so both paths give the same strings: split on ';' outside
 * double quotes, "name=value" split at the first '=', names and values
 * trimmed of blanks and line breaks (unfolding deletes CR and LF), the first
 * plain occurrence of a name wins, a quoted value ends at the next quote.
 * Whatever those rules would transform rather than slice (backslash
 * escapes, RFC 2231 "name*" forms, a line break inside a span, 8-bit or
 * control bytes whose decoding and trimming depend on the whole value) makes
 * the header "complex", and the binding falls back to parsing it.
 */
typedef struct {
    const char *name;
    size_t off, len;
    int found;
} want_param;

static int is_fold(uint8_t c) { return is_wsp(c) || is_eol(c); }

static void trim(const uint8_t *b, size_t *s, size_t *e) {
    while (*s < *e && is_fold(b[*s])) (*s)++;
    while (*e > *s && is_fold(b[*e - 1])) (*e)--;
}

static int has_eol(const uint8_t *b, size_t s, size_t e) {
    for (size_t i = s; i < e; i++)
        if (is_eol(b[i])) return 1;
    return 0;
}

/* Bytes the parameter splitter stops at: '"' 1, ';' 2, '=' 3. */
#define PCLSV(c) ((c) == '"' ? 1 : (c) == ';' ? 2 : (c) == '=' ? 3 : 0)
static const uint8_t PARAM_CLASS[256] = {R256(PCLSV)};


/* Returns 1 when the value is complex (spans unusable).  On 0, *main holds
 * the trimmed first segment and each wanted parameter its value span. */
/* Bytes that make a parameter value complex: backslash, DEL, 8-bit bytes
 * and controls other than HT, CR and LF. */
#define CPLXV(c)                                                                               \
    ((c) == '\\' || (c) >= 127 || ((c) < 32 && (c) != '\t' && (c) != '\r' && (c) != '\n'))
static const uint8_t COMPLEX_BYTE[256] = {R256(CPLXV)};

static int has_complex_byte(const uint8_t *b, size_t i, size_t e) {
#if defined(__SSE2__)
    /* Signed compare: 8-bit bytes are negative, so "< 32" catches them and
     * the controls at once; HT, CR and LF are then taken out. */
    const __m128i sp = _mm_set1_epi8(32), del = _mm_set1_epi8(127), bs = _mm_set1_epi8('\\');
    const __m128i ht = _mm_set1_epi8('\t'), cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
    for (; e - i >= 16; i += 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(b + i));
        __m128i ok = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, ht), _mm_cmpeq_epi8(x, cr)),
                                  _mm_cmpeq_epi8(x, lf));
        __m128i bad = _mm_andnot_si128(ok, _mm_cmplt_epi8(x, sp));
        bad = _mm_or_si128(bad, _mm_or_si128(_mm_cmpeq_epi8(x, del), _mm_cmpeq_epi8(x, bs)));
        if (_mm_movemask_epi8(bad)) return 1;
    }
#endif
    unsigned any = 0;
    for (; i < e; i++) any |= COMPLEX_BYTE[b[i]];
    return any != 0;
}

static int scan_params(const uint8_t *b, size_t v, size_t ve, size_t *main_off,
                       size_t *main_len, want_param *want, size_t nwant) {
    if (has_complex_byte(b, v, ve)) return 1;
    size_t p = v, seg = 0;
    for (;;) {
        size_t s = p, eq = 0;
        int quoted = 0, have_eq = 0;
        for (; (p = find3(b, p, ve, '"', ';', '=')) < ve; p++) {
            uint8_t k = PARAM_CLASS[b[p]];
            if (k == 1) {
                quoted = !quoted;
            } else if (k == 2) {
                if (!quoted) break;
            } else if (!have_eq) {
                have_eq = 1;
                eq = p;
            }
        }
        size_t e = p;
        if (seg++ == 0) {
            trim(b, &s, &e);
            if (has_eol(b, s, e)) return 1;
            *main_off = s;
            *main_len = e - s;
        } else if (have_eq) {
            size_t ns = s, ne = eq;
            trim(b, &ns, &ne);
            for (size_t k = 0; k < nwant && ne > ns; k++) {
                want_param *w = &want[k];
                size_t wl = strlen(w->name);
                /* "name*", "name*0", "name*0*": an RFC 2231 form overrides
                 * the plain value, and joining it is the binding's job. */
                if (ne - ns > wl && b[ns + wl] == '*' && ieq(b + ns, wl, w->name)) return 1;
                if (w->found || !ieq(b + ns, ne - ns, w->name)) continue;
                size_t vs = eq + 1, vend = e;
                trim(b, &vs, &vend);
                if (vs < vend && b[vs] == '"') {
                    vs++;
                    const uint8_t *q = memchr(b + vs, '"', vend - vs);
                    if (q) vend = (size_t)(q - b);
                }
                if (has_eol(b, vs, vend)) return 1;
                w->off = vs;
                w->len = vend - vs;
                w->found = 1;
            }
        }
        if (p >= ve) return 0;
        p++; /* past ';' */
    }
}

static void param_spans(const uint8_t *b, mw_part *part, const mw_header *ct,
                        const mw_header *cd) {
    size_t mo = 0, ml = 0;
    want_param ctw[2] = {{"charset", 0, 0, 0}, {"name", 0, 0, 0}};
    int ct_ok = 1;
    if (ct) {
        size_t v = (size_t)ct->value_off;
        if (scan_params(b, v, v + (size_t)ct->value_len, &mo, &ml, ctw, 2)) {
            part->param_flags |= MW_PARAMS_CT_COMPLEX;
            ct_ok = 0;
        } else if (ctw[0].found) {
            part->charset_off = (int64_t)ctw[0].off;
            part->charset_len = (int64_t)ctw[0].len;
        }
    }
    want_param cdw[1] = {{"filename", 0, 0, 0}};
    if (cd) {
        size_t v = (size_t)cd->value_off;
        if (scan_params(b, v, v + (size_t)cd->value_len, &mo, &ml, cdw, 1)) {
            part->param_flags |= MW_PARAMS_CD_COMPLEX;
            return;
        }
        part->disposition_off = (int64_t)mo;
        part->disposition_len = (int64_t)ml;
    }
    if (cdw[0].found) {
        part->filename_off = (int64_t)cdw[0].off;
        part->filename_len = (int64_t)cdw[0].len;
    } else if (ct_ok && ctw[1].found) {
        part->filename_off = (int64_t)ctw[1].off;
        part->filename_len = (int64_t)ctw[1].len;
    }
}

/* The common content types, index = mw_part.type_code (0: none of them). */
#define TYPE_ENTRY(s) {s, sizeof(s) - 1}
static const struct {
    const char *name;
    size_t len;
} TYPES[MW_CONTENT_TYPE_CODES] = {
        TYPE_ENTRY(""),
        TYPE_ENTRY("text/plain"),
        TYPE_ENTRY("text/html"),
        TYPE_ENTRY("multipart/alternative"),
        TYPE_ENTRY("multipart/mixed"),
        TYPE_ENTRY("multipart/related"),
        TYPE_ENTRY("application/octet-stream"),
        TYPE_ENTRY("application/pdf"),
        TYPE_ENTRY("image/jpeg"),
        TYPE_ENTRY("image/png"),
        TYPE_ENTRY("image/gif"),
        TYPE_ENTRY("message/rfc822"),
        TYPE_ENTRY("multipart/report"),
        TYPE_ENTRY("message/delivery-status"),
        TYPE_ENTRY("text/rfc822-headers"),
        TYPE_ENTRY("multipart/signed"),
        TYPE_ENTRY("application/pkcs7-signature"),
        TYPE_ENTRY("application/pgp-signature"),
        TYPE_ENTRY("text/calendar"),
        TYPE_ENTRY("application/zip"),
        TYPE_ENTRY("application/msword"),
        TYPE_ENTRY("application/vnd.ms-excel"),
        TYPE_ENTRY("text/csv"),
        TYPE_ENTRY("text/xml"),
        TYPE_ENTRY("application/xml"),
        TYPE_ENTRY("application/json"),
        TYPE_ENTRY("message/disposition-notification"),
        TYPE_ENTRY("text/enriched"),
        TYPE_ENTRY("multipart/digest"),
        TYPE_ENTRY("message/global"),
        TYPE_ENTRY("application/x-pkcs7-signature"),
        TYPE_ENTRY("image/bmp"),
};

const char *mw_content_type_name(int64_t code) {
    return code > 0 && code < MW_CONTENT_TYPE_CODES ? TYPES[code].name : "";
}

static int64_t type_code(const uint8_t *b, const mw_part *p) {
    if (p->type_len == 0) /* the default: "text/plain" or "message/rfc822" */
        return p->default_type == MW_DEFAULT_MESSAGE_RFC822 ? 11 : 1;
    size_t tl = (size_t)p->type_len, sl = (size_t)p->subtype_len;
    const uint8_t *t = b + p->type_off, *s = b + p->subtype_off;
    for (int64_t k = 1; k < MW_CONTENT_TYPE_CODES; k++) {
        const char *n = TYPES[k].name;
        if (TYPES[k].len != tl + 1 + sl || n[tl] != '/') continue;
        size_t i = 0;
        while (i < tl && lower(t[i]) == (uint8_t)n[i]) i++;
        if (i < tl) continue;
        n += tl + 1;
        while (i < tl + sl && lower(s[i - tl]) == (uint8_t)n[i - tl]) i++;
        if (i == tl + sl) return k;
    }
    return 0;
}

static int64_t parse_cte(const uint8_t *b, size_t v, size_t ve) {
    size_t p = skip_cfws(b, v, ve), t = p;
    p = skip_token(b, p, ve);
    const uint8_t *s = b + t;
    size_t n = p - t;
    if (ieq(s, n, "7bit")) return MW_CTE_7BIT;
    if (ieq(s, n, "8bit")) return MW_CTE_8BIT;
    if (ieq(s, n, "binary")) return MW_CTE_BINARY;
    if (ieq(s, n, "base64")) return MW_CTE_BASE64;
    if (ieq(s, n, "quoted-printable")) return MW_CTE_QP;
    return MW_CTE_OTHER;
}

/* Offset of the first "--" in [pos, end), or end.  Delimiters start with
 * "--": pairs are rare in bodies, single '-' is not (a memchr per '-' was a
 * call per hyphen of every text part). */
#if MW_HAVE_AVX2
/* 64 bytes per step for long bodies (base64 attachments are scanned whole). */
__attribute__((target("avx2"))) static size_t find_dashes_avx2(const uint8_t *b, size_t pos,
                                                               size_t end) {
    const __m256i d = _mm256_set1_epi8('-');
    while (end - pos >= 65) {
        const uint8_t *q = b + pos;
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(const void *)q);
        __m256i y0 = _mm256_loadu_si256((const __m256i *)(const void *)(q + 1));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(const void *)(q + 32));
        __m256i y1 = _mm256_loadu_si256((const __m256i *)(const void *)(q + 33));
        __m256i m0 = _mm256_and_si256(_mm256_cmpeq_epi8(x0, d), _mm256_cmpeq_epi8(y0, d));
        __m256i m1 = _mm256_and_si256(_mm256_cmpeq_epi8(x1, d), _mm256_cmpeq_epi8(y1, d));
        if (!_mm256_testz_si256(_mm256_or_si256(m0, m1), _mm256_or_si256(m0, m1))) {
            uint64_t m = (uint32_t)_mm256_movemask_epi8(m0) |
                         ((uint64_t)(uint32_t)_mm256_movemask_epi8(m1) << 32);
            return pos + (size_t)__builtin_ctzll(m);
        }
        pos += 64;
    }
    return pos;
}
#endif

static size_t find_dashes(const uint8_t *b, size_t pos, size_t end) {
#if MW_HAVE_AVX2
    if (end - pos >= 512 && __builtin_cpu_supports("avx2")) {
        pos = find_dashes_avx2(b, pos, end);
        if (end - pos >= 2 && b[pos] == '-' && b[pos + 1] == '-') return pos;
    }
#endif
#if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
    const __m128i d = _mm_set1_epi8('-');
    while (end - pos >= 17) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(b + pos));
        __m128i y = _mm_loadu_si128((const __m128i *)(const void *)(b + pos + 1));
        unsigned m = (unsigned)_mm_movemask_epi8(
                _mm_and_si128(_mm_cmpeq_epi8(x, d), _mm_cmpeq_epi8(y, d)));
        if (m) return pos + (size_t)__builtin_ctz(m);
        pos += 16;
    }
#endif
    for (; end - pos >= 2; pos++)
        if (b[pos] == '-' && b[pos + 1] == '-') return pos;
    return end;
}

/* Finds the next delimiter line "--boundary[--][ \t]*EOL" starting at a
 * line start in [pos, end).  On success stores the line start, the offset
 * after its line break and whether it is the closing delimiter. */
static int find_delimiter(const uint8_t *b, size_t bstart, size_t pos, size_t end,
                          const uint8_t *bd, size_t blen, size_t *dstart, size_t *dnext,
                          int *is_close) {
    while (pos < end) {
        size_t c = find_dashes(b, pos, end);
        if (c >= end) return 0;
        pos = c + 1;
        if (c != bstart && !is_eol(b[c - 1])) continue;
        if (end - c < 2 + blen || memcmp(b + c + 2, bd, blen) != 0) continue;
        size_t k = c + 2 + blen;
        int close = 0;
        if (end - k >= 2 && b[k] == '-' && b[k + 1] == '-') {
            close = 1;
            k += 2;
        }
        while (k < end && is_wsp(b[k])) k++;
        if (k < end && !is_eol(b[k])) continue;
        if (k < end) k += (b[k] == '\r' && k + 1 < end && b[k + 1] == '\n') ? 2 : 1;
        *dstart = c;
        *dnext = k;
        *is_close = close;
        return 1;
    }
    return 0;
}

static void parse_entity(parser *ps, size_t start, size_t end, int64_t parent, int64_t depth,
                         int64_t default_type);

/* Adds a child entity unless the part limit is reached. */
static int add_child(parser *ps, int64_t idx, size_t start, size_t end, int64_t default_type) {
    if (ps->msg->n_parts >= ps->lim.max_parts) {
        ps->msg->parts[idx].flags |= MW_FLAG_PART_LIMIT;
        return 0;
    }
    parse_entity(ps, start, end, idx, ps->msg->parts[idx].depth + 1, default_type);
    return !ps->nomem;
}

/* Splits a multipart body; returns 0 when no delimiter was found so the
 * caller treats the part as a leaf. */
/* Whether [s, e) holds a line that starts a MIME header ("Content-Type:",
 * "Content-Transfer-Encoding:", "Content-Disposition:"): a part some reader
 * finds in the preamble or epilogue, where RFC 2046 says nothing is. */
static int looks_like_part(const uint8_t *b, size_t s, size_t e) {
    static const char *const names[] = {"content-type:", "content-transfer-encoding:",
                                        "content-disposition:"};
    size_t p = s, eol;
    while (p < e) {
        size_t q = line_end(b, p, e, &eol);
        for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
            size_t nl = strlen(names[i]);
            if (q - p >= nl && ieq(b + p, nl, names[i])) return 1;
        }
        if (q + eol <= p) break;
        p = q + eol;
    }
    return 0;
}

static int split_multipart(parser *ps, int64_t idx) {
    const uint8_t *b = ps->buf;
    mw_part *part = &ps->msg->parts[idx];
    size_t bs = (size_t)part->body_start, be = (size_t)part->body_end;
    const uint8_t *bd = b + part->boundary_off;
    size_t blen = (size_t)part->boundary_len;
    int64_t child_default =
        ieq(b + part->subtype_off, (size_t)part->subtype_len, "digest") ? MW_DEFAULT_MESSAGE_RFC822
                                                                        : MW_DEFAULT_TEXT_PLAIN;
    size_t pos = bs, dstart, dnext, child_start = 0;
    int found = 0, closed = 0, in_part = 0, close;

    while (find_delimiter(b, bs, pos, be, bd, blen, &dstart, &dnext, &close)) {
        if (!found && looks_like_part(b, bs, dstart))
            ps->msg->parts[idx].flags |= MW_FLAG_PART_OUTSIDE_BOUNDARIES;
        found = 1;
        if (in_part) {
            /* The line break before a delimiter belongs to the delimiter. */
            size_t ce = dstart;
            if (ce > child_start && b[ce - 1] == '\n') {
                ce--;
                if (ce > child_start && b[ce - 1] == '\r') ce--;
            } else if (ce > child_start && b[ce - 1] == '\r') {
                ce--;
            }
            if (!add_child(ps, idx, child_start, ce, child_default)) return 1;
        }
        if (close) {
            closed = 1;
            if (looks_like_part(b, dnext, be))
                ps->msg->parts[idx].flags |= MW_FLAG_PART_OUTSIDE_BOUNDARIES;
            break;
        }
        in_part = 1;
        child_start = dnext;
        pos = dnext;
    }
    if (!found) {
        ps->msg->parts[idx].flags |= MW_FLAG_BOUNDARY_NOT_FOUND;
        return 0;
    }
    if (!closed) {
        ps->msg->parts[idx].flags |= MW_FLAG_NO_CLOSING_BOUNDARY;
        if (in_part) add_child(ps, idx, child_start, be, child_default);
    }
    return 1;
}

static void parse_entity(parser *ps, size_t start, size_t end, int64_t parent, int64_t depth,
                         int64_t default_type) {
    const uint8_t *b = ps->buf;
    int64_t idx = add_part(ps, parent, depth);
    if (idx < 0) return;
    ps->msg->parts[idx].default_type = default_type;
    int limited = parse_headers(ps, idx, start, end);
    if (ps->nomem) return;

    mw_part *part = &ps->msg->parts[idx];
    const mw_header *ct = NULL, *cte = NULL, *cd = NULL;
    /* Every field is looked at (not only up to the first of each): a second
     * Content-Type is an evasion the scanners must know of. */
    for (int64_t i = 0; i < part->n_headers; i++) {
        const mw_header *h = &ps->msg->headers[part->first_header + i];
        const uint8_t *name = b + h->name_off;
        size_t nl = (size_t)h->name_len;
        /* Every name of interest starts "content-": one compare rejects the
         * other fields (Received, DKIM-Signature, ...). */
        if (nl < 12 || !ieq(name, 8, "content-")) continue;
        if (ieq(name, nl, "content-type")) {
            if (ct) part->flags |= MW_FLAG_DUPLICATE_CONTENT_TYPE;
            else ct = h;
        }
        else if (!cte && ieq(name, nl, "content-transfer-encoding"))
            cte = h;
        else if (!cd && ieq(name, nl, "content-disposition"))
            cd = h;
    }
    if (ct)
        parse_content_type(ps, part, (size_t)ct->value_off,
                           (size_t)ct->value_off + (size_t)ct->value_len);
    if (cte)
        part->cte = parse_cte(b, (size_t)cte->value_off,
                              (size_t)cte->value_off + (size_t)cte->value_len);
    if (ct || cd) param_spans(b, part, ct, cd);
    part->type_code = type_code(b, part);
    if (ps->has_nul && memchr(b + start, 0, (size_t)part->body_start - start))
        part->flags |= MW_FLAG_NUL_BYTES;

    const uint8_t *ty = b + part->type_off, *st = b + part->subtype_off;
    size_t tl = (size_t)part->type_len, sl = (size_t)part->subtype_len;
    int is_multi = ieq(ty, tl, "multipart");
    int is_msg = (tl == 0 && default_type == MW_DEFAULT_MESSAGE_RFC822) ||
                 (ieq(ty, tl, "message") && (ieq(st, sl, "rfc822") || ieq(st, sl, "global")));
    /* An encoded message/rfc822 is not allowed by RFC 2046 and cannot be
     * parsed in place; it stays a leaf and its decoded bytes get scanned. */
    if (is_msg && part->cte != MW_CTE_NONE && part->cte != MW_CTE_7BIT &&
        part->cte != MW_CTE_8BIT && part->cte != MW_CTE_BINARY)
        is_msg = 0;
    if (is_multi && part->boundary_len == 0) {
        part->flags |= MW_FLAG_MISSING_BOUNDARY;
        is_multi = 0;
    }
    if ((is_multi || is_msg) && !limited && depth + 1 > (int64_t)ps->lim.max_depth) {
        part->flags |= MW_FLAG_DEPTH_LIMIT;
        is_multi = is_msg = 0;
    }
    if (limited) is_multi = is_msg = 0;

    if (is_multi) {
        part->kind = MW_KIND_MULTIPART;
        if (split_multipart(ps, idx)) return;
        part = &ps->msg->parts[idx];
        part->kind = MW_KIND_LEAF;
    } else if (is_msg) {
        part->kind = MW_KIND_MESSAGE;
        add_child(ps, idx, (size_t)part->body_start, (size_t)part->body_end,
                  MW_DEFAULT_TEXT_PLAIN);
        return;
    }
    /* Leaf: checks that need the body bytes. */
    size_t bs = (size_t)part->body_start, be = (size_t)part->body_end;
    if (ps->has_nul && memchr(b + bs, 0, be - bs)) part->flags |= MW_FLAG_NUL_BYTES;
    if (part->cte == MW_CTE_BASE64 && mw_base64_junk(b + bs, be - bs))
        part->flags |= MW_FLAG_BAD_BASE64;
}

/* One pass over the whole message for the facts that need every byte:
 * line-break counts (LF, CR, CRLF pairs) and whether any NUL occurs.  It
 * used to be a memchr call per line plus separate NUL searches per part;
 * one block-wise pass costs a fraction of that on line-rich mail. */
typedef struct {
    size_t lf, cr, crlf;
    int nul;
} byte_stats;

#if defined(__SSE2__)
/* Sums the 16 byte counters of a vector (each < 256). */
static size_t hsum_u8(__m128i v) {
    __m128i s = _mm_sad_epu8(v, _mm_setzero_si128());
    return (size_t)_mm_cvtsi128_si32(s) + (size_t)_mm_cvtsi128_si32(_mm_srli_si128(s, 8));
}
#endif

#if MW_HAVE_AVX2
__attribute__((target("avx2"))) static size_t hsum_u8_256(__m256i v) {
    __m256i s = _mm256_sad_epu8(v, _mm256_setzero_si256());
    return (size_t)_mm256_extract_epi64(s, 0) + (size_t)_mm256_extract_epi64(s, 1) +
           (size_t)_mm256_extract_epi64(s, 2) + (size_t)_mm256_extract_epi64(s, 3);
}

/* The SSE2 loop below with 32-byte blocks; returns the offset reached. */
__attribute__((target("avx2"))) static size_t scan_avx2(const uint8_t *b, size_t len,
                                                        size_t i, byte_stats *st) {
    const __m256i vr = _mm256_set1_epi8('\r'), vn = _mm256_set1_epi8('\n');
    const __m256i vz = _mm256_setzero_si256();
    __m256i anyz = vz;
    while (len - i >= 32) {
        size_t blocks = (len - i) / 32;
        if (blocks > 255) blocks = 255;
        __m256i cn = vz, cc = vz, cp = vz;
        for (size_t k = 0; k < blocks; k++, i += 32) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(b + i));
            __m256i prev = _mm256_loadu_si256((const __m256i *)(const void *)(b + i - 1));
            __m256i isn = _mm256_cmpeq_epi8(x, vn);
            cn = _mm256_sub_epi8(cn, isn);
            cc = _mm256_sub_epi8(cc, _mm256_cmpeq_epi8(x, vr));
            cp = _mm256_sub_epi8(cp, _mm256_and_si256(isn, _mm256_cmpeq_epi8(prev, vr)));
            anyz = _mm256_or_si256(anyz, _mm256_cmpeq_epi8(x, vz));
        }
        st->lf += hsum_u8_256(cn);
        st->cr += hsum_u8_256(cc);
        st->crlf += hsum_u8_256(cp);
    }
    st->nul |= _mm256_movemask_epi8(anyz) != 0;
    return i;
}
#endif

static void scan_bytes(const uint8_t *b, size_t len, byte_stats *st) {
    size_t i = 0, lf = 0, cr = 0, crlf = 0;
    int nul = 0;
#if MW_HAVE_AVX2
    if (len > 1 && __builtin_cpu_supports("avx2")) {
        byte_stats v = {0, 0, 0, 0};
        i = scan_avx2(b, len, 1, &v);
        if (b[0] == '\n') v.lf++;
        else if (b[0] == '\r') v.cr++;
        else if (b[0] == 0) v.nul = 1;
        lf = v.lf;
        cr = v.cr;
        crlf = v.crlf;
        nul = v.nul;
    }
#endif
#if defined(__SSE2__)
    /* Counting by subtracting compare masks (-1 per hit) into byte counters,
     * summed every 255 blocks before they could wrap; CRLF pairs compare the
     * block loaded one byte earlier with CR.  The first block starts at 1 so
     * that earlier load stays inside the buffer. */
    const __m128i vr = _mm_set1_epi8('\r'), vn = _mm_set1_epi8('\n'), vz = _mm_setzero_si128();
    __m128i anyz = vz;
    if (i == 0 && len > 0) {
        if (b[0] == '\n') lf++;
        else if (b[0] == '\r') cr++;
        else if (b[0] == 0) nul = 1;
        i = 1;
    }
    while (len - i >= 16) {
        size_t blocks = (len - i) / 16;
        if (blocks > 255) blocks = 255;
        __m128i cn = vz, cc = vz, cp = vz;
        for (size_t k = 0; k < blocks; k++, i += 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(b + i));
            __m128i prev = _mm_loadu_si128((const __m128i *)(const void *)(b + i - 1));
            __m128i isn = _mm_cmpeq_epi8(x, vn);
            cn = _mm_sub_epi8(cn, isn);
            cc = _mm_sub_epi8(cc, _mm_cmpeq_epi8(x, vr));
            cp = _mm_sub_epi8(cp, _mm_and_si128(isn, _mm_cmpeq_epi8(prev, vr)));
            anyz = _mm_or_si128(anyz, _mm_cmpeq_epi8(x, vz));
        }
        lf += hsum_u8(cn);
        cr += hsum_u8(cc);
        crlf += hsum_u8(cp);
    }
    nul |= _mm_movemask_epi8(anyz) != 0;
#endif
    for (; i < len; i++) {
        uint8_t c = b[i];
        if (c == '\n') {
            lf++;
            if (i > 0 && b[i - 1] == '\r') crlf++;
        } else if (c == '\r') {
            cr++;
        } else if (c == 0) {
            nul = 1;
        }
    }
    st->lf = lf;
    st->cr = cr;
    st->crlf = crlf;
    st->nul = nul;
}

/* More than one line-ending convention in one message is a classic way to
 * make two parsers disagree about structure. */
static int mixed_line_endings(const byte_stats *st) {
    int crlf = st->crlf > 0, lf = st->lf > st->crlf, cr = st->cr > st->crlf;
    return crlf + lf + cr > 1;
}

void mw_limits_default(mw_limits *limits) {
    limits->max_depth = MW_DEFAULT_MAX_DEPTH;
    limits->max_parts = MW_DEFAULT_MAX_PARTS;
    limits->max_header_bytes = MW_DEFAULT_MAX_HEADER_BYTES;
}

/* Parses into m, whose arrays may start in inline storage (the tables are
 * then never freed here).  Returns 0, or 1 when out of memory. */
static int parse_into(const uint8_t *buf, size_t len, const mw_limits *limits, mw_message *m) {
    parser ps;
    memset(&ps, 0, sizeof ps);
    ps.buf = buf;
    ps.len = len;
    if (limits)
        ps.lim = *limits;
    else
        mw_limits_default(&ps.lim);
    if (ps.lim.max_depth > MW_HARD_MAX_DEPTH) ps.lim.max_depth = MW_HARD_MAX_DEPTH;
    if (ps.lim.max_parts < 1) ps.lim.max_parts = 1; /* the root always exists */
    ps.msg = m;
    ps.parts_inline = m->parts;
    ps.headers_inline = m->headers;

    byte_stats st;
    scan_bytes(buf, len, &st);
    ps.has_nul = st.nul;
    parse_entity(&ps, 0, len, -1, 0, MW_DEFAULT_TEXT_PLAIN);
    if (ps.nomem) return 1;
    uint32_t flags = 0;
    for (size_t i = 0; i < m->n_parts; i++) flags |= (uint32_t)m->parts[i].flags;
    if (st.nul) flags |= MW_FLAG_NUL_BYTES;
    if (mixed_line_endings(&st)) {
        flags |= MW_FLAG_BARE_CR_OR_LF_MIX;
        m->parts[0].flags |= MW_FLAG_BARE_CR_OR_LF_MIX;
    }
    m->flags = flags;
    return 0;
}

mw_status mw_parse(const uint8_t *buf, size_t len, const mw_limits *limits, mw_message **out) {
    if (!out || (!buf && len)) return MW_ERR_ARG;
    *out = NULL;
    static const uint8_t empty[1] = {0};
    if (!buf) buf = empty;
    mw_message *m = calloc(1, sizeof(mw_message));
    if (!m) return MW_ERR_NOMEM;
    if (parse_into(buf, len, limits, m)) {
        mw_message_free(m);
        return MW_ERR_NOMEM;
    }
    *out = m;
    return MW_OK;
}

void mw_message_free(mw_message *msg) {
    if (!msg) return;
    free(msg->parts);
    free(msg->headers);
    free(msg);
}

int64_t mw_parse_table(const uint8_t *buf, size_t len, const mw_limits *limits, int64_t *out,
                       size_t cap) {
    if (!out && cap) return -MW_ERR_ARG;
    if (!buf && len) return -MW_ERR_ARG;
    static const uint8_t empty[1] = {0};
    if (!buf) buf = empty;
    /* Tables on the stack for the common message (a malloc, two reallocs
     * and three frees per message were a few percent of small-mail time);
     * bigger structures move to the heap as they grow. */
    mw_part parts[16];
    mw_header headers[64];
    mw_message msg = {parts, 0, 16, headers, 0, 64, 0}, *m = &msg;
    if (parse_into(buf, len, limits, m)) {
        if (m->parts != parts) free(m->parts);
        if (m->headers != headers) free(m->headers);
        return -(int64_t)MW_ERR_NOMEM;
    }
    size_t pf = sizeof(mw_part) / sizeof(int64_t), hf = sizeof(mw_header) / sizeof(int64_t);
    size_t need = 3 + m->n_parts * pf + m->n_headers * hf; /* tables are bounded by len */
    if (cap >= 3) {
        out[0] = (int64_t)m->flags;
        out[1] = (int64_t)m->n_parts;
        out[2] = (int64_t)m->n_headers;
    }
    if (need <= cap) {
        memcpy(out + 3, m->parts, m->n_parts * sizeof(mw_part));
        if (m->n_headers) /* headers is NULL when there are none */
            memcpy(out + 3 + m->n_parts * pf, m->headers, m->n_headers * sizeof(mw_header));
    }
    if (m->parts != parts) free(m->parts);
    if (m->headers != headers) free(m->headers);
    return (int64_t)need;
}
