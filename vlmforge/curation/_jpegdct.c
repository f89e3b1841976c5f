/* Occluders written into a JPEG's quantised DCT coefficients, with libjpeg(-turbo).
 *
 * Coefficients(data) reads a JPEG's coefficients once (jpeg_read_coefficients, no inverse DCT or colour
 * conversion). occlude(mask, y0, x0, fill) then gives a new baseline JPEG in which the pixels under `mask`
 * (a 2-D uint8/bool crop whose top-left pixel is (y0, x0)) show `fill` (an (r, g, b) tuple, or an RGB
 * uint8 array of the mask's shape): only the 8x8 blocks the mask touches are decoded, composited in
 * YCbCr and quantised again with the file's own tables; every other block keeps its coefficients, so the
 * pixels outside the occluder are the source's own, with no second generation of JPEG loss. A
 * chroma sample that stands for several pixels (4:2:0, 4:2:2) takes the fill in proportion to the pixels
 * under the mask, as an encoder's box downsampling of the painted image would. The coefficients are then
 * entropy-coded again (jpeg_write_coefficients, as jpegtran does) with the standard Huffman tables; the
 * blocks are put back after, so one read serves every occluder of the image.
 *
 * All arithmetic is integer (a DCT matrix with 14 fractional bits, samples with 28): the same input
 * gives the same bytes on every machine. Python's GIL is released while libjpeg works.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>

/* A[u][x] = round(2^14 * C(u) / 2 * cos((2x + 1) u pi / 16)), C(0) = 1/sqrt(2), else 1: the orthonormal
 * 8-point DCT-II of JPEG, so that F = A f A^T and f = A^T F A. */
static const int64_t DCT[8][8] = {
    {5793, 5793, 5793, 5793, 5793, 5793, 5793, 5793},
    {8035, 6811, 4551, 1598, -1598, -4551, -6811, -8035},
    {7568, 3135, -3135, -7568, -7568, -3135, 3135, 7568},
    {6811, -1598, -8035, -4551, 4551, 8035, 1598, -6811},
    {5793, -5793, -5793, 5793, 5793, -5793, -5793, 5793},
    {4551, -8035, 1598, 6811, -6811, -1598, 8035, -4551},
    {3135, -7568, 7568, -3135, -3135, 7568, -7568, 3135},
    {1598, -4551, 6811, -8035, 8035, -6811, 4551, -1598},
};
#define SAMPLE_BITS 28 /* fractional bits of a sample in the composite */
#define SAMPLE_LIMIT ((int64_t)2048 << SAMPLE_BITS) /* |sample - 128| kept below this: no overflow below */
#define COEF_LIMIT 1023 /* what baseline Huffman coding can hold for a coefficient (and DC differences) */

static PyObject *JpegError;

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
} SavedBlock;

typedef struct {
    SavedBlock *items;
    size_t n, cap;
} Saved;

typedef struct {
    PyObject_HEAD
    struct jpeg_decompress_struct src;
    ErrorMgr err;
    jvirt_barray_ptr *coefs;
    int created; /* src holds libjpeg state to destroy */
    int ready;   /* coefficients read */
    Saved saved; /* blocks occlude() changed, put back after writing */
} Coefficients;

static int save_block(Saved *s, JCOEF *block) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        SavedBlock *items = realloc(s->items, cap * sizeof(SavedBlock));
        if (!items) return -1;
        s->items = items;
        s->cap = cap;
    }
    s->items[s->n].block = block;
    memcpy(s->items[s->n].saved, block, sizeof(JCOEF) * DCTSIZE2);
    s->n++;
    return 0;
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

/* Decode one block, put the fill where the occluder covers its samples, and quantise it again. */
static void composite_block(JCOEF *block, const UINT16 *quant, const int64_t cover[64], const int64_t fill_sum[64],
                            const int64_t count[64]) {
    int64_t t[8][8], f[8][8];
    for (int r = 0; r < 8; r++) /* T = F A: 14 fractional bits */
        for (int x = 0; x < 8; x++) {
            int64_t s = 0;
            for (int c = 0; c < 8; c++) s += (int64_t)block[r * 8 + c] * quant[r * 8 + c] * DCT[c][x];
            t[r][x] = s;
        }
    for (int y = 0; y < 8; y++) /* f = A^T T: 28 */
        for (int x = 0; x < 8; x++) {
            int64_t s = 0;
            for (int r = 0; r < 8; r++) s += DCT[r][y] * t[r][x];
            int k = y * 8 + x;
            if (cover[k] > 0) /* fill_sum has 16 fractional bits */
                s = (s * (count[k] - cover[k]) + fill_sum[k] * ((int64_t)1 << (SAMPLE_BITS - 16))) / count[k];
            f[y][x] = s > SAMPLE_LIMIT ? SAMPLE_LIMIT : (s < -SAMPLE_LIMIT ? -SAMPLE_LIMIT : s);
        }
    for (int r = 0; r < 8; r++) /* U = A f, back to 14 fractional bits */
        for (int x = 0; x < 8; x++) {
            int64_t s = 0;
            for (int y = 0; y < 8; y++) s += DCT[r][y] * f[y][x];
            t[r][x] = (s + ((int64_t)1 << (SAMPLE_BITS - 1))) >> SAMPLE_BITS;
        }
    for (int r = 0; r < 8; r++) /* F = U A^T (28 fractional bits), quantised half away from zero */
        for (int c = 0; c < 8; c++) {
            int64_t s = 0;
            for (int x = 0; x < 8; x++) s += t[r][x] * DCT[c][x];
            int64_t step = (int64_t)quant[r * 8 + c] << SAMPLE_BITS;
            int64_t q = s >= 0 ? (s + step / 2) / step : -((-s + step / 2) / step);
            block[r * 8 + c] = (JCOEF)(q > COEF_LIMIT ? COEF_LIMIT : (q < -COEF_LIMIT ? -COEF_LIMIT : q));
        }
}

/* Every block of component `ci` that the occluder touches, composited in place (originals kept in `saved`). */
static int occlude_component(Coefficients *self, int ci, const Occluder *o, Saved *saved) {
    j_decompress_ptr src = &self->src;
    jpeg_component_info *comp = &src->comp_info[ci];
    const int rx = src->max_h_samp_factor / comp->h_samp_factor, ry = src->max_v_samp_factor / comp->v_samp_factor;
    const int width = (int)src->image_width, height = (int)src->image_height;
    const UINT16 *quant = comp->quant_table->quantval;
    int64_t fill16 = o->fill ? 0 : ycc16(ci, o->rgb[0], o->rgb[1], o->rgb[2]);
    int by0 = o->y0 / ry / 8, by1 = (o->y0 + o->mh - 1) / ry / 8;
    int bx0 = o->x0 / rx / 8, bx1 = (o->x0 + o->mw - 1) / rx / 8;
    if (by1 >= (int)comp->height_in_blocks) by1 = (int)comp->height_in_blocks - 1;
    if (bx1 >= (int)comp->width_in_blocks) bx1 = (int)comp->width_in_blocks - 1;
    for (int by = by0; by <= by1; by++) {
        JBLOCKARRAY rows = (*src->mem->access_virt_barray)((j_common_ptr)src, self->coefs[ci], by, 1, TRUE);
        for (int bx = bx0; bx <= bx1; bx++) {
            int64_t cover[64] = {0}, fill_sum[64] = {0}, count[64] = {0};
            int touched = 0;
            for (int i = 0; i < 8; i++) {
                int py0 = (by * 8 + i) * ry, py1 = py0 + ry;
                if (py0 >= height) break;
                if (py1 > height) py1 = height;
                for (int j = 0; j < 8; j++) {
                    int px0 = (bx * 8 + j) * rx, px1 = px0 + rx;
                    if (px0 >= width) break;
                    if (px1 > width) px1 = width;
                    int k = i * 8 + j;
                    count[k] = (int64_t)(py1 - py0) * (px1 - px0);
                    int ya = py0 > o->y0 ? py0 : o->y0, yb = py1 < o->y0 + o->mh ? py1 : o->y0 + o->mh;
                    int xa = px0 > o->x0 ? px0 : o->x0, xb = px1 < o->x0 + o->mw ? px1 : o->x0 + o->mw;
                    for (int py = ya; py < yb; py++)
                        for (int px = xa; px < xb; px++) {
                            size_t at = (size_t)(py - o->y0) * o->mw + (px - o->x0);
                            if (!o->mask[at]) continue;
                            cover[k]++;
                            if (o->fill) {
                                const uint8_t *p = o->fill + 3 * at;
                                fill_sum[k] += ycc16(ci, p[0], p[1], p[2]);
                            } else {
                                fill_sum[k] += fill16;
                            }
                        }
                    touched |= cover[k] > 0;
                }
            }
            if (!touched) continue;
            JCOEF *block = rows[0][bx];
            if (save_block(saved, block) < 0) return -1;
            composite_block(block, quant, cover, fill_sum, count);
        }
    }
    return 0;
}

/* The libjpeg work of occlude(), with no Python call: 0, -1 for a libjpeg error (message in self->err),
 * -2 when out of memory. */
static int occlude_and_write(Coefficients *self, const Occluder *o, unsigned char **out, unsigned long *out_size) {
    struct jpeg_compress_struct dst;
    volatile int dst_created = 0;
    dst.err = &self->err.pub; /* errors of either object land in the one handler below */
    if (setjmp(self->err.jump)) {
        if (dst_created) jpeg_destroy_compress(&dst);
        restore_blocks(&self->saved);
        return -1;
    }
    for (int ci = 0; ci < self->src.num_components; ci++)
        if (occlude_component(self, ci, o, &self->saved) < 0) {
            restore_blocks(&self->saved);
            return -2;
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

static int read_coefficients(Coefficients *self, const void *data, size_t len) {
    if (setjmp(self->err.jump)) return -1;
    jpeg_mem_src(&self->src, (const unsigned char *)data, (unsigned long)len);
    jpeg_read_header(&self->src, TRUE);
    self->coefs = jpeg_read_coefficients(&self->src);
    return 0;
}

static int Coefficients_init(Coefficients *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"data", NULL};
    Py_buffer buf;
    if (self->created) {
        PyErr_SetString(PyExc_RuntimeError, "Coefficients cannot be initialised twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*", names, &buf)) return -1;
    self->src.err = &self->err.pub;
    use_errors(&self->err);
    jpeg_create_decompress(&self->src);
    self->created = 1;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = read_coefficients(self, buf.buf, (size_t)buf.len);
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
    return 0;
}

/* Three components in YCbCr, 8-bit, with sampling factors that divide the largest: what occlude() takes. */
static int is_editable(Coefficients *self) {
    j_decompress_ptr s = &self->src;
    if (s->num_components != 3 || s->jpeg_color_space != JCS_YCbCr || s->data_precision != 8) return 0;
    for (int ci = 0; ci < 3; ci++) {
        jpeg_component_info *c = &s->comp_info[ci];
        if (s->max_h_samp_factor % c->h_samp_factor || s->max_v_samp_factor % c->v_samp_factor || !c->quant_table)
            return 0;
    }
    return 1;
}

static PyObject *Coefficients_occlude(Coefficients *self, PyObject *args) {
    PyObject *mask_obj, *fill_obj;
    int y0, x0;
    if (check_ready(self) < 0) return NULL;
    if (!PyArg_ParseTuple(args, "OiiO", &mask_obj, &y0, &x0, &fill_obj)) return NULL;
    if (!is_editable(self)) {
        PyErr_SetString(PyExc_ValueError, "only 8-bit three-component YCbCr JPEGs can be occluded in the DCT domain");
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
    Py_BEGIN_ALLOW_THREADS
    status = occlude_and_write(self, &o, &out, &out_size);
    Py_END_ALLOW_THREADS
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
    if (setjmp(self->err.jump)) {
        Py_DECREF(out);
        PyErr_Format(JpegError, "%s", self->err.message);
        return NULL;
    }
    for (JDIMENSION by = 0; by < comp->height_in_blocks; by++) {
        JBLOCKARRAY rows = (*self->src.mem->access_virt_barray)((j_common_ptr)&self->src, self->coefs[ci], by, 1, FALSE);
        for (JDIMENSION bx = 0; bx < comp->width_in_blocks; bx++)
            for (int k = 0; k < DCTSIZE2; k++) ((int16_t *)(p + by * row))[bx * DCTSIZE2 + k] = (int16_t)rows[0][bx][k];
    }
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
    if (check_ready(self) < 0) return NULL;
    j_decompress_ptr s = &self->src;
    switch ((intptr_t)what) {
    case 0: return PyLong_FromUnsignedLong(s->image_width);
    case 1: return PyLong_FromUnsignedLong(s->image_height);
    case 2: return PyLong_FromLong(s->num_components);
    case 3: return PyBool_FromLong(s->progressive_mode);
    case 4: return PyBool_FromLong(is_editable(self));
    case 5: return PyLong_FromLong(self->err.pub.num_warnings);
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
    {"editable", (getter)Coefficients_get_info, NULL, "whether occlude() takes this file (8-bit 3-component YCbCr)", (void *)4},
    {"warnings", (getter)Coefficients_get_info, NULL, "libjpeg warnings while reading (corrupt but decodable data)", (void *)5},
    {"sampling", (getter)Coefficients_get_info, NULL, "(h, v) sampling factors per component", (void *)6},
    {NULL},
};

static PyMethodDef Coefficients_methods[] = {
    {"occlude", (PyCFunction)Coefficients_occlude, METH_VARARGS,
     "occlude(mask, y0, x0, fill) -> bytes: a baseline JPEG with the fill under the mask crop at (y0, x0)"},
    {"blocks", (PyCFunction)Coefficients_blocks, METH_VARARGS,
     "blocks(component) -> (bytes of int16, (block rows, block columns)): the quantised coefficients, natural order"},
    {"quant", (PyCFunction)Coefficients_quant, METH_VARARGS, "quant(component) -> the 64 quantisation steps, natural order"},
    {NULL},
};

static PyTypeObject CoefficientsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vlmforge.curation._jpegdct.Coefficients",
    .tp_doc = "Coefficients(data): a JPEG's quantised DCT coefficients, read once",
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

PyMODINIT_FUNC PyInit__jpegdct(void) {
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
