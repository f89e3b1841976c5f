/* A COCO mask's compressed RLE string decoded straight into the columns of its object.
 *
 * column_crop(counts, h, w) reads the string as pycocotools' rleFrString does (characters from '0', 5 value
 * bits and a continuation bit each, the last one's 0x10 bit a sign, each run from the fourth on a difference
 * to the run two before), checks that the runs are non-negative and cover the h x w frame, and returns
 * (y0, x0, y1, x1, crop): the set pixels' bounding rows and columns ([y0, y1) x [x0, x1), all zero for an
 * empty mask) and a bytearray of (x1 - x0) columns of (y1 - y0) bytes, 1 where set, in the frame's
 * column-major order (the caller transposes it). Each run is one memset: the cost is the object's box, and
 * no numpy call is made per run or per character. Anything malformed gives None, and the caller's numpy
 * decoder says what is wrong.
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
    int status = h > 0 && w > 0 ? read_runs(buf.buf, buf.len, &runs, &n) : -1;
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

static PyMethodDef methods[] = {
    {"column_crop", column_crop, METH_VARARGS,
     "column_crop(counts, h, w) -> (y0, x0, y1, x1, bytearray of the box's columns) or None when malformed"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rle", "COCO compressed RLE decoded into an object's box.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__rle(void) { return PyModule_Create(&module); }
