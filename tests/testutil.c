/* Test helpers (see testutil.h). */
#include "testutil.h"

#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Sanitizer builds: LeakSanitizer's walk of glibc's dynamic TLS blocks
 * misjudges their layout now and then, depending on where things land in the
 * binary, and its tracer crashes at exit ("Tracer caught signal 11",
 * google/sanitizers#1322). Our code has no dynamic TLS, so skip that walk;
 * ASAN_OPTIONS from the environment still apply on top. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TU_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(TU_ASAN)
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "intercept_tls_get_addr=0"; }
#endif

bool tu_sanitized(void) {
#if defined(__SANITIZE_ADDRESS__) || defined(TU_ASAN)
    return true;
#else
    return false;
#endif
}

bool tu_have_mpirun(const char *what) {
#ifndef DC_HAVE_MPI
    fprintf(stderr, "%s: skipped: built without MPI\n", what);
    return false;
#else
    if (system("mpirun --version >/dev/null 2>&1") != 0) {
        fprintf(stderr, "%s: skipped: no mpirun on the PATH\n", what);
        return false;
    }
    return true;
#endif
}

static uint64_t state;
static int seeded;

uint64_t tu_seed(void) {
    static uint64_t seed;
    if (!seeded) {
        const char *env = getenv("DC_TEST_SEED");
        seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
        state = seed;
        seeded = 1;
    }
    return seed;
}

uint64_t tu_next(void) { /* splitmix64 */
    tu_seed();
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double tu_uniform(double lo, double hi) {
    return lo + (hi - lo) * ((double)(tu_next() >> 11) * 0x1.0p-53);
}

double tu_normal(void) {
    double u1 = tu_uniform(1e-12, 1.0), u2 = tu_uniform(0.0, 1.0);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

dc_ctx *tu_ctx(void) {
    dc_ctx *ctx = malloc(sizeof *ctx);
    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(dc_ctx_init(ctx, DC_CPU, (size_t)1 << 30) == 0, "%s", dc_error());
    ctx->poison = true;
    return ctx;
}

void tu_ctx_free(dc_ctx *ctx) {
    dc_ctx_free(ctx);
    free(ctx);
}

dc_image tu_random_image(int w, int h, int c) {
    dc_image img;
    ck_assert_int_eq(dc_image_alloc(&img, w, h, c), 0);
    for (size_t i = 0; i < (size_t)w * h * c; i++)
        img.px[i] = (uint8_t)tu_next();
    return img;
}

dc_tensor *tu_randn(dc_ctx *ctx, int ndim, const int64_t *shape) {
    dc_tensor *t = dc_new(ctx, DC_F32, ndim, shape);
    ck_assert_msg(t != NULL, "%s", dc_error());
    for (int64_t i = 0; i < t->numel; i++)
        ((float *)t->data)[i] = (float)tu_normal();
    return t;
}

dc_tensor *tu_leaf(dc_ctx *ctx, int ndim, const int64_t *shape) {
    dc_tensor *t = tu_randn(ctx, ndim, shape);
    t->requires_grad = true;
    return t;
}

void tu_assert_close(const float *got, const double *want, int64_t n, double atol, double rtol,
                     const char *what) {
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        ck_assert_msg(d <= atol + rtol * fabs(want[i]),
                      "%s: element %lld: got %.8g, want %.8g (seed %llu)", what, (long long)i,
                      (double)got[i], want[i], (unsigned long long)tu_seed());
    }
}

/* sum(out * r) in double, with everything the forward allocated released again. */
static double probe(dc_ctx *ctx, tu_fn f, void *arg, dc_tensor **in, const float *r) {
    size_t act = ctx->act.used, meta = ctx->meta.used;
    bool was = dc_set_grad_enabled(ctx, false);
    dc_tensor *out = f(ctx, in, arg);
    ck_assert_msg(out != NULL, "forward failed: %s", dc_error());
    double s = 0;
    for (int64_t i = 0; i < out->numel; i++)
        s += (double)((float *)out->data)[i] * r[i];
    dc_set_grad_enabled(ctx, was);
    dc_arena_rewind(&ctx->act, act);
    dc_arena_rewind(&ctx->meta, meta);
    return s;
}

/* (f(x + eps) - f(x - eps)) / 2 eps for the element *x of an input, with the
 * steps as float rounds them; *x is restored. */
static double central_difference(dc_ctx *ctx, tu_fn f, void *arg, dc_tensor **in, const float *r,
                                 float *x, double eps) {
    float keep = *x;
    float up = (float)(keep + eps), down = (float)(keep - eps);
    *x = up;
    double hi = probe(ctx, f, arg, in, r);
    *x = down;
    double lo = probe(ctx, f, arg, in, r);
    *x = keep;
    return (hi - lo) / ((double)up - down);
}

void tu_gradcheck(dc_ctx *ctx, tu_fn f, void *arg, dc_tensor **in, int n_in, double eps,
                  double atol, double rtol, int max_elems) {
    dc_tensor *out = f(ctx, in, arg);
    ck_assert_msg(out != NULL, "forward failed: %s", dc_error());
    dc_tensor *r = tu_randn(ctx, out->ndim, out->shape);
    ck_assert_msg(dc_backward_from(ctx, out, r) == 0, "backward failed: %s", dc_error());
    for (int k = 0; k < n_in; k++) {
        dc_tensor *x = in[k];
        if (!x->requires_grad)
            continue;
        ck_assert_msg(x->grad != NULL, "input %d got no gradient", k);
        float *xd = x->data;
        int64_t probes = max_elems > 0 && max_elems < x->numel ? max_elems : x->numel;
        for (int64_t p = 0; p < probes; p++) {
            int64_t j = probes == x->numel ? p : (int64_t)(tu_next() % (uint64_t)x->numel);
            double ana = ((float *)x->grad->data)[j];
            double num = central_difference(ctx, f, arg, in, r->data, &xd[j], eps);
            double tol = atol + rtol * fmax(fabs(num), fabs(ana));
            if (fabs(num - ana) > tol) { /* curvature? Richardson: the eps^2 term cancels */
                num = (4 * central_difference(ctx, f, arg, in, r->data, &xd[j], eps / 2) - num) / 3;
                tol = atol + rtol * fmax(fabs(num), fabs(ana));
            }
            ck_assert_msg(fabs(num - ana) <= tol,
                          "input %d element %lld: analytic %.7g, numeric %.7g (seed %llu)", k,
                          (long long)j, ana, num, (unsigned long long)tu_seed());
        }
    }
}

int tu_cuda_device_count(void) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return 0;
    if (pid == 0) {
        int n = dc_device_count();
        _exit(n > 100 ? 100 : n);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
        return 0;
    return WEXITSTATUS(status);
}

TCase *tu_tcase(Suite *s, const char *name, double timeout) {
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, timeout);
    suite_add_tcase(s, tc);
    return tc;
}

char *tu_read_file(const char *path, size_t max_bytes, size_t *n) {
    char *text = dc_read_file(path, max_bytes, n);
    ck_assert_msg(text != NULL, "%s", dc_error());
    return text;
}

int tu_run(Suite *s) {
    if (chdir(DC_SOURCE_DIR) != 0) {
        fprintf(stderr, "%s: %s: the tests read their fixtures there\n", DC_SOURCE_DIR, strerror(errno));
        return EXIT_FAILURE;
    }
    tu_seed();
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (failed)
        fprintf(stderr, "test seed: DC_TEST_SEED=%llu\n", (unsigned long long)tu_seed());
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* ---- running diffc ---- */

extern char **environ;

static void diffc_path(char *buf, size_t n) {
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    ck_assert_int_gt(len, 0);
    exe[len] = '\0';
    snprintf(buf, n, "%s/diffc", dirname(exe));
    ck_assert_msg(access(buf, X_OK) == 0, "%s: not found (build the diffc target)", buf);
}

/* Append what is readable on fd; 0 at end of file. */
static int drain(int fd, char *buf, size_t cap, size_t *n) {
    char tmp[4096];
    ssize_t k = read(fd, tmp, sizeof tmp);
    ck_assert_int_ge(k, 0);
    size_t take = *n + (size_t)k < cap - 1 ? (size_t)k : cap - 1 - *n;
    memcpy(buf + *n, tmp, take);
    *n += take;
    buf[*n] = '\0';
    return k > 0;
}

/* The diffc process started last: its pid, the read ends of its pipes (-1
 * once at end of file) and what it printed so far. */
static struct {
    pid_t pid;
    struct pollfd fds[2];
    tu_run_result r;
} child;

pid_t tu_spawn_diffc_under(const char *const *launcher, const char *const *args) {
    memset(&child.r, 0, sizeof child.r);
    char exe[PATH_MAX];
    diffc_path(exe, sizeof exe);
    const char *argv[96];
    int n = 0;
    for (int i = 0; launcher && launcher[i]; i++) {
        ck_assert_int_lt(n, 32);
        argv[n++] = launcher[i];
    }
    argv[n++] = exe;
    for (int i = 0; args[i]; i++) {
        ck_assert_int_lt(n + 1, 96);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    int out[2], err[2];
    ck_assert(pipe(out) == 0 && pipe(err) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    posix_spawn_file_actions_addclose(&fa, err[0]);
    ck_assert_int_eq(posix_spawnp(&child.pid, argv[0], &fa, NULL, (char *const *)argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(err[1]);
    child.fds[0] = (struct pollfd){out[0], POLLIN, 0};
    child.fds[1] = (struct pollfd){err[0], POLLIN, 0};
    return child.pid;
}

pid_t tu_spawn_diffc(const char *const *args) { return tu_spawn_diffc_under(NULL, args); }

bool tu_read_diffc_until(const char *want) {
    struct pollfd *p = child.fds;
    tu_run_result *r = &child.r;
    while (!(want && strstr(r->err, want)) && (p[0].fd >= 0 || p[1].fd >= 0)) {
        ck_assert_int_gt(poll(p, 2, -1), 0);
        if (p[0].revents && !drain(p[0].fd, r->out, sizeof r->out, &r->n_out)) {
            close(p[0].fd);
            p[0].fd = -1;
        }
        if (p[1].revents && !drain(p[1].fd, r->err, sizeof r->err, &r->n_err)) {
            close(p[1].fd);
            p[1].fd = -1;
        }
    }
    return want && strstr(r->err, want);
}

tu_run_result *tu_wait_diffc(void) {
    tu_read_diffc_until(NULL);
    int st;
    struct rusage ru;
    ck_assert_int_eq(wait4(child.pid, &st, 0, &ru), child.pid);
    ck_assert_msg(WIFEXITED(st), "diffc died: status %d; stderr: %s", st, tu_tail(child.r.err));
    child.r.status = WEXITSTATUS(st);
    child.r.peak_rss_mb = ru.ru_maxrss / 1024;
    return &child.r;
}

int tu_kill_diffc(int sig) {
    ck_assert_int_eq(kill(child.pid, sig), 0);
    tu_read_diffc_until(NULL);
    int st;
    ck_assert_int_eq(waitpid(child.pid, &st, 0), child.pid);
    return st;
}

tu_run_result *tu_run_diffc(const char *const *args) {
    tu_spawn_diffc(args);
    return tu_wait_diffc();
}

const char *tu_tail(const char *s) {
    size_t n = strlen(s);
    return n > 1500 ? s + n - 1500 : s;
}

void tu_assert_user_error(const tu_run_result *r, const char *want) {
    ck_assert_msg(r->status == 1, "exit %d, stderr: %s", r->status, r->err);
    ck_assert_msg(strncmp(r->err, "diffc: error: ", 14) == 0, "stderr: %s", tu_tail(r->err));
    ck_assert_msg(strchr(r->err, '\n') == r->err + r->n_err - 1, "not one line: %s", tu_tail(r->err));
    ck_assert_msg(strstr(r->err, want), "'%s' lacks '%s'", tu_tail(r->err), want);
}

/* ---- a temporary folder per test ---- */

static char tempdir[64];

void tu_mkdtemp(const char *prefix) {
    snprintf(tempdir, sizeof tempdir, "/tmp/dc_%s_XXXXXX", prefix);
    ck_assert_ptr_nonnull(mkdtemp(tempdir));
}

const char *tu_path(const char *name) {
    static char buf[8][512];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, sizeof buf[0], "%s/%s", tempdir, name);
    return p;
}

void tu_rmtemp(void) { ck_assert_msg(dc_remove_tree(tempdir) == 0, "%s", dc_error()); }

char *tu_png_text(const char *path, const char *key, int *compression) {
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "%s: %s", path, strerror(errno));
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    ck_assert(png && info && !setjmp(png_jmpbuf(png)));
    png_init_io(png, fp);
    png_read_info(png, info);
    png_textp text;
    int n = 0;
    char *found = NULL;
    png_get_text(png, info, &text, &n);
    for (int i = 0; i < n && !found; i++)
        if (!strcmp(text[i].key, key)) {
            found = strdup(text[i].text);
            if (compression)
                *compression = text[i].compression;
        }
    png_destroy_read_struct(&png, &info, NULL);
    fclose(fp);
    return found;
}

void tu_write_file(const char *rel, const void *data, size_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tempdir, rel);
    for (char *slash = strchr(path + strlen(tempdir) + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = 0;
        ck_assert_msg(mkdir(path, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", path, strerror(errno));
        *slash = '/';
    }
    ck_assert_msg(dc_write_file(path, data, n, false) == 0, "%s", dc_error());
}

/* ---- coloured shapes ---- */

const char *const tu_shape_colours[2] = {"red", "blue"}, *const tu_shape_kinds[2] = {"window", "ball"};

static void save_shape(const char *dir, int colour, int kind, int k) {
    static const uint8_t rgb[2][3] = {{220, 30, 30}, {30, 40, 220}};
    enum { SIDE = 24 };
    dc_image img;
    ck_assert(!dc_image_alloc(&img, SIDE, SIDE, 3));
    int cx = 11 + k % 4, cy = 12 - k % 4;
    for (int y = 0; y < SIDE; y++)
        for (int x = 0; x < SIDE; x++) {
            int dx = x - cx, dy = y - cy;
            bool in = kind == 0 ? abs(dx) <= 6 && abs(dy) <= 6 : dx * dx + dy * dy <= 49;
            for (int ch = 0; ch < 3; ch++)
                img.px[(y * SIDE + x) * 3 + ch] = in ? rgb[colour][ch] : 128;
        }
    char path[600];
    snprintf(path, sizeof path, "%s/%s_%s_%d.png", dir, tu_shape_colours[colour], tu_shape_kinds[kind], k);
    ck_assert_msg(!dc_image_save_png(&img, path), "%s", dc_error());
    dc_image_free(&img);
}

void tu_make_shapes(const char *dir, int copies, bool captions) {
    char path[600];
    snprintf(path, sizeof path, "%s/metadata.jsonl", dir);
    ck_assert(!dc_mkdirs(dir));
    FILE *meta = captions ? fopen(path, "w") : NULL;
    ck_assert(!captions || meta);
    for (int c = 0; c < 2; c++)
        for (int s = 0; s < 2; s++)
            for (int k = 0; k < copies; k++) {
                save_shape(dir, c, s, k);
                if (meta)
                    fprintf(meta, "{\"file_name\": \"%s_%s_%d.png\", \"text\": \"a %s %s\"}\n", tu_shape_colours[c],
                            tu_shape_kinds[s], k, tu_shape_colours[c], tu_shape_kinds[s]);
            }
    if (meta)
        fclose(meta);
}

/* ---- hostile model configs ---- */

const tu_hostile_config tu_hostile_configs[] = {
    {"block_out_channels", "[65536, 65536]", "block_out_channels 65536 is implausibly large"},
    {"in_channels", "2000000000", "in_channels 2000000000 is implausibly large"},
    {"num_class_embeds", "2000000000", "num_class_embeds 2000000000 is implausibly large"},
    {"layers_per_block", "100000000", "layers_per_block 100000000 is implausibly large"},
    {NULL, NULL, "file has [8], model expects [224]"}, /* {}: diffusers' defaults, ~1 GB of weights */
    {"block_out_channels", "[4096, 4096]", "file has [8], model expects [4096]"}, /* plausible, ~8 GB */
};
const int tu_n_hostile_configs = (int)(sizeof tu_hostile_configs / sizeof tu_hostile_configs[0]);

void tu_write_hostile_unet(const char *dir, const char *fixture, const tu_hostile_config *h) {
    char from[512], to[512];
    ck_assert_int_eq(mkdir(tu_path(dir), 0755), 0);
    snprintf(from, sizeof from, "%s/diffusion_pytorch_model.safetensors", fixture);
    snprintf(to, sizeof to, "%s/%s/diffusion_pytorch_model.safetensors", tempdir, dir);
    size_t n;
    char *weights = dc_read_file(from, 1 << 24, &n);
    ck_assert_msg(weights && dc_write_file(to, weights, n, false) == 0, "%s", dc_error());
    free(weights);
    snprintf(from, sizeof from, "%s/config.json", fixture);
    cJSON *cfg = h->key ? dc_json_load(from) : cJSON_CreateObject();
    ck_assert_msg(cfg, "%s", dc_error());
    if (h->key)
        ck_assert(cJSON_ReplaceItemInObjectCaseSensitive(cfg, h->key, cJSON_Parse(h->value)));
    char *text = cJSON_Print(cfg);
    snprintf(to, sizeof to, "%s/%s/config.json", tempdir, dir);
    ck_assert_msg(dc_write_file(to, text, strlen(text), false) == 0, "%s", dc_error());
    free(text);
    cJSON_Delete(cfg);
}

/* Sanitizers reserve terabytes of shadow address space: no limit there. */
#if defined(__SANITIZE_ADDRESS__) || defined(TU_ASAN)
#define TU_AS_LIMIT 0
#else
#define TU_AS_LIMIT ((rlim_t)4 << 30)
#endif

tu_run_result *tu_run_diffc_bounded(const char *const *args) {
    struct rlimit old, lim;
    ck_assert_int_eq(getrlimit(RLIMIT_AS, &old), 0);
    lim = old;
    if (TU_AS_LIMIT && (old.rlim_max == RLIM_INFINITY || old.rlim_max > TU_AS_LIMIT))
        lim.rlim_cur = TU_AS_LIMIT;
    ck_assert_int_eq(setrlimit(RLIMIT_AS, &lim), 0);
    tu_run_result *r = tu_run_diffc(args);
    ck_assert_int_eq(setrlimit(RLIMIT_AS, &old), 0);
    return r;
}

long tu_diffc_base_rss_mb(void) {
    tu_run_result *r = tu_run_diffc((const char *const[]){"--help", NULL});
    ck_assert_int_eq(r->status, 0);
    return r->peak_rss_mb;
}

double tu_max_abs(const float *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs(x[i]));
    return m;
}

void tu_check_close(const float *got, const float *want, int64_t n, double tol, const char *what) {
    double scale = tu_max_abs(want, n);
    ck_assert_msg(scale > 0, "%s: the reference is all zeros", what);
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want[i]) / scale;
        ck_assert_msg(err <= tol,
                      "%s: element %lld: got %.8g, reference %.8g (error %.2g of max %.3g)", what,
                      (long long)i, (double)got[i], (double)want[i], err, scale);
    }
}

float *tu_ref_grad(const dc_st_tensor *t, const dc_param *p) {
    int64_t n = p->value.numel, file_shape[DC_MAX_DIMS];
    dc_param_file_shape(p, file_shape);
    ck_assert_msg(t->dtype == DC_F32 && t->ndim == p->value.ndim, "%s: dtype/rank", t->name);
    for (int d = 0; d < t->ndim; d++)
        ck_assert_msg(t->shape[d] == file_shape[d], "%s: dimension %d", t->name, d);
    const float *src = t->data;
    float *out = malloc((size_t)n * sizeof *out);
    if (p->layout != DC_LAYOUT_CONV) {
        memcpy(out, src, (size_t)n * sizeof *out);
        return out;
    }
    const int64_t *s = p->value.shape; /* [O, kh, kw, I] from the file's [O, I, kh, kw] */
    for (int64_t o = 0; o < s[0]; o++)
        for (int64_t y = 0; y < s[1]; y++)
            for (int64_t x = 0; x < s[2]; x++)
                for (int64_t i = 0; i < s[3]; i++)
                    out[((o * s[1] + y) * s[2] + x) * s[3] + i] =
                        src[((o * s[3] + i) * s[1] + y) * s[2] + x];
    return out;
}
