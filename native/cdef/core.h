/* cffi declarations of mailwarden.h: the MIME parser, decoders and matcher.
 * Constants are "...": cffi reads their real values from the C header at compile time, so
 * the C header stays the single source of truth. */
#define MW_FLAG_MISSING_BOUNDARY ...
#define MW_FLAG_NO_CLOSING_BOUNDARY ...
#define MW_FLAG_BOUNDARY_NOT_FOUND ...
#define MW_FLAG_DEPTH_LIMIT ...
#define MW_FLAG_PART_LIMIT ...
#define MW_FLAG_HEADER_LIMIT ...
#define MW_FLAG_NUL_BYTES ...
#define MW_FLAG_BARE_CR_OR_LF_MIX ...
#define MW_FLAG_BAD_BASE64 ...
#define MW_FLAG_TRUNCATED_HEADERS ...
#define MW_FLAG_BAD_HEADER_LINE ...
#define MW_FLAG_DECODED_LIMIT ...
#define MW_FLAG_DUPLICATE_CONTENT_TYPE ...
#define MW_FLAG_DUPLICATE_BOUNDARY ...
#define MW_FLAG_HEADER_NAME_JUNK ...
#define MW_FLAG_NESTED_COMMENT ...
#define MW_FLAG_PART_OUTSIDE_BOUNDARIES ...
#define MW_PARAMS_CD_COMPLEX ...
#define MW_PARAMS_CT_COMPLEX ...

#define MW_KIND_LEAF ...
#define MW_KIND_MULTIPART ...
#define MW_KIND_MESSAGE ...

#define MW_CTE_NONE ...
#define MW_CTE_7BIT ...
#define MW_CTE_8BIT ...
#define MW_CTE_BINARY ...
#define MW_CTE_BASE64 ...
#define MW_CTE_QP ...
#define MW_CTE_OTHER ...

#define MW_DEFAULT_TEXT_PLAIN ...
#define MW_DEFAULT_MESSAGE_RFC822 ...
#define MW_HARD_MAX_DEPTH ...

typedef struct {
    uint32_t max_depth;
    uint32_t max_parts;
    uint64_t max_header_bytes;
} mw_limits;

typedef struct {
    int64_t name_off;
    int64_t name_len;
    int64_t value_off;
    int64_t value_len;
} mw_header;

typedef struct {
    int64_t parent;
    int64_t depth;
    int64_t header_start;
    int64_t header_end;
    int64_t body_start;
    int64_t body_end;
    int64_t first_header;
    int64_t n_headers;
    int64_t flags;
    int64_t kind;
    int64_t cte;
    int64_t type_off;
    int64_t type_len;
    int64_t subtype_off;
    int64_t subtype_len;
    int64_t boundary_off;
    int64_t boundary_len;
    int64_t default_type;
    int64_t disposition_off;
    int64_t disposition_len;
    int64_t filename_off;
    int64_t filename_len;
    int64_t charset_off;
    int64_t charset_len;
    int64_t param_flags;
    int64_t type_code;
} mw_part;

typedef struct {
    mw_part *parts;
    size_t n_parts;
    size_t cap_parts;
    mw_header *headers;
    size_t n_headers;
    size_t cap_headers;
    uint32_t flags;
} mw_message;

#define MW_CONTENT_TYPE_CODES ...
const char *mw_content_type_name(int64_t code);
void mw_limits_default(mw_limits *limits);
mw_status mw_parse(const uint8_t *buf, size_t len, const mw_limits *limits, mw_message **out);
void mw_message_free(mw_message *msg);
int64_t mw_parse_table(const uint8_t *buf, size_t len, const mw_limits *limits, int64_t *out,
                       size_t cap);

size_t mw_base64_max_len(size_t len);
size_t mw_base64_decode(const uint8_t *src, size_t len, uint8_t *dst, int *junk);
int mw_base64_junk(const uint8_t *src, size_t len);
size_t mw_qp_max_len(size_t len);
size_t mw_qp_decode(const uint8_t *src, size_t len, uint8_t *dst);
size_t mw_decode_span(const uint8_t *buf, size_t start, size_t end, int base64, uint8_t *dst);

typedef struct mw_matcher mw_matcher;
typedef struct {
    uint64_t start;
    uint32_t pattern_id;
    uint32_t reserved;
} mw_match;

mw_status mw_matcher_new(const uint8_t *const *patterns, const size_t *lens, size_t n,
                         mw_matcher **out);
void mw_matcher_free(mw_matcher *m);
size_t mw_matcher_count(const mw_matcher *m);
size_t mw_matcher_scan(const mw_matcher *m, const uint8_t *data, size_t len, mw_match *out,
                       size_t cap);
int mw_matcher_first(const mw_matcher *m, const uint8_t *data, size_t len, mw_match *out);
