/* A diffusers model folder opened for inference (see model.h). */
#define _GNU_SOURCE /* strdup */
#include "model.h"

#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "models/config_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* "unet_ema" when wanted and there, else "unet". */
static const char *unet_component(const char *dir, bool use_ema) {
    char *ema = use_ema ? dc_path_join(dir, "unet_ema") : NULL;
    bool found = ema && is_dir(ema);
    free(ema);
    return found ? "unet_ema" : "unet";
}

static int load_unet(dc_model *m, const char *dir, bool use_ema, const char *variant, int device) {
    const char *component = unet_component(dir, use_ema);
    char *config_path = NULL, *guessed = NULL;
    int rc = dc_unet_find(dir, component, variant, &config_path, &m->weights_path, &guessed);
    if (guessed)
        fprintf(stderr, "diffc: note: %s has no plain weights; using its only variant, %s\n", dir, guessed);
    free(guessed);
    if (!rc)
        rc = dc_unet_config_load(&m->cfg, config_path) || dc_unet_check_ddpm(&m->cfg, config_path);
    free(config_path);
    dc_params_init(&m->ps);
    if (!rc)
        rc = dc_unet_init(&m->unet, &m->cfg, &m->ps) ||
                     dc_params_alloc_load(&m->ps, device, m->weights_path, dc_unet_rename)
                 ? -1
                 : 0;
    m->ema = !rc && !strcmp(component, "unet_ema");
    return rc;
}

/* The pipeline's scheduler config; a bare UNet folder (no unet/) has none. */
static int load_schedule(dc_model *m, const char *dir) {
    dc_noise_schedule_config c = dc_noise_schedule_default_config();
    char *unet = dc_path_join(dir, "unet");
    bool pipeline = unet && is_dir(unet);
    free(unet);
    int rc = 0;
    if (pipeline) {
        m->scheduler_path = dc_path_join(dir, "scheduler/scheduler_config.json");
        m->scheduler_json = m->scheduler_path ? dc_cfg_read_text(m->scheduler_path) : NULL;
        rc =
            m->scheduler_json ? dc_noise_schedule_config_parse(&c, m->scheduler_json, m->scheduler_path) : -1;
    }
    return rc ? rc : dc_noise_schedule_init(&m->sched, &c);
}

/* A pipeline with more than a UNet and a scheduler (a VAE: latent diffusion)
 * would make something other than images here: refused by its model_index.json. */
static int check_components(const char *dir) {
    char *path = dc_path_join(dir, "model_index.json");
    struct stat st;
    if (!path || stat(path, &st) != 0) {
        free(path);
        return path ? 0 : -1;
    }
    cJSON *index = dc_json_load(path);
    int rc = !index ? -1 : cJSON_IsObject(index) ? 0 : dc_fail("%s: not a JSON object", path);
    for (const cJSON *c = index ? index->child : NULL; c && !rc; c = c->next)
        if (c->string[0] != '_' && strcmp(c->string, "unet") && strcmp(c->string, "scheduler") &&
            !cJSON_IsNull(c))
            rc = dc_fail("%s: the pipeline has a '%s' component; only pipelines of a UNet and a scheduler "
                         "(DDPMPipeline, DDIMPipeline) are supported",
                         path, c->string);
    cJSON_Delete(index);
    free(path);
    return rc;
}

int dc_model_load_on(dc_model *m, const char *dir, bool use_ema, const char *variant, int device) {
    memset(m, 0, sizeof *m);
    m->device = device;
    if (check_components(dir) || load_unet(m, dir, use_ema, variant, device) || load_schedule(m, dir)) {
        dc_model_free(m);
        return -1;
    }
    return 0;
}

int dc_model_load(dc_model *m, const char *dir, bool use_ema) {
    return dc_model_load_on(m, dir, use_ema, NULL, DC_CPU);
}

int dc_model_ctx_init(int device, dc_ctx *ctx, size_t cpu_bytes) {
    size_t bytes;
    return dc_device_arena_bytes(device, cpu_bytes, &bytes) || dc_ctx_init(ctx, device, bytes);
}

void dc_model_free(dc_model *m) {
    dc_unet_free(&m->unet);
    dc_params_free(&m->ps);
    dc_unet_config_free(&m->cfg);
    dc_noise_schedule_free(&m->sched);
    free(m->weights_path);
    free(m->scheduler_path);
    free(m->scheduler_json);
    memset(m, 0, sizeof *m);
    m->device = DC_CPU;
}

int dc_model_sampler(const dc_model *m, const char *scheduler, int64_t steps, const char *spacing, double eta,
                     dc_sampler *s) {
    dc_sampler_kind kind;
    if (dc_sampler_kind_parse(scheduler, &kind))
        return dc_fail_prefix("--scheduler");
    dc_sampler_options o = dc_sampler_default_options(kind);
    if (m->scheduler_json && dc_sampler_options_parse_config(&o, kind, m->scheduler_json, m->scheduler_path))
        return -1;
    if (spacing && dc_timestep_spacing_parse(spacing, &o.timestep_spacing))
        return dc_fail_prefix("--timestep-spacing");
    if (steps)
        o.num_inference_steps = (int)steps;
    if (eta >= 0)
        o.eta = eta;
    return dc_sampler_init(s, kind, &m->sched, &o);
}
