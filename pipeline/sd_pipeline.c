/* A Stable Diffusion pipeline folder and its denoising loop (see sd_pipeline.h).
 * The sampler's arithmetic and its noise stay on the host, as in generate.c:
 * only the networks run on the context's device. */
#define _GNU_SOURCE /* strdup */
#include "sd_pipeline.h"

#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "models/config_json.h"
#include "models/lora.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- the folder ---- */

/* A component of model_index.json: its name and the classes diffc reads it as. */
typedef struct component {
    const char *name;
    const char *classes[3]; /* NULL-terminated; classes[0] NULL: any (the scheduler) */
} component;

static const component components[] = {
    {"tokenizer", {"CLIPTokenizer", "CLIPTokenizerFast", NULL}},
    {"text_encoder", {"CLIPTextModel", NULL}},
    {"unet", {"UNet2DConditionModel", NULL}},
    {"vae", {"AutoencoderKL", NULL}},
    {"scheduler", {NULL}},
};
#define N_COMPONENTS (sizeof components / sizeof components[0])

/* Components a text-to-image run does without. */
static const char *const ignored[] = {"safety_checker", "feature_extractor", "image_encoder"};

/* model_index.json's entry for a component: [library, class], or null. */
static const char *entry_class(const cJSON *v) {
    const cJSON *cls = cJSON_IsArray(v) ? cJSON_GetArrayItem(v, 1) : NULL;
    return cJSON_IsString(cls) ? cls->valuestring : NULL;
}

static bool is_null_entry(const cJSON *v) {
    return cJSON_IsNull(v) || (cJSON_IsArray(v) && cJSON_IsNull(cJSON_GetArrayItem(v, 1)));
}

static int check_entry(const cJSON *v, const char *path) {
    for (size_t i = 0; i < N_COMPONENTS; i++) {
        const component *c = &components[i];
        if (strcmp(v->string, c->name))
            continue;
        const char *cls = entry_class(v);
        if (!cls)
            return dc_fail("%s: '%s' is not a [library, class] pair", path, c->name);
        bool known = !c->classes[0];
        for (int k = 0; c->classes[k]; k++)
            known |= !strcmp(cls, c->classes[k]);
        return known ? 0 : dc_fail("%s: %s is a %s; diffc reads a %s there", path, c->name, cls, c->classes[0]);
    }
    for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++)
        if (!strcmp(v->string, ignored[i])) {
            if (!is_null_entry(v))
                fprintf(stderr, "diffc: note: %s: the %s is not used\n", path, v->string);
            return 0;
        }
    if (is_null_entry(v) || cJSON_IsBool(v)) /* requires_safety_checker and the like */
        return 0;
    return dc_fail("%s: the pipeline has a '%s' component (%s), which diffc does not implement", path,
                   v->string, entry_class(v) ? entry_class(v) : "?");
}

/* Every component named and of a class diffc reads; the five it needs present. */
static int check_index(const char *dir) {
    char *path = dc_path_join(dir, "model_index.json");
    cJSON *index = path ? dc_json_load(path) : NULL;
    int rc = !index ? -1 : cJSON_IsObject(index) ? 0 : dc_fail("%s: not a JSON object", path);
    for (const cJSON *v = index ? index->child : NULL; v && !rc; v = v->next)
        rc = v->string[0] == '_' ? 0 : check_entry(v, path);
    for (size_t i = 0; i < N_COMPONENTS && !rc; i++)
        if (!cJSON_GetObjectItemCaseSensitive(index, components[i].name))
            rc = dc_fail("%s: no '%s' component: a Stable Diffusion pipeline has a tokenizer, "
                         "text_encoder, unet, vae and scheduler",
                         path, components[i].name);
    cJSON_Delete(index);
    free(path);
    return rc;
}

bool dc_sd_is_pipeline(const char *dir) {
    char *path = dc_path_join(dir, "model_index.json");
    struct stat st;
    cJSON *index = path && stat(path, &st) == 0 ? dc_json_load(path) : NULL;
    bool sd = false;
    for (const char *const *name = (const char *const[]){"text_encoder", "vae", NULL}; *name; name++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(index, *name);
        sd |= v && !is_null_entry(v);
    }
    cJSON_Delete(index);
    free(path);
    return sd;
}

static int load_scheduler(dc_sd_pipeline *p, const char *dir) {
    p->scheduler_path = dc_path_join(dir, "scheduler/scheduler_config.json");
    p->scheduler_json = p->scheduler_path ? dc_cfg_read_text(p->scheduler_path) : NULL;
    return p->scheduler_json ? 0 : -1;
}

/* The tokenizer, text encoder, VAE and scheduler, their weights unpacked and
 * frozen. */
static int load_frozen(dc_sd_pipeline *p, const char *dir, const char *variant, int device) {
    memset(p, 0, sizeof *p);
    p->device = device;
    char *tok = dc_path_join(dir, "tokenizer"), *text = dc_path_join(dir, "text_encoder"),
         *vae = dc_path_join(dir, "vae");
    int rc = !tok || !text || !vae || check_index(dir) || dc_bpe_load(&p->tokenizer, tok) ||
             dc_clip_text_load(&p->text_encoder, text, variant, device) ||
             dc_vae_load(&p->vae, vae, variant, device) || load_scheduler(p, dir);
    if (!rc) { /* never trained: no gradient buffers */
        dc_params_freeze(&p->text_encoder->params);
        dc_params_freeze(&p->vae->params);
    }
    free(tok);
    free(text);
    free(vae);
    if (rc) {
        dc_sd_free(p);
        return -1;
    }
    return 0;
}

/* The text encoder's, UNet's and VAE's weights (those loaded) packed for
 * inference: as f16 with `half`. */
static int pack_weights(dc_sd_pipeline *p, bool half) {
    int (*pack)(dc_params *) = half ? dc_params_pack_half : dc_params_pack;
    return pack(&p->text_encoder->params) || pack(&p->unet_params) || pack(&p->vae->params);
}

int dc_sd_load_frozen(dc_sd_pipeline *p, const char *dir, const char *variant, int device) {
    if (load_frozen(p, dir, variant, device))
        return -1;
    if (pack_weights(p, false)) {
        dc_sd_free(p);
        return -1;
    }
    return 0;
}

int dc_sd_check_unet(const dc_sd_pipeline *p, const dc_unet_cond_config *u, const char *dir) {
    int latent = p->vae->cfg.latent_channels, width = p->text_encoder->cfg.hidden_size;
    if (u->in_channels != latent || u->out_channels != latent)
        return dc_fail("%s: the UNet takes %d channels and predicts %d, the VAE's latents have %d", dir,
                       u->in_channels, u->out_channels, latent);
    for (int i = 0; i < u->levels; i++)
        if (u->cross_attention_dim[i] != width)
            return dc_fail("%s: the UNet attends to text of width %d, the text encoder gives %d", dir,
                           u->cross_attention_dim[i], width);
    return 0;
}

/* The LoRA of `lora` (NULL: none) fused into the text encoder and the UNet. */
static int fuse_lora(dc_sd_pipeline *p, const char *lora, float scale) {
    return lora ? dc_lora_fuse(lora, scale, &p->unet_params, &p->text_encoder->params,
                               dc_clip_text_renamer(p->text_encoder))
                : 0;
}

int dc_sd_load(dc_sd_pipeline *p, const char *dir, const char *variant, int device) {
    return dc_sd_load_lora(p, dir, variant, device, NULL, 1.0f, false);
}

int dc_sd_load_lora(dc_sd_pipeline *p, const char *dir, const char *variant, int device, const char *lora,
                    float lora_scale, bool half) {
    char *guessed = NULL;
    if (load_frozen(p, dir, variant, device))
        return -1;
    /* f16 without a LoRA (fused into the f32 weights first): the text encoder and VAE
     * packed before the UNet loads, the UNet as it is read, so its 3.4 GB of f32 (SD-1.5)
     * are never resident at once */
    const bool early = half && !lora;
    p->unet_params.pack_half_on_load = early;
    int rc = (early && pack_weights(p, true)) ||
             dc_unet_cond_load(&p->unet, &p->unet_params, dir, variant, device, &guessed) ||
             dc_sd_check_unet(p, &p->unet.cfg, dir) || fuse_lora(p, lora, lora_scale) ||
             pack_weights(p, half);
    if (guessed)
        fprintf(stderr, "diffc: note: %s/unet has no plain weights; using its only variant, %s\n", dir, guessed);
    free(guessed);
    if (rc) {
        dc_sd_free(p);
        return -1;
    }
    return 0;
}

void dc_sd_free(dc_sd_pipeline *p) {
    dc_bpe_free(p->tokenizer);
    dc_clip_text_free(p->text_encoder);
    dc_unet_cond_free(&p->unet);
    dc_params_free(&p->unet_params);
    dc_vae_free(p->vae);
    free(p->scheduler_path);
    free(p->scheduler_json);
    memset(p, 0, sizeof *p);
    p->device = DC_CPU;
}

int dc_sd_sampler(const dc_sd_pipeline *p, const char *kind_name, int num_inference_steps, dc_sampler *s) {
    return dc_sampler_init_from_config(s, p->scheduler_json, p->scheduler_path, kind_name, num_inference_steps);
}

int dc_sd_latent_scale(const dc_sd_pipeline *p) { return 1 << (p->vae->cfg.levels - 1); }

/* ---- the loop ---- */

/* One batch's sizes and host buffers. */
typedef struct batch {
    int64_t b, rows;  /* images; model rows (2b with guidance) */
    int lh, lw, lc;   /* the latents' height, width, channels */
    int64_t lper;     /* floats of one image's latents */
    int64_t tokens, width; /* the text's length and width */
    bool cfg;
    float *embeds;    /* [rows, tokens, width] negative prompts' first with guidance */
    float *x;         /* [b, lper] the latents */
    float *in;        /* [rows, lper] the model's input */
    float *pred;      /* [rows, lper] its output, guided into the first b */
    float *noise;     /* [b, lper] a step's draws */
} batch;

/* The text of model row k: negative prompts first with guidance. */
static const char *row_text(const dc_sd_request *r, const batch *bt, int64_t first, int64_t k) {
    if (bt->cfg && k < bt->b)
        return r->negative ? r->negative : "";
    return r->prompts[first + k % bt->b];
}

void dc_sd_text_shape(const dc_sd_pipeline *p, int64_t *tokens, int64_t *width) {
    const dc_bpe_info *info = dc_bpe_get_info(p->tokenizer);
    *tokens = info->model_max_length ? info->model_max_length : p->text_encoder->cfg.max_position_embeddings;
    *width = p->text_encoder->cfg.hidden_size;
}

/* One prompt at a time: the text encoder's matrix products over all rows at
 * once round differently with the row count (OpenBLAS), and an image must not
 * depend on its batch (tests/test_sd_pipeline.c test_streams). A text seen
 * before (the negative prompts, repeated prompts) is copied. */
int dc_sd_encode_text(dc_ctx *ctx, const dc_sd_pipeline *p, const char *const *texts, int64_t n, int clip_skip,
                      float *out) {
    int64_t tokens, width;
    dc_sd_text_shape(p, &tokens, &width);
    int32_t *ids = malloc((size_t)tokens * sizeof *ids);
    int rc = ids ? 0 : dc_fail("out of memory for %lld tokens", (long long)tokens);
    bool grad = dc_set_grad_enabled(ctx, false); /* the encoder is frozen (packed) */
    for (int64_t k = 0; !rc && k < n; k++) {
        int64_t same = 0;
        while (same < k && strcmp(texts[same], texts[k]))
            same++;
        if (same < k) {
            memcpy(out + k * tokens * width, out + same * tokens * width, (size_t)(tokens * width) * sizeof(float));
            continue;
        }
        rc = dc_bpe_encode_padded(p->tokenizer, texts[k], tokens, ids, NULL);
        dc_ctx_reset(ctx);
        dc_tensor *t = rc ? NULL : dc_from_host(ctx, DC_I32, DC_SHAPE(1, tokens), ids);
        dc_tensor *e = t ? dc_clip_text_forward(ctx, p->text_encoder, t, clip_skip, NULL) : NULL;
        rc = !e ? -1 : dc_memcpy(out + k * tokens * width, DC_CPU, e->data, ctx->device,
                                  (size_t)(tokens * width) * sizeof(float));
    }
    dc_set_grad_enabled(ctx, grad);
    free(ids);
    return rc;
}

/* The prompt embeds of images [first, first + b) into bt->embeds. */
static int encode_text(dc_ctx *ctx, const dc_sd_pipeline *p, const dc_sd_request *r, int64_t first, batch *bt) {
    const char **texts = malloc((size_t)bt->rows * sizeof *texts);
    if (!texts)
        return dc_fail("out of memory for %lld prompts", (long long)bt->rows);
    for (int64_t k = 0; k < bt->rows; k++)
        texts[k] = row_text(r, bt, first, k);
    int rc = dc_sd_encode_text(ctx, p, texts, bt->rows, r->clip_skip, bt->embeds);
    free(texts);
    return rc;
}

/* Draw `draw` of images [first, first + b) of the request into out [b, lper]. */
static void draw_noise(const dc_sd_request *r, int64_t first, const batch *bt, float *out, uint64_t draw) {
    dc_sampler_noise_streams(out, bt->b, bt->lper, r->seed, r->first_image + (uint64_t)first,
                             r->streams ? r->streams + first : NULL, draw);
}

/* img2img: the init images' latents (VAE sample * scaling_factor), noised
 * to step `start`, into bt->x; noise [b, lper] is the images' initial draw. */
static int init_latents(dc_ctx *ctx, const dc_sd_pipeline *p, const dc_sd_request *r, int start,
                        int64_t first, batch *bt) {
    int64_t per = (int64_t)r->h * r->w * 3;
    for (int64_t k = 0; k < bt->b; k++) {
        dc_ctx_reset(ctx);
        dc_vae_latent_dist d;
        dc_tensor *img = dc_from_host(ctx, DC_F32, DC_SHAPE(1, r->h, r->w, 3), r->init + (first + k) * per);
        uint64_t stream = r->streams ? r->streams[first + k] : r->first_image + (uint64_t)(first + k);
        dc_sampler_noise(bt->noise, 1, bt->lper, r->seed, stream, DC_SAMPLER_DRAW_VAE);
        dc_tensor *eps = dc_from_host(ctx, DC_F32, DC_SHAPE(1, bt->lh, bt->lw, bt->lc), bt->noise);
        if (!img || !eps || dc_vae_encode(ctx, p->vae, img, &d))
            return -1;
        dc_tensor *z = dc_vae_scale_latents(ctx, p->vae, dc_vae_sample(ctx, &d, eps));
        if (!z || dc_memcpy(bt->x + k * bt->lper, DC_CPU, z->data, ctx->device, (size_t)bt->lper * sizeof(float)))
            return -1;
    }
    draw_noise(r, first, bt, bt->noise, DC_SAMPLER_DRAW_INIT);
    return dc_sampler_add_noise(r->sampler, start, bt->x, bt->noise, bt->x, bt->b * bt->lper);
}

/* The guided noise prediction of step i into bt->pred's first b images. */
static int predict(dc_ctx *ctx, const dc_sd_pipeline *p, const dc_sd_request *r, int i, batch *bt) {
    dc_sampler *s = r->sampler;
    int64_t n = bt->b * bt->lper;
    if (dc_sampler_scale_model_input(s, i, bt->x, bt->in, n))
        return -1;
    if (bt->cfg)
        memcpy(bt->in + n, bt->in, (size_t)n * sizeof(float));
    dc_ctx_reset(ctx);
    dc_tensor *x = dc_from_host(ctx, DC_F32, DC_SHAPE(bt->rows, bt->lh, bt->lw, bt->lc), bt->in);
    dc_tensor *t = dc_from_host(ctx, DC_F32, DC_SHAPE(1), &s->model_t[i]);
    dc_tensor *text = dc_from_host(ctx, DC_F32, DC_SHAPE(bt->rows, bt->tokens, bt->width), bt->embeds);
    dc_tensor *eps = x && t && text ? dc_unet_cond_forward(ctx, &p->unet, x, t, text) : NULL;
    if (!eps || dc_memcpy(bt->pred, DC_CPU, eps->data, ctx->device, (size_t)eps->numel * sizeof(float)))
        return -1;
    if (bt->cfg)
        dc_guidance_combine(bt->pred, bt->pred, bt->pred + n, r->guidance_scale, n);
    return 0;
}

/* The images of the latents bt->x, one at a time (a 512x512 decode's feature
 * maps are the largest tensors of the run), clamped to [-1, 1]. */
static int decode(dc_ctx *ctx, const dc_sd_pipeline *p, const dc_sd_request *r, const batch *bt, float *out) {
    int64_t per = (int64_t)r->h * r->w * 3;
    for (int64_t k = 0; k < bt->b; k++) {
        dc_ctx_reset(ctx);
        dc_tensor *z = dc_from_host(ctx, DC_F32, DC_SHAPE(1, bt->lh, bt->lw, bt->lc), bt->x + k * bt->lper);
        dc_tensor *img = z ? dc_vae_decode(ctx, p->vae, dc_vae_unscale_latents(ctx, p->vae, z)) : NULL;
        if (!img || dc_memcpy(out + k * per, DC_CPU, img->data, ctx->device, (size_t)per * sizeof(float)))
            return -1;
    }
    for (int64_t k = 0; k < bt->b * per; k++)
        out[k] = out[k] < -1.0f ? -1.0f : out[k] > 1.0f ? 1.0f : out[k];
    return 0;
}

/* One denoising run over images [first, first + b) of the request, from step `start`. */
static int run_batch(dc_ctx *ctx, const dc_sd_pipeline *p, const dc_sd_request *r, int start, int64_t first,
                     batch *bt, float *out) {
    dc_sampler *s = r->sampler;
    dc_sampler_reset(s);
    if (encode_text(ctx, p, r, first, bt))
        return -1;
    if (r->init) {
        if (init_latents(ctx, p, r, start, first, bt))
            return -1;
    } else {
        if (r->latents)
            memcpy(bt->x, r->latents + first * bt->lper, (size_t)(bt->b * bt->lper) * sizeof(float));
        else
            draw_noise(r, first, bt, bt->x, DC_SAMPLER_DRAW_INIT);
        for (int64_t k = 0; k < bt->b * bt->lper; k++)
            bt->x[k] *= s->init_noise_sigma;
    }
    for (int i = start; i < s->n; i++) {
        if (predict(ctx, p, r, i, bt))
            return -1;
        bool needs = dc_sampler_step_needs_noise(s, i);
        if (needs)
            draw_noise(r, first, bt, bt->noise, DC_SAMPLER_DRAW_STEP(i));
        if (dc_sampler_step(s, i, bt->pred, NULL, bt->x, needs ? bt->noise : NULL, bt->b, bt->lper))
            return -1;
        if (r->on_step)
            r->on_step(r->on_step_arg, first, bt->b, i - start + 1, s->n - start);
    }
    return decode(ctx, p, r, bt, out);
}

static int check_request(const dc_sd_pipeline *p, const dc_sd_request *r) {
    int f = dc_sd_latent_scale(p);
    if (r->n < 1 || r->batch < 1 || r->h < f || r->w < f || r->h % f || r->w % f)
        return dc_fail("%lld images in batches of %lld at %dx%d: the sides must be positive multiples of %d",
                       (long long)r->n, (long long)r->batch, r->w, r->h, f);
    int layers = p->text_encoder->cfg.num_hidden_layers;
    if (r->clip_skip < 0 || r->clip_skip >= layers)
        return dc_fail("--clip-skip %d: the text encoder has %d layers", r->clip_skip, layers);
    return 0;
}

int dc_sd_generate(dc_ctx *ctx, const dc_sd_pipeline *p, const dc_sd_request *r, float *out) {
    int start = 0;
    if (check_request(p, r) || (r->init && dc_sampler_img2img_start(r->sampler, r->strength, &start)))
        return -1;
    int f = dc_sd_latent_scale(p);
    batch bt = {.b = r->batch < r->n ? r->batch : r->n, .lh = r->h / f, .lw = r->w / f,
                .lc = p->vae->cfg.latent_channels, .cfg = r->guidance_scale > 1.0f};
    dc_sd_text_shape(p, &bt.tokens, &bt.width);
    bt.rows = bt.cfg ? 2 * bt.b : bt.b;
    bt.lper = (int64_t)bt.lh * bt.lw * bt.lc;
    bt.embeds = malloc((size_t)(bt.rows * bt.tokens * bt.width) * sizeof(float));
    bt.x = malloc((size_t)(bt.b * bt.lper) * sizeof(float));
    bt.in = malloc((size_t)(bt.rows * bt.lper) * sizeof(float));
    bt.pred = malloc((size_t)(bt.rows * bt.lper) * sizeof(float));
    bt.noise = malloc((size_t)(bt.b * bt.lper) * sizeof(float));
    int rc = bt.embeds && bt.x && bt.in && bt.pred && bt.noise
                 ? 0
                 : dc_fail("out of memory for batches of %lld images", (long long)bt.b);
    bool grad = dc_set_grad_enabled(ctx, false), training = ctx->training;
    ctx->training = false;
    int64_t per = (int64_t)r->h * r->w * 3, b = bt.b;
    for (int64_t first = 0; !rc && first < r->n; first += b) {
        bt.b = r->n - first < b ? r->n - first : b;
        bt.rows = bt.cfg ? 2 * bt.b : bt.b;
        rc = run_batch(ctx, p, r, start, first, &bt, out + first * per);
    }
    ctx->training = training;
    dc_set_grad_enabled(ctx, grad);
    free(bt.embeds);
    free(bt.x);
    free(bt.in);
    free(bt.pred);
    free(bt.noise);
    return rc;
}
