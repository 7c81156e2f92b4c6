/*
 * mailwarden native core: expressions over numbered flags (antispam metas), and
 * text as the bytes of its characters' classes (the antispam pattern sets' alphabets).
 *
 * A SpamAssassin meta rule is an arithmetic and boolean expression over the
 * names of other rules (1 when the rule hit, 0 when not).  A set of them is
 * given as one stack program per expression, in an order where every
 * expression comes after the expressions it reads, and evaluated here the way
 * Python evaluates the same expression over booleans: "and"/"or" give one of
 * their operands, "not" and comparisons give 0 or 1, "/" is a division of
 * doubles, and a division by zero makes the expression's value an error (the
 * expression is then not hit), unless an "and"/"or" leaves that operand out.
 */
#ifndef MW_METAS_H
#define MW_METAS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Opcodes of a program: MW_OP_HIT and MW_OP_CONST take the next int32 as their
 * argument (a flag number, an index into the constants); every other opcode
 * pops its operands (two for the binary ones, the right one on top) and pushes
 * its result.  A program ends with MW_OP_END, its value the one item left. */
enum {
    MW_OP_END = 0,
    MW_OP_HIT = 1,
    MW_OP_CONST = 2,
    MW_OP_NOT = 3,
    MW_OP_NEG = 4,
    MW_OP_POS = 5,
    MW_OP_ADD = 6,
    MW_OP_SUB = 7,
    MW_OP_MUL = 8,
    MW_OP_DIV = 9,
    MW_OP_LT = 10,
    MW_OP_LE = 11,
    MW_OP_GT = 12,
    MW_OP_GE = 13,
    MW_OP_EQ = 14,
    MW_OP_NE = 15,
    MW_OP_AND = 16,
    MW_OP_OR = 17
};

/* The deepest stack a program may use. */
#define MW_META_STACK 64

/* Resolves nmeta expressions over nflags flags.  Expression i's program starts
 * at code[entry[i]] and sets flag out_flag[i]; the expressions reading flag f
 * are readers[reader_at[f] .. reader_at[f + 1]), each after every expression
 * whose flag it reads.  flag_base[f] is every flag's value when no rule hits
 * (0 for a rule, the expression's own value for an expression's flag);
 * base[i] is expression i's.  The flags set[0 .. nset) are hit on entry; an
 * expression whose own flag is among them keeps it, unevaluated.  In order,
 * every other expression is evaluated when one of its inputs differs from its
 * flag_base (or always, when every is non-zero), else keeps base[i].  Writes
 * to changed (nmeta entries are enough) the indexes of the evaluated
 * expressions whose value differs from base[i], in order, and returns how
 * many; (size_t)-1 when memory runs out or a program is malformed (a stack
 * of more than MW_META_STACK items, or fewer than an opcode pops). */
size_t mw_meta_changed(const int32_t *code, const uint32_t *entry, const uint32_t *out_flag,
                       const uint8_t *base, size_t nmeta, const double *constants,
                       const uint32_t *readers, const uint32_t *reader_at,
                       const uint8_t *flag_base, size_t nflags, const uint32_t *set, size_t nset,
                       int every, uint32_t *changed);

/* Each of the n code points src[i] (UTF-32, host order) as table[src[i]] in out[i]
 * (n bytes): the antispam pattern sets' alphabets, one byte per character class.
 * Returns 0, or -1 (out partly written) when a code point is not below ntable. */
int mw_code_point_bytes(const uint32_t *src, size_t n, const uint8_t *table, size_t ntable,
                        uint8_t *out);

#ifdef __cplusplus
}
#endif

#endif
