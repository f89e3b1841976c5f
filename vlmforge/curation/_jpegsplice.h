/* A baseline JPEG written again by splicing: every MCU that did not change keeps its entropy-coded bits,
 * copied from the source; only the changed ones are Huffman-coded again, with the file's own tables. */
#ifndef VLMFORGE_JPEGSPLICE_H
#define VLMFORGE_JPEGSPLICE_H

#include <stddef.h>
#include <stdint.h>

typedef struct Splice Splice;

/* A component's block rows as the decoder holds them: rows[by][bx][k], 64 coefficients in natural order,
 * rows and columns padded to whole MCUs. Indexed by the component's place in the frame (SOF). */
typedef short (*SpliceRow)[64];

/* The file's headers and scan, copied: NULL when the file is not one a splice writes (one sequential
 * Huffman scan of three 8-bit components, interleaved) or memory ran out. */
Splice *splice_open(const uint8_t *data, size_t len);
/* Frame component c's sampling factors and its block rows and columns, padded to whole MCUs. */
void splice_shape(const Splice *s, int c, unsigned *h, unsigned *v, unsigned *rows, unsigned *cols);
/* Decodes the scan into `rows` (shaped as splice_shape says) and records where each MCU's bits are: 0,
 * or -1 when the scan is not a clean baseline scan (libjpeg reads the file then). Once only. */
int splice_decode(Splice *s, SpliceRow *const *rows);
/* Flags the MCU holding block (by, bx) of frame component `c` as changed. */
void splice_mark(Splice *s, int c, unsigned by, unsigned bx);
/* Writes the whole file from `rows` (the changed blocks in place): 0 with *out (malloc'd) and *out_len,
 * 1 when a changed block needs a symbol the tables have no code for (splice_use_tables), -2 when out of
 * memory. The flags are cleared after. */
int splice_write(Splice *s, SpliceRow *const *rows, uint8_t **out, size_t *out_len);
/* A Huffman table as DHT gives it: bits[l], l = 1..16, the number of codes of length l; vals, the symbols. */
typedef struct {
    uint8_t bits[17];
    uint8_t vals[256];
} SpliceTable;
/* Switches to the given tables (index 0 for the table ids the first component uses, 1 for the others),
 * which must hold every symbol, and codes the image's blocks (`rows`, none changed) once with them: later
 * writes splice from that, as from the source. For a file whose own tables lack a code an occluder needs.
 * 0; -1 (tables that lack a symbol) or -2 (out of memory), and the splice is of no more use. */
int splice_use_tables(Splice *s, const SpliceTable dc[2], const SpliceTable ac[2], SpliceRow *const *rows);
/* splice_decode, and for a file whose tables lack a code baseline coding can ask for (splice_complete), the
 * splice_use_tables() switch to the given tables made at once on a copy, coded as each block is decoded: *standard
 * (NULL for a file with complete tables, or when memory ran short: the decode is done all the same). */
int splice_decode_standard(Splice *s, SpliceRow *const *rows, const SpliceTable dc[2], const SpliceTable ac[2],
                           Splice **standard);
int splice_standard(const Splice *s);
/* Whether every table the scan uses has a code for every symbol baseline coding can ask for (then no occluder needs
 * splice_use_tables). */
int splice_complete(const Splice *s);
/* A splice of its own with the same state, or NULL when out of memory. */
Splice *splice_copy(const Splice *s);
void splice_free(Splice *s);

#endif
