/* cffi declarations of mw_status.h (named to sort first: the other areas' declarations use
 * mw_status).  The enum's values come from the C header at compile time. */
typedef enum {
    MW_OK,
    MW_ERR_NOMEM,
    MW_ERR_ARG,
    MW_ERR_TOO_LARGE,
    MW_ERR_BAD_DB,
    MW_ERR_SCAN_LIMIT,
    MW_ERR_SIG_SYNTAX,
    MW_ERR_SIG_NOANCHOR,
    MW_ERR_SIG_LIMIT,
    MW_ERR_SIG_VARALT,
    MW_ERR_SIG_SPECIAL,
    MW_STATUS_COUNT,
    ...
} mw_status;

const char *mw_strerror(mw_status status);
const char *mw_version(void);
