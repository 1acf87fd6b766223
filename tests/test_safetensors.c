/* safetensors: round trips through the writer and the reader, the layout the
 * reference implementation requires, a corpus of malformed files refused with
 * the right message, the writer's failure paths (a missing folder, a full
 * disk) leaving existing files alone, and sharded sets: the index parser on
 * hostile text and shards that disagree with their index. */
#define _GNU_SOURCE /* nftw */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/safetensors.h"

#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- temporary folder and files ---- */

static char tmpdir[64];

static void make_tmpdir(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dc_st_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    return remove(path);
}

static void remove_tmpdir(void) { nftw(tmpdir, remove_entry, 8, FTW_DEPTH | FTW_PHYS); }

static const char *tmp_path(const char *name) {
    static char buf[256];
    snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
    return buf;
}

/* The whole file at `path` (size in *n), or NULL. */
static unsigned char *slurp(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    *n = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *p = malloc(*n + 1);
    ck_assert_uint_eq(fread(p, 1, *n, fp), *n);
    fclose(fp);
    return p;
}

static void spill(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_uint_eq(fwrite(p, 1, n, fp), n);
    ck_assert_int_eq(fclose(fp), 0);
}

/* ---- file images built by hand ---- */

typedef struct {
    unsigned char *p;
    size_t size;
} image;

/* 8-byte length `hlen`, the JSON text, then `data` bytes of a pattern. */
static image make_image_len(uint64_t hlen, const char *json, size_t data) {
    size_t j = strlen(json);
    image im = {malloc(8 + j + data + 1), 8 + j + data};
    for (int i = 0; i < 8; i++)
        im.p[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(im.p + 8, json, j);
    for (size_t i = 0; i < data; i++)
        im.p[8 + j + i] = (unsigned char)(i * 7 + 1);
    return im;
}

static image make_image(const char *json, size_t data) { return make_image_len(strlen(json), json, data); }

/* ---- round trip ---- */

static void fill_random(unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)tu_next();
}

/* A set of tensors of every dc dtype, a 0-d one, a 4-d one, an empty one and
 * one of a dtype the engine does not compute in. Data is random. */
enum { N_RT = 7 };
typedef struct {
    dc_st_tensor t[N_RT];
    unsigned char *data[N_RT];
} rt_set;

static void rt_init(rt_set *s) {
    static const struct {
        const char *name, *dtype_name;
        int dtype, ndim;
        int64_t shape[4];
        size_t elem;
    } spec[N_RT] = {
        {"u8.odd", NULL, DC_U8, 1, {5}, 1},
        {"bf16.vec", NULL, DC_BF16, 1, {7}, 2},
        {"down_blocks.0.conv.weight", NULL, DC_F32, 4, {3, 2, 3, 5}, 4},
        {"f16.col", NULL, DC_F16, 2, {3, 1}, 2},
        {"step", NULL, DC_I32, 0, {0}, 4},
        {"i64 \"quoted\" \\name", "I64", -1, 1, {3}, 8},
        {"empty", NULL, DC_F32, 2, {0, 3}, 4},
    };
    memset(s, 0, sizeof *s);
    for (int i = 0; i < N_RT; i++) {
        dc_st_tensor *t = &s->t[i];
        t->name = (char *)spec[i].name;
        if (spec[i].dtype_name)
            snprintf(t->dtype_name, sizeof t->dtype_name, "%s", spec[i].dtype_name);
        t->dtype = spec[i].dtype;
        t->ndim = spec[i].ndim;
        memcpy(t->shape, spec[i].shape, sizeof spec[i].shape);
        t->nbytes = (size_t)dc_shape_numel(t->ndim, t->shape) * spec[i].elem;
        s->data[i] = malloc(t->nbytes + 1);
        fill_random(s->data[i], t->nbytes);
        t->data = s->data[i];
    }
}

static void rt_free(rt_set *s) {
    for (int i = 0; i < N_RT; i++)
        free(s->data[i]);
}

static const char *meta_keys[] = {"format", "note", "empty"};
static const char *meta_values[] = {"pt", "quote \" backslash \\ newline \n tab \t utf-8 \xc3\xa9", ""};

/* What the reference reader demands: sorted by offset, the ranges tile the
 * data block from 0 to the end of the file with no gap. */
static void assert_reference_layout(const dc_st_file *f) {
    const unsigned char *base = f->tensors[0].data;
    size_t at = 0;
    for (int i = 0; i < f->n; i++) {
        const dc_st_tensor *t = &f->tensors[i];
        ck_assert_msg((const unsigned char *)t->data - base == (ptrdiff_t)at, "%s: gap before it", t->name);
        ck_assert_msg((uintptr_t)t->data % t->elem_size == 0, "%s: misaligned", t->name);
        at += t->nbytes;
    }
    ck_assert_ptr_eq(base + at, (const unsigned char *)f->map + f->map_size);
}

START_TEST(test_round_trip) {
    make_tmpdir();
    rt_set s;
    rt_init(&s);
    const char *path = tmp_path("model.safetensors");
    ck_assert_msg(dc_st_write(path, s.t, N_RT, meta_keys, meta_values, 3) == 0, "%s", dc_error());
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, path) == 0, "%s", dc_error());
    ck_assert_int_eq(f.n, N_RT);
    for (int i = 0; i < N_RT; i++) {
        const dc_st_tensor *w = &s.t[i], *g = dc_st_find(&f, w->name);
        ck_assert_msg(g != NULL, "%s missing", w->name);
        ck_assert_int_eq(g->dtype, w->dtype);
        ck_assert_int_eq(g->ndim, w->ndim);
        for (int d = 0; d < w->ndim; d++)
            ck_assert_int_eq(g->shape[d], w->shape[d]);
        ck_assert_uint_eq(g->nbytes, w->nbytes);
        ck_assert_uint_eq(g->elem_size * (size_t)dc_shape_numel(g->ndim, g->shape), g->nbytes);
        ck_assert_msg(memcmp(g->data, w->data, w->nbytes) == 0, "%s: bytes differ", w->name);
    }
    ck_assert_str_eq(dc_st_find(&f, "bf16.vec")->dtype_name, "BF16");
    ck_assert_str_eq(dc_st_find(&f, "u8.odd")->dtype_name, "U8");
    ck_assert_str_eq(dc_st_find(&f, "i64 \"quoted\" \\name")->dtype_name, "I64");
    ck_assert_int_eq(dc_st_find(&f, "i64 \"quoted\" \\name")->elem_size, 8);
    ck_assert_ptr_null(dc_st_find(&f, "nope"));
    ck_assert_int_eq(f.n_meta, 3);
    for (int i = 0; i < 3; i++)
        ck_assert_str_eq(dc_st_meta(&f, meta_keys[i]), meta_values[i]);
    ck_assert_ptr_null(dc_st_meta(&f, "nope"));
    assert_reference_layout(&f);
    /* wider elements first, input order kept within a size */
    ck_assert_str_eq(f.tensors[0].name, "i64 \"quoted\" \\name");
    ck_assert_str_eq(f.tensors[f.n - 1].name, "u8.odd");
    dc_st_close(&f);
    dc_st_close(&f); /* closing twice is harmless */
    rt_free(&s);
    remove_tmpdir();
}
END_TEST

START_TEST(test_rewrite_is_identical) {
    make_tmpdir();
    rt_set s;
    rt_init(&s);
    char a[256];
    snprintf(a, sizeof a, "%s", tmp_path("a.safetensors"));
    const char *b = tmp_path("b.safetensors");
    ck_assert_msg(dc_st_write(a, s.t, N_RT, meta_keys, meta_values, 3) == 0, "%s", dc_error());
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, a) == 0, "%s", dc_error());
    const char *keys[3], *values[3];
    for (int i = 0; i < f.n_meta; i++)
        keys[i] = f.meta_keys[i], values[i] = f.meta_values[i];
    ck_assert_msg(dc_st_write(b, f.tensors, f.n, keys, values, f.n_meta) == 0, "%s", dc_error());
    dc_st_close(&f);
    size_t na, nb;
    unsigned char *pa = slurp(a, &na), *pb = slurp(b, &nb);
    ck_assert_uint_eq(na, nb);
    ck_assert_msg(memcmp(pa, pb, na) == 0, "rewritten file differs");
    /* the header is padded with spaces to 8 bytes, as the reference writer does */
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | pa[i];
    ck_assert_uint_eq(hlen % 8, 0);
    ck_assert_int_eq(pa[8], '{');
    free(pa);
    free(pb);
    rt_free(&s);
    remove_tmpdir();
}
END_TEST

/* The listing dtypes: every standard name is accepted with its size; only
 * the engine's five map to a dc_dtype. */
START_TEST(test_all_dtypes) {
    static const struct {
        const char *name;
        size_t size;
        int dtype;
    } want[] = {
        {"BOOL", 1, -1},    {"U8", 1, DC_U8},     {"I8", 1, -1},  {"U16", 2, -1},     {"I16", 2, -1},
        {"F16", 2, DC_F16}, {"BF16", 2, DC_BF16}, {"U32", 4, -1}, {"I32", 4, DC_I32}, {"F32", 4, DC_F32},
        {"F64", 8, -1},     {"I64", 8, -1},       {"U64", 8, -1}, {"F8_E4M3", 1, -1}, {"F8_E5M2", 1, -1},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char json[160];
        snprintf(json, sizeof json, "{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}",
                 want[i].name, 3 * want[i].size);
        image im = make_image(json, 3 * want[i].size);
        dc_st_file f;
        ck_assert_msg(dc_st_parse(&f, im.p, im.size) == 0, "%s: %s", want[i].name, dc_error());
        ck_assert_str_eq(f.tensors[0].dtype_name, want[i].name);
        ck_assert_uint_eq(f.tensors[0].elem_size, want[i].size);
        ck_assert_int_eq(f.tensors[0].dtype, want[i].dtype);
        dc_st_close(&f);
        free(im.p);
    }
}
END_TEST

/* Files from elsewhere may have holes between tensors, tensors out of order
 * in the header, and no metadata; the reader takes them and sorts by offset. */
START_TEST(test_reader_is_lenient_where_safe) {
    image im = make_image("{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[6,8]},"
                          "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                          "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
                          "\"extra\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[8,9],\"x\":1}}  \n",
                          9);
    dc_st_file f;
    ck_assert_msg(dc_st_parse(&f, im.p, im.size) == 0, "%s", dc_error());
    ck_assert_int_eq(f.n, 4);
    ck_assert_str_eq(f.tensors[0].name, "a");
    ck_assert_str_eq(f.tensors[1].name, "z");
    ck_assert_str_eq(f.tensors[2].name, "b");
    const unsigned char *b = dc_st_find(&f, "b")->data;
    ck_assert_int_eq(b[0], 6 * 7 + 1);
    ck_assert_int_eq(dc_st_find(&f, "extra")->ndim, 0);
    ck_assert_int_eq(f.n_meta, 0);
    dc_st_close(&f);
    free(im.p);
}
END_TEST

/* ---- malformed files ---- */

typedef struct {
    const char *json;
    size_t data;
    const char *want; /* fragment of the message */
} bad_case;

static const bad_case bad_cases[] = {
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     12, "tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
     8, "overlap"},
    {"{\"w\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", 16,
     "tensor 'w': unknown dtype 'F128'"},
    {"{\"conv_in.weight\":{\"dtype\":\"F32\",\"shape\":[3,3],\"data_offsets\":[0,32]}}", 32,
     "tensor 'conv_in.weight': shape [3, 3] x 4 bytes = 36 bytes, but data_offsets span 32"},
    {"{not json}", 0, "header is not valid JSON"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, "not valid JSON"},
    {"[1, 2]", 0, "header is an array, not a JSON object"},
    {"\"str\"", 0, "header is a string, not a JSON object"},
    {"{\"h\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,0]}}", 0,
     "tensor 'h': shape [4294967296, 4294967296, 16] x 4 bytes overflows 64 bits"},
    /* 2^32 * 2^32 * 4 wraps to exactly 0 mod 2^64: still an overflow */
    {"{\"h\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0,
     "overflows 64 bits"},
    {"{\"h\":{\"dtype\":\"U8\",\"shape\":[1e300],\"data_offsets\":[0,0]}}", 0,
     "dimension 0 is 1.0000000000000001e+300"},
    {"{\"n\":{\"dtype\":\"F32\",\"shape\":[-1,4],\"data_offsets\":[0,0]}}", 0,
     "tensor 'n': dimension 0 is -1"},
    {"{\"n\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,10]}}", 10, "dimension 0 is 2.5"},
    {"{\"n\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, "dimension 0 is a string"},
    {"{\"n\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
     "shape has 9 dimensions, at most 8"},
    {"{\"o\":{\"dtype\":\"U8\",\"shape\":[1000],\"data_offsets\":[0,1000]}}", 8,
     "tensor 'o': data_offsets [0, 1000] run past the end of the data (8 bytes)"},
    {"{\"o\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[9,9]}}", 8, "run past the end of the data"},
    {"{\"o\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,4]}}", 8,
     "data_offsets [8, 4] end before they begin"},
    {"{\"o\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0]}}", 8,
     "\"data_offsets\" is an array, not [begin, end]"},
    {"{\"o\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,-4]}}", 8, "not [begin, end]"},
    {"{\"o\":{\"dtype\":\"U8\",\"shape\":[4]}}", 8, "tensor 'o': \"data_offsets\" is missing"},
    {"{\"o\":{\"shape\":[4],\"data_offsets\":[0,4]}}", 8, "tensor 'o': \"dtype\" is missing"},
    {"{\"o\":{\"dtype\":7,\"shape\":[4],\"data_offsets\":[0,4]}}", 8, "\"dtype\" is a number, not a string"},
    {"{\"o\":{\"dtype\":\"U8\",\"data_offsets\":[0,4]}}", 8, "tensor 'o': \"shape\" is missing"},
    {"{\"o\":{\"dtype\":\"U8\",\"shape\":4,\"data_offsets\":[0,4]}}", 8,
     "\"shape\" is a number, not an array"},
    {"{\"o\":3}", 0, "tensor 'o': entry is a number, not an object"},
    {"{\"o\":[]}", 0, "tensor 'o': entry is an array, not an object"},
    {"{\"__metadata__\":{\"a\":\"x\",\"b\":1}}", 0, "__metadata__ key 'b' is a number, not a string"},
    {"{\"__metadata__\":{\"a\":{}}}", 0, "__metadata__ key 'a' is an object, not a string"},
    {"{\"__metadata__\":\"pt\"}", 0, "\"__metadata__\" is a string, not an object of strings"},
    {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "\"__metadata__\" appears 2 times"},
    {"{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, "__metadata__ key 'k' appears twice"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
     "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
     2, "tensor 'a' appears twice"},
    {"{} x", 0, "header has bytes after the JSON object (byte 3 of 4)"},
    {"{\"\xff\":1}", 0, "header is not valid UTF-8 (byte 2)"},
    {"{\"\xc0\xaf\":1}", 0, "not valid UTF-8"},     /* overlong '/' */
    {"{\"\xed\xa0\x80\":1}", 0, "not valid UTF-8"}, /* a surrogate */
    {"{\"\xf0\x9f\x98", 0, "not valid UTF-8"},      /* cut inside a character */
    {"{\"a\x01\":1}", 0, "header has control byte 0x01 at byte 3"},
    /* a name with an escaped newline still gives a one-line message */
    {"{\"a\\nb\":{\"dtype\":\"X\",\"shape\":[],\"data_offsets\":[0,0]}}", 0,
     "tensor 'a?b': unknown dtype 'X'"},
};

static void assert_refused(const void *p, size_t size, const char *want, const char *what) {
    dc_st_file f;
    dc_clear_error();
    ck_assert_msg(dc_st_parse(&f, p, size) == -1, "%s: accepted", what);
    ck_assert_msg(strstr(dc_error(), "<buffer>: ") == dc_error(), "%s: '%s' does not name the buffer", what,
                  dc_error());
    if (want)
        ck_assert_msg(strstr(dc_error(), want), "%s: '%s' lacks '%s'", what, dc_error(), want);
    ck_assert_msg(!strchr(dc_error(), '\n'), "%s: message has a newline: '%s'", what, dc_error());
    ck_assert(f.n == 0 && f.tensors == NULL && f.n_meta == 0 && f.map == NULL);
    dc_st_close(&f);
}

START_TEST(test_malformed_buffers) {
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        image im = make_image(bad_cases[i].json, bad_cases[i].data);
        assert_refused(im.p, im.size, bad_cases[i].want, bad_cases[i].json);
        free(im.p);
    }
}
END_TEST

START_TEST(test_bad_lengths) {
    image im = make_image_len(100, "{}", 0);
    assert_refused(im.p, im.size, "header length 100 runs past the end of the file (10 bytes)", "long");
    free(im.p);
    im = make_image_len(UINT64_MAX, "{}", 0);
    assert_refused(im.p, im.size, "header length 18446744073709551615 runs past the end", "huge");
    free(im.p);
    im = make_image_len(1, "{}", 0);
    assert_refused(im.p, im.size, "not valid JSON", "short");
    free(im.p);
    assert_refused("", 0, "file is 0 bytes, too short", "empty");
    assert_refused("\x02\0\0\0\0", 5, "file is 5 bytes, too short", "5 bytes");
}
END_TEST

/* A valid file cut at every length: each prefix is refused, none crashes. The
 * buffer is exactly as long as the prefix, so ASan sees any overread. */
START_TEST(test_truncated_everywhere) {
    image im = make_image("{\"__metadata__\":{\"k\":\"v\"},"
                          "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                          "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[16,19]}}",
                          19);
    dc_st_file f;
    ck_assert_msg(dc_st_parse(&f, im.p, im.size) == 0, "%s", dc_error());
    dc_st_close(&f);
    size_t hend = im.size - 19;
    for (size_t cut = 0; cut < im.size; cut++) {
        unsigned char *p = malloc(cut ? cut : 1);
        memcpy(p, im.p, cut);
        const char *want = cut < 8      ? "too short"
                           : cut < hend ? "runs past the end of the file"
                                        : "run past the end of the data";
        char what[32];
        snprintf(what, sizeof what, "cut at %zu", cut);
        assert_refused(p, cut, want, what);
        free(p);
    }
    free(im.p);
}
END_TEST

/* Through dc_st_open, messages name the path. */
START_TEST(test_malformed_files) {
    make_tmpdir();
    const char *path = tmp_path("bad.safetensors");
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        image im = make_image(bad_cases[i].json, bad_cases[i].data);
        spill(path, im.p, im.size);
        dc_st_file f;
        ck_assert_int_eq(dc_st_open(&f, path), -1);
        ck_assert_msg(strstr(dc_error(), path) == dc_error() && strstr(dc_error(), bad_cases[i].want), "%s",
                      dc_error());
        ck_assert(f.map == NULL && f.n == 0);
        free(im.p);
    }
    dc_st_file f;
    spill(path, "", 0);
    ck_assert_int_eq(dc_st_open(&f, path), -1);
    ck_assert_msg(strstr(dc_error(), "bad.safetensors: file is 0 bytes, too short"), "%s", dc_error());
    ck_assert_int_eq(dc_st_open(&f, tmp_path("missing.safetensors")), -1);
    ck_assert_msg(strstr(dc_error(), "missing.safetensors: cannot open: No such file or directory"), "%s",
                  dc_error());
    ck_assert_int_eq(dc_st_open(&f, tmpdir), -1);
    ck_assert_msg(strstr(dc_error(), "a directory, not a safetensors file"), "%s", dc_error());
    remove_tmpdir();
}
END_TEST

/* A header over the 100 MB limit, in a sparse file that costs no disk. */
START_TEST(test_header_too_large) {
    make_tmpdir();
    const char *path = tmp_path("huge.safetensors");
    image im = make_image_len(100000001, "{", 0);
    spill(path, im.p, im.size);
    ck_assert_int_eq(truncate(path, 8 + 100000001 + 8), 0);
    dc_st_file f;
    ck_assert_int_eq(dc_st_open(&f, path), -1);
    ck_assert_msg(strstr(dc_error(), "header length 100000001 is over the 100000000-byte limit"), "%s",
                  dc_error());
    free(im.p);
    remove_tmpdir();
}
END_TEST

/* ---- the writer's failure paths ---- */

static dc_st_tensor one_tensor(const char *name, const float *data, int64_t n) {
    dc_st_tensor t = {.name = (char *)name,
                      .dtype = DC_F32,
                      .ndim = 1,
                      .shape = {n},
                      .data = data,
                      .nbytes = (size_t)n * 4};
    return t;
}

START_TEST(test_write_missing_dir) {
    make_tmpdir();
    char path[256];
    snprintf(path, sizeof path, "%s/no/such/dir/x.safetensors", tmpdir);
    float v[2] = {1, 2};
    dc_st_tensor t = one_tensor("v", v, 2);
    ck_assert_int_eq(dc_st_write(path, &t, 1, NULL, NULL, 0), -1);
    ck_assert_msg(strstr(dc_error(), path) == dc_error() && strstr(dc_error(), "No such file or directory"),
                  "%s", dc_error());
    remove_tmpdir();
}
END_TEST

START_TEST(test_write_replaces) {
    make_tmpdir();
    const char *path = tmp_path("w.safetensors");
    float a[3] = {1, 2, 3}, b[5] = {4, 5, 6, 7, 8};
    dc_st_tensor ta = one_tensor("a", a, 3), tb = one_tensor("b", b, 5);
    ck_assert_int_eq(dc_st_write(path, &ta, 1, NULL, NULL, 0), 0);
    ck_assert_int_eq(dc_st_write(path, &tb, 1, NULL, NULL, 0), 0);
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, path) == 0, "%s", dc_error());
    ck_assert_int_eq(f.n, 1);
    ck_assert_ptr_null(dc_st_find(&f, "a"));
    ck_assert_int_eq(memcmp(dc_st_find(&f, "b")->data, b, sizeof b), 0);
    dc_st_close(&f);
    ck_assert_int_eq(access(tmp_path("w.safetensors.tmp"), F_OK), -1);
    remove_tmpdir();
}
END_TEST

/* A write that fails half-way (here: a file size limit, as a full disk would)
 * leaves the existing file as it was and no temporary file behind. */
START_TEST(test_full_disk_keeps_old_file) {
    make_tmpdir();
    char path[256];
    snprintf(path, sizeof path, "%s", tmp_path("keep.safetensors"));
    float small[4] = {1, 2, 3, 4};
    dc_st_tensor ts = one_tensor("small", small, 4);
    ck_assert_int_eq(dc_st_write(path, &ts, 1, NULL, NULL, 0), 0);
    size_t n0;
    unsigned char *before = slurp(path, &n0);

    enum { BIG = 1 << 16 };
    float *big = calloc(BIG, sizeof *big);
    dc_st_tensor tb = one_tensor("big", big, BIG);
    struct rlimit old, lim = {4096, 4096};
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &old);
    lim.rlim_max = old.rlim_max;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int rc = dc_st_write(path, &tb, 1, NULL, NULL, 0);
    setrlimit(RLIMIT_FSIZE, &old);
    ck_assert_int_eq(rc, -1);
    ck_assert_msg(strstr(dc_error(), path) == dc_error() && strstr(dc_error(), strerror(EFBIG)), "%s",
                  dc_error());

    size_t n1;
    unsigned char *after = slurp(path, &n1);
    ck_assert(n0 == n1 && memcmp(before, after, n0) == 0);
    ck_assert_int_eq(access(tmp_path("keep.safetensors.tmp"), F_OK), -1);
    free(before);
    free(after);
    free(big);
    remove_tmpdir();
}
END_TEST

START_TEST(test_write_refuses_bad_tensors) {
    make_tmpdir();
    const char *path = tmp_path("r.safetensors");
    float v[6] = {0};
    dc_st_tensor t[2] = {one_tensor("x", v, 6), one_tensor("x", v, 6)};
    ck_assert_int_eq(dc_st_write(path, t, 2, NULL, NULL, 0), -1);
    ck_assert_msg(strstr(dc_error(), "tensor 'x' appears twice"), "%s", dc_error());

    t[0].nbytes = 20;
    ck_assert_int_eq(dc_st_write(path, t, 1, NULL, NULL, 0), -1);
    ck_assert_msg(strstr(dc_error(), "tensor 'x': shape [6] x 4 bytes = 24 bytes, but nbytes is 20"), "%s",
                  dc_error());

    t[0] = one_tensor("x", v, 6);
    t[0].dtype = -1;
    ck_assert_int_eq(dc_st_write(path, t, 1, NULL, NULL, 0), -1);
    ck_assert_msg(strstr(dc_error(), "tensor 'x': unknown dtype"), "%s", dc_error());
    snprintf(t[0].dtype_name, sizeof t[0].dtype_name, "F33");
    ck_assert_int_eq(dc_st_write(path, t, 1, NULL, NULL, 0), -1);
    ck_assert_msg(strstr(dc_error(), "unknown dtype F33"), "%s", dc_error());

    t[0] = one_tensor("__metadata__", v, 6);
    ck_assert_int_eq(dc_st_write(path, t, 1, NULL, NULL, 0), -1);
    ck_assert_msg(strstr(dc_error(), "reserved for metadata"), "%s", dc_error());

    t[0] = one_tensor("x", v, 6);
    t[0].shape[0] = -6;
    ck_assert_int_eq(dc_st_write(path, t, 1, NULL, NULL, 0), -1);
    ck_assert_msg(strstr(dc_error(), "dimension 0 is -6"), "%s", dc_error());

    /* sizes that each fit but add up past 2^64 bytes: refused before any byte is written */
    static const char *const names[5] = {"h0", "h1", "h2", "h3", "h4"};
    dc_st_tensor huge[5];
    for (int i = 0; i < 5; i++) {
        huge[i] = one_tensor("x", v, 6);
        snprintf(huge[i].dtype_name, sizeof huge[i].dtype_name, "U8");
        huge[i].name = (char *)names[i];
        huge[i].ndim = 2;
        huge[i].shape[0] = huge[i].shape[1] = (int64_t)1 << 31;
        huge[i].nbytes = (size_t)1 << 62;
    }
    ck_assert_int_eq(dc_st_write(path, huge, 5, NULL, NULL, 0), -1);
    ck_assert_msg(strstr(dc_error(), "the tensors add up to more than 2^64 bytes"), "%s", dc_error());

    t[0] = one_tensor("x", v, 6);
    const char *k[1] = {"bad \xff"}, *val[1] = {"v"};
    ck_assert_int_eq(dc_st_write(path, t, 1, k, val, 1), -1);
    ck_assert_msg(strstr(dc_error(), "metadata entry 0"), "%s", dc_error());
    const char *k2[2] = {"k", "k"}, *v2[2] = {"a", "b"};
    ck_assert_int_eq(dc_st_write(path, t, 1, k2, v2, 2), -1);
    ck_assert_msg(strstr(dc_error(), "metadata key 'k' appears twice"), "%s", dc_error());
    ck_assert_int_eq(access(path, F_OK), -1); /* nothing was written */
    remove_tmpdir();
}
END_TEST

/* ---- sharded sets ---- */

static void index_refused(const char *json, const char *want) {
    dc_st_index ix;
    ck_assert_msg(dc_st_index_parse(&ix, json, strlen(json), "idx.json") == -1, "accepted %s", json);
    ck_assert_msg(strstr(dc_error(), want), "%s: \"%s\", want \"%s\"", json, dc_error(), want);
    ck_assert(ix.n == 0 && ix.names == NULL && ix.files == NULL);
}

START_TEST(test_index_parse) {
    dc_st_index ix;
    const char *ok = "{\"metadata\": {\"total_size\": 12}, \"weight_map\": {\"b\": \"s2.safetensors\", "
                     "\"a\": \"s1.safetensors\", \"c\": \"s2.safetensors\"}}";
    ck_assert_msg(dc_st_index_parse(&ix, ok, strlen(ok), "idx.json") == 0, "%s", dc_error());
    ck_assert(ix.n == 3 && ix.n_files == 2);
    ck_assert_str_eq(ix.names[0], "a"); /* sorted */
    ck_assert_str_eq(ix.files[ix.shard[0]], "s1.safetensors");
    ck_assert_str_eq(ix.files[ix.shard[1]], "s2.safetensors");
    ck_assert_int_eq(ix.shard[1], ix.shard[2]);
    dc_st_index_free(&ix);
    dc_st_index_free(&ix); /* idempotent */

    index_refused("[1]", "idx.json: a safetensors index must be a JSON object, got an array");
    index_refused("{\"metadata\": {}}", "weight_map must be an object naming each tensor's shard, got nothing");
    index_refused("{\"weight_map\": {}}", "got an empty object");
    index_refused("{\"weight_map\": [\"a.safetensors\"]}", "got an array");
    index_refused("{\"weight_map\": {\"w\": 3}}", "weight_map: 'w' -> a number: not a string");
    index_refused("{\"weight_map\": {\"w\": \"../up.safetensors\"}}",
                  "'w' -> '../up.safetensors': a path, not a file name beside the index");
    index_refused("{\"weight_map\": {\"w\": \"/etc/x.safetensors\"}}", "a path, not a file name");
    index_refused("{\"weight_map\": {\"w\": \"..\\\\x.safetensors\"}}", "a path, not a file name");
    index_refused("{\"weight_map\": {\"w\": \"..\"}}", "'w' -> '..': not a .safetensors file");
    index_refused("{\"weight_map\": {\"w\": \"model.bin\"}}", "not a .safetensors file");
    index_refused("{\"weight_map\": {\"w\": \"a\\nb.safetensors\"}}", "a control character in the name");
    index_refused("{\"weight_map\": {\"w\": \"a.safetensors\", \"w\": \"b.safetensors\"}}",
                  "key \"w\" appears twice");
    index_refused("{\"weight_map\": {\"w\": \"a.safetensors\"}", "idx.json:1:");

    /* more shard files than the limit, each named once */
    size_t cap = (DC_ST_MAX_SHARDS + 1) * 48 + 64, len = 0;
    char *many = malloc(cap);
    len += (size_t)snprintf(many, cap, "{\"weight_map\": {");
    for (int i = 0; i <= DC_ST_MAX_SHARDS; i++)
        len += (size_t)snprintf(many + len, cap - len, "%s\"t%d\": \"s%d.safetensors\"", i ? ", " : "", i, i);
    snprintf(many + len, cap - len, "}}");
    index_refused(many, "1025 shard files, at most 1024 are allowed");
    free(many);

    /* a huge index is refused by its size, before a byte of it is read */
    ck_assert_int_eq(dc_st_index_parse(&ix, "{", (size_t)DC_ST_MAX_INDEX + 1, "idx.json"), -1);
    ck_assert_msg(strstr(dc_error(), "over the 67108864-byte limit of an index"), "%s", dc_error());
    make_tmpdir();
    FILE *fp = fopen(tmp_path("huge.index.json"), "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_int_eq(ftruncate(fileno(fp), (off_t)DC_ST_MAX_INDEX + 1), 0); /* sparse */
    fclose(fp);
    ck_assert_int_eq(dc_st_index_load(&ix, tmp_path("huge.index.json")), -1);
    ck_assert_msg(strstr(dc_error(), "huge.index.json"), "%s", dc_error());
    remove_tmpdir();
}
END_TEST

/* A shard holding tensors `names` (one f32 each). */
static void write_shard(const char *file, const char *const *names, int n) {
    float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    dc_st_tensor t[8];
    for (int i = 0; i < n; i++)
        t[i] = (dc_st_tensor){.name = (char *)names[i], .dtype = DC_F32, .ndim = 1, .shape = {1},
                              .data = &v[i], .nbytes = sizeof(float)};
    ck_assert_msg(dc_st_write(tmp_path(file), t, n, NULL, NULL, 0) == 0, "%s", dc_error());
}

static void write_index(const char *map) {
    char text[512];
    snprintf(text, sizeof text, "{\"metadata\": {}, \"weight_map\": {%s}}", map);
    spill(tmp_path("m.safetensors.index.json"), text, strlen(text));
}

static void set_refused(const char *want) {
    dc_st_set s;
    ck_assert_int_eq(dc_st_set_open(&s, tmp_path("m.safetensors.index.json")), -1);
    ck_assert_msg(strstr(dc_error(), want), "\"%s\", want \"%s\"", dc_error(), want);
    ck_assert(s.n == 0 && s.files == NULL);
}

START_TEST(test_shard_set) {
    make_tmpdir();
    write_shard("a.safetensors", (const char *const[]){"x", "y"}, 2);
    write_shard("b.safetensors", (const char *const[]){"z"}, 1);
    write_index("\"x\": \"a.safetensors\", \"y\": \"a.safetensors\", \"z\": \"b.safetensors\"");
    dc_st_set s;
    ck_assert_msg(dc_st_set_open(&s, tmp_path("m.safetensors.index.json")) == 0, "%s", dc_error());
    ck_assert_int_eq(s.n, 2);
    ck_assert_str_eq(s.paths[1], tmp_path("b.safetensors"));
    ck_assert_float_eq(*(const float *)dc_st_find(&s.files[1], "z")->data, 1.0f);
    dc_st_set_close(&s);
    dc_st_set_close(&s); /* idempotent */
    ck_assert_msg(dc_st_set_open(&s, tmp_path("a.safetensors")) == 0, "%s", dc_error()); /* one file */
    ck_assert(s.n == 1 && s.files[0].n == 2);
    dc_st_set_close(&s);

    write_index("\"x\": \"a.safetensors\", \"y\": \"a.safetensors\", \"z\": \"c.safetensors\"");
    set_refused("m.safetensors.index.json: ");
    set_refused("c.safetensors: cannot open: No such file or directory");
    write_index("\"x\": \"a.safetensors\", \"y\": \"b.safetensors\", \"z\": \"b.safetensors\"");
    set_refused("'y' is in ");
    set_refused("a.safetensors, but the index puts it in b.safetensors");
    write_shard("b.safetensors", (const char *const[]){"z", "x"}, 2); /* x in two shards */
    write_index("\"x\": \"a.safetensors\", \"y\": \"a.safetensors\", \"z\": \"b.safetensors\"");
    set_refused("'x' is in ");
    write_shard("b.safetensors", (const char *const[]){"z"}, 1);
    write_index("\"x\": \"a.safetensors\", \"z\": \"b.safetensors\"");
    set_refused("a.safetensors holds 'y', which the index does not list");
    write_index("\"x\": \"a.safetensors\", \"y\": \"a.safetensors\", \"z\": \"b.safetensors\", "
                "\"w\": \"b.safetensors\"");
    set_refused("the index puts 'w' in ");
    write_index("\"x\": \"../a.safetensors\"");
    set_refused("a path, not a file name beside the index");
    spill(tmp_path("b.safetensors"), "junk", 4); /* a malformed shard names the index and the shard */
    write_index("\"x\": \"a.safetensors\", \"y\": \"a.safetensors\", \"z\": \"b.safetensors\"");
    set_refused("b.safetensors: file is 4 bytes, too short");
    remove_tmpdir();
}
END_TEST

int main(void) {
    Suite *s = suite_create("safetensors");
    TCase *tc = tu_tcase(s, "round trip", 10);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_rewrite_is_identical);
    tcase_add_test(tc, test_all_dtypes);
    tcase_add_test(tc, test_reader_is_lenient_where_safe);
    tc = tu_tcase(s, "malformed", 10);
    tcase_add_test(tc, test_malformed_buffers);
    tcase_add_test(tc, test_bad_lengths);
    tcase_add_test(tc, test_truncated_everywhere);
    tcase_add_test(tc, test_malformed_files);
    tcase_add_test(tc, test_header_too_large);
    tc = tu_tcase(s, "writer", 10);
    tcase_add_test(tc, test_write_missing_dir);
    tcase_add_test(tc, test_write_replaces);
    tcase_add_test(tc, test_full_disk_keeps_old_file);
    tcase_add_test(tc, test_write_refuses_bad_tensors);
    tc = tu_tcase(s, "shards", 10);
    tcase_add_test(tc, test_index_parse);
    tcase_add_test(tc, test_shard_set);
    return tu_run(s);
}
