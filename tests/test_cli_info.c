/* `diffc info`: runs the built diffc binary (found beside this test binary)
 * on files and folders made here, and checks its output, its exit status
 * (0 done, 1 user error, 2 usage) and that every error is exactly one line
 * "diffc: error: ..." on stderr. */
#define _GNU_SOURCE /* nftw */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/safetensors.h"

#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* ---- running diffc ---- */

typedef struct {
    int status; /* exit status */
    char out[1 << 16], err[1 << 16];
    size_t n_out, n_err;
} run_result;

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

/* diffc info ARGS... with stdout and stderr captured through pipes. */
static run_result *run_info(const char *a1, const char *a2) {
    static run_result r;
    memset(&r, 0, sizeof r);
    char exe[PATH_MAX];
    diffc_path(exe, sizeof exe);
    char *argv[] = {exe, "info", (char *)a1, (char *)a2, NULL};
    int out[2], err[2];
    ck_assert(pipe(out) == 0 && pipe(err) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    posix_spawn_file_actions_addclose(&fa, err[0]);
    pid_t pid;
    ck_assert_int_eq(posix_spawn(&pid, exe, &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(err[1]);
    struct pollfd p[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    while (p[0].fd >= 0 || p[1].fd >= 0) {
        ck_assert_int_gt(poll(p, 2, -1), 0);
        if (p[0].revents && !drain(out[0], r.out, sizeof r.out, &r.n_out))
            p[0].fd = -1;
        if (p[1].revents && !drain(err[0], r.err, sizeof r.err, &r.n_err))
            p[1].fd = -1;
    }
    close(out[0]);
    close(err[0]);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st), "diffc died: status %d; stderr: %s", st, r.err);
    r.status = WEXITSTATUS(st);
    return &r;
}

/* Exit 1, nothing on stdout, one line "diffc: error: ...<want>..." on stderr. */
static void assert_user_error(const run_result *r, const char *want) {
    ck_assert_msg(r->status == 1, "exit %d, stderr: %s", r->status, r->err);
    ck_assert_msg(r->n_out == 0, "stdout: %s", r->out);
    ck_assert_msg(strncmp(r->err, "diffc: error: ", 14) == 0, "stderr: %s", r->err);
    ck_assert_msg(strchr(r->err, '\n') == r->err + r->n_err - 1, "not one line: %s", r->err);
    ck_assert_msg(strstr(r->err, want), "'%s' lacks '%s'", r->err, want);
}

static void assert_usage_error(const run_result *r, const char *want) {
    ck_assert_msg(r->status == 2, "exit %d, stderr: %s", r->status, r->err);
    ck_assert_msg(strncmp(r->err, "diffc: error: ", 14) == 0 && strstr(r->err, want), "stderr: %s", r->err);
    ck_assert_msg(strstr(r->err, "usage: diffc info"), "stderr: %s", r->err);
}

/* ---- files ---- */

static char tmpdir[64];

static void make_tmpdir(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dc_info_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    return remove(path);
}

static void remove_tmpdir(void) { nftw(tmpdir, remove_entry, 8, FTW_DEPTH | FTW_PHYS); }

static const char *tmp_path(const char *name) {
    static char buf[4][256];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, 256, "%s/%s", tmpdir, name);
    return p;
}

/* conv_in.weight F32 [64, 3, 3, 3] and a BF16 bias [8]: 1,736 parameters,
 * 6,928 bytes; metadata format=pt, note=hello. */
static void write_model(const char *path) {
    static float w[64 * 27];
    static uint16_t b[8];
    dc_st_tensor t[2] = {
        {.name = "conv_in.weight",
         .dtype = DC_F32,
         .ndim = 4,
         .shape = {64, 3, 3, 3},
         .data = w,
         .nbytes = sizeof w},
        {.name = "time_embedding.linear_1.bias",
         .dtype = DC_BF16,
         .ndim = 1,
         .shape = {8},
         .data = b,
         .nbytes = sizeof b},
    };
    const char *k[] = {"format", "note"}, *v[] = {"pt", "hello"};
    ck_assert_msg(dc_st_write(path, t, 2, k, v, 2) == 0, "%s", dc_error());
}

/* The line of `text` that starts with `prefix`, copied into buf, or NULL. */
static const char *line_starting(const char *text, const char *prefix, char *buf, size_t n) {
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, prefix, strlen(prefix))) {
            size_t len = strcspn(p, "\n");
            snprintf(buf, n, "%.*s", (int)(len < n ? len : n - 1), p);
            return buf;
        }
    return NULL;
}

START_TEST(test_file) {
    make_tmpdir();
    const char *path = tmp_path("model.safetensors");
    write_model(path);
    run_result *r = run_info(path, NULL);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, r->err);
    ck_assert_msg(r->n_err == 0, "stderr: %s", r->err);
    char want[300], head[256], w[256], b[256], line[256];
    snprintf(want, sizeof want, "%s: safetensors weight file\n", path);
    ck_assert_msg(strncmp(r->out, want, strlen(want)) == 0, "%s", r->out);
    ck_assert_ptr_nonnull(line_starting(r->out, "  name ", head, sizeof head));
    ck_assert_ptr_nonnull(line_starting(r->out, "  conv_in.weight ", w, sizeof w));
    ck_assert_ptr_nonnull(line_starting(r->out, "  time_embedding.linear_1.bias ", b, sizeof b));
    ck_assert_msg(strstr(w, " F32 ") && strstr(w, " [64, 3, 3, 3] ") && strstr(w, " 6,912"), "%s", w);
    ck_assert_msg(strstr(b, " BF16 ") && strstr(b, " [8] ") && strstr(b, " 16"), "%s", b);
    /* aligned columns: dtype and shape start, and bytes end, at the same place */
    ck_assert_int_eq(strstr(head, "dtype") - head, strstr(w, "F32") - w);
    ck_assert_int_eq(strstr(head, "dtype") - head, strstr(b, "BF16") - b);
    ck_assert_int_eq(strstr(head, "shape") - head, strstr(w, "[64") - w);
    ck_assert_int_eq(strstr(head, "shape") - head, strstr(b, "[8]") - b);
    ck_assert_int_eq(strlen(head), strlen(w));
    ck_assert_int_eq(strlen(head), strlen(b));
    ck_assert_ptr_nonnull(line_starting(r->out, "  total: ", line, sizeof line));
    ck_assert_str_eq(line, "  total: 2 tensors, 1,736 parameters, 6.8 KiB (6,928 bytes)");
    ck_assert_ptr_nonnull(line_starting(r->out, "    format = ", line, sizeof line));
    ck_assert_str_eq(line, "    format = pt");
    ck_assert_ptr_nonnull(line_starting(r->out, "    note = ", line, sizeof line));
    ck_assert_str_eq(line, "    note = hello");
    remove_tmpdir();
}
END_TEST

START_TEST(test_folders) {
    make_tmpdir();
    ck_assert_int_eq(mkdir(tmp_path("pipe"), 0755), 0);
    ck_assert_int_eq(mkdir(tmp_path("pipe/unet"), 0755), 0);
    ck_assert_int_eq(mkdir(tmp_path("pipe/scheduler"), 0755), 0);
    write_model(tmp_path("pipe/unet/diffusion_pytorch_model.safetensors"));
    run_result *r = run_info(tmp_path("pipe"), NULL);
    ck_assert_msg(r->status == 0 && r->n_err == 0, "exit %d: %s", r->status, r->err);
    ck_assert_msg(strstr(r->out, "pipe/unet/diffusion_pytorch_model.safetensors: safetensors weight file\n"),
                  "%s", r->out);
    ck_assert_msg(strstr(r->out, "  total: 2 tensors, 1,736 parameters"), "%s", r->out);

    /* a model folder: the weights at the top */
    r = run_info(tmp_path("pipe/unet"), NULL);
    ck_assert_msg(r->status == 0 && strstr(r->out, "unet/diffusion_pytorch_model.safetensors: "), "%s%s",
                  r->out, r->err);

    ck_assert_int_eq(mkdir(tmp_path("empty"), 0755), 0);
    char want[300];
    snprintf(want, sizeof want, "diffc: error: %s: no safetensors weight file found\n", tmp_path("empty"));
    r = run_info(tmp_path("empty"), NULL);
    assert_user_error(r, "no safetensors weight file found");
    ck_assert_str_eq(r->err, want);
    remove_tmpdir();
}
END_TEST

START_TEST(test_bad_files) {
    make_tmpdir();
    run_result *r = run_info(tmp_path("missing.safetensors"), NULL);
    assert_user_error(r, "missing.safetensors: cannot open: No such file or directory");

    const char *empty = tmp_path("empty.safetensors");
    fclose(fopen(empty, "wb"));
    assert_user_error(run_info(empty, NULL), "empty.safetensors: file is 0 bytes");

    const char *model = tmp_path("model.safetensors");
    write_model(model);
    struct stat st;
    ck_assert_int_eq(stat(model, &st), 0);
    ck_assert_int_eq(truncate(model, st.st_size / 2), 0);
    assert_user_error(run_info(model, NULL), "run past the end of the data");
    ck_assert_int_eq(truncate(model, 20), 0);
    assert_user_error(run_info(model, NULL), "runs past the end of the file");

    FILE *fp = fopen(model, "wb");
    fwrite("\x0d\0\0\0\0\0\0\0{\"a\":{\"x\":1}}", 1, 21, fp);
    fclose(fp);
    assert_user_error(run_info(model, NULL), "model.safetensors: tensor 'a': \"dtype\" is missing");
    remove_tmpdir();
}
END_TEST

START_TEST(test_usage) {
    run_result *r = run_info("--help", NULL);
    ck_assert_int_eq(r->status, 0);
    ck_assert_msg(strncmp(r->out, "usage: diffc info FILE|DIR\n", 27) == 0, "%s", r->out);
    ck_assert_uint_eq(r->n_err, 0);
    assert_usage_error(run_info(NULL, NULL), "needs a FILE or DIR");
    assert_usage_error(run_info("--bogus", NULL), "unknown option '--bogus'");
    assert_usage_error(run_info("a", "b"), "not also 'b'");
}
END_TEST

int main(void) {
    Suite *s = suite_create("cli_info");
    TCase *tc = tu_tcase(s, "info", 20);
    tcase_add_test(tc, test_file);
    tcase_add_test(tc, test_folders);
    tcase_add_test(tc, test_bad_files);
    tcase_add_test(tc, test_usage);
    return tu_run(s);
}
