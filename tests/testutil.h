/*
 * Helpers for the Check suites: a poisoned CPU context, random tensors from a
 * seed that changes every run (printed on failure; set DC_TEST_SEED to
 * replay), forward comparisons, and the finite-difference gradient check.
 */
#ifndef DC_TESTUTIL_H
#define DC_TESTUTIL_H

#include "autograd/nn.h"
#include "autograd/ops.h"
#include "autograd/safetensors.h"
#include "data/image.h"

#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* The run's seed (DC_TEST_SEED or the clock), fixed at the first call. */
uint64_t tu_seed(void);
/* Next random number of the test stream. */
uint64_t tu_next(void);
double tu_uniform(double lo, double hi);
double tu_normal(void);

/* A w x h x c image of random bytes (freed by the caller). */
dc_image tu_random_image(int w, int h, int c);

/* A fresh CPU context (1 GiB lazy activation arena) that poisons outputs. */
dc_ctx *tu_ctx(void);
void tu_ctx_free(dc_ctx *ctx);

/* Random normal f32 tensors in the context; tu_leaf marks it as requiring grad. */
dc_tensor *tu_randn(dc_ctx *ctx, int ndim, const int64_t *shape);
dc_tensor *tu_leaf(dc_ctx *ctx, int ndim, const int64_t *shape);

/* Assert |got - want| <= atol + rtol * |want| elementwise; names the first bad index. */
void tu_assert_close(const float *got, const double *want, int64_t n, double atol, double rtol,
                     const char *what);

/* The function under a gradient check: builds an output from the inputs. */
typedef dc_tensor *(*tu_fn)(dc_ctx *ctx, dc_tensor **in, void *arg);

/* Finite-difference check of every input that requires grad: the analytic
 * gradient of L = sum(f(in) * R) for a random R, against central differences
 * (step eps) of L summed in double precision; where they disagree, against
 * the Richardson extrapolation of steps eps and eps / 2 (no eps^2 error: deep
 * nets curve). At most `max_elems` elements of each input are probed (all when
 * 0). Fails the test with the input, index and both values when
 * |num - ana| > atol + rtol * max(|num|, |ana|). */
void tu_gradcheck(dc_ctx *ctx, tu_fn f, void *arg, dc_tensor **in, int n_in, double eps,
                  double atol, double rtol, int max_elems);

/* What a run of the diffc binary printed and how it ended. */
typedef struct tu_run_result {
    int status; /* exit status */
    long peak_rss_mb; /* its largest resident set, in MiB */
    char out[1 << 16], err[1 << 16];
    size_t n_out, n_err;
} tu_run_result;

/* Run the built diffc (found beside the test binary) with `args` (the
 * subcommand and its arguments, NULL-terminated), stdout and stderr captured.
 * The result is overwritten by the next run. */
tu_run_result *tu_run_diffc(const char *const *args);
/* The same in steps, to act on diffc while it runs (send it a signal): start
 * it and return its pid; read what it prints until stderr holds `want` (true)
 * or it closes both outputs (false; NULL reads to the end); read the rest,
 * wait for it to exit and return the result. One process at a time. */
pid_t tu_spawn_diffc(const char *const *args);
/* tu_spawn_diffc under a launcher: `launcher` (a program found on the PATH
 * and its arguments, NULL-terminated) is run with diffc's path and `args`
 * after its own ("mpirun", "-np", "2" ... diffc train ...). */
pid_t tu_spawn_diffc_under(const char *const *launcher, const char *const *args);
bool tu_read_diffc_until(const char *want);
tu_run_result *tu_wait_diffc(void);
/* Send the running diffc `sig`, read what it printed to the end and reap it:
 * its wait status (a SIGKILL'ed run is no error here, unlike tu_wait_diffc). */
int tu_kill_diffc(int sig);
/* The last 1500 characters of s: what fits in a Check failure message. */
const char *tu_tail(const char *s);
/* Exit 1 and stderr exactly one line "diffc: error: ...<want>...". */
void tu_assert_user_error(const tu_run_result *r, const char *want);

/* Model configs that do not fit the weights beside them (issue #14): the
 * fixture's config.json with `key` set to the JSON `value` (key NULL: the
 * empty config "{}"). diffc must refuse each with a one-line error holding
 * `error`, before the model it describes takes any memory. */
typedef struct tu_hostile_config {
    const char *key, *value, *error;
} tu_hostile_config;
extern const tu_hostile_config tu_hostile_configs[];
extern const int tu_n_hostile_configs;
/* tu_path(dir) made, holding fixture/diffusion_pytorch_model.safetensors and
 * fixture/config.json changed as `h` says. */
void tu_write_hostile_unet(const char *dir, const char *fixture, const tu_hostile_config *h);
/* tu_run_diffc with the address space limited to a few GiB: a run that
 * would take much more fails instead of swamping the machine. */
tu_run_result *tu_run_diffc_bounded(const char *const *args);
/* The resident set of a diffc that starts and does nothing (`diffc --help`:
 * the libraries it loads, a few MiB on the CPU, ~200 MiB with CUDA's), from
 * which a run's own memory is counted. */
long tu_diffc_base_rss_mb(void);

/* A fresh folder /tmp/dc_<prefix>_XXXXXX for the running test; tu_path(name)
 * is a path inside it (valid until 8 more calls), tu_rmtemp removes it all. */
void tu_mkdtemp(const char *prefix);
const char *tu_path(const char *name);
void tu_rmtemp(void);
/* The value of the PNG text chunk `key` of the file at `path` (malloc'ed;
 * NULL when it has none), read with libpng itself; *compression (may be
 * NULL) gets libpng's kind of the chunk (PNG_TEXT_COMPRESSION_NONE: tEXt,
 * PNG_ITXT_COMPRESSION_NONE: iTXt). */
char *tu_png_text(const char *path, const char *key, int *compression);

/* A folder of coloured shapes for the text models: `copies` 24x24 images of
 * each of a red or blue (tu_shape_colours) square ("window") or disc
 * ("ball", tu_shape_kinds: one token each in the tiny vocabularies) on
 * gray, a little moved from copy to copy, named <colour>_<shape>_<k>.png;
 * with `captions`, metadata.jsonl with "a <colour> <shape>" for each. */
extern const char *const tu_shape_colours[2], *const tu_shape_kinds[2];
void tu_make_shapes(const char *dir, int copies, bool captions);

/* Whether this binary runs under AddressSanitizer (a Debug build many times
 * slower): tests that train for minutes to check numbers skip there, the
 * normal stage runs them and shorter tests cover the same code. */
bool tu_sanitized(void);

/* Whether the multi-rank suites can run: diffc built with MPI and mpirun on
 * the PATH; otherwise says why on stderr, naming `what`, and the caller exits
 * 77 (skipped). */
bool tu_have_mpirun(const char *what);

/* Write n bytes to tu_path(rel), making its folders. */
void tu_write_file(const char *rel, const void *data, size_t n);

/* CUDA devices present, asked in a child process: CUDA must not be
 * initialised in the process that Check forks the tests from. GPU suites
 * exit 77 (skipped) when it is 0. */
int tu_cuda_device_count(void);

/* The whole file, NUL-terminated (length in *n when n is not NULL); fails
 * the test with the reason when it cannot be read (a missing fixture). */
char *tu_read_file(const char *path, size_t max_bytes, size_t *n);

/* max |x[i]|, in double. */
double tu_max_abs(const float *x, int64_t n);
/* Every element within tol * max|want| of want (a reference from PyTorch,
 * diffusers or transformers); fails naming the first element that is not, and
 * when the reference is all zeros (it could not tell). */
void tu_check_close(const float *got, const float *want, int64_t n, double tol, const char *what);

/* A reference gradient t (F32, in the file layout of parameter p: conv
 * [O, I, kh, kw]) in p's memory layout (malloc'ed); fails the test when its
 * dtype or shape does not fit p. */
float *tu_ref_grad(const dc_st_tensor *t, const dc_param *p);

/* A test case added to s with a timeout in seconds. */
TCase *tu_tcase(Suite *s, const char *name, double timeout);
/* Run the suite from the source tree's root (DC_SOURCE_DIR, from CMake),
 * where the tests find tests/fixtures/ and configs/ whatever the working
 * directory they were started from; the process exit status (prints the
 * seed when a test failed). */
int tu_run(Suite *s);

#endif
