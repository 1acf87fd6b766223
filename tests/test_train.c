/* `diffc train` end to end on a tiny class-conditional dataset made here:
 * the loss falls; a run resumed from its checkpoint ends with the same
 * weights, bit for bit, as the uninterrupted run; bad configurations are
 * one clear error. Runs the built diffc binary. */
#define _GNU_SOURCE /* nftw */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "data/image.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[64];

static const char *path_in(const char *name) {
    static char buf[8][512];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    return remove(path);
}

/* Two classes of 8x8 gray images: bright squares on the left or on the right. */
static void make_dataset(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dc_train_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    const char *classes[] = {"left", "right"};
    ck_assert_int_eq(mkdir(path_in("data"), 0755), 0);
    for (int c = 0; c < 2; c++) {
        char dir[64];
        snprintf(dir, sizeof dir, "data/%s", classes[c]);
        ck_assert_int_eq(mkdir(path_in(dir), 0755), 0);
        for (int i = 0; i < 12; i++) {
            dc_image img;
            ck_assert_int_eq(dc_image_alloc(&img, 8, 8, 1), 0);
            for (int p = 0; p < 64; p++) {
                bool lit = (p % 8 < 4) == (c == 0);
                img.px[p] = (uint8_t)(lit ? 200 + (int)(tu_next() % 56) : (int)(tu_next() % 40));
            }
            char name[96];
            snprintf(name, sizeof name, "%s/%02d.png", dir, i);
            ck_assert_msg(dc_image_save_png(&img, path_in(name)) == 0, "%s", dc_error());
            dc_image_free(&img);
        }
    }
    FILE *f = fopen(path_in("model.json"), "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"_class_name\": \"UNet2DModel\", \"sample_size\": 8, \"in_channels\": 1, \"out_channels\": 1,"
          " \"layers_per_block\": 1, \"block_out_channels\": [8, 16],"
          " \"down_block_types\": [\"DownBlock2D\", \"AttnDownBlock2D\"],"
          " \"up_block_types\": [\"AttnUpBlock2D\", \"UpBlock2D\"], \"attention_head_dim\": 8,"
          " \"norm_num_groups\": 4, \"num_class_embeds\": 3, \"dropout\": 0.1}\n",
          f);
    ck_assert_int_eq(fclose(f), 0);
}

static void remove_dataset(void) { nftw(tmpdir, remove_entry, 8, FTW_DEPTH | FTW_PHYS); }

/* diffc train on the tiny data into `out`, with extra options (NULL-terminated). */
static tu_run_result *train(const char *out, const char *steps, const char *const *extra) {
    const char *args[48] = {"train", "--model", path_in("model.json"), "--train-data-dir",
                            path_in("data"), "--cache-dir", path_in("cache"), "--resolution", "8",
                            "--output-dir", path_in(out), "--train-batch-size", "4",
                            "--max-train-steps", steps, "--learning-rate", "3e-3",
                            "--lr-warmup-steps", "2", "--use-ema", "--cond-drop-prob", "0.25",
                            "--logging-steps", "1", "--sample-every", "0", "--seed", "7",
                            "--dataloader-num-workers", "2"};
    int n = 0;
    while (args[n])
        n++;
    for (int i = 0; extra && extra[i]; i++)
        args[n++] = extra[i];
    return tu_run_diffc(args);
}

/* The loss column of metrics.jsonl, [steps]. */
static int read_losses(const char *out, double *loss, int max) {
    char path[600];
    snprintf(path, sizeof path, "%s/metrics.jsonl", path_in(out));
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "%s missing", path);
    char line[4096];
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"loss\":");
        ck_assert_msg(p != NULL, "no loss in: %s", line);
        loss[n++] = strtod(p + 7, NULL);
    }
    fclose(f);
    return n;
}

START_TEST(test_loss_falls) {
    make_dataset();
    tu_run_result *r = train("fall", "80", NULL);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, r->err);
    double loss[80];
    int n = read_losses("fall", loss, 80);
    ck_assert_int_eq(n, 80);
    double first = 0, last = 0;
    for (int i = 0; i < 10; i++) {
        first += loss[i] / 10;
        last += loss[n - 10 + i] / 10;
    }
    ck_assert_msg(last < first / 3, "loss %g -> %g did not fall threefold", first, last);
    /* the final model is a pipeline folder; so is each checkpoint */
    ck_assert_int_eq(access(path_in("fall/unet/diffusion_pytorch_model.safetensors"), R_OK), 0);
    ck_assert_int_eq(access(path_in("fall/checkpoint-80/DONE"), R_OK), 0);
    remove_dataset();
}
END_TEST

/* Every tensor of two weight files holds the same bytes. */
static void assert_same_weights(const char *a, const char *b) {
    dc_st_file fa, fb;
    ck_assert_msg(dc_st_open(&fa, path_in(a)) == 0, "%s", dc_error());
    ck_assert_msg(dc_st_open(&fb, path_in(b)) == 0, "%s", dc_error());
    ck_assert_int_eq(fa.n, fb.n);
    for (int i = 0; i < fa.n; i++) {
        const dc_st_tensor *t = dc_st_find(&fb, fa.tensors[i].name);
        ck_assert_msg(t && t->nbytes == fa.tensors[i].nbytes, "%s", fa.tensors[i].name);
        ck_assert_msg(memcmp(t->data, fa.tensors[i].data, t->nbytes) == 0,
                      "%s differs between %s and %s", t->name, a, b);
    }
    dc_st_close(&fa);
    dc_st_close(&fb);
}

START_TEST(test_resume_is_exact) {
    make_dataset();
    const char *ckpt[] = {"--checkpointing-steps", "3", NULL};
    tu_run_result *r = train("whole", "7", ckpt);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, r->err);
    /* a second run stopped at step 3: its folder holds only checkpoint-3 */
    ck_assert_int_eq(mkdir(path_in("resumed"), 0755), 0);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp -r %s %s", path_in("whole/checkpoint-3"), path_in("resumed/"));
    ck_assert_int_eq(system(cmd), 0);
    const char *resume[] = {"--checkpointing-steps", "3", "--resume-from-checkpoint", "latest", NULL};
    r = train("resumed", "7", resume);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, r->err);
    ck_assert_msg(strstr(r->err, "resuming from") && strstr(r->err, "at step 3"), "%s", r->err);
    assert_same_weights("whole/unet/diffusion_pytorch_model.safetensors",
                        "resumed/unet/diffusion_pytorch_model.safetensors");
    assert_same_weights("whole/checkpoint-7/unet/diffusion_pytorch_model.safetensors",
                        "resumed/checkpoint-7/unet/diffusion_pytorch_model.safetensors");
    assert_same_weights("whole/checkpoint-7/train_state.safetensors",
                        "resumed/checkpoint-7/train_state.safetensors");
    /* and it computed the same losses on the way */
    double a[8], b[8];
    ck_assert_int_eq(read_losses("whole", a, 8), 7);
    ck_assert_int_eq(read_losses("resumed", b, 8), 4);
    for (int i = 0; i < 4; i++)
        ck_assert_msg(a[3 + i] == b[i], "step %d: loss %.17g vs %.17g", 4 + i, a[3 + i], b[i]);
    remove_dataset();
}
END_TEST

START_TEST(test_bad_configs) {
    make_dataset();
    const char *unknown[] = {"train", "--config", path_in("bad.json"), NULL};
    FILE *f = fopen(path_in("bad.json"), "w");
    fputs("{\"lerning_rate\": 1e-4}\n", f);
    fclose(f);
    tu_assert_user_error(tu_run_diffc(unknown), "lerning_rate");

    const char *rgb[] = {"--model", "{\"in_channels\": 3, \"out_channels\": 3, \"block_out_channels\": "
                                    "[8, 16], \"down_block_types\": [\"DownBlock2D\", \"DownBlock2D\"], "
                                    "\"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\"], "
                                    "\"norm_num_groups\": 4}",
                         NULL};
    tu_assert_user_error(train("rgb", "2", rgb), "the model's in_channels is 3");

    const char *odd[] = {"--resolution", "7", NULL};
    tu_assert_user_error(train("odd", "2", odd), "--resolution 7 is not divisible by 2");

    const char *gpu[] = {"--device", "cuda", NULL};
    tu_assert_user_error(train("gpu", "2", gpu), "--device cuda");

    const char *nodir[] = {"--output-dir", "/proc/diffc-cannot-be-here", NULL};
    tu_assert_user_error(train("x", "2", nodir), "/proc/diffc-cannot-be-here");
    remove_dataset();
}
END_TEST

int main(void) {
    Suite *s = suite_create("train");
    TCase *tc = tu_tcase(s, "train", 300);
    tcase_add_test(tc, test_loss_falls);
    tcase_add_test(tc, test_resume_is_exact);
    tcase_add_test(tc, test_bad_configs);
    return tu_run(s);
}
