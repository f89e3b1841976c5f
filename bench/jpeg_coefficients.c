/* The cheapest way to rewrite a JPEG: read its quantised DCT coefficients and write them back, with no
 * inverse DCT, colour conversion, forward DCT or quantisation (libjpeg's jpeg_read_coefficients and
 * jpeg_write_coefficients, as jpegtran does). An occluder edited into the coefficients of the blocks it
 * covers would cost about this per sample; bench/occlusion.py --coefficient-floor compiles and runs it.
 *
 *   cc -O2 jpeg_coefficients.c -ljpeg -o jpeg_coefficients && ./jpeg_coefficients FILE...
 * prints "READ_SECONDS WRITE_SECONDS" summed over the files (file reading not counted). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <jpeglib.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    double read = 0, write = 0;
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) { perror(argv[i]); return 1; }
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        unsigned char *buf = malloc(n);
        if (fread(buf, 1, n, f) != (size_t)n) { perror(argv[i]); return 1; }
        fclose(f);
        double t0 = now();
        struct jpeg_decompress_struct d;
        struct jpeg_error_mgr derr;
        d.err = jpeg_std_error(&derr);  /* a broken file ends the process with libjpeg's message */
        jpeg_create_decompress(&d);
        jpeg_mem_src(&d, buf, n);
        jpeg_read_header(&d, TRUE);
        jvirt_barray_ptr *coefficients = jpeg_read_coefficients(&d);
        double t1 = now();
        struct jpeg_compress_struct c;
        struct jpeg_error_mgr cerr;
        c.err = jpeg_std_error(&cerr);
        jpeg_create_compress(&c);
        unsigned char *out = NULL;
        unsigned long out_size = 0;
        jpeg_mem_dest(&c, &out, &out_size);
        jpeg_copy_critical_parameters(&d, &c);
        jpeg_write_coefficients(&c, coefficients);
        jpeg_finish_compress(&c);
        jpeg_destroy_compress(&c);
        jpeg_finish_decompress(&d);
        jpeg_destroy_decompress(&d);
        write += now() - t1;
        read += t1 - t0;
        free(out);
        free(buf);
    }
    printf("%.6f %.6f\n", read, write);
    return 0;
}
