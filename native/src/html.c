/*
 * HTML to text, written by hand because it runs on every HTML part of every
 * message (the hot path; a general HTML5 tree builder would cost far more
 * and give nothing a scanner needs).  It is a single forward pass with no
 * recursion and no tree: tags only switch a few states (inside <pre>, block
 * boundaries), raw-text elements are skipped to their end tag, and broken
 * markup degrades to text the way browsers treat it.  Every write is bounded
 * by the caller's capacity.
 */
#include <string.h>

#include "content_internal.h"
#include "html_entities.h"
#include "mw_content.h"

size_t mw_html_text_max_len(size_t len) {
    /* Growth comes only from references (at most 1.2x, &nGt;) and U+FFFD
     * for a 3-byte "&#0"; doubling plus a margin is a safe bound. */
    return len > (SIZE_MAX - 16) / 2 ? SIZE_MAX : 2 * len + 16;
}

typedef struct {
    uint8_t *dst;
    size_t cap, n;
    int pending_space; /* collapsed whitespace waiting for the next text */
    int nl;            /* line breaks just written (0 = inside a line) */
    int started;       /* any text written yet: no leading breaks */
} writer;

static void put(writer *w, uint8_t c) {
    if (w->n < w->cap) w->dst[w->n++] = c;
}

static void text_byte(writer *w, uint8_t c) {
    if (w->pending_space) {
        if (w->started && w->nl == 0) put(w, ' ');
        w->pending_space = 0;
    }
    put(w, c);
    w->nl = 0;
    w->started = 1;
}

/* A block boundary ends the current line; <br> (hard) may also leave one
 * empty line, never more. */
static void line_break(writer *w, int hard) {
    w->pending_space = 0;
    if (!w->started || w->nl >= (hard ? 2 : 1)) return;
    put(w, '\n');
    w->nl++;
}

static int is_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }
static int is_alpha(uint8_t c) { return (c | 32) >= 'a' && (c | 32) <= 'z'; }
static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static int is_alnum(uint8_t c) { return is_alpha(c) || is_digit(c); }
static uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

/* Length of an invisible format character at s (soft hyphen, zero-width
 * space/non-joiner/joiner, word joiner, BOM), else 0.  Spammers put them
 * inside words to break filters; a reader never sees them. */
static size_t invisible_len(const uint8_t *s, size_t n) {
    if (n >= 2 && s[0] == 0xC2 && s[1] == 0xAD) return 2;
    if (n >= 3 && s[0] == 0xE2 && s[1] == 0x80 && s[2] >= 0x8B && s[2] <= 0x8D) return 3;
    if (n >= 3 && s[0] == 0xE2 && s[1] == 0x81 && s[2] == 0xA0) return 3;
    if (n >= 3 && s[0] == 0xEF && s[1] == 0xBB && s[2] == 0xBF) return 3;
    return 0;
}

/* Writes a run of document text (or decoded reference) to w. */
static void emit_text(writer *w, const uint8_t *s, size_t n, int pre) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            if (is_space(c)) {
                if (!pre) {
                    w->pending_space = 1;
                } else if (c == '\n') {
                    put(w, '\n');
                    w->nl++;
                    w->started = 1;
                    w->pending_space = 0;
                } else if (c != '\r') {
                    text_byte(w, c);
                }
            } else if (c != 0) {
                text_byte(w, c);
            }
            i++;
            continue;
        }
        size_t inv = invisible_len(s + i, n - i);
        if (inv) {
            i += inv;
            continue;
        }
        if (c == 0xC2 && i + 1 < n && s[i + 1] == 0xA0) { /* no-break space */
            text_byte(w, ' ');
            i += 2;
            continue;
        }
        text_byte(w, c);
        i++;
    }
}

static int entity_cmp(const uint8_t *a, size_t n, const char *b) {
    for (size_t i = 0; i < n; i++) {
        uint8_t bc = (uint8_t)b[i];
        if (bc == 0) return 1;
        if (a[i] != bc) return a[i] < bc ? -1 : 1;
    }
    return b[n] == 0 ? 0 : -1;
}

static const char *entity_lookup(const uint8_t *name, size_t n) {
    size_t lo = 0, hi = MW_N_ENTITIES;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = entity_cmp(name, n, MW_ENTITIES[mid].name);
        if (c == 0) return MW_ENTITIES[mid].utf8;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static size_t utf8_encode(uint32_t cp, uint8_t *o) {
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (cp >> 18));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* HTML maps numeric references in 0x80..0x9F to windows-1252 (what the
 * author meant); 0 keeps the C1 control. */
static const uint16_t C1_REMAP[32] = {
    0x20AC, 0,      0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0,      0x017D, 0,      0,      0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0,      0x017E, 0x0178};

/* Decodes the character reference at s[i] == '&'.  Returns the index after
 * it and stores its UTF-8 in out (*outn bytes, at most 8), or returns i + 1
 * with *outn = 0 when it is a literal '&'. */
static size_t char_ref(const uint8_t *s, size_t len, size_t i, uint8_t *out, size_t *outn,
                       int in_attr) {
    *outn = 0;
    size_t p = i + 1;
    if (p < len && s[p] == '#') {
        p++;
        int hex = p < len && (s[p] | 32) == 'x';
        if (hex) p++;
        size_t d0 = p;
        uint32_t cp = 0;
        while (p < len) {
            uint8_t c = s[p];
            uint32_t v;
            if (is_digit(c))
                v = (uint32_t)(c - '0');
            else if (hex && (c | 32) >= 'a' && (c | 32) <= 'f')
                v = (uint32_t)((c | 32) - 'a' + 10);
            else
                break;
            /* Saturate instead of overflowing: any huge value is invalid. */
            cp = cp > 0x10FFFF ? cp : cp * (hex ? 16 : 10) + v;
            p++;
        }
        if (p == d0) return i + 1;
        if (p < len && s[p] == ';') p++;
        if (cp >= 0x80 && cp <= 0x9F && C1_REMAP[cp - 0x80]) cp = C1_REMAP[cp - 0x80];
        if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
        *outn = utf8_encode(cp, out);
        return p;
    }
    size_t k = 0;
    while (p + k < len && k < MW_ENTITY_MAX_NAME && is_alnum(s[p + k])) k++;
    if (k == 0) return i + 1;
    if (p + k < len && s[p + k] == ';') {
        uint8_t name[MW_ENTITY_MAX_NAME + 1];
        memcpy(name, s + p, k);
        name[k] = ';';
        const char *u = entity_lookup(name, k + 1);
        if (u) {
            size_t n = strlen(u);
            memcpy(out, u, n);
            *outn = n;
            return p + k + 1;
        }
    }
    /* Legacy references without ';' ("&amp", "&copy2024"): longest known
     * prefix; in attributes not when followed by [A-Za-z0-9=] (HTML rule,
     * so "?a=1&copy=2" stays a query). */
    for (size_t l = k < 6 ? k : 6; l >= 2; l--) {
        const char *u = entity_lookup(s + p, l);
        if (!u) continue;
        if (in_attr && p + l < len && (is_alnum(s[p + l]) || s[p + l] == '=')) return i + 1;
        size_t n = strlen(u);
        memcpy(out, u, n);
        *outn = n;
        return p + l;
    }
    return i + 1;
}

size_t mw_html_decode_attr(const uint8_t *v, size_t n, uint8_t *dst, size_t cap, int *had) {
    size_t o = 0, i = 0;
    *had = 0;
    while (i < n && o + 8 <= cap) {
        if (v[i] != '&') {
            dst[o++] = v[i++];
            continue;
        }
        uint8_t r[8];
        size_t rn;
        size_t next = char_ref(v, n, i, r, &rn, 1);
        if (rn == 0) {
            dst[o++] = '&';
        } else {
            memcpy(dst + o, r, rn);
            o += rn;
            *had = 1;
        }
        i = next;
    }
    return o;
}

static int name_in(const char *name, const char *const *set) {
    for (; *set; set++)
        if (strcmp(name, *set) == 0) return 1;
    return 0;
}

/* Elements whose start and end end a line when rendered. */
static const char *const BLOCKS[] = {
    "address", "article", "aside",   "blockquote", "body",    "caption", "center", "dd",
    "details", "dialog",  "dir",     "div",        "dl",      "dt",      "fieldset",
    "figcaption", "figure", "footer", "form",      "frameset", "h1",     "h2",     "h3",
    "h4",      "h5",      "h6",      "head",       "header",  "hr",      "html",   "legend",
    "li",      "main",    "menu",    "nav",        "ol",      "option",  "p",      "pre",
    "section", "summary", "table",   "tbody",      "tfoot",   "thead",   "tr",     "ul",
    NULL};
/* Elements whose content is never shown: skipped up to their end tag. */
static const char *const HIDDEN[] = {"script", "style", "title", "template", NULL};

/* Case-insensitive search for "</name" from p; returns its offset or len. */
static size_t find_end_tag(const uint8_t *s, size_t len, size_t p, const char *name) {
    size_t nl = strlen(name);
    while (p < len) {
        const uint8_t *lt = memchr(s + p, '<', len - p);
        if (!lt) return len;
        size_t q = (size_t)(lt - s);
        if (q + 2 + nl <= len && s[q + 1] == '/') {
            size_t j = 0;
            while (j < nl && lower(s[q + 2 + j]) == (uint8_t)name[j]) j++;
            if (j == nl && (q + 2 + nl == len || !is_alnum(s[q + 2 + nl]))) return q;
        }
        p = q + 1;
    }
    return len;
}

static size_t skip_past(const uint8_t *s, size_t len, size_t p, uint8_t c) {
    const uint8_t *hit = p < len ? memchr(s + p, c, len - p) : NULL;
    return hit ? (size_t)(hit - s) + 1 : len;
}

/* Reports one attribute of a start tag to the URL collector. */
static void link_attr(mw_url_ctx *u, const char *tag, const uint8_t *an, size_t anl,
                      const uint8_t *v, size_t vn, int *refresh, const uint8_t **content,
                      size_t *content_n) {
    char a[16];
    if (anl >= sizeof a) return;
    for (size_t i = 0; i < anl; i++) a[i] = (char)lower(an[i]);
    a[anl] = 0;
    int source = -1;
    if (strcmp(a, "href") == 0)
        source = MW_URL_SRC_HREF;
    else if (strcmp(a, "src") == 0 || strcmp(a, "background") == 0 ||
             strcmp(a, "poster") == 0 || strcmp(a, "data") == 0)
        source = MW_URL_SRC_SRC;
    else if (strcmp(a, "action") == 0 || strcmp(a, "formaction") == 0)
        source = MW_URL_SRC_ACTION;
    if (strcmp(tag, "meta") == 0) {
        if (strcmp(a, "http-equiv") == 0 && vn == 7) {
            static const char r[] = "refresh";
            size_t j = 0;
            while (j < 7 && lower(v[j]) == (uint8_t)r[j]) j++;
            if (j == 7) *refresh = 1;
        } else if (strcmp(a, "content") == 0) {
            *content = v;
            *content_n = vn;
        }
    }
    if (source < 0) return;
    /* URLs are cut at MW_URL_DEFAULT_MAX_LEN-ish lengths anyway; decoding a
     * bounded prefix keeps the scratch buffer on the stack. */
    enum { MAXV = 8192 };
    uint8_t buf[2 * MAXV + 16];
    int had = 0;
    size_t n = mw_html_decode_attr(v, vn < MAXV ? vn : MAXV, buf, sizeof buf, &had);
    mw_url_from_attr(u, buf, n, source, had ? MW_URL_ENTITY : 0);
}

/* Handles the markup starting at s[i] == '<'; returns where text resumes. */
static size_t markup(const uint8_t *s, size_t len, size_t i, writer *w, int *pre,
                     mw_url_ctx *u) {
    size_t p = i + 1;
    if (p >= len) {
        text_byte(w, '<');
        return len;
    }
    if (s[p] == '!') {
        if (p + 2 < len && s[p + 1] == '-' && s[p + 2] == '-') {
            size_t q = p + 3;
            while (q < len) {
                const uint8_t *d = memchr(s + q, '-', len - q);
                if (!d) return len;
                q = (size_t)(d - s);
                if (q + 2 < len && s[q + 1] == '-' && s[q + 2] == '>') return q + 3;
                q++;
            }
            return len;
        }
        return skip_past(s, len, p, '>'); /* doctype, CDATA, bogus comment */
    }
    if (s[p] == '?') return skip_past(s, len, p, '>');
    int end_tag = s[p] == '/';
    if (end_tag) p++;
    if (p >= len || !is_alpha(s[p])) {
        if (end_tag) return skip_past(s, len, p, '>'); /* "</ >" is a bogus comment */
        text_byte(w, '<');
        return i + 1;
    }
    char name[16];
    size_t nl = 0;
    int long_name = 0;
    while (p < len && !is_space(s[p]) && s[p] != '/' && s[p] != '>') {
        if (nl < sizeof name - 1)
            name[nl++] = (char)lower(s[p]);
        else
            long_name = 1;
        p++;
    }
    name[nl] = 0;
    if (long_name) name[0] = 0; /* no known element is that long */

    int refresh = 0;
    const uint8_t *content = NULL;
    size_t content_n = 0;
    /* Attributes: name[=value], value quoted or not, up to '>'. */
    while (p < len && s[p] != '>') {
        if (is_space(s[p]) || s[p] == '/') {
            p++;
            continue;
        }
        size_t an = p;
        while (p < len && !is_space(s[p]) && s[p] != '/' && s[p] != '>' && s[p] != '=') p++;
        if (p == an) p++; /* a lone '=' : skip it */
        size_t anl = p - an;
        while (p < len && is_space(s[p])) p++;
        if (p >= len || s[p] != '=') continue;
        p++;
        while (p < len && is_space(s[p])) p++;
        size_t vs, vn;
        if (p < len && (s[p] == '"' || s[p] == '\'')) {
            uint8_t q = s[p++];
            vs = p;
            const uint8_t *e = memchr(s + p, q, len - p);
            p = e ? (size_t)(e - s) : len;
            vn = p - vs;
            if (p < len) p++;
        } else {
            vs = p;
            while (p < len && !is_space(s[p]) && s[p] != '>') p++;
            vn = p - vs;
        }
        if (u && !end_tag && anl) link_attr(u, name, s + an, anl, s + vs, vn, &refresh, &content, &content_n);
    }
    if (p < len) p++; /* '>' */
    if (u && refresh && content) mw_urls_in_text(u, content, content_n, MW_URL_SRC_META);

    if (!end_tag && name_in(name, HIDDEN)) {
        size_t q = find_end_tag(s, len, p, name);
        return q < len ? skip_past(s, len, q, '>') : len;
    }
    if (strcmp(name, "br") == 0) {
        line_break(w, 1);
    } else if (strcmp(name, "td") == 0 || strcmp(name, "th") == 0) {
        w->pending_space = 1; /* cells on one row stay on one line */
    } else if (name_in(name, BLOCKS)) {
        line_break(w, 0);
        if (strcmp(name, "pre") == 0) {
            if (end_tag && *pre > 0) (*pre)--;
            if (!end_tag && *pre < 64) (*pre)++;
        }
    }
    return p;
}

size_t mw_html_walk(const uint8_t *src, size_t len, uint8_t *dst, size_t cap, mw_url_ctx *u) {
    writer w = {dst, cap, 0, 0, 0, 0};
    int pre = 0;
    size_t i = 0;
    while (i < len) {
        uint8_t c = src[i];
        if (c == '<') {
            i = markup(src, len, i, &w, &pre, u);
        } else if (c == '&') {
            uint8_t r[8];
            size_t rn;
            size_t next = char_ref(src, len, i, r, &rn, 0);
            if (rn)
                emit_text(&w, r, rn, pre);
            else
                text_byte(&w, '&');
            i = next;
        } else {
            size_t j = i + 1;
            while (j < len && src[j] != '<' && src[j] != '&') j++;
            emit_text(&w, src + i, j - i, pre);
            i = j;
        }
    }
    /* No trailing line breaks. */
    while (w.n > 0 && w.n <= w.cap && w.nl > 0 && w.dst[w.n - 1] == '\n') {
        w.n--;
        w.nl--;
    }
    return w.n;
}

size_t mw_html_to_text(const uint8_t *src, size_t len, uint8_t *dst, size_t cap) {
    if (!src || !dst) return 0;
    return mw_html_walk(src, len, dst, cap, NULL);
}
