/* cffi declarations of mw_sigs.h: the signature compiler, database and streaming scanner.
 * Constants are "...": their values come from the C header at compile time. */
#define MW_SIG_MAX_TEXT ...
#define MW_SIG_MAX_PART ...
#define MW_SIG_MAX_PARTS ...
#define MW_SIG_MAX_EOF ...
#define MW_SIG_MAX_SIGS ...
#define MW_SIG_MAX_TARGET ...
#define MW_SIG_MAX_HITS ...
#define MW_SIG_MAX_PARTIALS ...
#define MW_SIG_OFF_ANY ...
#define MW_SIG_OFF_ABS ...
#define MW_SIG_OFF_EOF ...

typedef struct mw_sigc mw_sigc;
typedef struct mw_sigdb mw_sigdb;
typedef struct mw_sigscan mw_sigscan;

typedef struct {
    uint64_t first_offset;
    uint32_t sig_id;
    uint32_t count;
} mw_sighit;

typedef struct {
    uint64_t bytes;
    uint32_t n_sigs;
    uint32_t n_parts;
    uint32_t n_anchors;
    uint32_t n_tiny;
    uint32_t n_eof;
    uint32_t key_len;
    uint32_t filter_bits;
    uint32_t max_part;
    uint32_t stride;
} mw_sigdb_info;

mw_status mw_sigc_new(mw_sigc **out);
void mw_sigc_free(mw_sigc *c);
mw_status mw_sigc_add(mw_sigc *c, const char *text, size_t len, uint32_t target,
                      uint32_t off_kind, uint64_t off, uint64_t shift, uint32_t *id);
uint32_t mw_sigc_count(const mw_sigc *c);
mw_status mw_sigc_build(const mw_sigc *c, uint8_t **blob, size_t *len);
void mw_sig_blob_free(uint8_t *blob);
mw_status mw_sigdb_open(const uint8_t *blob, size_t len, mw_sigdb **out);
void mw_sigdb_free(mw_sigdb *db);
void mw_sigdb_info_get(const mw_sigdb *db, mw_sigdb_info *out);
mw_status mw_sigscan_new(const mw_sigdb *db, mw_sigscan **out);
void mw_sigscan_free(mw_sigscan *s);
mw_status mw_sigscan_set_limits(mw_sigscan *s, uint32_t max_hits, uint32_t max_partials);
void mw_sigscan_reset(mw_sigscan *s, uint32_t target_mask);
mw_status mw_sigscan_feed(mw_sigscan *s, const uint8_t *data, size_t len);
mw_status mw_sigscan_finish(mw_sigscan *s);
size_t mw_sigscan_hits(const mw_sigscan *s, mw_sighit *out, size_t cap);
mw_status mw_sigscan_buffer(mw_sigscan *s, uint32_t target_mask, const uint8_t *data,
                            size_t len);
