/*
 * mailwarden native core: the one status type every public function that can
 * fail returns, and the core's version.
 *
 * Each failure has its own code (no two areas share a number), so a caller
 * can map a code to an exception without knowing which function gave it.
 * Malformed input is never a status: parsers record it as flags.
 */
#ifndef MW_STATUS_H
#define MW_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MW_OK = 0,
    MW_ERR_NOMEM = 1,       /* out of memory: the operation did nothing or was undone */
    MW_ERR_ARG = 2,         /* a NULL pointer or an argument out of its domain */
    MW_ERR_TOO_LARGE = 3,   /* a table or database would pass its size limit */
    MW_ERR_BAD_DB = 4,      /* a signature blob that fails validation (or another build's) */
    MW_ERR_SCAN_LIMIT = 5,  /* a scan could not record every hit: its result is incomplete */
    /* why one signature was not compiled (mw_sigc_add) */
    MW_ERR_SIG_SYNTAX = 6,   /* not ClamAV body-signature syntax */
    MW_ERR_SIG_NOANCHOR = 7, /* a part has no 2 fixed bytes to anchor on */
    MW_ERR_SIG_LIMIT = 8,    /* over a length, gap, part or offset limit of mw_sigs.h */
    MW_ERR_SIG_VARALT = 9,   /* alternatives of different lengths */
    MW_ERR_SIG_SPECIAL = 10, /* (B)/(L) boundary markers */
    MW_STATUS_COUNT = 11     /* one past the last code */
} mw_status;

/* A short English description of a status; "unknown status" when out of range.
 * The string is static. */
const char *mw_strerror(mw_status status);

/* The native core's version, as the build that compiled it was told (the Python package's
 * version for the cffi build); the binding refuses to load a core of another version. */
const char *mw_version(void);

#ifdef __cplusplus
}
#endif

#endif
