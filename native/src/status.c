#include "mw_status.h"

/* The cffi build passes the package's version; other builds (the fuzzers) are marked so
 * that such a core can never pass for a released one. */
#ifndef MW_VERSION
#define MW_VERSION "0.0.0+unversioned"
#endif

const char *mw_strerror(mw_status status) {
    switch (status) {
    case MW_OK: return "ok";
    case MW_ERR_NOMEM: return "out of memory";
    case MW_ERR_ARG: return "invalid argument";
    case MW_ERR_TOO_LARGE: return "table or database too large";
    case MW_ERR_BAD_DB:
        return "not a valid mailwarden signature database (or another build's)";
    case MW_ERR_SCAN_LIMIT:
        return "scan incomplete: a hit, partial-match or search limit was reached";
    case MW_ERR_SIG_SYNTAX: return "not valid body-signature syntax";
    case MW_ERR_SIG_NOANCHOR: return "a part has fewer than 2 fixed bytes to anchor on";
    case MW_ERR_SIG_LIMIT: return "over a length, gap, part or offset limit";
    case MW_ERR_SIG_VARALT: return "alternatives of different lengths";
    case MW_ERR_SIG_SPECIAL: return "(B)/(L) boundary markers are not supported";
    case MW_STATUS_COUNT: break;
    }
    return "unknown status";
}

const char *mw_version(void) { return MW_VERSION; }
