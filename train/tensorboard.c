/*
 * TensorBoard event files (see tensorboard.h): a few protobuf fields
 * encoded by hand into a growing buffer, framed as TFRecords.
 *
 * Field numbers, from TensorFlow's event.proto and summary.proto:
 *   Event:      wall_time 1 (double), step 2 (int64), file_version 3
 *               (string), summary 5 (Summary), session_log 7 (SessionLog)
 *   Summary:    value 1 (repeated Value)
 *   Value:      tag 1 (string), simple_value 2 (float), image 4 (Image)
 *   Image:      height 1, width 2, colorspace 3 (int32), encoded_image_string 4 (bytes)
 *   SessionLog: status 1 (enum; START = 1)
 */
#define _GNU_SOURCE /* gethostname's HOST_NAME_MAX */
#include "tensorboard.h"

#include "autograd/error.h"
#include "autograd/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* ---- CRC-32C ---- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_table_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t dc_crc32c(uint32_t crc, const void *data, size_t n) {
    pthread_once(&crc_once, crc_table_init);
    const uint8_t *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static uint32_t masked_crc(const void *data, size_t n) {
    uint32_t c = dc_crc32c(0, data, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

/* ---- protobuf encoding ---- */

/* A growing byte buffer; a failed allocation sticks and is reported once. */
typedef struct {
    uint8_t *p;
    size_t n, cap;
    bool failed;
} pb;

static void pb_put(pb *b, const void *data, size_t n) {
    if (b->failed)
        return;
    if (n > b->cap - b->n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n)
            cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void pb_varint(pb *b, uint64_t v) {
    uint8_t out[10];
    int n = 0;
    do {
        out[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    pb_put(b, out, (size_t)n);
}

enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_BYTES = 2, WIRE_FIXED32 = 5 };

static void pb_key(pb *b, int field, int wire) { pb_varint(b, (uint64_t)field << 3 | (uint64_t)wire); }

static void pb_uint(pb *b, int field, uint64_t v) {
    pb_key(b, field, WIRE_VARINT);
    pb_varint(b, v);
}

static void pb_bytes(pb *b, int field, const void *data, size_t n) {
    pb_key(b, field, WIRE_BYTES);
    pb_varint(b, n);
    pb_put(b, data, n);
}

/* A nested message: its encoding `inner` as a length-delimited field. */
static void pb_message(pb *b, int field, const pb *inner) {
    if (inner->failed)
        b->failed = true;
    pb_bytes(b, field, inner->p, inner->n);
}

static void pb_le(pb *b, uint64_t v, int bytes) {
    uint8_t out[8];
    for (int i = 0; i < bytes; i++)
        out[i] = (uint8_t)(v >> (8 * i));
    pb_put(b, out, (size_t)bytes);
}

static void pb_double(pb *b, int field, double v) {
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    pb_key(b, field, WIRE_FIXED64);
    pb_le(b, bits, 8);
}

static void pb_float(pb *b, int field, float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    pb_key(b, field, WIRE_FIXED32);
    pb_le(b, bits, 4);
}

static void pb_free(pb *b) { free(b->p); }

/* ---- the writer ---- */

struct dc_tb_writer {
    FILE *fp;
    char *path;
    int err; /* the first write error (errno), 0 when none */
};

static double now(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec * 1e-6;
}

/* One TFRecord holding `data`, flushed. */
static int write_record(dc_tb_writer *w, const pb *data) {
    if (w->err) /* after a partial record, later ones would be unreadable */
        return dc_fail("%s: not written: an earlier write failed (%s)", w->path, strerror(w->err));
    if (data->failed)
        return dc_fail("%s: out of memory for an event", w->path);
    pb frame = {0};
    pb_le(&frame, data->n, 8);
    uint32_t len_crc = masked_crc(frame.p, 8), data_crc = masked_crc(data->p, data->n);
    pb_le(&frame, len_crc, 4);
    pb_put(&frame, data->p, data->n);
    pb_le(&frame, data_crc, 4);
    bool ok = !frame.failed && fwrite(frame.p, 1, frame.n, w->fp) == frame.n && fflush(w->fp) == 0;
    pb_free(&frame);
    if (ok)
        return 0;
    if (!w->err)
        w->err = frame.failed ? ENOMEM : errno ? errno : EIO;
    return dc_fail("%s: cannot write: %s", w->path, strerror(w->err));
}

/* An Event with `summary_or_log` (already encoded) as field `field`. */
static int write_event(dc_tb_writer *w, int64_t step, int field, const pb *inner) {
    pb ev = {0};
    pb_double(&ev, 1, now());
    pb_uint(&ev, 2, (uint64_t)step);
    pb_message(&ev, field, inner);
    int rc = write_record(w, &ev);
    pb_free(&ev);
    return rc;
}

/* Summary{value{tag, <value field>}} around an encoded value body. */
static int write_value(dc_tb_writer *w, int64_t step, const char *tag, const pb *value_tail) {
    pb value = {0}, summary = {0};
    pb_bytes(&value, 1, tag, strlen(tag));
    pb_put(&value, value_tail->p, value_tail->n);
    value.failed |= value_tail->failed;
    pb_message(&summary, 1, &value);
    int rc = write_event(w, step, 5, &summary);
    pb_free(&value);
    pb_free(&summary);
    return rc;
}

int dc_tb_scalar(dc_tb_writer *w, const char *tag, int64_t step, double value) {
    pb tail = {0};
    pb_float(&tail, 2, (float)value);
    int rc = write_value(w, step, tag, &tail);
    pb_free(&tail);
    return rc;
}

int dc_tb_image(dc_tb_writer *w, const char *tag, int64_t step, const dc_image *img) {
    uint8_t *png;
    size_t n;
    if (dc_image_encode_png(img, &png, &n))
        return -1;
    pb image = {0}, tail = {0};
    pb_uint(&image, 1, (uint64_t)img->h);
    pb_uint(&image, 2, (uint64_t)img->w);
    pb_uint(&image, 3, (uint64_t)img->c); /* colorspace: 1 gray, 3 RGB */
    pb_bytes(&image, 4, png, n);
    pb_message(&tail, 4, &image);
    int rc = write_value(w, step, tag, &tail);
    pb_free(&image);
    pb_free(&tail);
    free(png);
    return rc;
}

/* The first record: Event{wall_time, file_version}. */
static int write_version(dc_tb_writer *w) {
    static const char version[] = "brain.Event:2";
    pb ev = {0};
    pb_double(&ev, 1, now());
    pb_bytes(&ev, 3, version, sizeof version - 1);
    int rc = write_record(w, &ev);
    pb_free(&ev);
    return rc;
}

/* TensorBoard's reader, on a START at step s, drops what it holds at steps
 * >= s: so s is the first step of the resumed run. */
static int write_session_start(dc_tb_writer *w, int64_t step) {
    pb log = {0};
    pb_uint(&log, 1, 1); /* status START */
    int rc = write_event(w, step, 7, &log);
    pb_free(&log);
    return rc;
}

/* A new file, never another writer's: O_EXCL, and a counter after the
 * name when this process already started one in the same second. */
static int create_file(dc_tb_writer *w, const char *dir) {
    char host[256] = "localhost", name[400];
    if (gethostname(host, sizeof host) != 0)
        strcpy(host, "localhost");
    host[sizeof host - 1] = '\0';
    for (char *c = host; *c; c++) /* a name component, whatever the host is called */
        if (*c == '/')
            *c = '_';
    int n = snprintf(name, sizeof name, "events.out.tfevents.%lld.%s.%ld", (long long)time(NULL), host,
                     (long)getpid());
    for (int k = 1;; k++) {
        if (!(w->path = dc_path_join(dir, name)))
            return -1;
        int fd = open(w->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0 && (w->fp = fdopen(fd, "wb")))
            return 0;
        int err = errno;
        if (fd >= 0)
            close(fd);
        if (err != EEXIST || k == 1000)
            return dc_fail("%s: cannot create: %s", w->path, strerror(err));
        free(w->path);
        snprintf(name + n, sizeof name - (size_t)n, ".%d", k);
    }
}

int dc_tb_open(dc_tb_writer **out, const char *dir, int64_t start_step) {
    *out = NULL;
    dc_tb_writer *w = calloc(1, sizeof *w);
    if (!w)
        return dc_fail("%s: out of memory", dir);
    int rc = dc_mkdirs(dir) || create_file(w, dir) || write_version(w) ? -1 : 0;
    if (!rc && start_step > 0)
        rc = write_session_start(w, start_step + 1);
    if (rc) {
        if (w->fp)
            unlink(w->path);
        dc_tb_close(w);
        return -1;
    }
    *out = w;
    return 0;
}

int dc_tb_close(dc_tb_writer *w) {
    if (!w)
        return 0;
    int rc = 0;
    if (w->fp && fclose(w->fp) != 0 && !w->err)
        rc = dc_fail("%s: cannot write: %s", w->path, strerror(errno));
    free(w->path);
    free(w);
    return rc;
}

const char *dc_tb_path(const dc_tb_writer *w) { return w->path; }
