/* Occluders written into a JPEG's quantised DCT coefficients, with libjpeg(-turbo).
 *
 * Coefficients(data) reads a JPEG's coefficients once (no inverse DCT or colour
 * conversion). occlude(mask, y0, x0, fill) then gives a new baseline JPEG in which the pixels under `mask`
 * (a 2-D uint8/bool crop whose top-left pixel is (y0, x0)) show `fill` (an (r, g, b) tuple, or an RGB
 * uint8 array of the mask's shape): only the 8x8 blocks the mask touches are decoded, composited in
 * YCbCr and quantised again with the file's own tables; every other block keeps its coefficients, so the
 * pixels outside the occluder are the source's own, with no second generation of JPEG loss. A
 * chroma sample that stands for several pixels (4:2:0, 4:2:2) takes the fill in proportion to the pixels
 * under the mask, as an encoder's box downsampling of the painted image would. A file with one clean
 * baseline scan is read by our own decoder (libjpeg reads its headers) and written by splicing
 * (_jpegsplice.c): the MCUs that did not change keep the source's entropy-coded bits, the changed ones are
 * coded with the file's own Huffman tables (when an occluder needs a code they lack, the image is coded
 * once with the standard tables, and spliced from that). Any other file goes to libjpeg:
 * jpeg_read_coefficients, then jpeg_write_coefficients (as jpegtran does) with the standard tables. The
 * blocks are put back after, so one read serves every occluder of the image.
 *
 * The arithmetic is IEEE single precision, each sum in a fixed order, with no fused multiply-add (built
 * with -ffp-contract=off) and no libm call: the same input gives the same bytes on every machine. Python's GIL is released while libjpeg works.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>

#include "_jpegsplice.h"

/* A[u][x] = C(u) / 2 * cos((2x + 1) u pi / 16), C(0) = 1/sqrt(2), else 1 (as floats, written out so that
 * no libm is asked): the orthonormal 8-point DCT-II of JPEG, F = A f A^T and f = A^T F A. */
static const float DCT[8][8] = {
    {3.535533906e-01f, 3.535533906e-01f, 3.535533906e-01f, 3.535533906e-01f, 3.535533906e-01f, 3.535533906e-01f, 3.535533906e-01f, 3.535533906e-01f},
    {4.903926402e-01f, 4.157348062e-01f, 2.777851165e-01f, 9.754516101e-02f, -9.754516101e-02f, -2.777851165e-01f, -4.157348062e-01f, -4.903926402e-01f},
    {4.619397663e-01f, 1.913417162e-01f, -1.913417162e-01f, -4.619397663e-01f, -4.619397663e-01f, -1.913417162e-01f, 1.913417162e-01f, 4.619397663e-01f},
    {4.157348062e-01f, -9.754516101e-02f, -4.903926402e-01f, -2.777851165e-01f, 2.777851165e-01f, 4.903926402e-01f, 9.754516101e-02f, -4.157348062e-01f},
    {3.535533906e-01f, -3.535533906e-01f, -3.535533906e-01f, 3.535533906e-01f, 3.535533906e-01f, -3.535533906e-01f, -3.535533906e-01f, 3.535533906e-01f},
    {2.777851165e-01f, -4.903926402e-01f, 9.754516101e-02f, 4.157348062e-01f, -4.157348062e-01f, -9.754516101e-02f, 4.903926402e-01f, -2.777851165e-01f},
    {1.913417162e-01f, -4.619397663e-01f, 4.619397663e-01f, -1.913417162e-01f, -1.913417162e-01f, 4.619397663e-01f, -4.619397663e-01f, 1.913417162e-01f},
    {9.754516101e-02f, -2.777851165e-01f, 4.157348062e-01f, -4.903926402e-01f, 4.903926402e-01f, -4.157348062e-01f, 2.777851165e-01f, -9.754516101e-02f},
};
static float DCT_T[8][8]; /* its transpose, filled at import */
#define SAMPLE_LIMIT 1024.0f /* |sample - 128| kept below this (only broken data goes past 128) */
#define COEF_LIMIT 1023 /* what baseline Huffman coding can hold for a coefficient (and DC differences) */

static PyObject *JpegError;
/* libjpeg's standard Huffman tables (JPEG's Annex K), luminance then chrominance: what a spliced file
 * switches to when its own tables lack a code an occluder needs. */
static SpliceTable STD_DC[2], STD_AC[2];

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} ErrorMgr;

static void on_error(j_common_ptr cinfo) {
    ErrorMgr *err = (ErrorMgr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

/* Warnings (corrupt but decodable data) are counted in num_warnings, not printed. */
static void quiet(j_common_ptr cinfo) { (void)cinfo; }

static void use_errors(ErrorMgr *err) {
    jpeg_std_error(&err->pub);
    err->pub.error_exit = on_error;
    err->pub.output_message = quiet;
    err->message[0] = '\0';
}

typedef struct {
    JCOEF *block;
    JCOEF saved[DCTSIZE2];
    int ci;
    JDIMENSION by, bx;
} SavedBlock;

typedef struct {
    SavedBlock *items;
    size_t n, cap;
} Saved;

/* A component's counts, kept for the next component when it has the same sampling (Cb and Cr). */
typedef struct {
    uint16_t *cover;
    int rx, ry;
} Counts;

typedef struct {
    PyObject_HEAD
    struct jpeg_decompress_struct src;
    ErrorMgr err;
    jvirt_barray_ptr *coefs;
    int created; /* src holds libjpeg state to destroy */
    int ready;   /* coefficients read */
    Saved saved; /* blocks occlude() changed, put back after writing */
    int busy;    /* an occlude() is at work (without the GIL): the blocks are not as read */
    long warnings;  /* libjpeg's warnings while reading (corrupt but decodable data) */
    int in_range;   /* every coefficient fits baseline Huffman coding (a corrupt file's may not) */
    Counts kept; /* occlude()'s sample counts of the last component, freed when it ends */
    /* Each component's block rows, padded to whole MCUs: libjpeg's (coefs), or, for a file that is written
     * by splicing, our own decoder's (splice, blocks; libjpeg then read only the headers, from `data`). */
    JBLOCKROW *rows[MAX_COMPONENTS];
    Splice *splice;
    Splice *standard; /* the splice switched to the standard tables ahead of need (code_standard), or NULL */
    JBLOCK *blocks[MAX_COMPONENTS];
    uint8_t *data;
    size_t data_len;
    long spliced; /* occlude() results written by splicing */
    int reading;  /* jpeg_read_coefficients() at work */
    int code_standard; /* Coefficients(..., standard=True): code_standard()'s work done while decoding */
} Coefficients;

static int save_block(Saved *s, JCOEF *block, int ci, JDIMENSION by, JDIMENSION bx) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        SavedBlock *items = realloc(s->items, cap * sizeof(SavedBlock));
        if (!items) return -1;
        s->items = items;
        s->cap = cap;
    }
    s->items[s->n].block = block;
    s->items[s->n].ci = ci;
    s->items[s->n].by = by;
    s->items[s->n].bx = bx;
    memcpy(s->items[s->n].saved, block, sizeof(JCOEF) * DCTSIZE2);
    s->n++;
    return 0;
}

/* Each changed block and its saved copy trade places: the blocks as read, or as changed again. */
static void swap_blocks(Saved *s) {
    for (size_t i = 0; i < s->n; i++) {
        JCOEF tmp[DCTSIZE2];
        memcpy(tmp, s->items[i].block, sizeof(tmp));
        memcpy(s->items[i].block, s->items[i].saved, sizeof(tmp));
        memcpy(s->items[i].saved, tmp, sizeof(tmp));
    }
}

static void restore_blocks(Saved *s) {
    for (size_t i = s->n; i-- > 0;) memcpy(s->items[i].block, s->items[i].saved, sizeof(JCOEF) * DCTSIZE2);
    free(s->items);
    s->items = NULL;
    s->n = s->cap = 0;
}

/* One pixel's value in component `ci` (0 Y, 1 Cb, 2 Cr) with 16 fractional bits, minus 128: JFIF's
 * RGB -> YCbCr with the weights rounded to 16 bits (each row's sum exact). */
static int64_t ycc16(int ci, int r, int g, int b) {
    switch (ci) {
    case 0: return 19595 * (int64_t)r + 38470 * (int64_t)g + 7471 * (int64_t)b - ((int64_t)128 << 16);
    case 1: return -11059 * (int64_t)r - 21709 * (int64_t)g + 32768 * (int64_t)b;
    default: return 32768 * (int64_t)r - 27439 * (int64_t)g - 5329 * (int64_t)b;
    }
}

typedef struct {
    const uint8_t *mask;   /* mh x mw, non-zero = covered */
    const uint8_t *fill;   /* mh x mw x 3 RGB, or NULL for the constant colour */
    int mh, mw, y0, x0;
    int rgb[3];
} Occluder;

static JCOEF quantise(float v, float recip) {
    float q = v * recip;
    int32_t n = (int32_t)(q >= 0 ? q + 0.5f : q - 0.5f); /* half away from zero, as libjpeg */
    return (JCOEF)(n > COEF_LIMIT ? COEF_LIMIT : (n < -COEF_LIMIT ? -COEF_LIMIT : n));
}

/* Decode one block, blend the fill in where the occluder covers its samples (`a`: the covered fraction
 * of each sample's pixels, `fill`: the fill's value there, minus 128) and quantise it again. `full`: every
 * sample covered (no inverse DCT needed); `flat`: and by one value (a DC-only block). The loops run
 * along rows of 8, which compilers vectorise without reordering any sum. */
static void composite_block(JCOEF *block, const float *dequant, const float *recip, const float a[64],
                            const float fill[64], int full, int flat) {
    float t[8][8], f[8][8], g[8][8];
    if (flat) { /* f constant: F(0,0) = 8 f, every other coefficient 0 */
        memset(block, 0, sizeof(JCOEF) * DCTSIZE2);
        block[0] = quantise(8.0f * fill[0], recip[0]);
        return;
    }
    if (!full) {
        int rows[8], n = 0;
        for (int r = 0; r < 8; r++) { /* T = F A, for the rows that hold a coefficient */
            int any = 0;
            for (int c = 0; c < 8; c++) any |= block[r * 8 + c];
            if (!any) continue;
            rows[n++] = r;
            for (int x = 0; x < 8; x++) t[r][x] = 0.0f;
            for (int c = 0; c < 8; c++) {
                float v = (float)block[r * 8 + c] * dequant[r * 8 + c];
                for (int x = 0; x < 8; x++) t[r][x] += v * DCT[c][x];
            }
        }
        for (int y = 0; y < 8; y++) { /* f = A^T T */
            for (int x = 0; x < 8; x++) f[y][x] = 0.0f;
            for (int i = 0; i < n; i++) {
                float v = DCT[rows[i]][y];
                for (int x = 0; x < 8; x++) f[y][x] += v * t[rows[i]][x];
            }
        }
    }
    for (int k = 0; k < 64; k++) {
        float v = a[k] >= 1.0f ? fill[k] : (a[k] > 0.0f ? f[k / 8][k % 8] * (1.0f - a[k]) + fill[k] * a[k] : f[k / 8][k % 8]);
        f[k / 8][k % 8] = v > SAMPLE_LIMIT ? SAMPLE_LIMIT : (v < -SAMPLE_LIMIT ? -SAMPLE_LIMIT : v);
    }
    for (int r = 0; r < 8; r++) { /* U = A f */
        for (int x = 0; x < 8; x++) t[r][x] = 0.0f;
        for (int y = 0; y < 8; y++) {
            float v = DCT[r][y];
            for (int x = 0; x < 8; x++) t[r][x] += v * f[y][x];
        }
    }
    for (int r = 0; r < 8; r++) { /* F = U A^T */
        for (int c = 0; c < 8; c++) g[r][c] = 0.0f;
        for (int x = 0; x < 8; x++) {
            float v = t[r][x];
            for (int c = 0; c < 8; c++) g[r][c] += v * DCT_T[x][c];
        }
        for (int c = 0; c < 8; c++) block[r * 8 + c] = quantise(g[r][c], recip[r * 8 + c]);
    }
}

/* Covered pixels added into their samples' counts, for one mask row: one pixel per sample, or two (4:2:0,
 * 4:2:2). Apart, with restrict, so that the compiler vectorises them. */
static void count_ones(uint16_t *restrict c, const uint8_t *restrict m, int n) {
    for (int q = 0; q < n; q++) c[q] += m[q] != 0;
}

static void count_pairs(uint16_t *restrict c, const uint8_t *restrict m, int pairs) {
    for (int q = 0; q < pairs; q++) c[q] += (m[2 * q] != 0) + (m[2 * q + 1] != 0);
}

/* Every block of component `ci` that the occluder touches, composited in place (originals kept in `saved`).
 * First the crop's pixels are counted into the component's samples (one pass over the mask), then each
 * block reads its 64 samples' counts. */
static int occlude_component(Coefficients *self, int ci, const Occluder *o, Saved *saved, Counts *kept) {
    j_decompress_ptr src = &self->src;
    jpeg_component_info *comp = &src->comp_info[ci];
    const int rx = src->max_h_samp_factor / comp->h_samp_factor, ry = src->max_v_samp_factor / comp->v_samp_factor;
    const int width = (int)src->image_width, height = (int)src->image_height;
    float dequant[DCTSIZE2], recip[DCTSIZE2];
    for (int k = 0; k < DCTSIZE2; k++) {
        dequant[k] = (float)comp->quant_table->quantval[k];
        recip[k] = 1.0f / dequant[k];
    }
    const float fill_value = o->fill ? 0.0f : (float)ycc16(ci, o->rgb[0], o->rgb[1], o->rgb[2]) / 65536.0f;
    const int sy0 = o->y0 / ry, sy1 = (o->y0 + o->mh - 1) / ry, sx0 = o->x0 / rx, sx1 = (o->x0 + o->mw - 1) / rx;
    /* The counts cover whole blocks (cy0, cx0: the first block's first sample), so that a block reads its 64
     * with no bounds test; samples outside the crop stay 0. */
    const int cy0 = sy0 / 8 * 8, cx0 = sx0 / 8 * 8;
    const int ny = sy1 / 8 * 8 + 8 - cy0, nx = sx1 / 8 * 8 + 8 - cx0;
    const int reuse = !o->fill && kept->cover && kept->rx == rx && kept->ry == ry;
    uint16_t *cover = reuse ? kept->cover : calloc((size_t)ny * nx, sizeof(uint16_t));
    float *fill_sum = o->fill ? calloc((size_t)ny * nx, sizeof(float)) : NULL;
    int *col = malloc(sizeof(int) * (size_t)o->mw);
    int status = -1;
    if (!reuse) {
        free(kept->cover);
        kept->cover = cover;
        kept->rx = rx;
        kept->ry = ry;
    }
    if (!cover || (o->fill && !fill_sum) || !col) goto done;
    for (int px = 0; px < o->mw; px++) col[px] = (o->x0 + px) / rx - cx0;
    for (int py = 0; py < o->mh && !reuse; py++) {
        const uint8_t *m = o->mask + (size_t)py * o->mw;
        size_t row = (size_t)((o->y0 + py) / ry - cy0) * nx;
        uint16_t *c = cover + row;
        if (fill_sum) {
            const uint8_t *p = o->fill + (size_t)py * o->mw * 3;
            for (int px = 0; px < o->mw; px++)
                if (m[px]) {
                    c[col[px]]++;
                    fill_sum[row + col[px]] += (float)ycc16(ci, p[3 * px], p[3 * px + 1], p[3 * px + 2]) / 65536.0f;
                }
        } else if (rx == 1) {
            count_ones(c + col[0], m, o->mw);
        } else { /* a sample's rx pixels summed before its count is touched */
            int px = 0;
            for (; px < o->mw && (o->x0 + px) % rx; px++) c[col[px]] += m[px] != 0;
            int sx = px < o->mw ? col[px] : 0;
            if (rx == 2) { /* 4:2:0 and 4:2:2, a constant stride the compiler vectorises */
                int pairs = (o->mw - px) / 2;
                count_pairs(c + sx, m + px, pairs);
                px += 2 * pairs;
            } else {
                for (; px + rx <= o->mw; px += rx, sx++) {
                    int sum = 0;
                    for (int q = 0; q < rx; q++) sum += m[px + q] != 0;
                    c[sx] += sum;
                }
            }
            for (; px < o->mw; px++) c[col[px]] += m[px] != 0;
        }
    }
    const int per_sample = rx * ry;
    const float inv_per_sample = 1.0f / (float)per_sample;
    int by1 = sy1 / 8, bx1 = sx1 / 8;
    if (by1 >= (int)comp->height_in_blocks) by1 = (int)comp->height_in_blocks - 1;
    if (bx1 >= (int)comp->width_in_blocks) bx1 = (int)comp->width_in_blocks - 1;
    for (int by = sy0 / 8; by <= by1; by++) {
        JBLOCKROW row = self->rows[ci][by];
        /* a block whose samples all stand for rx x ry pixels of the image (all but the right and bottom edge's) */
        const int rows_whole = (by * 8 + 8) * ry <= height;
        for (int bx = sx0 / 8; bx <= bx1; bx++) {
            const uint16_t *counts = cover + (size_t)(by * 8 - cy0) * nx + (bx * 8 - cx0);
            const float *sums = fill_sum ? fill_sum + (counts - cover) : NULL;
            /* most blocks of a sparse fill have no count */
            unsigned any = 0;
            for (int i = 0; i < 8; i++)
                for (int j = 0; j < 8; j++) any |= counts[(size_t)i * nx + j];
            if (!any) continue;
            float a[64], fill[64];
            int full = 1;
            if (rows_whole && (bx * 8 + 8) * rx <= width) { /* every count out of per_sample: rows of 8, vectorised */
                for (int i = 0; i < 8; i++)
                    for (int j = 0; j < 8; j++) {
                        int n = counts[(size_t)i * nx + j], k = i * 8 + j;
                        a[k] = n == per_sample ? 1.0f : (float)n * inv_per_sample;
                        full &= n == per_sample;
                    }
                for (int k = 0; k < 64; k++) fill[k] = fill_value;
                if (sums)
                    for (int i = 0; i < 8; i++)
                        for (int j = 0; j < 8; j++) {
                            int n = counts[(size_t)i * nx + j];
                            if (n) fill[i * 8 + j] = sums[(size_t)i * nx + j] / (float)n;
                        }
            } else {
                for (int i = 0; i < 8; i++) {
                    int sy = by * 8 + i, rows_in = height - sy * ry;
                    for (int j = 0; j < 8; j++) {
                        int sx = bx * 8 + j, k = i * 8 + j, cols_in = width - sx * rx;
                        a[k] = 0.0f;
                        fill[k] = fill_value;
                        if (rows_in <= 0 || cols_in <= 0) { /* past the image's edge: no pixel, not shown */
                            full = 0;
                            continue;
                        }
                        int n = counts[(size_t)i * nx + j];
                        int count = (rows_in < ry ? rows_in : ry) * (cols_in < rx ? cols_in : rx);
                        if (n) {
                            a[k] = n == count ? 1.0f : (count == per_sample ? (float)n * inv_per_sample : (float)n / (float)count);
                            if (sums) fill[k] = sums[(size_t)i * nx + j] / (float)n;
                        }
                        full &= n == count;
                    }
                }
            }
            JCOEF *block = row[bx];
            if (save_block(saved, block, ci, (JDIMENSION)by, (JDIMENSION)bx) < 0) goto done;
            composite_block(block, dequant, recip, a, fill, full, full && !fill_sum);
        }
    }
    status = 0;
done:
    free(fill_sum);
    free(col);
    return status;
}

/* Our decoder's blocks and the rows over them, and the splice (the copy of the file is kept). */
static void free_blocks(Coefficients *self) {
    splice_free(self->splice);
    self->splice = NULL;
    splice_free(self->standard);
    self->standard = NULL;
    for (int ci = 0; ci < MAX_COMPONENTS; ci++) {
        free(self->rows[ci]);
        free(self->blocks[ci]);
        self->rows[ci] = NULL;
        self->blocks[ci] = NULL;
    }
}

/* Each component's block rows as libjpeg holds them (the whole image in memory: the pointers stay
 * valid): 0, or -1 when out of memory. */
static int libjpeg_rows(Coefficients *self) {
    j_decompress_ptr src = &self->src;
    for (int ci = 0; ci < src->num_components; ci++) {
        jpeg_component_info *comp = &src->comp_info[ci];
        JDIMENSION padded = (comp->height_in_blocks + comp->v_samp_factor - 1) / comp->v_samp_factor * comp->v_samp_factor;
        self->rows[ci] = malloc(sizeof(JBLOCKROW) * padded);
        if (!self->rows[ci]) return -1;
        for (JDIMENSION by = 0; by < padded; by++)
            self->rows[ci][by] = (*src->mem->access_virt_barray)((j_common_ptr)src, self->coefs[ci], by, 1, TRUE)[0];
    }
    return 0;
}

/* From our own decoder's blocks to libjpeg's: it reads the file's scan now (headers were read). 0, -1 for
 * a libjpeg error (the caller's setjmp), -2 when out of memory. */
static int read_by_libjpeg(Coefficients *self) {
    self->reading = 1; /* an error inside leaves libjpeg half way: the object is of no more use */
    self->coefs = jpeg_read_coefficients(&self->src);
    self->reading = 0;
    free_blocks(self);
    if (libjpeg_rows(self) < 0) {
        self->ready = 0;
        return -2;
    }
    return 0;
}

/* The file written by splicing, the changed blocks' MCUs coded again: splice_write()'s status. */
static int write_spliced(Coefficients *self, uint8_t **out, size_t *out_size) {
    for (size_t i = 0; i < self->saved.n; i++)
        splice_mark(self->splice, self->saved.items[i].ci, self->saved.items[i].by, self->saved.items[i].bx);
    return splice_write(self->splice, (SpliceRow *const *)self->rows, out, out_size);
}

/* The libjpeg work of occlude(), with no Python call: 0, -1 for a libjpeg error (message in self->err),
 * -2 when out of memory. */
static int occlude_and_write(Coefficients *self, const Occluder *o, unsigned char **out, unsigned long *out_size) {
    struct jpeg_compress_struct dst;
    volatile int dst_created = 0;
    dst.err = &self->err.pub; /* errors of either object land in the one handler below */
    if (setjmp(self->err.jump)) {
        if (dst_created) {
            /* jpeg_mem_dest frees a buffer it outgrows and tells *out of the new one only when it ends */
            if (dst.dest) (*dst.dest->term_destination)(&dst);
            jpeg_destroy_compress(&dst);
        }
        free(self->kept.cover);
        self->kept.cover = NULL;
        restore_blocks(&self->saved);
        if (self->reading) self->ready = 0;
        return -1;
    }
    if (!self->splice && !self->coefs) { /* libjpeg writes: it reads the coefficients first */
        int status = read_by_libjpeg(self);
        if (status < 0) return status;
    }
    for (int ci = 0; ci < self->src.num_components; ci++)
        if (occlude_component(self, ci, o, &self->saved, &self->kept) < 0) {
            free(self->kept.cover);
            self->kept.cover = NULL;
            restore_blocks(&self->saved);
            return -2;
        }
    free(self->kept.cover);
    self->kept.cover = NULL;
    if (self->splice) {
        uint8_t *spliced = NULL;
        size_t spliced_size = 0;
        int status = write_spliced(self, &spliced, &spliced_size);
        if (status == 1 && !splice_standard(self->splice)) {
            /* A changed block needs a symbol the file's Huffman tables have no code for (tables made for the
             * image hold only the symbols it uses): the image, its blocks as read, is coded once with the
             * standard tables, which hold them all, and this occluder and every later one are spliced
             * from that. */
            int switched = 0;
            if (self->standard) { /* coded so already, from the same blocks as read (code_standard) */
                splice_free(self->splice);
                self->splice = self->standard;
                self->standard = NULL;
            } else {
                swap_blocks(&self->saved);
                switched = splice_use_tables(self->splice, STD_DC, STD_AC, (SpliceRow *const *)self->rows);
                swap_blocks(&self->saved);
            }
            if (!switched) status = write_spliced(self, &spliced, &spliced_size);
        }
        restore_blocks(&self->saved);
        if (status == -2) return -2;
        if (!status) {
            *out = spliced;
            *out_size = (unsigned long)spliced_size;
            self->spliced++;
            return 0;
        }
        /* should even that fail, libjpeg reads the coefficients (the same ones) and writes */
        splice_free(self->splice); /* half switched, maybe: of no more use */
        self->splice = NULL;
        return occlude_and_write(self, o, out, out_size);
    }
    jpeg_create_compress(&dst);
    dst_created = 1;
    jpeg_mem_dest(&dst, out, out_size);
    jpeg_copy_critical_parameters(&self->src, &dst);
    dst.optimize_coding = FALSE;
    jpeg_write_coefficients(&dst, self->coefs);
    jpeg_finish_compress(&dst);
    jpeg_destroy_compress(&dst);
    restore_blocks(&self->saved);
    return 0;
}

/* Whether every coefficient can be written back baseline: |AC| <= 1023, DC in -1024..1023 (8-bit
 * samples give no more; a corrupt file's may hold anything, which libjpeg-turbo would write unchecked). */
static int coefficients_in_range(Coefficients *self) {
    j_decompress_ptr src = &self->src;
    for (int ci = 0; ci < src->num_components; ci++) {
        jpeg_component_info *comp = &src->comp_info[ci];
        for (JDIMENSION by = 0; by < comp->height_in_blocks; by++) {
            const JCOEF *c = self->rows[ci][by][0];
            int bad = 0;
            for (size_t k = 0; k < (size_t)comp->width_in_blocks * DCTSIZE2; k++) bad |= c[k] > 1023 || c[k] < -1024;
            if (bad) return 0;
        }
    }
    return 1;
}

/* Our own decoder's blocks, for a file written by splicing (one baseline scan of three 8-bit components,
 * interleaved, that decodes cleanly, headers libjpeg read without a warning): 1, or 0 when it is not one. */
static int read_own(Coefficients *self) {
    j_decompress_ptr src = &self->src;
    if (src->progressive_mode || src->arith_code || src->num_components != 3 || src->data_precision != 8
        || src->err->num_warnings || !(self->splice = splice_open(self->data, self->data_len)))
        return 0;
    for (int ci = 0; ci < 3; ci++) {
        jpeg_component_info *comp = &src->comp_info[ci];
        unsigned h, v, rows, cols;
        splice_shape(self->splice, ci, &h, &v, &rows, &cols);
        if (h != (unsigned)comp->h_samp_factor || v != (unsigned)comp->v_samp_factor
            || rows != (comp->height_in_blocks + v - 1) / v * v || cols != (comp->width_in_blocks + h - 1) / h * h)
            return 0;
        self->blocks[ci] = malloc(sizeof(JBLOCK) * rows * cols);
        self->rows[ci] = malloc(sizeof(JBLOCKROW) * rows);
        if (!self->blocks[ci] || !self->rows[ci]) return 0;
        for (unsigned by = 0; by < rows; by++) self->rows[ci][by] = self->blocks[ci] + (size_t)by * cols;
    }
    for (int ci = 0; ci < 3; ci++) { /* each component's table, there before the scan is decoded */
        int no = src->comp_info[ci].quant_tbl_no;
        if (no < 0 || no >= NUM_QUANT_TBLS || !src->quant_tbl_ptrs[no]) return 0;
    }
    if (self->code_standard) { /* the standard coding made as the blocks are decoded (code_standard) */
        if (splice_decode_standard(self->splice, (SpliceRow *const *)self->rows, STD_DC, STD_AC, &self->standard) < 0)
            return 0;
    } else if (splice_decode(self->splice, (SpliceRow *const *)self->rows) < 0) {
        return 0;
    }
    for (int ci = 0; ci < 3; ci++) /* what jpeg_read_coefficients() would latch */
        src->comp_info[ci].quant_table = src->quant_tbl_ptrs[src->comp_info[ci].quant_tbl_no];
    return 1;
}

/* With `splice`, a file a splice writes is read by our own decoder (libjpeg reads its headers only);
 * any other is read by libjpeg. */
static int read_coefficients(Coefficients *self, const void *data, size_t len, int splice) {
    if (setjmp(self->err.jump)) return -1;
    self->data = malloc(len ? len : 1); /* libjpeg reads the scan from it later if it has to */
    if (!self->data) {
        strcpy(self->err.message, "out of memory");
        return -1;
    }
    memcpy(self->data, data, len);
    self->data_len = len;
    jpeg_mem_src(&self->src, self->data, (unsigned long)len);
    jpeg_read_header(&self->src, TRUE);
    if (splice && read_own(self)) {
        self->warnings = self->err.pub.num_warnings;
        self->in_range = 1; /* splice_decode() refuses anything else */
        return 0;
    }
    /* not one our decoder reads: libjpeg, from where its header reading stopped */
    int status = read_by_libjpeg(self);
    self->warnings = self->err.pub.num_warnings; /* writing resets the count */
    if (status < 0) {
        strcpy(self->err.message, "out of memory");
        return -1;
    }
    self->in_range = coefficients_in_range(self);
    free(self->data);
    self->data = NULL;
    return 0;
}

static int Coefficients_init(Coefficients *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"data", "splice", "standard", NULL};
    Py_buffer buf;
    int splice = 1, standard = 0;
    if (self->created) {
        PyErr_SetString(PyExc_RuntimeError, "Coefficients cannot be initialised twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|pp", names, &buf, &splice, &standard)) return -1;
    self->code_standard = standard;
    self->src.err = &self->err.pub;
    use_errors(&self->err);
    jpeg_create_decompress(&self->src);
    self->created = 1;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = read_coefficients(self, buf.buf, (size_t)buf.len, splice);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (status < 0) {
        PyErr_Format(JpegError, "%s", self->err.message);
        return -1;
    }
    self->ready = 1;
    return 0;
}

static void Coefficients_dealloc(Coefficients *self) {
    free(self->saved.items);
    free(self->kept.cover);
    free_blocks(self);
    free(self->data);
    if (self->created) {
        /* jpeg_destroy_decompress only frees memory; an error there cannot happen */
        jpeg_destroy_decompress(&self->src);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_ready(Coefficients *self) {
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "Coefficients were not read");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Coefficients are in use by another thread's occlude()");
        return -1;
    }
    return 0;
}

/* Three components in YCbCr, 8-bit, with sampling factors that divide the largest: what occlude() takes. */
static int is_editable(Coefficients *self) {
    j_decompress_ptr s = &self->src;
    if (s->num_components != 3 || s->jpeg_color_space != JCS_YCbCr || s->data_precision != 8 || !self->in_range)
        return 0;
    for (int ci = 0; ci < 3; ci++) {
        jpeg_component_info *c = &s->comp_info[ci];
        if (s->max_h_samp_factor % c->h_samp_factor || s->max_v_samp_factor % c->v_samp_factor || !c->quant_table)
            return 0;
        /* the table the component was coded with must be the one the writer copies (a file may redefine a
         * table between scans), and have no zero step */
        JQUANT_TBL *copied = c->quant_tbl_no >= 0 && c->quant_tbl_no < NUM_QUANT_TBLS ? s->quant_tbl_ptrs[c->quant_tbl_no] : NULL;
        if (!copied || memcmp(copied->quantval, c->quant_table->quantval, sizeof(copied->quantval)))
            return 0;
        for (int k = 0; k < DCTSIZE2; k++)
            if (!c->quant_table->quantval[k]) return 0;
    }
    return 1;
}

static PyObject *Coefficients_occlude(Coefficients *self, PyObject *args) {
    PyObject *mask_obj, *fill_obj;
    int y0, x0;
    if (check_ready(self) < 0) return NULL;
    if (!PyArg_ParseTuple(args, "OiiO", &mask_obj, &y0, &x0, &fill_obj)) return NULL;
    if (!is_editable(self)) {
        PyErr_SetString(PyExc_ValueError, "this JPEG cannot be occluded in the DCT domain (see `editable`: 8-bit "
                                          "three-component YCbCr, its tables and coefficients as a baseline file holds them)");
        return NULL;
    }
    Occluder o = {0};
    Py_buffer mask = {0}, fill = {0};
    if (PyObject_GetBuffer(mask_obj, &mask, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    PyObject *result = NULL;
    if (mask.ndim != 2 || mask.itemsize != 1) {
        PyErr_SetString(PyExc_ValueError, "mask must be a 2-D array of bool or uint8");
        goto done;
    }
    if (mask.shape[0] > INT_MAX || mask.shape[1] > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "mask too large");
        goto done;
    }
    o.mask = mask.buf;
    o.mh = (int)mask.shape[0];
    o.mw = (int)mask.shape[1];
    o.y0 = y0;
    o.x0 = x0;
    if (y0 < 0 || x0 < 0 || (long)y0 + o.mh > (long)self->src.image_height || (long)x0 + o.mw > (long)self->src.image_width) {
        PyErr_Format(PyExc_ValueError, "a %dx%d mask at (%d, %d) does not fit in the %ux%u image", o.mw, o.mh, x0, y0,
                     self->src.image_width, self->src.image_height);
        goto done;
    }
    if (PyTuple_Check(fill_obj)) {
        if (!PyArg_ParseTuple(fill_obj, "iii", &o.rgb[0], &o.rgb[1], &o.rgb[2])) goto done;
        for (int c = 0; c < 3; c++)
            if (o.rgb[c] < 0 || o.rgb[c] > 255) {
                PyErr_SetString(PyExc_ValueError, "fill colour components must be in 0..255");
                goto done;
            }
    } else {
        if (PyObject_GetBuffer(fill_obj, &fill, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto done;
        if (fill.ndim != 3 || fill.itemsize != 1 || fill.shape[0] != o.mh || fill.shape[1] != o.mw || fill.shape[2] != 3) {
            PyErr_SetString(PyExc_ValueError, "fill must be an (r, g, b) tuple or a uint8 array of shape (mask rows, mask columns, 3)");
            goto done;
        }
        o.fill = fill.buf;
    }
    if (o.mh == 0 || o.mw == 0) { /* nothing covered: the coefficients as they are */
        o.mh = o.mw = 1;
        static const uint8_t none = 0;
        o.mask = &none;
        o.fill = NULL;
        o.y0 = o.x0 = 0;
    }
    unsigned char *out = NULL;
    unsigned long out_size = 0;
    int status;
    if (self->busy) { /* checked again here: parsing the arguments may have let another thread in */
        PyErr_SetString(PyExc_RuntimeError, "Coefficients are in use by another thread's occlude()");
        goto done;
    }
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    status = occlude_and_write(self, &o, &out, &out_size);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (status == -2) {
        PyErr_NoMemory();
    } else if (status < 0) {
        PyErr_Format(JpegError, "%s", self->err.message);
    } else {
        result = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)out_size);
    }
    free(out);
done:
    PyBuffer_Release(&mask);
    if (fill.obj) PyBuffer_Release(&fill);
    return result;
}

/* The switch an occluder makes when it needs a code the file's Huffman tables lack (occlude_and_write), made now
 * on a copy of the splice, while no occluder is at work: the image, its blocks as read, coded with the standard
 * tables. occlude() takes the copy in place of coding it then, and writes the same bytes; where no occluder needs
 * the switch the copy is never used. Meant for a thread that reads ahead (the GIL is released while it codes).
 * True when a copy was made; False for a file whose tables hold every code (no switch can be needed), one not
 * written by splicing, or one switched already. */
static PyObject *Coefficients_code_standard(Coefficients *self, PyObject *unused) {
    (void)unused;
    if (check_ready(self) < 0) return NULL;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Coefficients are in use by another thread's occlude()");
        return NULL;
    }
    if (!self->splice || self->standard || splice_standard(self->splice) || splice_complete(self->splice))
        Py_RETURN_FALSE;
    self->busy = 1;
    int status = -2;
    Splice *copy;
    Py_BEGIN_ALLOW_THREADS
    copy = splice_copy(self->splice);
    if (copy) status = splice_use_tables(copy, STD_DC, STD_AC, (SpliceRow *const *)self->rows);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (status) { /* out of memory, or tables that cannot be: occlude() finds out for itself, as before */
        splice_free(copy);
        Py_RETURN_FALSE;
    }
    self->standard = copy;
    Py_RETURN_TRUE;
}

/* A component's coefficients as bytes of int16 in (block rows, block columns, 64) natural order. */
static PyObject *Coefficients_blocks(Coefficients *self, PyObject *args) {
    int ci;
    if (check_ready(self) < 0 || !PyArg_ParseTuple(args, "i", &ci)) return NULL;
    if (ci < 0 || ci >= self->src.num_components) {
        PyErr_Format(PyExc_IndexError, "component %d of %d", ci, self->src.num_components);
        return NULL;
    }
    jpeg_component_info *comp = &self->src.comp_info[ci];
    Py_ssize_t row = (Py_ssize_t)comp->width_in_blocks * DCTSIZE2 * sizeof(int16_t);
    PyObject *out = PyBytes_FromStringAndSize(NULL, row * comp->height_in_blocks);
    if (!out) return NULL;
    char *p = PyBytes_AS_STRING(out);
    for (JDIMENSION by = 0; by < comp->height_in_blocks; by++) /* the rows hold whole MCUs: the blocks in the image */
        memcpy(p + by * row, self->rows[ci][by], (size_t)row);
    return Py_BuildValue("(N(ii))", out, (int)comp->height_in_blocks, (int)comp->width_in_blocks);
}

static PyObject *Coefficients_quant(Coefficients *self, PyObject *args) {
    int ci;
    if (check_ready(self) < 0 || !PyArg_ParseTuple(args, "i", &ci)) return NULL;
    if (ci < 0 || ci >= self->src.num_components || !self->src.comp_info[ci].quant_table) {
        PyErr_Format(PyExc_IndexError, "component %d of %d has no table", ci, self->src.num_components);
        return NULL;
    }
    PyObject *out = PyTuple_New(DCTSIZE2);
    if (!out) return NULL;
    for (int k = 0; k < DCTSIZE2; k++)
        PyTuple_SET_ITEM(out, k, PyLong_FromLong(self->src.comp_info[ci].quant_table->quantval[k]));
    return out;
}

static PyObject *Coefficients_get_info(Coefficients *self, void *what) {
    if (check_ready(self) < 0) return NULL; /* another thread's occlude() may be switching readers */
    j_decompress_ptr s = &self->src;
    switch ((intptr_t)what) {
    case 0: return PyLong_FromUnsignedLong(s->image_width);
    case 1: return PyLong_FromUnsignedLong(s->image_height);
    case 2: return PyLong_FromLong(s->num_components);
    case 3: return PyBool_FromLong(s->progressive_mode);
    case 4: return PyBool_FromLong(is_editable(self));
    case 5: return PyLong_FromLong(self->warnings);
    case 7: return PyLong_FromLong(self->spliced);
    case 8: return PyBool_FromLong(self->splice != NULL);
    default: {
        PyObject *out = PyTuple_New(s->num_components);
        if (!out) return NULL;
        for (int ci = 0; ci < s->num_components; ci++)
            PyTuple_SET_ITEM(out, ci, Py_BuildValue("(ii)", s->comp_info[ci].h_samp_factor, s->comp_info[ci].v_samp_factor));
        return out;
    }
    }
}

static PyGetSetDef Coefficients_getset[] = {
    {"width", (getter)Coefficients_get_info, NULL, "image width in pixels", (void *)0},
    {"height", (getter)Coefficients_get_info, NULL, "image height in pixels", (void *)1},
    {"components", (getter)Coefficients_get_info, NULL, "number of colour components", (void *)2},
    {"progressive", (getter)Coefficients_get_info, NULL, "whether the file is progressive", (void *)3},
    {"editable", (getter)Coefficients_get_info, NULL, "whether occlude() takes this file (8-bit 3-component YCbCr, "
     "each component's table the one the file ends with, no coefficient past what baseline coding holds)", (void *)4},
    {"warnings", (getter)Coefficients_get_info, NULL, "libjpeg warnings while reading (corrupt but decodable data)", (void *)5},
    {"spliced", (getter)Coefficients_get_info, NULL, "how many occlude() results were written by splicing: the source's "
     "entropy-coded bits kept for every MCU that did not change, the changed ones coded with the file's own Huffman tables", (void *)7},
    {"splicing", (getter)Coefficients_get_info, NULL, "whether occlude() writes by splicing (the file was read by our own "
     "decoder: one clean baseline scan)", (void *)8},
    {"sampling", (getter)Coefficients_get_info, NULL, "(h, v) sampling factors per component", (void *)6},
    {NULL},
};

static PyMethodDef Coefficients_methods[] = {
    {"occlude", (PyCFunction)Coefficients_occlude, METH_VARARGS,
     "occlude(mask, y0, x0, fill) -> bytes: a baseline JPEG with the fill under the mask crop at (y0, x0)"},
    {"blocks", (PyCFunction)Coefficients_blocks, METH_VARARGS,
     "blocks(component) -> (bytes of int16, (block rows, block columns)): the quantised coefficients, natural order"},
    {"quant", (PyCFunction)Coefficients_quant, METH_VARARGS, "quant(component) -> the 64 quantisation steps, natural order"},
    {"code_standard", (PyCFunction)Coefficients_code_standard, METH_NOARGS,
     "code_standard() -> bool: the image coded with the standard Huffman tables now, for the first occluder that needs "
     "a code the file's own tables lack (the same bytes as coding it then); False where none can need it"},
    {NULL},
};

static PyTypeObject CoefficientsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vlmforge.curation._jpegdct.Coefficients",
    .tp_doc = "Coefficients(data, splice=True, standard=False): a JPEG's quantised DCT coefficients, read once (splice=False: "
              "libjpeg reads and writes every file; standard=True: code_standard()'s work done as the blocks are decoded, at "
              "a fraction of its cost)",
    .tp_basicsize = sizeof(Coefficients),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Coefficients_init,
    .tp_dealloc = (destructor)Coefficients_dealloc,
    .tp_methods = Coefficients_methods,
    .tp_getset = Coefficients_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpegdct", "Occluders written into a JPEG's DCT coefficients (libjpeg).", -1, NULL,
};

/* The standard tables as libjpeg's jpeg_set_defaults() installs them: 0, or -1. */
static int standard_tables(void) {
    struct jpeg_compress_struct c;
    ErrorMgr err;
    c.err = &err.pub;
    use_errors(&err);
    if (setjmp(err.jump)) {
        jpeg_destroy_compress(&c);
        return -1;
    }
    jpeg_create_compress(&c);
    c.in_color_space = JCS_RGB;
    c.input_components = 3;
    jpeg_set_defaults(&c);
    for (int i = 0; i < 2; i++) {
        JHUFF_TBL *tables[2] = {c.dc_huff_tbl_ptrs[i], c.ac_huff_tbl_ptrs[i]};
        SpliceTable *into[2] = {&STD_DC[i], &STD_AC[i]};
        for (int k = 0; k < 2; k++) {
            if (!tables[k]) longjmp(err.jump, 1);
            memcpy(into[k]->bits, tables[k]->bits, sizeof(into[k]->bits));
            memcpy(into[k]->vals, tables[k]->huffval, sizeof(into[k]->vals));
        }
    }
    jpeg_destroy_compress(&c);
    return 0;
}

PyMODINIT_FUNC PyInit__jpegdct(void) {
    for (int x = 0; x < 8; x++)
        for (int c = 0; c < 8; c++) DCT_T[x][c] = DCT[c][x];
    if (standard_tables() < 0) {
        PyErr_SetString(PyExc_ImportError, "libjpeg gave no standard Huffman tables");
        return NULL;
    }
    if (PyType_Ready(&CoefficientsType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    JpegError = PyErr_NewException("vlmforge.curation._jpegdct.JpegError", PyExc_ValueError, NULL);
    if (!JpegError || PyModule_AddObjectRef(m, "JpegError", JpegError) < 0
        || PyModule_AddObjectRef(m, "Coefficients", (PyObject *)&CoefficientsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "LIBJPEG_VERSION", JPEG_LIB_VERSION);
    return m;
}
