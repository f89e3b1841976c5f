/* Mask kernels of the occlusion builder, each the same pixels as the numpy code it stands in for (which
 * runs where this module was not built), at the cost of the object's box and without a numpy call per run
 * or per point.
 *
 * column_crop(counts, h, w) reads a COCO mask's compressed RLE string as pycocotools' rleFrString does
 * (characters from '0', 5 value bits and a continuation bit each, the last one's 0x10 bit a sign, each run
 * from the fourth on a difference to the run two before), checks that the runs are non-negative and cover
 * the h x w frame, and returns (y0, x0, y1, x1, crop): the set pixels' bounding rows and columns ([y0, y1) x
 * [x0, x1), all zero for an empty mask) and a bytearray of (x1 - x0) columns of (y1 - y0) bytes, 1 where
 * set, in the frame's column-major order (the caller transposes it). Each run is one memset. Anything
 * malformed gives None, and the caller's numpy decoder says what is wrong.
 *
 * block_squares(mask, y0, x0, h, w, stride, patch, first, skips) paints the CVC block fill's squares: see
 * occlude.block_region.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The runs of `s` into *out (malloc'd, *n of them): 0, or -1 when malformed, -2 when out of memory. */
static int read_runs(const unsigned char *s, Py_ssize_t len, int64_t **out, Py_ssize_t *n) {
    int64_t *runs = malloc(sizeof(int64_t) * (size_t)(len ? len : 1)); /* at most one run a character */
    if (!runs) return -2;
    Py_ssize_t m = 0, p = 0;
    while (p < len) {
        int64_t x = 0;
        int k = 0, more = 1;
        while (more) {
            if (p >= len || k >= 12) { /* ends mid-value, or a value past 60 bits */
                free(runs);
                return -1;
            }
            int c = (int)s[p] - 48;
            if (c < 0 || c > 63) {
                free(runs);
                return -1;
            }
            x |= (int64_t)(c & 0x1f) << (5 * k);
            more = c & 0x20;
            p++;
            k++;
            if (!more && (c & 0x10)) x -= (int64_t)1 << (5 * k);
        }
        if (m > 2) x += runs[m - 2];
        runs[m++] = x;
    }
    *out = runs;
    *n = m;
    return 0;
}

static PyObject *column_crop(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    long long h, w;
    if (!PyArg_ParseTuple(args, "s*LL", &buf, &h, &w)) return NULL;
    int64_t *runs = NULL;
    Py_ssize_t n = 0;
    /* sizes past 2^31 (no image has them) are left to numpy, so that h * w cannot overflow here */
    int status = h > 0 && w > 0 && h <= INT32_MAX && w <= INT32_MAX ? read_runs(buf.buf, buf.len, &runs, &n) : -1;
    PyBuffer_Release(&buf);
    if (status == -2) return PyErr_NoMemory();
    if (status < 0) Py_RETURN_NONE;
    const int64_t frame = (int64_t)h * w;
    int64_t total = 0, first = -1, last = -1, ymin = h, ymax = -1;
    int crosses = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (runs[i] < 0 || runs[i] > frame - total) { /* negative, or past the frame */
            free(runs);
            Py_RETURN_NONE;
        }
        if ((i & 1) && runs[i]) {
            int64_t a = total, b = total + runs[i] - 1; /* first and last pixel, column-major */
            if (first < 0) first = a;
            last = b;
            if (a / h != b / h) {
                crosses = 1;
            } else {
                if (a % h < ymin) ymin = a % h;
                if (b % h > ymax) ymax = b % h;
            }
        }
        total += runs[i];
    }
    if (total != frame) {
        free(runs);
        Py_RETURN_NONE;
    }
    if (first < 0) {
        free(runs);
        return Py_BuildValue("iiiiy", 0, 0, 0, 0, "");
    }
    const int64_t x0 = first / h, x1 = last / h + 1;
    const int64_t y0 = crosses ? 0 : ymin, y1 = crosses ? h : ymax + 1;
    const int64_t rows = y1 - y0;
    PyObject *crop = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)((x1 - x0) * rows));
    if (!crop) {
        free(runs);
        return NULL;
    }
    char *out = PyByteArray_AS_STRING(crop);
    memset(out, 0, (size_t)((x1 - x0) * rows));
    int64_t pos = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((i & 1) && runs[i]) { /* set pixels [pos, pos + run): a piece in each column they reach */
            for (int64_t a = pos, end = pos + runs[i]; a < end;) {
                int64_t col = a / h, top = a % h, stop = (col + 1) * h < end ? (col + 1) * h : end;
                memset(out + (col - x0) * rows + (top - y0), 1, (size_t)(stop - a));
                a = stop;
            }
        }
        pos += runs[i];
    }
    free(runs);
    PyObject *result = Py_BuildValue("LLLLN", (long long)y0, (long long)x0, (long long)y1, (long long)x1, crop);
    return result;
}

/* The grid points (multiples of `stride` in frame coordinates, row-major) inside a crop of the mask whose
 * top-left pixel is (y0, x0), picked by a countdown (the first after skipping `first`, each next after
 * skipping skips[i] more; occlude.block_centres draws them), each made a patch x patch square (rows and
 * columns [g - patch / 2, g + patch - 1 - patch / 2], clipped to the h x w frame). Returns (y0, x0, y1, x1,
 * region): the box of the picked points grown by a patch each side (clipped), and a bytearray of its rows,
 * 1 where painted; (0, 0, 0, 0, b"") when no point is picked. Squares are painted as the separable
 * dilation they are: each picked point's row span into its grid row, then each grid row ORed into the rows
 * its squares cover. */
static PyObject *block_squares(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer mask = {0}, skips = {0};
    PyObject *mask_obj, *skips_obj;
    int y0, x0, h, w, stride, patch;
    long long first;
    if (!PyArg_ParseTuple(args, "OiiiiiiLO", &mask_obj, &y0, &x0, &h, &w, &stride, &patch, &first, &skips_obj))
        return NULL;
    PyObject *result = NULL;
    int *py = NULL, *px = NULL;
    uint8_t *spans = NULL;
    if (PyObject_GetBuffer(mask_obj, &mask, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (PyObject_GetBuffer(skips_obj, &skips, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&mask);
        return NULL;
    }
    if (mask.ndim != 2 || mask.itemsize != 1 || skips.ndim != 1 || skips.itemsize != 8 || stride < 1 || patch < 1
        || first < 0) {
        PyErr_SetString(PyExc_ValueError, "block_squares: a 2-D uint8 mask, int64 skips, stride and patch >= 1, first >= 0");
        goto done;
    }
    const Py_ssize_t mh = mask.shape[0], mw = mask.shape[1], nskips = skips.len / 8;
    const uint8_t *m = mask.buf;
    const int64_t *skip = skips.buf;
    const int ry = (int)(((-(long)y0) % stride + stride) % stride), rx = (int)(((-(long)x0) % stride + stride) % stride);
    /* at most one picked point per skip drawn, and one more */
    py = malloc(sizeof(int) * (size_t)(nskips + 1));
    px = malloc(sizeof(int) * (size_t)(nskips + 1));
    if (!py || !px) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t picked = 0, next_skip = 0;
    int64_t index = 0, want = first; /* the grid point's index among those inside the mask; the next to pick */
    for (Py_ssize_t yy = ry; yy < mh; yy += stride)
        for (Py_ssize_t xx = rx; xx < mw; xx += stride) {
            if (!m[yy * mw + xx]) continue;
            if (index++ != want) continue;
            py[picked] = y0 + (int)yy;
            px[picked] = x0 + (int)xx;
            picked++;
            if (next_skip >= nskips) {
                want = -1; /* no more draws: nothing more is picked */
                continue;
            }
            want = index + skip[next_skip++];
        }
    if (!picked) {
        result = Py_BuildValue("iiiiy", 0, 0, 0, 0, "");
        goto done;
    }
    int gy0 = py[0], gy1 = py[0], gx0 = px[0], gx1 = px[0];
    for (Py_ssize_t i = 1; i < picked; i++) {
        if (py[i] < gy0) gy0 = py[i];
        if (py[i] > gy1) gy1 = py[i];
        if (px[i] < gx0) gx0 = px[i];
        if (px[i] > gx1) gx1 = px[i];
    }
    const int by0 = gy0 - patch > 0 ? gy0 - patch : 0, by1 = gy1 + patch + 1 < h ? gy1 + patch + 1 : h;
    const int bx0 = gx0 - patch > 0 ? gx0 - patch : 0, bx1 = gx1 + patch + 1 < w ? gx1 + patch + 1 : w;
    const int rows = by1 - by0, cols = bx1 - bx0, up = patch / 2, down = patch - 1 - patch / 2;
    PyObject *region = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)rows * cols);
    spans = calloc((size_t)cols, 1);
    if (!region || !spans) {
        Py_XDECREF(region);
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    uint8_t *out = (uint8_t *)PyByteArray_AS_STRING(region);
    memset(out, 0, (size_t)rows * cols);
    /* points come row by row: each grid row's spans, then that row ORed into the rows its squares reach */
    for (Py_ssize_t i = 0; i < picked;) {
        int row = py[i];
        memset(spans, 0, (size_t)cols);
        for (; i < picked && py[i] == row; i++) {
            int a = px[i] - up > bx0 ? px[i] - up : bx0, b = px[i] + down + 1 < bx1 ? px[i] + down + 1 : bx1;
            if (b > a) memset(spans + (a - bx0), 1, (size_t)(b - a));
        }
        int ya = row - up > by0 ? row - up : by0, yb = row + down + 1 < by1 ? row + down + 1 : by1;
        for (int y = ya; y < yb; y++) {
            uint8_t *dst = out + (size_t)(y - by0) * cols;
            for (int x = 0; x < cols; x++) dst[x] |= spans[x];
        }
    }
    result = Py_BuildValue("iiiiN", by0, bx0, by1, bx1, region);
done:
    free(py);
    free(px);
    free(spans);
    PyBuffer_Release(&mask);
    PyBuffer_Release(&skips);
    return result;
}

static PyMethodDef methods[] = {
    {"column_crop", column_crop, METH_VARARGS,
     "column_crop(counts, h, w) -> (y0, x0, y1, x1, bytearray of the box's columns) or None when malformed"},
    {"block_squares", block_squares, METH_VARARGS,
     "block_squares(mask, y0, x0, h, w, stride, patch, first, skips) -> (y0, x0, y1, x1, bytearray of the box's rows)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_masks", "Mask kernels of the occlusion builder.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__masks(void) { return PyModule_Create(&module); }
