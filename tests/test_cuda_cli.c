/* `diffc train` and `diffc sample` on a GPU, end to end, against the same
 * commands on the CPU: training with --device cuda makes the loss fall and
 * writes checkpoints that the CPU reads; three GPU steps move the weights as
 * three CPU steps do; the GPU's images are the CPU's for the same seed,
 * whatever the batch size; gradients averaged through NCCL with one process
 * ($DC_NCCL=1), also reduce-scattered for ZeRO-1, give the weights of the
 * run without it.
 *
 * Tolerances: the GPU multiplies with TF32 tensor cores by default (10-bit
 * mantissas), so the weight updates of three AdamW steps are compared as
 * whole vectors (relative L2 error, attention's key bias left out: its
 * gradient is rounding noise, see test_train.c) and images by their pixel
 * values.
 *
 * Exits 77 (skipped) without a GPU or a CUDA build; CUDA is first touched
 * inside the diffc processes, never in the process Check forks from. */
#include "testutil.h"

#ifndef DC_HAVE_CUDA
#include <stdio.h>
int main(void) {
    printf("test_cuda_cli: this build has no CUDA: skipped\n");
    return 77;
}
#else

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "data/image.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOL_UPDATES 5e-2 /* relative L2 error of 3 steps' weight updates, TF32 against f32 */
#define TOL_SAME 1e-3    /* the same GPU computation by another route (NCCL, world 1); cuDNN
                            may sum in another order from run to run */
#define TOL_PIXEL 12     /* of 255: the worst pixel of an image after 10 DDIM steps in TF32 */
#define TOL_MEAN 1.0     /* of 255: the mean pixel difference */
#define WEIGHTS "/unet/diffusion_pytorch_model.safetensors"

/* 12 gray 8x8 images in data/: bright squares on the left or the right. */
static void make_dataset(void) {
    tu_mkdtemp("cuda_cli");
    const char *classes[] = {"left", "right"};
    ck_assert_int_eq(mkdir(tu_path("data"), 0755), 0);
    for (int k = 0; k < 2; k++) {
        char sub[64];
        snprintf(sub, sizeof sub, "data/%s", classes[k]);
        ck_assert_int_eq(mkdir(tu_path(sub), 0755), 0);
        for (int i = 0; i < 6; i++) {
            dc_image img;
            ck_assert_int_eq(dc_image_alloc(&img, 8, 8, 1), 0);
            for (int p = 0; p < 64; p++)
                img.px[p] = (uint8_t)((p % 8 < 4) == (k == 0) ? 200 + (int)(tu_next() % 56) : (int)(tu_next() % 40));
            char name[96];
            snprintf(name, sizeof name, "%s/%02d.png", sub, i);
            ck_assert_msg(dc_image_save_png(&img, tu_path(name)) == 0, "%s", dc_error());
            dc_image_free(&img);
        }
    }
    FILE *f = fopen(tu_path("model.json"), "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"_class_name\": \"UNet2DModel\", \"sample_size\": 8, \"in_channels\": 1, \"out_channels\": 1,"
          " \"layers_per_block\": 1, \"block_out_channels\": [8, 16],"
          " \"down_block_types\": [\"DownBlock2D\", \"AttnDownBlock2D\"],"
          " \"up_block_types\": [\"AttnUpBlock2D\", \"UpBlock2D\"], \"attention_head_dim\": 8,"
          " \"norm_num_groups\": 4, \"num_class_embeds\": 3, \"dropout\": 0.0}\n",
          f);
    ck_assert_int_eq(fclose(f), 0);
}

/* diffc train into `out` on `device` for `steps` steps, then `extra` (NULL-terminated, may be NULL). */
static tu_run_result *train(const char *device, const char *out, const char *steps, const char *lr,
                            const char *const *extra) {
    const char *args[48] = {"train", "--model", tu_path("model.json"), "--train-data-dir", tu_path("data"),
                            "--cache-dir", tu_path("cache"), "--resolution", "8", "--output-dir", tu_path(out),
                            "--train-batch-size", "4", "--max-train-steps", steps, "--learning-rate", lr,
                            "--lr-scheduler", "constant", "--use-ema", "--cond-drop-prob", "0.25",
                            "--logging-steps", "1", "--sample-every", "0", "--seed", "11",
                            "--dataloader-num-workers", "2", "--device", device};
    int n = 0;
    while (args[n])
        n++;
    for (int i = 0; extra && extra[i]; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    tu_run_result *r = tu_run_diffc(args);
    ck_assert_msg(r->status == 0, "train %s: exit %d: %s", device, r->status, tu_tail(r->err));
    return r;
}

/* ||(a - w0) - (b - w0)|| / ||b - w0|| over the tensors of two weight files
 * (w0: the start), leaving out names containing `skip`. */
static double update_error(const char *a, const char *b, const char *w0, const char *skip) {
    dc_st_file fa, fb, f0;
    ck_assert_msg(dc_st_open(&fa, tu_path(a)) == 0, "%s", dc_error());
    ck_assert_msg(dc_st_open(&fb, tu_path(b)) == 0, "%s", dc_error());
    ck_assert_msg(dc_st_open(&f0, tu_path(w0)) == 0, "%s", dc_error());
    double diff = 0, norm = 0;
    for (int i = 0; i < fa.n; i++) {
        const dc_st_tensor *ta = &fa.tensors[i], *tb = dc_st_find(&fb, ta->name), *t0 = dc_st_find(&f0, ta->name);
        ck_assert_msg(tb && t0 && tb->nbytes == ta->nbytes && t0->nbytes == ta->nbytes && ta->dtype == DC_F32,
                      "%s", ta->name);
        if (skip && strstr(ta->name, skip))
            continue;
        const float *x = ta->data, *y = tb->data, *z = t0->data;
        for (size_t k = 0; k < ta->nbytes / sizeof(float); k++) {
            ck_assert_msg(isfinite(x[k]), "%s[%zu] is %g", ta->name, k, x[k]);
            diff += ((double)x[k] - y[k]) * ((double)x[k] - y[k]);
            norm += ((double)y[k] - z[k]) * ((double)y[k] - z[k]);
        }
    }
    dc_st_close(&fa);
    dc_st_close(&fb);
    dc_st_close(&f0);
    ck_assert_msg(norm > 0, "%s: the weights did not move", b);
    return sqrt(diff / norm);
}

START_TEST(test_gpu_training_learns_and_the_cpu_reads_it) {
    make_dataset();
    tu_run_result *r = train("cuda", "gpu", "80", "3e-3", NULL);
    ck_assert_msg(strstr(r->out, "(resolved) device cuda:0"), "%s", tu_tail(r->out));
    char path[600];
    snprintf(path, sizeof path, "%s/metrics.jsonl", tu_path("gpu"));
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    double loss[80], first = 0, last = 0;
    int n = 0;
    char line[4096];
    while (n < 80 && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"loss\":");
        ck_assert_ptr_nonnull(p);
        loss[n++] = strtod(p + 7, NULL);
    }
    fclose(f);
    ck_assert_int_eq(n, 80);
    for (int i = 0; i < 10; i++) {
        first += loss[i] / 10;
        last += loss[70 + i] / 10;
    }
    ck_assert_msg(last < first / 3, "loss %g -> %g did not fall threefold", first, last);
    /* the CPU resumes from the GPU's checkpoint and samples its final model */
    const char *resume[] = {"--resume-from-checkpoint", tu_path("gpu/checkpoint-80"), NULL};
    r = train("cpu", "gpu", "82", "3e-3", resume);
    ck_assert_msg(strstr(r->err, "resuming from") && strstr(r->err, "at step 80"), "%s", tu_tail(r->err));
    const char *sample[] = {"sample", "--model", tu_path("gpu"), "--output-dir", tu_path("s"), "--device", "cpu",
                            "--num-images", "2", "--num-inference-steps", "5", NULL};
    r = tu_run_diffc(sample);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    tu_rmtemp();
}
END_TEST

/* Three steps on the GPU and on the CPU from the same start (lr 0 for one
 * step keeps the initial weights: the reference of the updates). */
START_TEST(test_three_gpu_steps_match_the_cpu) {
    make_dataset();
    train("cpu", "w0", "1", "0", NULL);
    train("cpu", "cpu", "3", "3e-3", NULL);
    train("cuda", "gpu", "3", "3e-3", NULL);
    double raw = update_error("gpu/checkpoint-3" WEIGHTS, "cpu/checkpoint-3" WEIGHTS, "w0" WEIGHTS, "to_k.bias");
    ck_assert_msg(raw <= TOL_UPDATES, "GPU and CPU weight updates differ by %g (relative L2)", raw);
    /* bf16 runs and moves the weights the same way, more loosely */
    const char *bf16[] = {"--mixed-precision", "bf16", NULL};
    tu_run_result *r = train("cuda", "bf16", "3", "3e-3", bf16);
    ck_assert_msg(strstr(r->out, "bf16 with f32 accumulation"), "%s", tu_tail(r->out));
    double half = update_error("bf16/checkpoint-3" WEIGHTS, "cpu/checkpoint-3" WEIGHTS, "w0" WEIGHTS, "to_k.bias");
    ck_assert_msg(half <= 4 * TOL_UPDATES, "bf16 and CPU weight updates differ by %g (relative L2)", half);
    tu_rmtemp();
}
END_TEST

#ifdef DC_HAVE_NCCL /* a build without NCCL (or MPI) has no such path */
/* One process through NCCL: the all-reduce of a world of one is the
 * gradient itself, so the run is the plain GPU run. */
START_TEST(test_nccl_world_of_one_matches_the_plain_run) {
    make_dataset();
    train("cpu", "w0", "1", "0", NULL);
    train("cuda", "plain", "3", "3e-3", NULL);
    setenv("DC_NCCL", "1", 1);
    tu_run_result *r = train("cuda", "nccl", "3", "3e-3", NULL);
    unsetenv("DC_NCCL");
    ck_assert_msg(strstr(r->err, "gradients averaged with NCCL over 1 rank"), "%s", tu_tail(r->err));
    double e = update_error("nccl/checkpoint-3" WEIGHTS, "plain/checkpoint-3" WEIGHTS, "w0" WEIGHTS, NULL);
    ck_assert_msg(e <= TOL_SAME, "NCCL and plain GPU runs differ by %g (relative L2)", e);
    /* ZeRO-1 through NCCL: ncclReduceScatter and ncclAllGather in place, with accumulation (PreMulSum) */
    const char *zero[] = {"--zero-stage", "1", "--gradient-accumulation-steps", "2", NULL};
    const char *accum[] = {"--gradient-accumulation-steps", "2", NULL};
    train("cuda", "plain2", "3", "3e-3", accum);
    setenv("DC_NCCL", "1", 1);
    r = train("cuda", "zero", "3", "3e-3", zero);
    unsetenv("DC_NCCL");
    ck_assert_msg(strstr(r->err, "ZeRO-1: "), "%s", tu_tail(r->err));
    e = update_error("zero/checkpoint-3" WEIGHTS, "plain2/checkpoint-3" WEIGHTS, "w0" WEIGHTS, NULL);
    ck_assert_msg(e <= TOL_SAME, "ZeRO-1 through NCCL and plain GPU runs differ by %g (relative L2)", e);
    tu_rmtemp();
}
END_TEST
#endif

/* Pixels of two PNG files: the worst and the mean difference in levels. */
static void compare_png(const char *a, const char *b, int *worst, double *mean) {
    dc_image x, y;
    ck_assert_msg(dc_image_load(&x, tu_path(a)) == 0, "%s", dc_error());
    ck_assert_msg(dc_image_load(&y, tu_path(b)) == 0, "%s", dc_error());
    ck_assert(x.w == y.w && x.h == y.h && x.c == y.c);
    size_t n = (size_t)x.w * x.h * x.c;
    double sum = 0;
    *worst = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)x.px[i] - (int)y.px[i]);
        *worst = d > *worst ? d : *worst;
        sum += d;
    }
    *mean = sum / (double)n;
    dc_image_free(&x);
    dc_image_free(&y);
}

static void sample(const char *device, const char *out, const char *batch) {
    const char *args[] = {"sample", "--model", tu_path("m"), "--output-dir", tu_path(out), "--device", device,
                          "--num-images", "4", "--batch-size", batch, "--num-inference-steps", "10",
                          "--guidance-scale", "2", "--seed", "5", NULL};
    tu_run_result *r = tu_run_diffc(args);
    ck_assert_msg(r->status == 0, "sample %s: exit %d: %s", device, r->status, tu_tail(r->err));
}

START_TEST(test_gpu_samples_match_the_cpu) {
    make_dataset();
    train("cpu", "m", "20", "3e-3", NULL);
    sample("cpu", "cpu", "4");
    sample("cuda", "gpu4", "4");
    sample("cuda", "gpu1", "1");
    for (int i = 0; i < 4; i++) {
        char a[64], b[64], c[64];
        snprintf(a, sizeof a, "cpu/%05d.png", i);
        snprintf(b, sizeof b, "gpu4/%05d.png", i);
        snprintf(c, sizeof c, "gpu1/%05d.png", i);
        int worst;
        double mean;
        compare_png(b, a, &worst, &mean);
        ck_assert_msg(worst <= TOL_PIXEL && mean <= TOL_MEAN, "image %d: GPU vs CPU: worst %d, mean %g levels", i,
                      worst, mean);
        compare_png(c, b, &worst, &mean);
        ck_assert_msg(worst <= TOL_PIXEL && mean <= TOL_MEAN, "image %d: batch 1 vs 4: worst %d, mean %g", i,
                      worst, mean);
    }
    tu_rmtemp();
}
END_TEST

int main(void) {
    if (tu_cuda_device_count() == 0) {
        printf("test_cuda_cli: no CUDA GPU: skipped\n");
        return 77;
    }
    Suite *s = suite_create("cuda_cli");
    TCase *tc = tu_tcase(s, "cli", 600);
    tcase_add_test(tc, test_gpu_training_learns_and_the_cpu_reads_it);
    tcase_add_test(tc, test_three_gpu_steps_match_the_cpu);
#ifdef DC_HAVE_NCCL
    tcase_add_test(tc, test_nccl_world_of_one_matches_the_plain_run);
#endif
    tcase_add_test(tc, test_gpu_samples_match_the_cpu);
    return tu_run(s);
}

#endif
