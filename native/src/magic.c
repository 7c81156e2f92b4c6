/*
 * File type from content.  An attachment's declared type and name are the
 * sender's claim; these bytes are what a mail client or OS will act on.
 * Containers that share a signature are told apart from inside: zip by its
 * member names (OOXML, ODF, JAR, APK), OLE2 by its directory entries (Word,
 * Excel, PowerPoint, MSI, encrypted OOXML).  Every read is bounds-checked
 * and every walk capped, so any byte string is safe input.
 */
#include <string.h>

#include "mw_content.h"

static const char *const NAMES[MW_TYPE_COUNT] = {
    "unknown", "pdf",   "zip",  "docx", "xlsx",  "pptx",  "odt",  "ods",  "odp",
    "jar",     "apk",   "ole2", "doc",  "xls",   "ppt",   "msi",  "ole2-encrypted",
    "pe",      "msdos", "elf",  "macho", "java-class", "rar", "7z", "gzip", "bzip2",
    "xz",      "zstd",  "tar",  "cab",  "lzh",   "alz",   "iso",  "png",  "jpeg",
    "gif",     "bmp",   "tiff", "html", "rtf",   "script", "lnk"};

const char *mw_type_name(int type) {
    return type >= 0 && type < MW_TYPE_COUNT ? NAMES[type] : "unknown";
}

static uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static int at(const uint8_t *b, size_t n, size_t off, const char *lit, size_t m) {
    return n >= off && n - off >= m && memcmp(b + off, lit, m) == 0;
}
#define AT(off, lit) at(b, n, (off), (lit), sizeof(lit) - 1)

static uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

static int iprefix(const uint8_t *s, size_t n, const char *lit) {
    size_t m = strlen(lit);
    if (n < m) return 0;
    for (size_t i = 0; i < m; i++)
        if (lower(s[i]) != (uint8_t)lit[i]) return 0;
    return 1;
}

/* ---- zip ---------------------------------------------------------------- */

enum { Z_OOXML_CT = 1, Z_WORD = 2, Z_XL = 4, Z_PPT = 8, Z_MANIFEST = 16, Z_CLASS = 32,
       Z_ANDROID = 64, Z_DEX = 128 };

static unsigned zip_name(const uint8_t *s, size_t n) {
    unsigned f = 0;
    if (n == 19 && memcmp(s, "[Content_Types].xml", 19) == 0) f |= Z_OOXML_CT;
    if (n >= 5 && memcmp(s, "word/", 5) == 0) f |= Z_WORD;
    if (n >= 3 && memcmp(s, "xl/", 3) == 0) f |= Z_XL;
    if (n >= 4 && memcmp(s, "ppt/", 4) == 0) f |= Z_PPT;
    if (n == 20 && memcmp(s, "META-INF/MANIFEST.MF", 20) == 0) f |= Z_MANIFEST;
    if (n > 6 && memcmp(s + n - 6, ".class", 6) == 0) f |= Z_CLASS;
    if (n == 19 && memcmp(s, "AndroidManifest.xml", 19) == 0) f |= Z_ANDROID;
    if (n == 11 && memcmp(s, "classes.dex", 11) == 0) f |= Z_DEX;
    return f;
}

#define ZIP_MAX_ENTRIES 4096

static int zip_kind(const uint8_t *b, size_t n) {
    /* ODF: a stored first member "mimetype" holding the document type. */
    if (n >= 30 && AT(0, "PK\3\4") && le16(b + 26) == 8 && AT(30, "mimetype")) {
        size_t off = 30 + 8 + le16(b + 28);
        static const char od[] = "application/vnd.oasis.opendocument.";
        if (at(b, n, off, od, sizeof od - 1)) {
            const uint8_t *k = b + off + sizeof od - 1;
            size_t kn = n - off - (sizeof od - 1);
            if (iprefix(k, kn, "text")) return MW_TYPE_ODT;
            if (iprefix(k, kn, "spreadsheet")) return MW_TYPE_ODS;
            if (iprefix(k, kn, "presentation")) return MW_TYPE_ODP;
        }
    }
    unsigned f = 0;
    /* Central directory, found from the end record (the authoritative list). */
    size_t eocd = 0;
    int have_eocd = 0;
    if (n >= 22) {
        size_t lo = n - 22 > 65535 ? n - 22 - 65535 : 0;
        for (size_t p = n - 22 + 1; p-- > lo;)
            if (b[p] == 'P' && AT(p, "PK\5\6")) {
                eocd = p;
                have_eocd = 1;
                break;
            }
    }
    if (have_eocd) {
        size_t off = le32(b + eocd + 16), cnt = le16(b + eocd + 10);
        for (size_t e = 0; e < cnt && e < ZIP_MAX_ENTRIES; e++) {
            if (!AT(off, "PK\1\2") || n - off < 46) break;
            size_t nl = le16(b + off + 28), el = le16(b + off + 30), cl = le16(b + off + 32);
            if (n - off - 46 < nl) break;
            f |= zip_name(b + off + 46, nl);
            off += 46 + nl + el + cl;
        }
    }
    if (!f) { /* no usable directory (truncated attachment): walk local headers */
        size_t off = 0;
        for (int e = 0; e < ZIP_MAX_ENTRIES && AT(off, "PK\3\4") && n - off >= 30; e++) {
            size_t nl = le16(b + off + 26), el = le16(b + off + 28);
            size_t cs = le32(b + off + 18);
            if (n - off - 30 < nl) break;
            f |= zip_name(b + off + 30, nl);
            if (le16(b + off + 6) & 8) break; /* size only after the data */
            size_t step = 30 + nl + el;
            if (cs > n || step > n - cs || off > n - step - cs) break;
            off += step + cs;
        }
    }
    if (f & Z_WORD) return MW_TYPE_DOCX;
    if (f & Z_XL) return MW_TYPE_XLSX;
    if (f & Z_PPT) return MW_TYPE_PPTX;
    if ((f & Z_ANDROID) && (f & Z_DEX)) return MW_TYPE_APK;
    if (f & (Z_MANIFEST | Z_CLASS)) return MW_TYPE_JAR;
    return MW_TYPE_ZIP;
}

/* ---- OLE2 compound file ------------------------------------------------- */

static int utf16_is(const uint8_t *e, const char *name) {
    size_t m = strlen(name), nl = le16(e + 64);
    if (nl != 2 * (m + 1)) return 0;
    for (size_t i = 0; i < m; i++)
        if (e[2 * i] != (uint8_t)name[i] || e[2 * i + 1] != 0) return 0;
    return 1;
}

#define OLE_MAX_DIR_SECTORS 256

static int ole2_kind(const uint8_t *b, size_t n) {
    if (n < 512) return MW_TYPE_OLE2;
    uint32_t shift = le16(b + 0x1E);
    if (shift < 7 || shift > 16) return MW_TYPE_OLE2;
    size_t ss = (size_t)1 << shift, per_fat = ss / 4;
    uint32_t sec = le32(b + 0x30);
    int kind = 0, msi = 0;
    static const uint8_t MSI_CLSID[3][16] = {
        {0x84, 0x10, 0x0C, 0, 0, 0, 0, 0, 0xC0, 0, 0, 0, 0, 0, 0, 0x46},  /* installer */
        {0x86, 0x10, 0x0C, 0, 0, 0, 0, 0, 0xC0, 0, 0, 0, 0, 0, 0, 0x46},  /* patch */
        {0x82, 0x10, 0x0C, 0, 0, 0, 0, 0, 0xC0, 0, 0, 0, 0, 0, 0, 0x46}}; /* transform */
    for (int hop = 0; hop < OLE_MAX_DIR_SECTORS && sec < 0xFFFFFFFAu; hop++) {
        if ((size_t)sec + 1 > (n / ss)) break;
        size_t off = ((size_t)sec + 1) * ss;
        if (off > n || n - off < ss) break;
        for (size_t e = 0; e + 128 <= ss; e += 128) {
            const uint8_t *d = b + off + e;
            uint8_t type = d[66];
            if (type == 5) {
                for (int c = 0; c < 3; c++)
                    if (memcmp(d + 80, MSI_CLSID[c], 16) == 0) msi = 1;
            } else if (type == 2) {
                if (utf16_is(d, "EncryptedPackage")) return MW_TYPE_OLE2_ENCRYPTED;
                if (!kind && utf16_is(d, "WordDocument")) kind = MW_TYPE_DOC;
                if (!kind && (utf16_is(d, "Workbook") || utf16_is(d, "Book"))) kind = MW_TYPE_XLS;
                if (!kind && utf16_is(d, "PowerPoint Document")) kind = MW_TYPE_PPT;
            }
        }
        /* Next directory sector through the FAT (first 109 FAT sectors,
         * listed in the header, cover files up to ~7 MB at 512-byte
         * sectors; a longer chain simply ends the walk). */
        size_t fi = sec / per_fat;
        if (fi >= 109) break;
        uint32_t fs = le32(b + 0x4C + 4 * fi);
        if (fs >= 0xFFFFFFFAu || (size_t)fs + 1 > n / ss) break;
        size_t fo = ((size_t)fs + 1) * ss + (sec % per_fat) * 4;
        if (fo > n || n - fo < 4) break;
        sec = le32(b + fo);
    }
    if (kind) return kind;
    return msi ? MW_TYPE_MSI : MW_TYPE_OLE2;
}

/* ---- text-ish formats --------------------------------------------------- */

static int looks_html(const uint8_t *b, size_t n) {
    size_t i = 0;
    if (AT(0, "\xEF\xBB\xBF")) i = 3;
    while (i < n && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n')) i++;
    if (i >= n || b[i] != '<') return 0;
    static const char *const starts[] = {"<!doctype html", "<html", "<head", "<body", "<script",
                                         "<iframe", "<meta", "<title", "<!--", "<div",
                                         "<table", "<a ", "<form", "<style", "<p>", "<img", NULL};
    for (const char *const *s = starts; *s; s++)
        if (iprefix(b + i, n - i, *s)) {
            if (strcmp(*s, "<!--") != 0) return 1;
            /* A leading comment is also XML's; look for an HTML element. */
            size_t lim = n - i < 1024 ? n - i : 1024;
            for (size_t k = i; k < i + lim; k++)
                if (b[k] == '<' && (iprefix(b + k, n - k, "<html") || iprefix(b + k, n - k, "<body") ||
                                    iprefix(b + k, n - k, "<script") || iprefix(b + k, n - k, "<!doctype html")))
                    return 1;
            return 0;
        }
    return 0;
}

int mw_detect_type(const uint8_t *b, size_t n) {
    if (!b || n < 2) return MW_TYPE_UNKNOWN;
    if (AT(0, "%PDF-")) return MW_TYPE_PDF;
    if (AT(0, "PK\3\4") || AT(0, "PK\5\6") || AT(0, "PK\7\x08")) return zip_kind(b, n);
    if (AT(0, "\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1")) return ole2_kind(b, n);
    if (AT(0, "MZ")) {
        if (n >= 0x40) {
            size_t pe = le32(b + 0x3C);
            if (pe <= n - 4 && AT(pe, "PE\0\0")) return MW_TYPE_PE;
        }
        return MW_TYPE_MSDOS;
    }
    if (AT(0, "\x7F" "ELF")) return MW_TYPE_ELF;
    if (n >= 4) {
        uint32_t m = be32(b);
        if (m == 0xFEEDFACEu || m == 0xFEEDFACFu || m == 0xCEFAEDFEu || m == 0xCFFAEDFEu)
            return MW_TYPE_MACHO;
        if (m == 0xCAFEBABEu && n >= 8) {
            /* Shared by universal Mach-O binaries (a small arch count) and
             * Java classes (a class-file version, 45 and up). */
            return be32(b + 4) < 40 ? MW_TYPE_MACHO : MW_TYPE_JAVA_CLASS;
        }
    }
    if (AT(0, "Rar!\x1A\x07")) return MW_TYPE_RAR;
    if (AT(0, "7z\xBC\xAF\x27\x1C")) return MW_TYPE_7Z;
    if (AT(0, "\x1F\x8B")) return MW_TYPE_GZIP;
    if (AT(0, "BZh") && n >= 4 && b[3] >= '1' && b[3] <= '9') return MW_TYPE_BZIP2;
    if (AT(0, "\xFD" "7zXZ\0")) return MW_TYPE_XZ;
    if (AT(0, "\x28\xB5\x2F\xFD")) return MW_TYPE_ZSTD;
    if (AT(0, "MSCF\0\0\0\0")) return MW_TYPE_CAB;
    if (n >= 7 && b[2] == '-' && b[3] == 'l' && (b[4] == 'h' || b[4] == 'z') && b[6] == '-')
        return MW_TYPE_LZH;
    if (AT(0, "ALZ\x01")) return MW_TYPE_ALZ;
    if (AT(0, "\x89PNG\r\n\x1A\n")) return MW_TYPE_PNG;
    if (AT(0, "\xFF\xD8\xFF")) return MW_TYPE_JPEG;
    if (AT(0, "GIF87a") || AT(0, "GIF89a")) return MW_TYPE_GIF;
    if (AT(0, "BM") && n >= 26) {
        uint32_t dib = le32(b + 14);
        if (dib == 12 || dib == 40 || dib == 52 || dib == 56 || dib == 64 || dib == 108 || dib == 124)
            return MW_TYPE_BMP;
    }
    if (AT(0, "II*\0") || AT(0, "MM\0*")) return MW_TYPE_TIFF;
    if (AT(0, "\x4C\0\0\0\x01\x14\x02\0")) return MW_TYPE_LNK;
    if (AT(0, "{\\rtf")) return MW_TYPE_RTF;
    if (AT(0, "#!")) return MW_TYPE_SCRIPT;
    if (AT(257, "ustar")) return MW_TYPE_TAR;
    if (AT(0x8001, "CD001") || AT(0x8801, "CD001") || AT(0x9001, "CD001")) return MW_TYPE_ISO;
    if (looks_html(b, n)) return MW_TYPE_HTML;
    /* A zip whose start is elsewhere (last part of a split archive, data
     * prepended): unzip finds it from the end record, so do we. */
    if (n >= 22) {
        size_t lo = n - 22 > 65535 ? n - 22 - 65535 : 0;
        for (size_t p = n - 22 + 1; p-- > lo;)
            if (b[p] == 'P' && AT(p, "PK\5\6")) return zip_kind(b, n);
    }
    /* Readers accept "%PDF-" anywhere in the first KiB; so do droppers. */
    size_t lim = n < 1024 ? n : 1024;
    for (size_t i = 1; i + 5 <= lim; i++)
        if (b[i] == '%' && AT(i, "%PDF-")) return MW_TYPE_PDF;
    return MW_TYPE_UNKNOWN;
}
