/*
 * libFuzzer harness for the native core: parser (with default and tight
 * limits), both decoders on every leaf, the content extractors (HTML to
 * text, URLs in text and HTML mode, file type) on the input and on every
 * leaf, and the matcher with patterns taken from the input itself.  Besides the sanitizers catching memory errors, it
 * checks the structural invariants callers rely on and aborts if one breaks.
 *
 * Also builds without libFuzzer (-DMW_FUZZ_STANDALONE): main() then runs each
 * file named on the command line plus seeded random mutations of it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mailwarden.h"
#include "mw_content.h"

#define CHECK(cond)                                                               \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                              \
        }                                                                         \
    } while (0)

static void check_message(const mw_message *m, size_t len) {
    CHECK(m->n_parts >= 1);
    for (size_t i = 0; i < m->n_parts; i++) {
        const mw_part *p = &m->parts[i];
        CHECK(0 <= p->header_start && p->header_start <= p->header_end);
        CHECK(p->header_end <= p->body_start && p->body_start <= p->body_end);
        CHECK((uint64_t)p->body_end <= len);
        CHECK(p->first_header >= 0 && p->n_headers >= 0);
        CHECK((size_t)(p->first_header + p->n_headers) <= m->n_headers);
        for (int64_t h = p->first_header; h < p->first_header + p->n_headers; h++) {
            const mw_header *f = &m->headers[h];
            CHECK(f->name_off >= p->header_start && f->name_len > 0);
            CHECK(f->value_off >= f->name_off + f->name_len && f->value_len >= 0);
            CHECK(f->value_off + f->value_len <= p->body_start);
        }
        if (i == 0) {
            CHECK(p->parent == -1 && p->depth == 0);
        } else {
            CHECK(p->parent >= 0 && (size_t)p->parent < i);
            const mw_part *q = &m->parts[p->parent];
            CHECK(p->depth == q->depth + 1);
            CHECK(q->body_start <= p->header_start && p->body_end <= q->body_end);
            CHECK(q->kind != MW_KIND_LEAF);
        }
        CHECK(((uint32_t)p->flags & ~m->flags) == 0);
        /* Parameter spans: absent (-1) or inside the part's header block. */
        const int64_t spans[3][2] = {{p->disposition_off, p->disposition_len},
                                     {p->filename_off, p->filename_len},
                                     {p->charset_off, p->charset_len}};
        for (int k = 0; k < 3; k++) {
            CHECK(spans[k][0] == -1 || (spans[k][0] >= p->header_start && spans[k][1] >= 0 &&
                                        spans[k][0] + spans[k][1] <= p->body_start));
        }
    }
}

static void run_content(const uint8_t *data, size_t size);

static void decode_leaves(const uint8_t *data, const mw_message *m) {
    for (size_t i = 0; i < m->n_parts; i++) {
        const mw_part *p = &m->parts[i];
        if (p->kind != MW_KIND_LEAF) continue;
        const uint8_t *body = data + p->body_start;
        size_t n = (size_t)(p->body_end - p->body_start);
        /* Exact-size heap buffers so ASan catches any overrun of the bound. */
        uint8_t *out = malloc(mw_base64_max_len(n));
        if (out) {
            int junk = 0;
            size_t got = mw_base64_decode(body, n, out, &junk);
            CHECK(got <= mw_base64_max_len(n));
            CHECK(got == mw_base64_decode(body, n, NULL, NULL));
            /* The parser's block-wise check must agree with the decoder. */
            CHECK(mw_base64_junk(body, n) == junk);
            if (p->cte == MW_CTE_BASE64) CHECK(!!(p->flags & MW_FLAG_BAD_BASE64) == junk);
            free(out);
        }
        out = malloc(mw_qp_max_len(n) ? mw_qp_max_len(n) : 1);
        if (out) {
            CHECK(mw_qp_decode(body, n, out) <= mw_qp_max_len(n));
            free(out);
        }
        if (i > 0) run_content(body, n); /* the root's body is run below anyway */
    }
}

static void run_content(const uint8_t *data, size_t size) {
    /* Exact-size output so ASan sees any write past the documented bound;
     * then a deliberately small one to exercise the cap. */
    size_t cap = mw_html_text_max_len(size);
    uint8_t *out = malloc(cap ? cap : 1);
    if (out) {
        CHECK(mw_html_to_text(data, size, out, cap) <= cap);
        free(out);
    }
    uint8_t small[16];
    CHECK(mw_html_to_text(data, size, small, sizeof small) <= sizeof small);
    for (int mode = 0; mode < 2; mode++) {
        mw_url_list *l = NULL;
        if (mw_extract_urls(data, size, mode, 64, 256, &l) != MW_OK) continue;
        CHECK(l->n_urls <= 64);
        for (size_t i = 0; i < l->n_urls; i++) {
            const mw_url *u = &l->urls[i];
            CHECK(u->off + u->len <= l->arena_len && u->len <= 256);
            CHECK(u->host_len > 0 && u->host_off + u->host_len <= u->len);
            const uint8_t *s = l->arena + u->off;
            CHECK(memchr(s, ':', u->len) && memcmp(s + u->host_off - 3, "://", 3) == 0);
            for (size_t k = 0; k < u->len; k++)
                CHECK(s[k] > 0x20 && s[k] != 0x7F && (s[k] < 0x80 || (k >= u->host_off && k < u->host_off + u->host_len)));
        }
        mw_url_list_free(l);
    }
    int t = mw_detect_type(data, size);
    CHECK(t >= 0 && t < MW_TYPE_COUNT && mw_type_name(t)[0]);
}

static void run_matcher(const uint8_t *data, size_t size) {
    /* Patterns: fixed MIME-ish strings plus slices of the input. */
    static const char *fixed[] = {"--", "Content-Type", "=\r\n", "a", "base64", "\r\n\r\n"};
    const uint8_t *pats[16];
    size_t lens[16], n = 0;
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
        pats[n] = (const uint8_t *)fixed[i];
        lens[n++] = strlen(fixed[i]);
    }
    for (size_t off = 0; n < 16 && off + 1 < size; off += 1 + data[off] % 17) {
        size_t l = 1 + data[off + 1] % 8;
        if (off + l > size) break;
        pats[n] = data + off;
        lens[n++] = l;
    }
    mw_matcher *mt = NULL;
    if (mw_matcher_new(pats, lens, n, &mt) != MW_OK) return;
    mw_match buf[64];
    size_t total = mw_matcher_scan(mt, data, size, buf, 64);
    if (total <= 64) {
        for (size_t i = 0; i < total; i++) {
            CHECK(buf[i].pattern_id < n);
            CHECK(buf[i].start + lens[buf[i].pattern_id] <= size);
            CHECK(memcmp(data + buf[i].start, pats[buf[i].pattern_id], lens[buf[i].pattern_id]) == 0);
            if (i) CHECK(buf[i - 1].start <= buf[i].start);
        }
    }
    mw_match first;
    int has = mw_matcher_first(mt, data, size, &first);
    CHECK(has == (total > 0));
    mw_matcher_free(mt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mw_message *m = NULL;
    if (mw_parse(data, size, NULL, &m) == MW_OK) {
        check_message(m, size);
        decode_leaves(data, m);
        /* The binding's one-call export holds exactly the same tables. */
        size_t pf = sizeof(mw_part) / 8, hf = sizeof(mw_header) / 8;
        size_t need = 3 + m->n_parts * pf + m->n_headers * hf;
        int64_t head[3];
        CHECK(mw_parse_table(data, size, NULL, head, 3) == (int64_t)need);
        int64_t *tab = malloc(need * sizeof *tab);
        if (tab) {
            CHECK(mw_parse_table(data, size, NULL, tab, need) == (int64_t)need);
            CHECK(tab[0] == (int64_t)m->flags && tab[1] == (int64_t)m->n_parts &&
                  tab[2] == (int64_t)m->n_headers);
            CHECK(memcmp(tab + 3, m->parts, m->n_parts * sizeof(mw_part)) == 0);
            CHECK(m->n_headers == 0 || memcmp(tab + 3 + m->n_parts * pf, m->headers,
                                              m->n_headers * sizeof(mw_header)) == 0);
            free(tab);
        }
        mw_message_free(m);
    }
    mw_limits tight = {2, 6, 64};
    if (mw_parse(data, size, &tight, &m) == MW_OK) {
        check_message(m, size);
        CHECK(m->n_parts <= 6);
        mw_message_free(m);
    }
    run_content(data, size);
    run_matcher(data, size);
    return 0;
}

#ifdef MW_FUZZ_STANDALONE
/* Fallback driver when libFuzzer is unavailable: every input file, then
 * random byte-level mutations of it until the time budget runs out. */
#include <time.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 60;
    time_t until = time(NULL) + (time_t)seconds;
    unsigned long long execs = 0;
    for (int round = 0; time(NULL) < until; round++) {
        for (int i = 2; i < argc && time(NULL) < until; i++) {
            FILE *f = fopen(argv[i], "rb");
            if (!f) continue;
            static uint8_t buf[1 << 21];
            size_t n = fread(buf, 1, sizeof buf, f);
            fclose(f);
            if (round) {
                int muts = 1 + (int)(next_rand() % 16);
                for (int k = 0; k < muts && n; k++) {
                    size_t at = next_rand() % n;
                    switch (next_rand() % 3) {
                    case 0: buf[at] = (uint8_t)next_rand(); break;
                    case 1: buf[at] = "\r\n-=:;\"\0"[next_rand() % 8]; break;
                    default: n = at; break;
                    }
                }
            }
            LLVMFuzzerTestOneInput(buf, n);
            execs++;
        }
        if (argc <= 2) break;
    }
    printf("standalone fuzz: %llu execs\n", execs);
    return 0;
}
#endif
