/* A baseline JPEG written again by splicing (see _jpegsplice.h).
 *
 * splice_open() walks the markers up to the scan, keeps the segments a decoder needs (tables, frame, restart
 * interval, scan header) and the scan's entropy-coded bytes with their 0xFF00 stuffing taken out, each
 * restart interval starting on a byte. splice_decode() Huffman-decodes the scan once, in place of
 * libjpeg's jpeg_read_coefficients(), and records each MCU's first and last bit; anything but a clean
 * scan (a bad code, a marker out of place, bytes past the padding, a DC no 8-bit image gives) and it
 * refuses, and libjpeg reads the file (and warns, or fails, as it does). splice_write() then writes SOI, a JFIF APP0, the kept segments, and the
 * scan: runs of unchanged MCUs are bit-copied, a changed MCU and the one after it (its first blocks' DC is
 * coded as a difference from the changed one's) are coded again with the file's own tables; stuffing,
 * padding to the byte with ones and RSTn markers as the standard has them. Tables made for an image hold
 * only its symbols: when a changed block needs another, splice_use_tables() codes the image once with
 * the standard tables, and later writes splice from that. Integer work only: the same input gives the
 * same bytes everywhere.
 */
#include "_jpegsplice.h"

#include <stdlib.h>
#include <string.h>

/* zigzag position -> natural (row-major) position */
static const uint8_t NATURAL[64] = {
    0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,  12, 19, 26, 33, 40, 48,
    41, 34, 27, 20, 13, 6,  7,  14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23,
    30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
};

#define FAST_BITS 9
#define COMBINED_BITS 11 /* a code and its value bits looked up at once when they fit in this many */
#define TAIL 512 /* zero bytes after the scan's bits: a block's decode may read past its end before it is checked */

/* What the next COMBINED_BITS bits hold: a value of `len` bits with its code, after `run` zeros (AC), or
 * run EOB / ZRL with no value; len 0 when the code and value are longer. */
typedef struct {
    int16_t value;
    uint8_t run;
    uint8_t len;
} Combined;
#define EOB 16
#define ZRL 17

typedef struct {
    Combined combined[1 << COMBINED_BITS];
    uint8_t fast_len[1 << FAST_BITS]; /* 0: the code is longer than FAST_BITS */
    uint8_t fast_sym[1 << FAST_BITS];
    int32_t maxcode[18]; /* largest code of each length, -1 for none */
    int32_t valoff[17];  /* symbol index = code + valoff[length] */
    uint8_t huffval[256];
    uint16_t code[256]; /* encoding: the code of each symbol and its length, 0 when it has none */
    uint8_t len[256];
    int defined;
} Table;

typedef struct {
    uint8_t *p;
    size_t n;
} Bytes;

struct Splice {
    int ncomp;
    int comp[4];      /* scan order -> frame order */
    int h[4], v[4];   /* sampling of each scan component (blocks per MCU across, down) */
    int dc[4], ac[4]; /* table of each scan component */
    int fid[4];       /* frame component ids, frame order */
    unsigned mcus_x, mcus_y, restart;
    size_t mcus;
    Table tables[2][4]; /* [DC, AC][id] */
    uint8_t app0[18]; /* the JFIF marker written after SOI */
    Bytes kept;       /* the segments kept (tables, frame, restart interval) but the Huffman tables */
    Bytes dht;        /* the Huffman tables' segments */
    Bytes sos;        /* the scan's header */
    int standard;     /* the tables are the standard ones now (splice_use_tables) */
    uint8_t *bits; /* the scan's entropy-coded data without stuffing, each interval from a byte, then TAIL zeros */
    size_t bits_len;
    size_t *interval; /* byte where each restart interval starts in `bits` */
    size_t intervals;
    uint64_t *first, *last; /* bits of each MCU: [first, last) */
    uint8_t *dirty;
    int decoded; /* splice_decode() ran: once only */
};

static unsigned be16(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }

static uint64_t peek(const uint8_t *buf, uint64_t pos) { /* 57 or more bits from `pos`, at the top */
    const uint8_t *p = buf + (pos >> 3);
    uint64_t w = (uint64_t)p[0] << 56 | (uint64_t)p[1] << 48 | (uint64_t)p[2] << 40 | (uint64_t)p[3] << 32
               | (uint64_t)p[4] << 24 | (uint64_t)p[5] << 16 | (uint64_t)p[6] << 8 | (uint64_t)p[7];
    return w << (pos & 7);
}

/* A DHT segment's tables: 0, or -1 when malformed. */
static int read_tables(Splice *s, const uint8_t *p, size_t n) {
    while (n) {
        if (n < 17) return -1;
        int cls = p[0] >> 4, id = p[0] & 15;
        if (cls > 1 || id > 3) return -1;
        size_t total = 0;
        for (int l = 1; l <= 16; l++) total += p[l];
        if (total > 256 || n < 17 + total) return -1;
        Table *t = &s->tables[cls][id];
        memset(t, 0, sizeof(*t));
        memcpy(t->huffval, p + 17, total);
        int32_t code = 0;
        int k = 0;
        for (int l = 1; l <= 16; l++) {
            t->valoff[l] = k - code;
            for (int i = 0; i < p[l]; i++, k++, code++) {
                if (code >= (1 << l)) return -1; /* more codes than the length holds */
                uint8_t sym = t->huffval[k];
                if (t->len[sym] || (!cls && sym > 15)) return -1; /* a symbol twice; a DC size libjpeg refuses */
                t->code[sym] = (uint16_t)code;
                t->len[sym] = (uint8_t)l;
                if (l <= FAST_BITS)
                    for (int fill = 0; fill < 1 << (FAST_BITS - l); fill++) {
                        int at = code << (FAST_BITS - l) | fill;
                        t->fast_len[at] = (uint8_t)l;
                        t->fast_sym[at] = sym;
                    }
                int size = cls ? sym & 15 : sym, run = cls ? sym >> 4 : 0;
                if (cls && !size) { /* EOB, ZRL; EOBn (progressive only) is left to the slow path, which refuses it */
                    if (run && run != 15) continue;
                    size = 0;
                    run = run ? ZRL : EOB;
                }
                if (l + size > COMBINED_BITS || size > 11) continue;
                for (int fill = 0; fill < 1 << (COMBINED_BITS - l); fill++) {
                    Combined *e = &t->combined[code << (COMBINED_BITS - l) | fill];
                    int bits = size ? fill >> (COMBINED_BITS - l - size) : 0;
                    e->value = (int16_t)(!size ? 0 : bits < (1 << (size - 1)) ? bits - (1 << size) + 1 : bits);
                    e->run = (uint8_t)run;
                    e->len = (uint8_t)(l + size);
                }
            }
            t->maxcode[l] = p[l] ? code - 1 : -1;
            if (code >= (1 << l)) return -1; /* the last code all ones: JPEG forbids it, libjpeg refuses */
            code <<= 1;
        }
        t->maxcode[17] = INT32_MAX;
        t->defined = 1;
        p += 17 + total;
        n -= 17 + total;
    }
    return 0;
}

static int append(Bytes *b, const uint8_t *p, size_t n) {
    uint8_t *more = realloc(b->p, b->n + n);
    if (!more) return -1;
    memcpy(more + b->n, p, n);
    b->p = more;
    b->n += n;
    return 0;
}

/* The scan's bytes from `p`, stuffing out, until EOI: 0, or -1 (another marker, a restart out of order,
 * no EOI, out of memory). */
static int read_scan(Splice *s, const uint8_t *p, const uint8_t *end) {
    size_t cap = (size_t)(end - p) + TAIL;
    s->bits = malloc(cap);
    size_t intervals_cap = 16;
    s->interval = malloc(intervals_cap * sizeof(size_t));
    if (!s->bits || !s->interval) return -1;
    size_t n = 0;
    s->interval[0] = 0;
    s->intervals = 1;
    for (;;) {
        const uint8_t *ff = memchr(p, 0xFF, (size_t)(end - p));
        if (!ff) return -1; /* no EOI */
        memcpy(s->bits + n, p, (size_t)(ff - p));
        n += (size_t)(ff - p);
        p = ff + 1;
        const uint8_t *fill = p;
        while (p < end && *p == 0xFF) p++; /* fill bytes, before a marker only */
        if (p >= end) return -1;
        uint8_t m = *p++;
        if (m == 0x00) {
            if (p - 1 != fill) return -1;
            s->bits[n++] = 0xFF;
        } else if (m >= 0xD0 && m <= 0xD7) {
            if (!s->restart || m != 0xD0 + (s->intervals - 1) % 8) return -1;
            if (s->intervals == intervals_cap) {
                size_t *more = realloc(s->interval, 2 * intervals_cap * sizeof(size_t));
                if (!more) return -1;
                s->interval = more;
                intervals_cap *= 2;
            }
            s->interval[s->intervals++] = n;
        } else if (m == 0xD9) {
            break;
        } else {
            return -1; /* DNL, a second scan, ...: libjpeg writes such a file */
        }
    }
    memset(s->bits + n, 0, TAIL);
    s->bits_len = n;
    return 0;
}

Splice *splice_open(const uint8_t *data, size_t len) {
    Splice *s = calloc(1, sizeof(Splice));
    if (!s) return NULL;
    const uint8_t *p = data, *end = data + len;
    int frame = 0;
    static const uint8_t app0[18] = {0xFF, 0xE0, 0x00, 0x10, 'J', 'F', 'I', 'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0};
    memcpy(s->app0, app0, sizeof(app0));
    if (len < 4 || p[0] != 0xFF || p[1] != 0xD8) goto fail;
    p += 2;
    for (;;) {
        if (end - p < 4 || *p != 0xFF) goto fail;
        while (p < end && *p == 0xFF) p++;
        if (end - p < 3) goto fail;
        uint8_t m = *p++;
        size_t n = be16(p);
        if (n < 2 || (size_t)(end - p) < n) goto fail;
        const uint8_t *seg = p + 2;
        size_t body = n - 2;
        int keep = 1;
        if (m >= 0xE0 || m == 0xFE) { /* APPn, COM: left out, as libjpeg's writer leaves them */
            keep = 0;
            if (m == 0xE0 && body >= 14 && !memcmp(seg, "JFIF", 5)) { /* the last one, as libjpeg reads them */
                if (seg[5] == 1 || seg[5] == 2) { /* version, as jpeg_copy_critical_parameters copies it */
                    s->app0[9] = seg[5];
                    s->app0[10] = seg[6];
                }
                memcpy(s->app0 + 11, seg + 7, 5); /* density unit, X and Y density */
            }
        } else if (m == 0xC4) {
            if (read_tables(s, seg, body) < 0 || append(&s->dht, p - 2, n + 2) < 0) goto fail;
            keep = 0;
        } else if (m == 0xC0 || m == 0xC1) {
            if (frame || body < 6 || seg[0] != 8) goto fail;
            int nf = seg[5];
            if (nf != 3 || body != 6 + 3 * (size_t)nf) goto fail;
            unsigned height = be16(seg + 1), width = be16(seg + 3);
            if (!height || !width) goto fail; /* a height from DNL */
            int hmax = 1, vmax = 1;
            for (int c = 0; c < nf; c++) {
                int hv = seg[7 + 3 * c];
                if ((hv >> 4) < 1 || (hv >> 4) > 4 || (hv & 15) < 1 || (hv & 15) > 4) goto fail;
                if ((hv >> 4) > hmax) hmax = hv >> 4;
                if ((hv & 15) > vmax) vmax = hv & 15;
                s->fid[c] = seg[6 + 3 * c];
            }
            s->mcus_x = (width + 8 * hmax - 1) / (8 * hmax);
            s->mcus_y = (height + 8 * vmax - 1) / (8 * vmax);
            s->mcus = (size_t)s->mcus_x * s->mcus_y;
            s->ncomp = nf;
            /* sampling per frame component, moved to scan order below */
            for (int c = 0; c < nf; c++) {
                s->h[c] = seg[7 + 3 * c] >> 4;
                s->v[c] = seg[7 + 3 * c] & 15;
            }
            frame = 1;
        } else if (m == 0xDB) {
            /* quantisation tables: copied as they are */
        } else if (m == 0xDD) {
            if (body != 2) goto fail;
            s->restart = be16(seg);
        } else if (m == 0xDA) {
            if (!frame || body < 1 || seg[0] != s->ncomp || body != 4 + 2 * (size_t)s->ncomp) goto fail;
            const uint8_t *spec = seg + 1 + 2 * s->ncomp;
            if (spec[0] != 0 || spec[1] != 63 || spec[2] != 0) goto fail; /* sequential: Ss 0, Se 63, Ah Al 0 */
            int h[4], v[4], used = 0, blocks = 0;
            memcpy(h, s->h, sizeof(h));
            memcpy(v, s->v, sizeof(v));
            for (int j = 0; j < s->ncomp; j++) {
                int c = 0;
                while (c < s->ncomp && s->fid[c] != seg[1 + 2 * j]) c++;
                if (c == s->ncomp || used & (1 << c)) goto fail;
                used |= 1 << c;
                s->comp[j] = c;
                s->h[j] = h[c];
                s->v[j] = v[c];
                s->dc[j] = seg[2 + 2 * j] >> 4;
                s->ac[j] = seg[2 + 2 * j] & 15;
                if (s->dc[j] > 3 || s->ac[j] > 3 || !s->tables[0][s->dc[j]].defined || !s->tables[1][s->ac[j]].defined) goto fail;
                blocks += h[c] * v[c];
            }
            if (blocks > 10) goto fail; /* an MCU holds at most 10 blocks: libjpeg refuses more */
            if (append(&s->sos, p - 2, n + 2) < 0) goto fail;
            p += n;
            break;
        } else {
            goto fail; /* progressive, arithmetic, lossless, hierarchical, DNL, ... */
        }
        if (keep && append(&s->kept, p - 2, n + 2) < 0) goto fail;
        p += n;
    }
    if (read_scan(s, p, end) < 0) goto fail;
    if (s->intervals != (s->restart ? (s->mcus + s->restart - 1) / s->restart : 1)) goto fail;
    s->first = malloc(s->mcus * sizeof(uint64_t));
    s->last = malloc(s->mcus * sizeof(uint64_t));
    s->dirty = calloc(s->mcus, 1);
    if (!s->first || !s->last || !s->dirty) goto fail;
    return s;
fail:
    splice_free(s);
    return NULL;
}

void splice_free(Splice *s) {
    if (!s) return;
    free(s->kept.p);
    free(s->dht.p);
    free(s->sos.p);
    free(s->bits);
    free(s->interval);
    free(s->first);
    free(s->last);
    free(s->dirty);
    free(s);
}

/* One symbol from the bits at the top of `w`: its length in *l, or -1 for no code. */
static int decode(const Table *t, uint64_t w, int *l) {
    unsigned top = (unsigned)(w >> (64 - FAST_BITS));
    if (t->fast_len[top]) {
        *l = t->fast_len[top];
        return t->fast_sym[top];
    }
    for (int n = FAST_BITS + 1; n <= 16; n++) {
        int32_t code = (int32_t)(w >> (64 - n));
        if (code <= t->maxcode[n]) {
            *l = n;
            return t->huffval[code + t->valoff[n]];
        }
    }
    return -1;
}

static int extend(uint64_t w, int s) { /* the s-bit value at the top of w, as JPEG's EXTEND reads it */
    int v = (int)(w >> (64 - s));
    return v < (1 << (s - 1)) ? v - (1 << s) + 1 : v;
}

/* Bits read MSB first from `p`: `acc` holds `nb` of them at its top (after refill(), 56 or more). */
typedef struct {
    const uint8_t *p;
    uint64_t acc;
    int nb;
} Reader;

static inline void refill(Reader *r) {
    r->acc |= peek(r->p, 0) >> r->nb;
    r->p += (63 - r->nb) >> 3;
    r->nb |= 56;
}

static inline void skip(Reader *r, int n) {
    r->acc <<= n;
    r->nb -= n;
}

/* One symbol and its value: the value, with the run in *run (EOB, ZRL as above); 0 and *run = -1 for
 * data that is not baseline Huffman coding. AC values fit in 10 bits, DC differences in 11. */
static inline int next_value(Reader *r, const Table *t, int ac, int *run) {
    if (r->nb < 32) refill(r);
    const Combined *e = &t->combined[r->acc >> (64 - COMBINED_BITS)];
    if (e->len) {
        skip(r, e->len);
        *run = e->run;
        return e->value;
    }
    int l, sym = decode(t, r->acc, &l);
    int size = ac ? sym & 15 : sym;
    *run = -1;
    if (sym < 0 || size > (ac ? 10 : 11)) return 0;
    *run = ac ? sym >> 4 : 0;
    if (ac && !size) {
        if (*run && *run != 15) { /* EOBn */
            *run = -1;
            return 0;
        }
        *run = *run ? ZRL : EOB;
    }
    int v = size ? extend(r->acc << l, size) : 0;
    skip(r, l + size);
    return v;
}

void splice_shape(const Splice *s, int c, unsigned *h, unsigned *v, unsigned *rows, unsigned *cols) {
    for (int j = 0; j < s->ncomp; j++)
        if (s->comp[j] == c) {
            *h = (unsigned)s->h[j];
            *v = (unsigned)s->v[j];
            *rows = s->mcus_y * (unsigned)s->v[j];
            *cols = s->mcus_x * (unsigned)s->h[j];
        }
}

void splice_mark(Splice *s, int c, unsigned by, unsigned bx) {
    for (int j = 0; j < s->ncomp; j++)
        if (s->comp[j] == c) {
            size_t my = by / (unsigned)s->v[j], mx = bx / (unsigned)s->h[j];
            if (my < s->mcus_y && mx < s->mcus_x) s->dirty[my * s->mcus_x + mx] = 1;
        }
}

typedef struct {
    uint8_t *buf;
    size_t len, cap;
    uint64_t acc; /* the low `n` bits are pending */
    int n;
    int raw; /* no 0xFF00 stuffing: bits to copy from later */
} Writer;

static int reserve(Writer *w, size_t more) {
    if (w->cap - w->len >= more) return 0;
    size_t cap = w->cap * 2 > w->len + more ? w->cap * 2 : w->len + more;
    uint8_t *buf = realloc(w->buf, cap);
    if (!buf) return -1;
    w->buf = buf;
    w->cap = cap;
    return 0;
}

/* Pending whole bytes out, 0xFF followed by 0x00 (room reserved by the caller). */
static void flush(Writer *w) {
    while (w->n >= 32) {
        uint32_t v = (uint32_t)(w->acc >> (w->n - 32));
        if (w->raw || !(((v & 0x7F7F7F7Fu) + 0x01010101u) & v & 0x80808080u)) { /* no 0xFF byte */
            w->buf[w->len] = (uint8_t)(v >> 24);
            w->buf[w->len + 1] = (uint8_t)(v >> 16);
            w->buf[w->len + 2] = (uint8_t)(v >> 8);
            w->buf[w->len + 3] = (uint8_t)v;
            w->len += 4;
            w->n -= 32;
            continue;
        }
        break;
    }
    while (w->n >= 8) {
        uint8_t b = (uint8_t)(w->acc >> (w->n - 8));
        w->buf[w->len++] = b;
        if (b == 0xFF && !w->raw) w->buf[w->len++] = 0;
        w->n -= 8;
    }
}

static inline void put(Writer *w, uint32_t value, int bits) { /* bits <= 32 */
    w->acc = (w->acc << bits) | value;
    w->n += bits;
    if (w->n >= 32) flush(w);
}

/* Bits [a, b) of the source's scan. */
static void copy_bits(Writer *w, const uint8_t *src, uint64_t a, uint64_t b) {
    for (; b - a >= 32; a += 32) put(w, (uint32_t)(peek(src, a) >> 32), 32);
    if (b > a) put(w, (uint32_t)(peek(src, a) >> (64 - (b - a))), (int)(b - a));
}

static int bit_size(int v) { return v ? 32 - __builtin_clz((unsigned)v) : 0; }

/* The code of `sym` followed by the `size` low bits of `value`, in one put (at most 16 + 11 bits). */
static inline int put_symbol(Writer *w, const Table *t, int sym, int value, int size) {
    if (!t->len[sym]) return 1;
    uint32_t bits = (uint32_t)t->code[sym] << size | ((uint32_t)value & ((1u << size) - 1));
    put(w, bits, t->len[sym] + size);
    return 0;
}

/* One block; 1 when a symbol has no code. The AC coefficients are put in zigzag order with a mask of the
 * non-zero ones, and only those are visited. */
static int encode_block(Writer *w, const short *block, int *pred, const Table *dc, const Table *ac) {
    int diff = block[0] - *pred;
    *pred = block[0];
    int size = bit_size(diff < 0 ? -diff : diff);
    if (size > 11 || put_symbol(w, dc, size, diff < 0 ? diff - 1 : diff, size)) return 1;
    short zz[64];
    uint64_t nonzero = 0;
    for (int k = 1; k < 64; k++) {
        zz[k] = block[NATURAL[k]];
        nonzero |= (uint64_t)(zz[k] != 0) << k;
    }
    int last = 0;
    while (nonzero) {
        int k = __builtin_ctzll(nonzero);
        nonzero &= nonzero - 1;
        int run = k - last - 1, c = zz[k];
        last = k;
        for (; run > 15; run -= 16)
            if (put_symbol(w, ac, 0xF0, 0, 0)) return 1;
        size = bit_size(c < 0 ? -c : c);
        if (size > 10 || put_symbol(w, ac, run << 4 | size, c < 0 ? c - 1 : c, size)) return 1;
    }
    return last < 63 && put_symbol(w, ac, 0x00, 0, 0);
}

/* MCU m of the blocks in `rows`, its first blocks' DC coded from the MCU before (none at `begin`, an
 * interval's first); 1 when a symbol has no code. */
static int encode_mcu(Writer *w, const Splice *s, SpliceRow *const *rows, size_t m, size_t begin) {
    unsigned my = (unsigned)(m / s->mcus_x), mx = (unsigned)(m % s->mcus_x);
    for (int j = 0; j < s->ncomp; j++) {
        int pred = 0;
        if (m > begin) { /* the last block of this component in the MCU before */
            unsigned py = (unsigned)((m - 1) / s->mcus_x), px = (unsigned)((m - 1) % s->mcus_x);
            pred = rows[s->comp[j]][py * s->v[j] + s->v[j] - 1][px * s->h[j] + s->h[j] - 1][0];
        }
        for (int yy = 0; yy < s->v[j]; yy++)
            for (int xx = 0; xx < s->h[j]; xx++)
                if (encode_block(w, rows[s->comp[j]][my * s->v[j] + yy][mx * s->h[j] + xx], &pred,
                                 &s->tables[0][s->dc[j]], &s->tables[1][s->ac[j]]))
                    return 1;
    }
    return 0;
}

/* Room for one coded MCU: a block is at most 16 + 11 bits for DC and 63 x (16 + 10) for AC, 210 bytes,
 * twice that with stuffing. */
static size_t mcu_room(const Splice *s) {
    size_t blocks = 0;
    for (int j = 0; j < s->ncomp; j++) blocks += (size_t)(s->h[j] * s->v[j]);
    return blocks * 420 + 16;
}

static void pad_byte(Writer *w) { /* with ones, as an interval ends */
    if (w->n & 7) put(w, (1u << (8 - (w->n & 7))) - 1, 8 - (w->n & 7));
    flush(w);
}

int splice_write(Splice *s, SpliceRow *const *rows, uint8_t **out, size_t *out_len) {
    Writer w = {0};
    int status = -2;
    const size_t room = mcu_room(s);
    const Bytes head[] = {{(uint8_t *)"\xFF\xD8", 2}, {s->app0, sizeof(s->app0)}, s->kept, s->dht, s->sos};
    size_t head_len = 0;
    for (size_t i = 0; i < sizeof(head) / sizeof(head[0]); i++) head_len += head[i].n;
    if (reserve(&w, head_len + s->bits_len + s->bits_len / 8 + 64) < 0) goto done;
    for (size_t i = 0; i < sizeof(head) / sizeof(head[0]); i++) {
        memcpy(w.buf + w.len, head[i].p, head[i].n);
        w.len += head[i].n;
    }
    size_t m = 0;
    for (size_t iv = 0; iv < s->intervals; iv++) {
        size_t upto = s->restart ? m + s->restart : s->mcus;
        if (upto > s->mcus) upto = s->mcus;
        size_t begin = m;
        uint64_t run_from = 0, run_to = 0; /* unchanged MCUs not written yet */
        for (; m < upto; m++) {
            int recode = s->dirty[m] || (m > begin && s->dirty[m - 1]);
            if (!recode) {
                if (run_to != s->first[m]) {
                    if (reserve(&w, (size_t)(run_to - run_from) / 4 + 16) < 0) goto done;
                    copy_bits(&w, s->bits, run_from, run_to);
                    run_from = s->first[m];
                }
                run_to = s->last[m];
                continue;
            }
            if (reserve(&w, (size_t)(run_to - run_from) / 4 + 16 + room) < 0) goto done;
            copy_bits(&w, s->bits, run_from, run_to);
            run_from = run_to = 0;
            if (encode_mcu(&w, s, rows, m, begin)) {
                status = 1;
                goto done;
            }
        }
        if (reserve(&w, (size_t)(run_to - run_from) / 4 + 64) < 0) goto done;
        copy_bits(&w, s->bits, run_from, run_to);
        pad_byte(&w);
        if (iv + 1 < s->intervals) {
            w.buf[w.len++] = 0xFF;
            w.buf[w.len++] = (uint8_t)(0xD0 + iv % 8);
        }
    }
    w.buf[w.len++] = 0xFF;
    w.buf[w.len++] = 0xD9;
    status = 0;
done:
    memset(s->dirty, 0, s->mcus);
    if (status) {
        free(w.buf);
    } else {
        *out = w.buf;
        *out_len = w.len;
    }
    return status;
}

/* A DHT segment body: class/id, 16 counts, the symbols. */
static int add_table(Bytes *b, int cls, int id, const SpliceTable *t) {
    uint8_t head[17];
    size_t total = 0;
    head[0] = (uint8_t)(cls << 4 | id);
    for (int l = 1; l <= 16; l++) total += head[l] = t->bits[l];
    return append(b, head, 17) < 0 || append(b, t->vals, total) < 0 ? -1 : 0;
}

/* `s` switched to the given tables (see splice_use_tables): their DHT segment in *dht, read into s->tables. 0; -1
 * (tables that cannot be) or -2 (out of memory), *dht then freed. */
static int install_tables(Splice *s, const SpliceTable dc[2], const SpliceTable ac[2], Bytes *dht) {
    /* each table id the scan uses gets the luminance table if the first component uses it, else chrominance */
    uint8_t marker[4] = {0xFF, 0xC4, 0, 0};
    *dht = (Bytes){0};
    if (append(dht, marker, 4) < 0) goto oom;
    for (int cls = 0; cls < 2; cls++)
        for (int id = 0; id < 4; id++) {
            int used = 0, luma = 0;
            for (int j = 0; j < s->ncomp; j++)
                if ((cls ? s->ac[j] : s->dc[j]) == id) {
                    used = 1;
                    luma |= s->comp[j] == 0;
                }
            if (used && add_table(dht, cls, id, cls ? &ac[!luma] : &dc[!luma]) < 0) goto oom;
        }
    if (dht->n - 2 > 0xFFFF || read_tables(s, dht->p + 4, dht->n - 4) < 0) {
        free(dht->p);
        return -1;
    }
    dht->p[2] = (uint8_t)((dht->n - 2) >> 8);
    dht->p[3] = (uint8_t)(dht->n - 2);
    return 0;
oom:
    free(dht->p);
    return -2;
}

/* The image coded with s's (new) tables, in `w`, each interval from a byte, is s's scan now. 0, or -2 (out of
 * memory; w's buffer, `interval` and `dht` are then freed). */
static int take_coding(Splice *s, Writer *w, size_t *interval, Bytes dht) {
    if (reserve(w, TAIL) < 0) {
        free(w->buf);
        free(interval);
        free(dht.p);
        return -2;
    }
    memset(w->buf + w->len, 0, TAIL);
    free(s->bits);
    free(s->interval);
    free(s->dht.p);
    s->bits = w->buf;
    s->bits_len = w->len;
    s->interval = interval;
    s->dht = dht;
    s->standard = 1;
    return 0;
}

int splice_use_tables(Splice *s, const SpliceTable dc[2], const SpliceTable ac[2], SpliceRow *const *rows) {
    Bytes dht;
    Writer w = {0, 0, 0, 0, 0, 1}; /* raw: later writes copy from it */
    size_t *interval = NULL;
    int status = install_tables(s, dc, ac, &dht);
    if (status) return status;
    /* the image coded once with them, each interval from a byte, each MCU's bits recorded */
    status = -2;
    interval = malloc(s->intervals * sizeof(size_t));
    const size_t room = mcu_room(s);
    if (!interval || reserve(&w, s->bits_len + TAIL) < 0) goto done;
    size_t m = 0;
    for (size_t iv = 0; iv < s->intervals; iv++) {
        size_t upto = s->restart ? m + s->restart : s->mcus;
        if (upto > s->mcus) upto = s->mcus;
        size_t begin = m;
        interval[iv] = w.len;
        for (; m < upto; m++) {
            if (reserve(&w, room) < 0) goto done;
            s->first[m] = (uint64_t)w.len * 8 + (uint64_t)w.n;
            if (encode_mcu(&w, s, rows, m, begin)) {
                status = -1;
                goto done;
            }
            s->last[m] = (uint64_t)w.len * 8 + (uint64_t)w.n;
        }
        pad_byte(&w);
    }
    return take_coding(s, &w, interval, dht);
done:
    free(w.buf);
    free(interval);
    free(dht.p);
    return status;
}

/* The scan decoded into `rows`, each MCU's bits recorded (splice_decode); with `w`, each block is also coded
 * again into it with `to`'s tables as it is decoded, and `to`'s MCU bits and intervals recorded: the bits that
 * encode_mcu() gives for the blocks read (each value's zero run worked out from the positions, whatever ZRL
 * and EOB symbols the file spent on it). Inlined into both callers, so the plain decode carries no test of `w`.
 * 0; -1 for a scan that is not clean; -2 when out of memory while coding. */
static inline __attribute__((always_inline)) int decode_scan(Splice *s, SpliceRow *const *rows, Writer *w,
                                                             Splice *to, size_t *to_interval) {
    const size_t room = w ? mcu_room(s) : 0;
    size_t m = 0;
    uint64_t pos = 0;
    for (size_t iv = 0; iv < s->intervals; iv++) {
        uint64_t start = (uint64_t)s->interval[iv] * 8;
        uint64_t stop = (iv + 1 < s->intervals ? (uint64_t)s->interval[iv + 1] : s->bits_len) * 8;
        if (pos > start || start - pos >= 8) return -1; /* more than padding between intervals */
        Reader r = {s->bits + s->interval[iv], 0, 0};
        refill(&r);
        int pred[4] = {0};
        size_t upto = s->restart ? m + s->restart : s->mcus;
        if (upto > s->mcus) upto = s->mcus;
        if (w) to_interval[iv] = w->len;
        for (; m < upto; m++) {
            unsigned my = (unsigned)(m / s->mcus_x), mx = (unsigned)(m % s->mcus_x);
            s->first[m] = (uint64_t)(r.p - s->bits) * 8 - (uint64_t)r.nb;
            if (w) {
                if (reserve(w, room) < 0) return -2;
                to->first[m] = (uint64_t)w->len * 8 + (uint64_t)w->n;
            }
            for (int j = 0; j < s->ncomp; j++) {
                const Table *dc = &s->tables[0][s->dc[j]], *ac = &s->tables[1][s->ac[j]];
                const Table *to_dc = w ? &to->tables[0][to->dc[j]] : NULL, *to_ac = w ? &to->tables[1][to->ac[j]] : NULL;
                for (int yy = 0; yy < s->v[j]; yy++)
                    for (int xx = 0; xx < s->h[j]; xx++) {
                        short *block = rows[s->comp[j]][my * s->v[j] + yy][mx * s->h[j] + xx];
                        memset(block, 0, 64 * sizeof(short));
                        int run;
                        int diff = next_value(&r, dc, 0, &run);
                        pred[j] += diff;
                        /* a DC past what 8-bit samples give (a corrupt file): libjpeg reads it, and warns or not */
                        if (run < 0 || pred[j] < -1024 || pred[j] > 1023) return -1;
                        block[0] = (short)pred[j];
                        if (w) {
                            int size = bit_size(diff < 0 ? -diff : diff);
                            if (put_symbol(w, to_dc, size, diff < 0 ? diff - 1 : diff, size)) return -3;
                        }
                        int last = 0;
                        for (int k = 1; k < 64;) {
                            int v = next_value(&r, ac, 1, &run);
                            if (run < 16) {
                                if (run < 0 || (k += run) > 63) return -1;
                                if (w) {
                                    int zeros = k - last - 1, size = bit_size(v < 0 ? -v : v);
                                    for (; zeros > 15; zeros -= 16)
                                        if (put_symbol(w, to_ac, 0xF0, 0, 0)) return -3;
                                    if (put_symbol(w, to_ac, zeros << 4 | size, v < 0 ? v - 1 : v, size)) return -3;
                                }
                                last = k;
                                block[NATURAL[k++]] = (short)v;
                            } else if (run == ZRL) {
                                k += 16;
                            } else {
                                break;
                            }
                        }
                        if (w && last < 63 && put_symbol(w, to_ac, 0x00, 0, 0)) return -3;
                        if ((uint64_t)(r.p - s->bits) * 8 - (uint64_t)r.nb > stop) return -1;
                    }
            }
            pos = s->last[m] = (uint64_t)(r.p - s->bits) * 8 - (uint64_t)r.nb;
            if (w) to->last[m] = (uint64_t)w->len * 8 + (uint64_t)w->n;
        }
        if (stop - pos >= 8) return -1;
        if (w) pad_byte(w);
    }
    return 0;
}

int splice_decode(Splice *s, SpliceRow *const *rows) {
    if (s->decoded || decode_scan(s, rows, NULL, NULL, NULL)) return -1;
    s->decoded = 1;
    return 0;
}

int splice_decode_standard(Splice *s, SpliceRow *const *rows, const SpliceTable dc[2], const SpliceTable ac[2],
                           Splice **standard) {
    *standard = NULL;
    if (s->decoded || s->standard || splice_complete(s)) return splice_decode(s, rows);
    Splice *to = splice_copy(s);
    Bytes dht;
    if (!to || install_tables(to, dc, ac, &dht)) { /* no copy to code into: the decode alone */
        splice_free(to);
        return splice_decode(s, rows);
    }
    Writer w = {0, 0, 0, 0, 0, 1}; /* raw, as splice_use_tables writes */
    size_t *interval = malloc(s->intervals * sizeof(size_t));
    int status = interval && reserve(&w, s->bits_len + TAIL) == 0 ? decode_scan(s, rows, &w, to, interval) : -2;
    if (status < -1 || (status == 0 && take_coding(to, &w, interval, dht) < 0)) {
        if (status < -1) { /* out of memory, or tables that lack a symbol, while coding: the decode alone */
            free(w.buf);
            free(interval);
            free(dht.p);
        }
        splice_free(to);
        return splice_decode(s, rows);
    }
    if (status < 0) { /* not a clean scan */
        free(w.buf);
        free(interval);
        free(dht.p);
        splice_free(to);
        return -1;
    }
    s->decoded = to->decoded = 1;
    *standard = to;
    return 0;
}

int splice_standard(const Splice *s) { return s->standard; }

int splice_complete(const Splice *s) {
    for (int j = 0; j < s->ncomp; j++) {
        const Table *dc = &s->tables[0][s->dc[j]], *ac = &s->tables[1][s->ac[j]];
        for (int k = 0; k <= 11; k++) /* DC differences of up to 11 bits */
            if (!dc->len[k]) return 0;
        if (!ac->len[0x00] || !ac->len[0xF0]) return 0; /* end of block, a run of 16 zeros */
        for (int run = 0; run < 16; run++)
            for (int size = 1; size <= 10; size++)
                if (!ac->len[run << 4 | size]) return 0;
    }
    return 1;
}

static int copy_bytes(Bytes *to, const Bytes *from) {
    to->n = from->n;
    to->p = NULL;
    if (!from->n) return 0;
    to->p = malloc(from->n);
    if (!to->p) return -1;
    memcpy(to->p, from->p, from->n);
    return 0;
}

Splice *splice_copy(const Splice *s) {
    Splice *c = malloc(sizeof(Splice));
    if (!c) return NULL;
    *c = *s;
    c->kept.p = c->dht.p = c->sos.p = c->bits = c->dirty = NULL;
    c->interval = NULL;
    c->first = c->last = NULL;
    if (copy_bytes(&c->kept, &s->kept) < 0 || copy_bytes(&c->dht, &s->dht) < 0 || copy_bytes(&c->sos, &s->sos) < 0)
        goto fail;
    c->bits = malloc(s->bits_len + TAIL);
    c->interval = malloc(s->intervals * sizeof(size_t));
    c->first = malloc(s->mcus * sizeof(uint64_t));
    c->last = malloc(s->mcus * sizeof(uint64_t));
    c->dirty = malloc(s->mcus);
    if (!c->bits || !c->interval || !c->first || !c->last || !c->dirty) goto fail;
    memcpy(c->bits, s->bits, s->bits_len + TAIL);
    memcpy(c->interval, s->interval, s->intervals * sizeof(size_t));
    memcpy(c->first, s->first, s->mcus * sizeof(uint64_t));
    memcpy(c->last, s->last, s->mcus * sizeof(uint64_t));
    memcpy(c->dirty, s->dirty, s->mcus);
    return c;
fail:
    splice_free(c);
    return NULL;
}
