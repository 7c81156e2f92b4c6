# Types of the cffi-generated extension, kept in step with native/cdef/*.h (a test checks
# that every declared function and constant is here).  cdata objects (pointers, arrays,
# structs) are dynamic: their fields and items are typed where the binding reads them.
from collections.abc import Callable, Sequence
from typing import Any

from typing_extensions import Buffer

class CData:
    """A cffi pointer, array or struct."""

    def __getitem__(self, index: int | slice, /) -> Any: ...
    def __setitem__(self, index: int, value: Any, /) -> None: ...
    def __getattr__(self, name: str, /) -> Any: ...
    def __setattr__(self, name: str, value: Any, /) -> None: ...
    def __len__(self) -> int: ...
    def __add__(self, offset: int, /) -> CData: ...
    def __iter__(self) -> Any: ...

class _CBuffer:
    """ffi.buffer(): raw memory of a cdata object."""

    def __getitem__(self, index: slice, /) -> bytes: ...
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

class _FFI:
    NULL: CData
    def new(self, cdecl: str, init: Any = ..., /) -> CData: ...
    def new_allocator(
        self, alloc: Any = ..., free: Any = ..., should_clear_after_alloc: bool = ...
    ) -> Callable[..., CData]: ...
    def cast(self, cdecl: str, value: Any, /) -> CData: ...
    def unpack(self, cdata: CData, length: int, /) -> Any: ...
    def string(self, cdata: CData, maxlen: int = ..., /) -> bytes: ...
    errno: int
    def buffer(self, cdata: CData, size: int = ..., /) -> _CBuffer: ...
    def from_buffer(self, cdecl: str, python_buffer: Buffer, /) -> CData: ...
    def memmove(self, dest: CData, src: CData | Buffer, n: int, /) -> None: ...
    def gc(self, cdata: CData, destructor: Callable[[CData], None], /) -> CData: ...
    def release(self, cdata: CData, /) -> None: ...
    def sizeof(self, cdecl: str | CData, /) -> int: ...

class _Lib:
    MW_CONTENT_TYPE_CODES: int
    MW_CTE_7BIT: int
    MW_CTE_8BIT: int
    MW_CTE_BASE64: int
    MW_CTE_BINARY: int
    MW_CTE_NONE: int
    MW_CTE_OTHER: int
    MW_CTE_QP: int
    MW_DEFAULT_MESSAGE_RFC822: int
    MW_DEFAULT_TEXT_PLAIN: int
    MW_ERR_ARG: int
    MW_ERR_BAD_DB: int
    MW_ERR_NOMEM: int
    MW_ERR_SCAN_LIMIT: int
    MW_ERR_SIG_LIMIT: int
    MW_ERR_SIG_NOANCHOR: int
    MW_ERR_SIG_SPECIAL: int
    MW_ERR_SIG_SYNTAX: int
    MW_ERR_SIG_VARALT: int
    MW_ERR_TOO_LARGE: int
    MW_FLAG_BAD_BASE64: int
    MW_FLAG_BAD_HEADER_LINE: int
    MW_FLAG_BARE_CR_OR_LF_MIX: int
    MW_FLAG_BOUNDARY_NOT_FOUND: int
    MW_FLAG_DECODED_LIMIT: int
    MW_FLAG_DEPTH_LIMIT: int
    MW_FLAG_DUPLICATE_BOUNDARY: int
    MW_FLAG_DUPLICATE_CONTENT_TYPE: int
    MW_FLAG_HEADER_LIMIT: int
    MW_FLAG_HEADER_NAME_JUNK: int
    MW_FLAG_MISSING_BOUNDARY: int
    MW_FLAG_NESTED_COMMENT: int
    MW_FLAG_NO_CLOSING_BOUNDARY: int
    MW_FLAG_NUL_BYTES: int
    MW_FLAG_PART_LIMIT: int
    MW_FLAG_PART_OUTSIDE_BOUNDARIES: int
    MW_FLAG_TRUNCATED_HEADERS: int
    MW_HARD_MAX_DEPTH: int
    MW_KIND_LEAF: int
    MW_KIND_MESSAGE: int
    MW_KIND_MULTIPART: int
    MW_META_STACK: int
    MW_OP_ADD: int
    MW_OP_AND: int
    MW_OP_CONST: int
    MW_OP_DIV: int
    MW_OP_END: int
    MW_OP_EQ: int
    MW_OP_GE: int
    MW_OP_GT: int
    MW_OP_HIT: int
    MW_OP_LE: int
    MW_OP_LT: int
    MW_OP_MUL: int
    MW_OP_NE: int
    MW_OP_NEG: int
    MW_OP_NOT: int
    MW_OP_OR: int
    MW_OP_POS: int
    MW_OP_SUB: int
    MW_OK: int
    MW_PARAMS_CD_COMPLEX: int
    MW_PARAMS_CT_COMPLEX: int
    MW_SIG_MAX_EOF: int
    MW_SIG_MAX_HITS: int
    MW_SIG_MAX_PART: int
    MW_SIG_MAX_PARTIALS: int
    MW_SIG_MAX_PARTS: int
    MW_SIG_MAX_SIGS: int
    MW_SIG_MAX_TARGET: int
    MW_SIG_MAX_TEXT: int
    MW_SIG_OFF_ABS: int
    MW_SIG_OFF_ANY: int
    MW_SIG_OFF_EOF: int
    MW_STATUS_COUNT: int
    MW_TYPE_COUNT: int
    MW_TYPE_UNKNOWN: int
    MW_URLS_TRUNCATED: int
    MW_URL_BACKSLASH: int
    MW_URL_DEFANGED_DOT: int
    MW_URL_DEFAULT_MAX_LEN: int
    MW_URL_DEFAULT_MAX_URLS: int
    MW_URL_ENTITY: int
    MW_URL_INVISIBLE: int
    MW_URL_IP_HOST: int
    MW_URL_MODE_HTML: int
    MW_URL_MODE_TEXT: int
    MW_URL_NON_ASCII_HOST: int
    MW_URL_NO_SCHEME: int
    MW_URL_NUMERIC_HOST: int
    MW_URL_OBFUSCATED_SCHEME: int
    MW_URL_PERCENT_HOST: int
    MW_URL_SRC_ACTION: int
    MW_URL_SRC_HREF: int
    MW_URL_SRC_META: int
    MW_SKETCH_MAX_K: int
    MW_SKETCH_MAX_SHINGLE: int
    MW_SPOOL_AT_DIR: int
    MW_SPOOL_AT_RENAME: int
    MW_SPOOL_COMMIT: int
    MW_SPOOL_DATASYNC: int
    MW_SPOOL_DIRSYNC: int
    MW_SPOOL_DIR_ALWAYS: int
    MW_SPOOL_DIR_IF_COMMIT: int
    MW_SPOOL_DIR_NONE: int
    MW_SPOOL_TRUNCATE: int
    MW_URL_SRC_SRC: int
    MW_URL_SRC_TEXT: int
    MW_URL_TRUNCATED: int
    MW_URL_USERINFO: int

    def mw_strerror(self, status: int, /) -> CData: ...
    def mw_version(self) -> CData: ...
    def mw_html_text_max_len(self, len: int, /) -> int: ...
    def mw_html_to_text(self, src: CData | bytes, len: int, dst: CData, cap: int, /) -> int: ...
    def mw_extract_urls(
        self,
        src: CData | bytes,
        len: int,
        mode: int,
        max_urls: int,
        max_url_len: int,
        out: CData,
        /,
    ) -> int: ...
    def mw_url_list_free(self, list: CData, /) -> None: ...
    def mw_detect_type(self, buf: CData | bytes, len: int, /) -> int: ...
    def mw_type_name(self, type: int, /) -> CData: ...
    def mw_blake2b64(self, src: CData | bytes, len: int, /) -> int: ...
    def mw_spool_batch(
        self,
        n: int,
        ops: Sequence[int],
        fds: Sequence[int],
        srcs: Sequence[CData],
        dsts: Sequence[CData],
        errs: CData,
        dir: CData | bytes,
        dir_sync: int,
        /,
    ) -> int: ...
    def mw_spool_q_new(self, dir: bytes, threads: int, idle_ms: int, /) -> CData: ...
    def mw_spool_q_fd(self, q: CData, /) -> int: ...
    def mw_spool_q_submit(
        self, q: CData, id: int, op: int, fd: int, src: CData | bytes, dst: CData | bytes, /
    ) -> int: ...
    def mw_spool_q_empty_later(self, q: CData, id: int, fd: int, /) -> int: ...
    def mw_spool_q_count_removal(self, q: CData, /) -> int: ...
    def mw_spool_q_removals(self, q: CData, /) -> int: ...
    def mw_spool_q_covered(self, q: CData, /) -> int: ...
    def mw_spool_q_done(self, q: CData, ids: CData, errs: CData, cap: int, /) -> int: ...
    def mw_spool_q_threads(self, q: CData, /) -> int: ...
    def mw_spool_q_sync_now(self, q: CData, /) -> int: ...
    def mw_spool_q_close(self, q: CData, /) -> None: ...
    def mw_shingle_sketch(
        self, words: CData | bytes, len: int, shingle: int, k: int, out: CData, /
    ) -> int: ...
    def mw_ascii_words(
        self,
        src: CData | bytes,
        len: int,
        min_len: int,
        max_len: int,
        amounts: int,
        out: CData,
        /,
    ) -> int: ...
    def mw_unicode_words(
        self,
        src: CData | bytes,
        len: int,
        word: CData,
        nword: int,
        digit: CData,
        ndigit: int,
        min_len: int,
        max_len: int,
        amounts: int,
        out: CData,
        /,
    ) -> int: ...
    def mw_milter_headers(self, buf: CData, len: int, offset: int, limit: int, /) -> int: ...
    def mw_milter_quickack(self, fd: int, /) -> int: ...
    def mw_paragraph_lines(self, src: CData | bytes, len: int, out: CData, /) -> int: ...
    def mw_code_point_bytes(
        self, src: CData, n: int, table: CData | bytes, ntable: int, out: CData, /
    ) -> int: ...
    def mw_meta_changed(
        self,
        code: CData,
        entry: CData,
        out_flag: CData,
        base: CData,
        nmeta: int,
        constants: CData,
        readers: CData,
        reader_at: CData,
        flag_base: CData,
        nflags: int,
        set: CData,
        nset: int,
        every: int,
        changed: CData,
        /,
    ) -> int: ...
    def mw_content_type_name(self, code: int, /) -> CData: ...
    def mw_limits_default(self, limits: CData, /) -> None: ...
    def mw_parse(self, buf: CData | bytes, len: int, limits: CData, out: CData, /) -> int: ...
    def mw_message_free(self, msg: CData, /) -> None: ...
    def mw_parse_table(
        self,
        buf: CData | bytes,
        len: int,
        limits: CData,
        out: CData,
        cap: int,
        /,
    ) -> int: ...
    def mw_base64_max_len(self, len: int, /) -> int: ...
    def mw_base64_decode(self, src: CData | bytes, len: int, dst: CData, junk: CData, /) -> int: ...
    def mw_base64_junk(self, src: CData | bytes, len: int, /) -> int: ...
    def mw_qp_max_len(self, len: int, /) -> int: ...
    def mw_qp_decode(self, src: CData | bytes, len: int, dst: CData, /) -> int: ...
    def mw_decode_span(
        self, buf: CData | bytes, start: int, end: int, base64: int, dst: CData, /
    ) -> int: ...
    def mw_matcher_new(self, patterns: CData, lens: CData, n: int, out: CData, /) -> int: ...
    def mw_matcher_free(self, m: CData, /) -> None: ...
    def mw_matcher_count(self, m: CData, /) -> int: ...
    def mw_matcher_scan(
        self,
        m: CData,
        data: CData | bytes,
        len: int,
        out: CData,
        cap: int,
        /,
    ) -> int: ...
    def mw_matcher_first(self, m: CData, data: CData | bytes, len: int, out: CData, /) -> int: ...
    def mw_sigc_new(self, out: CData, /) -> int: ...
    def mw_sigc_free(self, c: CData, /) -> None: ...
    def mw_sigc_add(
        self,
        c: CData,
        text: CData | bytes,
        len: int,
        target: int,
        off_kind: int,
        off: int,
        shift: int,
        id: CData,
        /,
    ) -> int: ...
    def mw_sigc_count(self, c: CData, /) -> int: ...
    def mw_sigc_build(self, c: CData, blob: CData, len: CData, /) -> int: ...
    def mw_sig_blob_free(self, blob: CData, /) -> None: ...
    def mw_sigdb_open(self, blob: CData | bytes, len: int, out: CData, /) -> int: ...
    def mw_sigdb_free(self, db: CData, /) -> None: ...
    def mw_sigdb_info_get(self, db: CData, out: CData, /) -> None: ...
    def mw_sigscan_new(self, db: CData, out: CData, /) -> int: ...
    def mw_sigscan_free(self, s: CData, /) -> None: ...
    def mw_sigscan_set_limits(self, s: CData, max_hits: int, max_partials: int, /) -> int: ...
    def mw_sigscan_reset(self, s: CData, target_mask: int, /) -> None: ...
    def mw_sigscan_feed(self, s: CData, data: CData | bytes, len: int, /) -> int: ...
    def mw_sigscan_finish(self, s: CData, /) -> int: ...
    def mw_sigscan_hits(self, s: CData, out: CData, cap: int, /) -> int: ...
    def mw_sigscan_buffer(
        self,
        s: CData,
        target_mask: int,
        data: CData | bytes,
        len: int,
        /,
    ) -> int: ...

ffi: _FFI
lib: _Lib
