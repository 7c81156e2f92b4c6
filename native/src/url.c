/*
 * URL extraction and normalisation.  Hot path (every text part), so C.
 *
 * Text is cut into tokens at whitespace and quote/angle characters; inside a
 * token every "scheme:/" anchor starts a URL that runs to the token's end
 * (so a URL nested in another's query is found too), and a token without
 * one may be "www.x" or a bare domain with a well-known TLD.  Normalising
 * undoes what spammers do to slip links past filters and records each trick
 * as a flag.  The cost is linear in the input plus at most max_urls *
 * max_url_len bytes of output, whatever the input.
 */
#include <stdlib.h>
#include <string.h>

#include "content_internal.h"
#include "mailwarden.h"
#include "mw_content.h"

struct mw_url_ctx {
    mw_url_list *list;
    uint32_t max_urls;
    uint32_t max_len;
    int nomem;
};

static int is_alpha(uint8_t c) { return (c | 32) >= 'a' && (c | 32) <= 'z'; }
static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static int is_alnum(uint8_t c) { return is_alpha(c) || is_digit(c); }
static uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }
static int hexval(uint8_t c) {
    if (is_digit(c)) return c - '0';
    if ((c | 32) >= 'a' && (c | 32) <= 'f') return (c | 32) - 'a' + 10;
    return -1;
}

static int ieq(const uint8_t *s, size_t n, const char *lit) {
    size_t m = strlen(lit);
    if (n != m) return 0;
    for (size_t i = 0; i < n; i++)
        if (lower(s[i]) != (uint8_t)lit[i]) return 0;
    return 1;
}

/* ---- output ------------------------------------------------------------- */

static int reserve(mw_url_ctx *u, size_t extra) {
    mw_url_list *L = u->list;
    if (L->arena_cap - L->arena_len >= extra) return 1;
    size_t nc = L->arena_cap ? L->arena_cap : 4096;
    while (nc - L->arena_len < extra) {
        if (nc > SIZE_MAX / 2) {
            u->nomem = 1;
            return 0;
        }
        nc *= 2;
    }
    uint8_t *na = realloc(L->arena, nc);
    if (!na) {
        u->nomem = 1;
        return 0;
    }
    L->arena = na;
    L->arena_cap = nc;
    return 1;
}

typedef struct {
    uint8_t *buf;
    size_t n, cap;
    int full;
} out_t;

static void app(out_t *o, uint8_t c) {
    if (o->n < o->cap)
        o->buf[o->n++] = c;
    else
        o->full = 1;
}

static void app_str(out_t *o, const char *s) {
    while (*s) app(o, (uint8_t)*s++);
}

static void app_pct(out_t *o, uint8_t c) {
    static const char hx[] = "0123456789ABCDEF";
    if (o->n + 3 > o->cap) {
        o->full = 1;
        return;
    }
    app(o, '%');
    app(o, (uint8_t)hx[c >> 4]);
    app(o, (uint8_t)hx[c & 15]);
}

/* ---- host helpers ------------------------------------------------------- */

/* Length of a defanged dot at s ("[.]", "(.)", "{.}", "[dot]", "(dot)"). */
static size_t defanged_dot(const uint8_t *s, size_t n) {
    if (n < 3 || (s[0] != '[' && s[0] != '(' && s[0] != '{')) return 0;
    uint8_t close = s[0] == '[' ? ']' : s[0] == '(' ? ')' : '}';
    if (s[1] == '.' && s[2] == close) return 3;
    if (n >= 5 && ieq(s + 1, 3, "dot") && s[4] == close) return 5;
    return 0;
}

static size_t invisible_len(const uint8_t *s, size_t n) {
    if (n >= 2 && s[0] == 0xC2 && s[1] == 0xAD) return 2;
    if (n >= 3 && s[0] == 0xE2 && s[1] == 0x80 && s[2] >= 0x8B && s[2] <= 0x8D) return 3;
    if (n >= 3 && s[0] == 0xE2 && s[1] == 0x81 && s[2] == 0xA0) return 3;
    if (n >= 3 && s[0] == 0xEF && s[1] == 0xBB && s[2] == 0xBF) return 3;
    return 0;
}

/* WHATWG IPv4 parsing: 1 to 4 dot-separated numbers, each decimal, 0x-hex
 * or 0-octal, the last filling the remaining bytes.  Returns 1 and the
 * address when h is such a host. */
static int parse_ipv4(const uint8_t *h, size_t n, uint32_t *addr) {
    uint64_t parts[4];
    size_t np = 0, i = 0;
    if (n == 0) return 0;
    while (i <= n) {
        size_t s = i;
        while (i < n && h[i] != '.') i++;
        if (np == 4) return 0;
        size_t e = i, base = 10;
        if (e == s) return 0;
        if (e - s >= 2 && h[s] == '0' && (h[s + 1] | 32) == 'x') {
            base = 16;
            s += 2;
        } else if (e - s >= 2 && h[s] == '0') {
            base = 8;
            s += 1;
        }
        uint64_t v = 0;
        for (size_t k = s; k < e; k++) {
            int d = hexval(h[k]);
            if (d < 0 || (size_t)d >= base) return 0;
            v = v * base + (uint64_t)d;
            if (v > 0xFFFFFFFFull) return 0;
        }
        parts[np++] = v;
        i++; /* skip '.' (or step past the end) */
    }
    uint64_t a = 0;
    for (size_t k = 0; k + 1 < np; k++) {
        if (parts[k] > 255) return 0;
        a |= parts[k] << (8 * (3 - k));
    }
    uint64_t last = parts[np - 1];
    if (last >= (1ull << (8 * (5 - np)))) return 0;
    *addr = (uint32_t)(a | last);
    return 1;
}

/* ---- one URL ------------------------------------------------------------ */

static int valid_host_byte(uint8_t c) {
    if (c <= 0x20 || c == 0x7F) return 0;
    return strchr("<>\"{}|\\^`%@[]/?#", c) == NULL;
}

/* Appends scheme "://" + normalised rest of p[0..n) (what follows the
 * scheme's ':') as one URL.  Returns 1 when a URL was recorded. */
static int emit_url(mw_url_ctx *u, const char *scheme, const uint8_t *p, size_t n,
                    uint32_t flags, int source) {
    mw_url_list *L = u->list;
    if (u->nomem) return 0;
    if (L->n_urls >= u->max_urls) {
        L->flags |= MW_URLS_TRUNCATED;
        return 0;
    }
    if (L->n_urls == L->cap_urls) {
        size_t nc = L->cap_urls ? L->cap_urls * 2 : 16;
        mw_url *nu = realloc(L->urls, nc * sizeof *nu);
        if (!nu) {
            u->nomem = 1;
            return 0;
        }
        L->urls = nu;
        L->cap_urls = nc;
    }
    if (!reserve(u, (size_t)u->max_len + 16)) return 0;
    out_t o = {L->arena + L->arena_len, 0, u->max_len, 0};
    app_str(&o, scheme);
    app_str(&o, "://");

    size_t i = 0;
    while (i < n && (p[i] == '/' || p[i] == '\\')) {
        if (p[i] == '\\') flags |= MW_URL_BACKSLASH;
        i++;
    }
    size_t a = i;
    while (i < n && p[i] != '/' && p[i] != '\\' && p[i] != '?' && p[i] != '#') i++;
    size_t aend = i;
    /* Userinfo ends at the last '@' of the authority (as browsers parse
     * it): "http://www.bank.example@evil.example/" goes to evil.example. */
    for (size_t k = aend; k > a; k--)
        if (p[k - 1] == '@') {
            flags |= MW_URL_USERINFO;
            a = k;
            break;
        }

    size_t host_off = o.n, k = a;
    if (k < aend && p[k] == '[') { /* IPv6 literal */
        const uint8_t *rb = memchr(p + k, ']', aend - k);
        if (!rb) return 0;
        size_t e = (size_t)(rb - p) + 1;
        for (; k < e; k++) {
            uint8_t c = lower(p[k]);
            if (!(hexval(c) >= 0 || c == ':' || c == '.' || c == '[' || c == ']')) return 0;
            app(&o, c);
        }
        flags |= MW_URL_IP_HOST;
    } else {
        while (k < aend && p[k] != ':') {
            size_t d = defanged_dot(p + k, aend - k);
            if (d) {
                flags |= MW_URL_DEFANGED_DOT;
                app(&o, '.');
                k += d;
                continue;
            }
            size_t inv = invisible_len(p + k, aend - k);
            if (inv) {
                flags |= MW_URL_INVISIBLE;
                k += inv;
                continue;
            }
            uint8_t c = p[k];
            if (c == '%' && k + 2 < aend && hexval(p[k + 1]) >= 0 && hexval(p[k + 2]) >= 0) {
                c = (uint8_t)(hexval(p[k + 1]) * 16 + hexval(p[k + 2]));
                flags |= MW_URL_PERCENT_HOST;
                k += 3;
            } else {
                k++;
            }
            c = lower(c);
            if (!valid_host_byte(c)) return 0;
            if (c >= 0x80) flags |= MW_URL_NON_ASCII_HOST;
            app(&o, c);
        }
        while (o.n > host_off && o.buf[o.n - 1] == '.') o.n--;
        uint32_t ip;
        if (o.n > host_off && parse_ipv4(o.buf + host_off, o.n - host_off, &ip)) {
            char dotted[16];
            int dn = 0;
            for (int s = 24; s >= 0; s -= 8) {
                unsigned v = (ip >> s) & 255u;
                if (v >= 100) dotted[dn++] = (char)('0' + v / 100);
                if (v >= 10) dotted[dn++] = (char)('0' + v / 10 % 10);
                dotted[dn++] = (char)('0' + v % 10);
                if (s) dotted[dn++] = '.';
            }
            dotted[dn] = 0;
            if ((size_t)dn != o.n - host_off || memcmp(dotted, o.buf + host_off, (size_t)dn) != 0)
                flags |= MW_URL_NUMERIC_HOST;
            flags |= MW_URL_IP_HOST;
            o.n = host_off;
            app_str(&o, dotted);
        }
    }
    size_t host_len = o.n - host_off;
    if (host_len == 0 || o.full) return 0;
    if (k < aend && p[k] == ':') {
        size_t ps = ++k;
        while (k < aend && is_digit(p[k])) k++;
        if (k > ps && k - ps <= 5) {
            app(&o, ':');
            for (size_t q = ps; q < k; q++) app(&o, p[q]);
        }
    }
    if (i >= n || (p[i] != '/' && p[i] != '\\')) app(&o, '/');
    int in_query = 0;
    for (; i < n && !o.full; i++) {
        uint8_t c = p[i];
        if (c == '?' || c == '#') in_query = 1;
        if (c == '\\' && !in_query) {
            flags |= MW_URL_BACKSLASH;
            c = '/';
        }
        if (c <= 0x20 || c >= 0x7F || c == '"' || c == '<' || c == '>' || c == '`')
            app_pct(&o, c);
        else
            app(&o, c);
    }
    if (o.full) {
        flags |= MW_URL_TRUNCATED;
        /* Never end inside a %XX escape. */
        if (o.n >= 1 && o.buf[o.n - 1] == '%') o.n -= 1;
        else if (o.n >= 2 && o.buf[o.n - 2] == '%') o.n -= 2;
    }
    mw_url *r = &L->urls[L->n_urls++];
    r->off = L->arena_len;
    r->len = o.n;
    r->host_off = host_off;
    r->host_len = host_len;
    r->flags = flags;
    r->source = (uint64_t)source;
    L->arena_len += o.n;
    return 1;
}

/* Scheme ending at s + n (the letters before ':').  Returns the canonical
 * scheme and sets *len to how many bytes it spans, or NULL.  Obfuscated
 * forms are hxxp, hXXp, h**p, h__p, ttp (and their s variants). */
static const char *scheme_before(const uint8_t *s, size_t n, size_t *len, uint32_t *flags) {
    static const struct {
        const char *name, *canon;
        int obf;
    } S[] = {{"https", "https", 0}, {"http", "http", 0},   {"ftp", "ftp", 0},
             {"hxxps", "https", 1}, {"hxxp", "http", 1},   {"h**ps", "https", 1},
             {"h**p", "http", 1},   {"hxtps", "https", 1}, {"hxtp", "http", 1},
             {"htxps", "https", 1}, {"htxp", "http", 1},   {"h__ps", "https", 1},
             {"h__p", "http", 1},   {"ttps", "https", 1},  {"ttp", "http", 1},
             {"fxp", "ftp", 1}};
    for (size_t i = 0; i < sizeof S / sizeof *S; i++) {
        size_t m = strlen(S[i].name);
        if (m > n || !ieq(s + n - m, m, S[i].name)) continue;
        /* The scheme must start the word ("xhttp:" is not http). */
        if (m < n && is_alnum(s[n - m - 1])) continue;
        *len = m;
        if (S[i].obf) *flags |= MW_URL_OBFUSCATED_SCHEME;
        return S[i].canon;
    }
    return NULL;
}

/* ---- text --------------------------------------------------------------- */

static int is_delim(uint8_t c) {
    return c <= 0x20 || c == 0x7F || c == '<' || c == '>' || c == '"' || c == '\'' || c == '`';
}

/* Bracket counts of a span, kept up to date as the URL start moves right
 * through a token so that trimming stays linear in the token. */
typedef struct {
    size_t open_p, close_p, open_b, close_b;
} brackets;

static void count_brackets(brackets *b, const uint8_t *t, size_t from, size_t to, int sign) {
    for (size_t i = from; i < to; i++) {
        size_t d = sign > 0 ? 1 : (size_t)-1;
        if (t[i] == '(') b->open_p += d;
        else if (t[i] == ')') b->close_p += d;
        else if (t[i] == '[') b->open_b += d;
        else if (t[i] == ']') b->close_b += d;
    }
}

/* Where a URL starting at t[start] in token t[0..m) really ends: trailing
 * punctuation belongs to the sentence, and a closing bracket only to the URL
 * when it is unbalanced within the URL.  At most 64 trailing bytes are
 * looked at, so each call is O(1). */
static size_t trim_end(const uint8_t *t, size_t start, size_t m, brackets bc) {
    size_t open_p = bc.open_p, close_p = bc.close_p, open_b = bc.open_b, close_b = bc.close_b;
    size_t e = m, stop = m - start > 64 ? m - 64 : start;
    while (e > stop) {
        uint8_t c = t[e - 1];
        if (c && strchr(".,;:!?*|", c)) {
            e--;
        } else if (c == ')' && close_p > open_p) {
            close_p--;
            e--;
        } else if (c == ']' && close_b > open_b) {
            close_b--;
            e--;
        } else {
            break;
        }
    }
    return e;
}

/* Common TLDs that are not also common file extensions or sentence
 * fragments ("script.pl", "notes.md", "end.It"): a bare "name.tld" is
 * taken as a link only for these, which keeps false positives rare. */
static const char *const TLDS[] = {
    "com", "net", "org", "info", "biz", "edu", "gov", "mil", "int", "io", "co", "me", "tv",
    "cc", "ws", "us", "uk", "de", "fr", "it", "es", "nl", "be", "ch", "at", "se", "no",
    "dk", "fi", "ie", "pt", "gr", "cz", "sk", "hu", "ro", "bg", "ru", "su", "ua", "by", "kz",
    "cn", "jp", "kr", "tw", "hk", "sg", "in", "id", "my", "th", "vn", "ph", "au", "nz", "ca",
    "mx", "br", "ar", "cl", "za", "ng", "ke", "tr", "ir", "il", "ae", "sa", "eu", "asia",
    "top", "xyz", "site", "online", "club", "shop", "store", "live", "link", "click", "work",
    "app", "dev", "ly", "gl", "tk", "ml", "ga", "cf", "gq", "icu", "buzz", "cyou", "rest",
    "fun", "space", "website", "tech", "pw", "win", "bid", "loan", "men", "date", NULL};

static int known_tld(const uint8_t *s, size_t n) {
    if (n < 2 || n > 7) return 0;
    int all_lower = 1, all_upper = 1;
    for (size_t i = 0; i < n; i++) {
        if (!is_alpha(s[i])) return 0;
        if (s[i] >= 'a') all_upper = 0;
        else all_lower = 0;
    }
    /* "end.It was" is a missing space, not a link. */
    if (!all_lower && !all_upper) return 0;
    for (const char *const *t = TLDS; *t; t++)
        if (ieq(s, n, *t)) return 1;
    return 0;
}

/* Length of a plausible bare host at t (labels of [A-Za-z0-9-_], dots
 * possibly defanged), ending in a known TLD and followed by end, '/', '?',
 * '#' or ':port'.  0 when not. */
static size_t bare_host(const uint8_t *t, size_t m) {
    size_t i = 0, labels = 0, last = 0, last_len = 0;
    while (i < m) {
        size_t s = i;
        while (i < m && (is_alnum(t[i]) || t[i] == '-' || t[i] == '_')) i++;
        if (i == s || i - s > 63) return 0;
        labels++;
        last = s;
        last_len = i - s;
        if (i >= m) break;
        size_t d = t[i] == '.' ? 1 : defanged_dot(t + i, m - i);
        if (!d) break;
        if (i + d >= m || !is_alnum(t[i + d])) {
            break; /* trailing dot: sentence end */
        }
        i += d;
    }
    if (labels < 2 || !known_tld(t + last, last_len)) return 0;
    size_t e = last + last_len;
    if (e < m && t[e] != '/' && t[e] != '?' && t[e] != '#' && !(t[e] == ':' && e + 1 < m && is_digit(t[e + 1])))
        return 0;
    return e;
}

static void token(mw_url_ctx *u, const uint8_t *t, size_t m, int source) {
    brackets bc = {0, 0, 0, 0};
    count_brackets(&bc, t, 0, m, 1);
    size_t counted_from = 0; /* bc covers t[counted_from, m) */
    int found = 0;
    for (size_t k = 1; k < m; k++) {
        size_t clen;
        if (t[k] == ':')
            clen = 1;
        else if (t[k] == '[' && k + 2 < m && t[k + 1] == ':' && t[k + 2] == ']')
            clen = 3;
        else
            continue;
        size_t after = k + clen;
        if (after >= m || (t[after] != '/' && t[after] != '\\')) continue;
        uint32_t flags = clen == 3 ? MW_URL_OBFUSCATED_SCHEME : 0;
        size_t sl;
        const char *scheme = scheme_before(t, k, &sl, &flags);
        if (!scheme) continue;
        size_t ss = k - sl;
        if (ss > counted_from) { /* anchors only move right */
            count_brackets(&bc, t, counted_from, ss, -1);
            counted_from = ss;
        }
        size_t end = trim_end(t, counted_from, m, bc);
        if (end <= after) continue;
        if (emit_url(u, scheme, t + after, end - after, flags, source)) found = 1;
        if (u->nomem || u->list->n_urls >= u->max_urls) return;
        k = after;
    }
    if (found) return;
    size_t a = 0;
    while (a < m && t[a] && strchr("([{*,;:!?.", t[a])) a++;
    if (a >= m) return;
    count_brackets(&bc, t, 0, a, -1);
    size_t end = trim_end(t, a, m, bc);
    if (end <= a) return;
    const uint8_t *h = t + a;
    size_t hn = end - a;
    if (hn > 4 && ieq(h, 4, "www.")) {
        emit_url(u, "http", h, hn, MW_URL_NO_SCHEME, source);
        return;
    }
    if (hn > 6 && ieq(h, 3, "www") && defanged_dot(h + 3, hn - 3)) {
        emit_url(u, "http", h, hn, MW_URL_NO_SCHEME, source);
        return;
    }
    if (bare_host(h, hn)) emit_url(u, "http", h, hn, MW_URL_NO_SCHEME, source);
}

/* Bytes without which a token holds no URL: a scheme needs ':' ("[:]" too), "www." and a
 * bare host a dot with more of the token after it (a token's last dot ends a sentence and
 * is trimmed), plain or defanged ("[.]", "(dot)", "{.}"). */
static const uint8_t MAY_LINK[256] = {[':'] = 1, ['['] = 1, ['('] = 1, ['{'] = 1};

void mw_urls_in_text(mw_url_ctx *u, const uint8_t *s, size_t n, int source) {
    size_t i = 0;
    while (i < n && !u->nomem) {
        while (i < n && is_delim(s[i])) i++;
        size_t ts = i;
        uint8_t may = 0;
        while (i < n && !is_delim(s[i])) {
            /* No-break space and ideographic space separate words too. */
            if (s[i] == 0xC2 && i + 1 < n && s[i + 1] == 0xA0) break;
            if (s[i] == 0xE3 && i + 2 < n && s[i + 1] == 0x80 && s[i + 2] == 0x80) break;
            if (s[i] == '.')
                may |= i + 1 < n && !is_delim(s[i + 1]);
            else
                may |= MAY_LINK[s[i]];
            i++;
        }
        /* Most words hold none of them: token()'s bracket counts and trims were about two
         * thirds of the extraction's time on plain text. */
        if (may) token(u, s + ts, i - ts, source);
        if (i < n && s[i] == 0xC2) i += 2;
        else if (i < n && s[i] == 0xE3) i += 3;
    }
}

void mw_url_from_attr(mw_url_ctx *u, const uint8_t *v, size_t n, int source, uint32_t flags) {
    /* Browsers strip leading/trailing C0 controls and spaces and drop tabs
     * and line breaks anywhere in a URL: spammers use both to hide links. */
    enum { MAXV = 8192 };
    uint8_t buf[MAXV];
    size_t bn = 0;
    while (n > 0 && v[0] <= 0x20) {
        v++;
        n--;
    }
    while (n > 0 && v[n - 1] <= 0x20) n--;
    for (size_t i = 0; i < n && bn < MAXV; i++)
        if (v[i] != '\t' && v[i] != '\n' && v[i] != '\r') buf[bn++] = v[i];
    if (bn >= 2 && (buf[0] == '/' || buf[0] == '\\') && (buf[1] == '/' || buf[1] == '\\')) {
        emit_url(u, "http", buf, bn, flags | MW_URL_NO_SCHEME, source);
        return;
    }
    size_t k = 0;
    while (k < bn && k < 16 && (is_alpha(buf[k]) || buf[k] == '*' || buf[k] == '_')) k++;
    size_t clen = 0;
    if (k < bn && buf[k] == ':')
        clen = 1;
    else if (k + 2 < bn && buf[k] == '[' && buf[k + 1] == ':' && buf[k + 2] == ']') {
        clen = 3;
        flags |= MW_URL_OBFUSCATED_SCHEME;
    }
    if (clen && k > 0) {
        size_t sl;
        const char *scheme = scheme_before(buf, k, &sl, &flags);
        if (scheme && sl == k) emit_url(u, scheme, buf + k + clen, bn - k - clen, flags, source);
        return;
    }
    if (bn > 4 && ieq(buf, 4, "www.")) emit_url(u, "http", buf, bn, flags | MW_URL_NO_SCHEME, source);
}

mw_status mw_extract_urls(const uint8_t *src, size_t len, int mode, uint32_t max_urls,
                          uint32_t max_url_len, mw_url_list **out) {
    if (!out || (!src && len)) return MW_ERR_ARG;
    *out = NULL;
    mw_url_list *L = calloc(1, sizeof *L);
    if (!L) return MW_ERR_NOMEM;
    mw_url_ctx u = {L, max_urls ? max_urls : MW_URL_DEFAULT_MAX_URLS,
                    max_url_len ? max_url_len : MW_URL_DEFAULT_MAX_LEN, 0};
    if (u.max_len < 16) u.max_len = 16;
    if (len) {
        if (mode == MW_URL_MODE_HTML) {
            size_t cap = mw_html_text_max_len(len);
            uint8_t *text = cap < SIZE_MAX ? malloc(cap) : NULL;
            if (!text) {
                mw_url_list_free(L);
                return MW_ERR_NOMEM;
            }
            size_t tn = mw_html_walk(src, len, text, cap, &u);
            mw_urls_in_text(&u, text, tn, MW_URL_SRC_TEXT);
            free(text);
        } else {
            mw_urls_in_text(&u, src, len, MW_URL_SRC_TEXT);
        }
    }
    if (u.nomem) {
        mw_url_list_free(L);
        return MW_ERR_NOMEM;
    }
    *out = L;
    return MW_OK;
}

void mw_url_list_free(mw_url_list *list) {
    if (!list) return;
    free(list->urls);
    free(list->arena);
    free(list);
}
