/*
 * CPU benchmark of the Stable Diffusion VAE (AutoencoderKL) on random
 * weights: decode (what a text-to-image pipeline does once per image) or
 * encode (img2img) of a batch, without a tape. Prints the best repetition:
 *   bench vae op=decode size=S batch=N params=P ms=T params_mb=W peak_mb=M
 * size is the image side (latents S/8); params_mb the resident set after the
 * weights are made, peak_mb the process's peak resident set (getrusage), as
 * scripts/bench_vae_torch.py reports it for diffusers. Run one size per
 * process: the peak only grows.
 *
 * usage: bench_vae [--config PATH] [--size S] [--batch N] [--encode] [--reps N]
 * (default: SD 1.x/2.x's VAE layout, 512, 1, decode, 1 repetition)
 */
#include "autograd/error.h"
#include "models/vae.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* runwayml/stable-diffusion-v1-5's vae/config.json (the network's keys) */
static const char sd_vae[] =
    "{\"_class_name\": \"AutoencoderKL\", \"act_fn\": \"silu\", \"block_out_channels\": [128, 256, "
    "512, 512], \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", "
    "\"DownEncoderBlock2D\", \"DownEncoderBlock2D\"], \"in_channels\": 3, \"latent_channels\": 4, "
    "\"layers_per_block\": 2, \"norm_num_groups\": 32, \"out_channels\": 3, \"sample_size\": 512, "
    "\"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\", "
    "\"UpDecoderBlock2D\"]}";

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024;
}

/* Uniform in [-1, 1) from a fixed LCG. */
static void fill(float *x, int64_t n) {
    static uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((double)(s >> 40) / (double)(1 << 23) - 1.0);
    }
}

/* One encode or decode of a fresh input; 0 or -1. */
static int run_once(dc_ctx *ctx, const dc_vae *m, bool encode, int64_t n, int64_t side) {
    int64_t down = (int64_t)1 << (m->cfg.levels - 1), s = encode ? side : side / down;
    int64_t c = encode ? m->cfg.in_channels : m->cfg.latent_channels;
    dc_ctx_reset(ctx);
    dc_tensor *x = dc_new(ctx, DC_F32, DC_SHAPE(n, s, s, c));
    if (!x)
        return -1;
    fill(x->data, x->numel);
    dc_vae_latent_dist d;
    return encode ? dc_vae_encode(ctx, m, x, &d) : dc_vae_decode(ctx, m, x) ? 0 : -1;
}

int main(int argc, char **argv) {
    const char *config = NULL;
    int size = 512, batch = 1, reps = 1;
    bool encode = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--encode"))
            encode = true;
        else if (v && !strcmp(a, "--config"))
            config = argv[++i];
        else if (v && !strcmp(a, "--size"))
            size = atoi(argv[++i]);
        else if (v && !strcmp(a, "--batch"))
            batch = atoi(argv[++i]);
        else if (v && !strcmp(a, "--reps"))
            reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_vae [--config PATH] [--size S] [--batch N] [--encode] [--reps N]\n");
            return 2;
        }
    }
    dc_vae_config cfg;
    dc_vae *m = NULL;
    dc_ctx ctx;
    int rc = (config ? dc_vae_config_load(&cfg, config) : dc_vae_config_parse(&cfg, sd_vae, "SD VAE")) ||
             dc_vae_init(&m, &cfg) || dc_params_alloc(&m->params, 1234) ||
             dc_ctx_init(&ctx, DC_CPU, (size_t)64 << 30);
    if (rc) {
        fprintf(stderr, "bench_vae: error: %s\n", dc_error());
        dc_vae_free(m);
        return 1;
    }
    double params_mb = rss_mb(), best = 1e30;
    dc_set_grad_enabled(&ctx, false);
    for (int r = 0; r < reps && !rc; r++) {
        double t0 = now();
        rc = run_once(&ctx, m, encode, batch, size);
        best = now() - t0 < best ? now() - t0 : best;
    }
    if (rc)
        fprintf(stderr, "bench_vae: error: %s\n", dc_error());
    else
        printf("bench vae op=%s size=%d batch=%d params=%zu ms=%.0f params_mb=%.0f peak_mb=%.0f "
               "act_peak_mb=%.0f\n",
               encode ? "encode" : "decode", size, batch, m->params.extent, best * 1e3, params_mb,
               rss_mb(), (double)ctx.act.peak / (1 << 20));
    dc_ctx_free(&ctx);
    dc_vae_free(m);
    return rc ? 1 : 0;
}
