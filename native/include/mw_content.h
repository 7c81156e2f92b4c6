/*
 * mailwarden native core: content extraction.
 *
 * Text from HTML, URLs from text and HTML, and the type of a file from its
 * magic bytes.  These run on every text part and every attachment of every
 * message, which is why they are in C; everything rarer (RFC 2047 words,
 * charset conversion, uuencode, IDN) is done in Python with the standard
 * library's C codecs (see docs/content-extraction.md).
 *
 * Like the parser: no global mutable state, input never modified, every
 * output bounded by an explicit capacity or limit, malformed input is data.
 */
#ifndef MW_CONTENT_H
#define MW_CONTENT_H

#include <stddef.h>
#include <stdint.h>

#include "mw_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- HTML to text ------------------------------------------------------ */

/* Capacity that always holds the text of len bytes of HTML: entity
 * expansion is the only growth and no entity yields more than twice its
 * own length (checked against the whole HTML5 table by the tests). */
size_t mw_html_text_max_len(size_t len);

/* Visible text of an HTML document as UTF-8: script, style, title and
 * comments skipped; character references decoded; block elements end lines;
 * whitespace collapsed outside <pre>; invisible characters (soft hyphen,
 * zero-width space/joiners, BOM) removed.  Input should be UTF-8 (bytes
 * that are not pass through).  Writes at most cap bytes to dst and returns
 * the number written; output stops early (never overflows) when cap is
 * smaller than mw_html_text_max_len(len). */
size_t mw_html_to_text(const uint8_t *src, size_t len, uint8_t *dst, size_t cap);

/* ---- URLs --------------------------------------------------------------- */

#define MW_URL_MODE_TEXT 0 /* plain text: scheme://, www., bare domains */
#define MW_URL_MODE_HTML 1 /* HTML: link attributes plus the visible text */

/* Where a URL was found. */
#define MW_URL_SRC_TEXT 0
#define MW_URL_SRC_HREF 1   /* href= */
#define MW_URL_SRC_SRC 2    /* src=, background=, poster=, data= */
#define MW_URL_SRC_ACTION 3 /* action=, formaction= */
#define MW_URL_SRC_META 4   /* <meta http-equiv=refresh content=...> */

/* What was done to normalise a URL: each bit is an evasion seen in spam. */
#define MW_URL_OBFUSCATED_SCHEME (1u << 0) /* hxxp://, h**p://, http[:]// */
#define MW_URL_DEFANGED_DOT (1u << 1)      /* example[.]com, example(dot)com */
#define MW_URL_USERINFO (1u << 2)          /* http://bank.example@evil.example */
#define MW_URL_BACKSLASH (1u << 3)         /* https:\\host or \ in the path */
#define MW_URL_PERCENT_HOST (1u << 4)      /* %-escapes inside the host */
#define MW_URL_NUMERIC_HOST (1u << 5)      /* IPv4 written as 0x7f.1, 2130706433, 0177.0.0.1 */
#define MW_URL_IP_HOST (1u << 6)           /* host is an IPv4 or IPv6 address */
#define MW_URL_INVISIBLE (1u << 7)         /* soft hyphen / zero-width chars removed */
#define MW_URL_NO_SCHEME (1u << 8)         /* www.x or a bare domain: http:// added */
#define MW_URL_ENTITY (1u << 9)            /* character references decoded in an attribute */
#define MW_URL_NON_ASCII_HOST (1u << 10)   /* host left as UTF-8 for IDNA (done in Python) */
#define MW_URL_TRUNCATED (1u << 11)        /* longer than max_url_len: path cut */

#define MW_URLS_TRUNCATED 1u /* list flag: max_urls reached, later URLs dropped */

#define MW_URL_DEFAULT_MAX_URLS 5000
#define MW_URL_DEFAULT_MAX_LEN 2048

/* One URL: url[off, off+len) of the arena, host at url[host_off, +host_len). */
typedef struct {
    uint64_t off;
    uint64_t len;
    uint64_t host_off;
    uint64_t host_len;
    uint64_t flags;
    uint64_t source;
} mw_url;

typedef struct {
    mw_url *urls;
    size_t n_urls;
    size_t cap_urls;
    uint8_t *arena;
    size_t arena_len;
    size_t arena_cap;
    uint32_t flags; /* MW_URLS_* */
} mw_url_list;

/* Finds URLs in src (UTF-8 text or HTML per mode), normalised: scheme and
 * host lowercased, obfuscations undone (see MW_URL_* flags), userinfo
 * dropped, numeric IPv4 forms made dotted-quad, path bytes outside printable
 * ASCII %-escaped.  At most max_urls (0: default) URLs of at most
 * max_url_len (0: default) bytes each, so the work and the output are
 * bounded whatever the input.  On MW_OK *out is owned by the caller
 * (mw_url_list_free). */
mw_status mw_extract_urls(const uint8_t *src, size_t len, int mode, uint32_t max_urls,
                          uint32_t max_url_len, mw_url_list **out);
void mw_url_list_free(mw_url_list *list);

/* ---- File type from magic bytes ---------------------------------------- */

#define MW_TYPE_UNKNOWN 0
#define MW_TYPE_PDF 1
#define MW_TYPE_ZIP 2
#define MW_TYPE_DOCX 3
#define MW_TYPE_XLSX 4
#define MW_TYPE_PPTX 5
#define MW_TYPE_ODT 6
#define MW_TYPE_ODS 7
#define MW_TYPE_ODP 8
#define MW_TYPE_JAR 9
#define MW_TYPE_APK 10
#define MW_TYPE_OLE2 11 /* compound file of unknown use */
#define MW_TYPE_DOC 12
#define MW_TYPE_XLS 13
#define MW_TYPE_PPT 14
#define MW_TYPE_MSI 15
#define MW_TYPE_OLE2_ENCRYPTED 16 /* password-protected OOXML inside OLE2 */
#define MW_TYPE_PE 17
#define MW_TYPE_MSDOS 18 /* MZ without a PE header */
#define MW_TYPE_ELF 19
#define MW_TYPE_MACHO 20
#define MW_TYPE_JAVA_CLASS 21
#define MW_TYPE_RAR 22
#define MW_TYPE_7Z 23
#define MW_TYPE_GZIP 24
#define MW_TYPE_BZIP2 25
#define MW_TYPE_XZ 26
#define MW_TYPE_ZSTD 27
#define MW_TYPE_TAR 28
#define MW_TYPE_CAB 29
#define MW_TYPE_LZH 30
#define MW_TYPE_ALZ 31
#define MW_TYPE_ISO 32
#define MW_TYPE_PNG 33
#define MW_TYPE_JPEG 34
#define MW_TYPE_GIF 35
#define MW_TYPE_BMP 36
#define MW_TYPE_TIFF 37
#define MW_TYPE_HTML 38
#define MW_TYPE_RTF 39
#define MW_TYPE_SCRIPT 40 /* #! shebang */
#define MW_TYPE_LNK 41
#define MW_TYPE_COUNT 42

/* Type of a file from its content alone (never from a name or a header). */
int mw_detect_type(const uint8_t *buf, size_t len);
/* Short stable name of a type code ("pdf", "docx", ...); "unknown" when out
 * of range. */
const char *mw_type_name(int type);

#ifdef __cplusplus
}
#endif

#endif
