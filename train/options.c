/*
 * The options of `diffc train` (see options.h): the table, and the readers,
 * writers and checks generated from it.
 *
 * Every value, whether a default, a config-file entry or a command-line
 * word, ends in one of the store_* functions, which check the range and
 * write the field; so a default obeys the same rules as a user's value.
 */
#include "options.h"

#include "autograd/diffusion.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/optim.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BIG 9007199254740992.0 /* 2^53: integers that JSON numbers (doubles) hold exactly */
#define MAX_NAME 64            /* a key's length, with room for the dashed form */

/* ---- the table ---- */

static const char *const prediction_types[] = {"epsilon", "v_prediction", "sample", NULL};
static const char *const beta_schedules[] = {"linear", "scaled_linear", "squaredcos_cap_v2", NULL};
static const char *const lr_schedulers[] = {"constant", "constant_with_warmup", "linear", "cosine", NULL};
static const char *const precisions[] = {"no", "bf16", NULL};

/* auto, cpu, cuda, cuda:N */
static int check_device(const char *v, const char *where) {
    if (!strcmp(v, "auto") || !strcmp(v, "cpu") || !strcmp(v, "cuda"))
        return 0;
    char *end;
    if (!strncmp(v, "cuda:", 5) && v[5] >= '0' && v[5] <= '9' && strtol(v + 5, &end, 10) < 1024 && !*end)
        return 0;
    return dc_fail("%s: '%s' is not a device: auto, cpu, cuda or cuda:N", where, v);
}

#define ROW(g, f, t) .group = g, .key = #f, .offset = offsetof(dc_train_options, f), .type = t
#define INT(g, f, d, l, h, text)                                                                             \
    { ROW(g, f, DC_OPT_INT), .def = d, .lo = l, .hi = h, .help = text }
#define FLOAT(g, f, d, l, h, fl, text)                                                                       \
    { ROW(g, f, DC_OPT_FLOAT), .def = d, .lo = l, .hi = h, .flags = fl, .help = text }
#define BOOL(g, f, d, text)                                                                                  \
    { ROW(g, f, DC_OPT_BOOL), .def = d, .help = text }
#define ENUM(g, f, d, c, text)                                                                               \
    { ROW(g, f, DC_OPT_ENUM), .def = d, .choices = c, .help = text }
#define STRING(g, f, d, m, fl, text)                                                                         \
    { ROW(g, f, DC_OPT_STRING), .def = d, .metavar = m, .flags = fl, .help = text }

static const dc_train_option table[] = {
    STRING("model", config, NULL, "FILE", DC_OPT_CLI_ONLY,
           "a JSON training config: keys are these options with underscores; the command line overrides it"),
    {ROW("model", model, DC_OPT_MODEL), .metavar = "JSON|FILE",
     .help = "the UNet's diffusers config (UNet2DModel config.json): an object inline in a config file, or "
             "the path of a config.json (train-caption: the BLIP model folder to fine-tune)"},
    STRING("model", pretrained_model, NULL, "DIR", 0,
           "fine-tune: start from the weights of a diffusers UNet folder (or a pipeline folder with unet/), "
           "keeping its config; a StableDiffusionPipeline folder trains its UNet on captioned images, the "
           "VAE and text encoder frozen"),
    STRING("model", variant, NULL, "NAME", 0,
           "the --pretrained-model weights of this variant (diffusion_pytorch_model.NAME.safetensors, e.g. "
           "fp16; unset: the plain weights, or the folder's only variant)"),
    FLOAT("model", dropout, NULL, 0, 1, DC_OPT_NULLABLE | DC_OPT_HI_OPEN,
          "dropout probability in the UNet's resnets (unset: the model config's)"),
    INT("model", lora_rank, "0", 0, 65536,
        "text-to-image: train LoRA adapters of this rank on the UNet's attention projections (to_q, to_k, "
        "to_v, to_out.0) instead of the whole UNet, and save them as pytorch_lora_weights.safetensors "
        "(0: full fine-tuning)"),
    FLOAT("model", lora_alpha, NULL, 0, BIG, DC_OPT_NULLABLE | DC_OPT_LO_OPEN,
          "the adapters' alpha: their output is scaled by alpha / rank (unset: the rank, a scale of 1)"),

    STRING("data", train_data_dir, NULL, "DIR", 0,
           "the training images: a folder of PNG/JPEG (classes = subfolders), MNIST/Fashion-MNIST IDX files "
           "or CIFAR-10 batches"),
    STRING("data", classes, NULL, "K[,K...]", 0,
           "train on the images of these classes only: indices or names, comma-separated (unset: all)"),
    STRING("data", cache_dir, NULL, "DIR", 0,
           "where the decoded dataset cache is kept (unset: $DIFFC_CACHE_DIR, else ~/.cache/diffc)"),
    INT("data", resolution, "64", 1, 65536,
        "image side: the shorter side is resized to it, then the centre square is cropped"),
    BOOL("data", random_flip, "false", "flip training images left-right at random"),
    STRING("data", caption_column, "text", "NAME", 0,
           "text-to-image: the key of metadata.jsonl that holds each image's caption"),
    STRING("data", prompt_template, NULL, "TEXT", 0,
           "text-to-image without captions: each image's prompt is this text with {class} replaced by its "
           "class folder's name (\"a photo of a {class}\")"),
    BOOL("data", strict, "false", "a bad image file is an error instead of being skipped"),
    INT("data", dataloader_num_workers, "0", 0, 256,
        "threads that assemble batches (0: one per core, at most 8)"),

    ENUM("diffusion", prediction_type, "epsilon", prediction_types, "what the UNet learns to predict"),
    INT("diffusion", ddpm_num_steps, "1000", 1, 100000,
        "diffusion timesteps (the scheduler's num_train_timesteps)"),
    ENUM("diffusion", ddpm_beta_schedule, "linear", beta_schedules, "the noise schedule"),
    FLOAT("diffusion", ddpm_beta_start, "0.0001", 0, 1, DC_OPT_LO_OPEN | DC_OPT_HI_OPEN,
          "the first beta of the linear and scaled_linear schedules"),
    FLOAT("diffusion", ddpm_beta_end, "0.02", 0, 1, DC_OPT_LO_OPEN | DC_OPT_HI_OPEN,
          "the last beta of the linear and scaled_linear schedules"),
    BOOL("diffusion", rescale_betas_zero_snr, "false",
         "rescale the betas to a zero terminal SNR (Lin et al.; train a v_prediction model)"),
    FLOAT("diffusion", noise_offset, "0", 0, BIG, 0,
          "offset noise (as diffusers' --noise_offset): each image's noise moves by this times a normal draw "
          "per channel, so that the model learns very dark and very bright images (0: off; 0.1 is usual)"),
    FLOAT("diffusion", snr_gamma, "0", 0, BIG, 0,
          "min-SNR-gamma loss weighting (0: off; 5 is the paper's choice)"),
    FLOAT("diffusion", cond_drop_prob, "0", 0, 1, 0,
          "the fraction of labels replaced by the null class (text-to-image: of captions replaced by the "
          "empty prompt) while training, so that sampling can use classifier-free guidance"),

    INT("optimisation", train_batch_size, "16", 1, 1 << 20,
        "images per batch on each device; a step takes --gradient-accumulation-steps batches"),
    INT("optimisation", gradient_accumulation_steps, "1", 1, 1 << 20,
        "batches whose gradients are averaged into each optimizer step: as one batch that many times "
        "larger"),
    INT("optimisation", num_epochs, "100", 1, BIG, "passes over the training data"),
    INT("optimisation", max_train_steps, "0", 0, BIG,
        "optimizer steps in all; overrides --num-epochs (0: --num-epochs passes)"),
    FLOAT("optimisation", learning_rate, "1e-4", 0, BIG, 0, "the peak learning rate"),
    ENUM("optimisation", lr_scheduler, "cosine", lr_schedulers,
         "the learning-rate schedule after the warmup"),
    INT("optimisation", lr_warmup_steps, "500", 0, BIG, "steps of linear warmup from 0"),
    FLOAT("optimisation", adam_beta1, "0.95", 0, 1, DC_OPT_HI_OPEN, "AdamW's beta1"),
    FLOAT("optimisation", adam_beta2, "0.999", 0, 1, DC_OPT_HI_OPEN, "AdamW's beta2"),
    FLOAT("optimisation", adam_weight_decay, "1e-6", 0, BIG, 0, "AdamW's decoupled weight decay"),
    FLOAT("optimisation", adam_epsilon, "1e-8", 0, BIG, 0, "AdamW's epsilon"),
    FLOAT("optimisation", max_grad_norm, "1.0", 0, BIG, 0,
          "clip the gradients' global L2 norm to this (0: no clipping)"),
    INT("optimisation", zero_stage, "0", 0, 1,
        "with several ranks, 1 shards AdamW's state over them (ZeRO-1): each keeps 1/N of it and updates "
        "1/N of the weights, which the ranks then exchange; 0: every rank keeps all of it"),
    BOOL("optimisation", use_ema, "false",
         "keep an exponential moving average of the weights (saved as unet_ema/, and as the final model)"),
    FLOAT("optimisation", ema_inv_gamma, "1.0", 0, BIG, DC_OPT_LO_OPEN,
          "EMA warmup: decay = 1 - (1 + step / inv_gamma)^-power"),
    FLOAT("optimisation", ema_power, "0.75", 0, BIG, 0, "EMA warmup power"),
    FLOAT("optimisation", ema_max_decay, "0.9999", 0, 1, 0, "the EMA decay's ceiling"),
    ENUM("optimisation", mixed_precision, "no", precisions, "on a GPU: bf16 matrix products (no: TF32); weights stay f32, the CPU computes in f32"),
    BOOL("optimisation", gradient_checkpointing, "false",
         "keep only each UNet block's input and output and recompute the rest in the backward pass: "
         "far less activation memory for about a third more compute; the same gradients"),
    INT("optimisation", seed, "0", 0, BIG, "seeds the weights, the noise and the data order"),
    {ROW("optimisation", device, DC_OPT_STRING), .def = "auto", .metavar = "auto|cpu|cuda[:N]",
     .check = check_device, .help = "where to train (auto: a GPU when there is one)"},

    STRING("output", output_dir, "ddpm-model-64", "DIR", 0,
           "the run's folder: checkpoints, the final model, metrics, samples, TensorBoard logs"),
    STRING("output", logging_dir, "logs", "DIR", 0, "TensorBoard event files, inside --output-dir"),
    INT("output", logging_steps, "10", 1, BIG, "steps between log lines and metrics records"),
    INT("output", checkpointing_steps, "500", 0, BIG, "steps between checkpoints (0: only at the end)"),
    INT("output", checkpoints_total_limit, "0", 0, BIG, "checkpoints kept, the newest (0: all)"),
    STRING("output", resume_from_checkpoint, NULL, "latest|DIR", 0,
           "continue a run from a checkpoint folder, or from the newest complete one in --output-dir"),
    INT("output", sample_every, "1000", 0, BIG, "steps between sample grids (0: none)"),
    INT("output", eval_batch_size, "16", 1, 1024, "images in each sample grid"),
    STRING("output", validation_prompt, NULL, "TEXT", 0,
           "text-to-image: the prompts of the sample grids, separated by '|' (unset: the first image's caption)"),
    INT("output", ddpm_num_inference_steps, "1000", 1, 100000, "denoising steps for the sample grids"),

    STRING("captions", prompt, NULL, "TEXT", 0,
           "the text every caption starts with (\"a picture of\"): fed to the decoder, not learnt"),
    INT("captions", max_length, "0", 0, 65536,
        "tokens per caption with [DEC], the prompt and [SEP]; longer captions are cut (0: 40, or the model's "
        "max_position_embeddings when fewer)"),
    FLOAT("captions", label_smoothing, NULL, 0, 1, DC_OPT_NULLABLE,
          "label smoothing of the loss (unset: the model config's text_config.label_smoothing, as "
          "transformers)"),
    BOOL("captions", freeze_vision, "false", "train the text decoder only; the vision encoder stays as loaded"),
};

_Static_assert(sizeof table / sizeof table[0] <= 64, "given and from_pipeline hold a bit per row");

#define ROW_BIT(r) ((uint64_t)1 << ((r) - table))

/* Whether row r is an option of diffc train-caption (caption) or of diffc
 * train: the "captions" group is the captioner's; the UNet's, diffusion and
 * sample grids, are train's; the rest both take. */
static bool row_applies(const dc_train_option *r, bool caption) {
    static const char *const unet_only[] = {"pretrained_model", "variant", "dropout", "lora_rank", "lora_alpha",
                                            "classes", "resolution", "zero_stage", "sample_every",
                                            "eval_batch_size", "caption_column", "prompt_template",
                                            "validation_prompt", "ddpm_num_inference_steps",
                                            "gradient_checkpointing", NULL};
    bool unet = !strcmp(r->group, "diffusion");
    for (int i = 0; !unet && unet_only[i]; i++)
        unet = !strcmp(r->key, unet_only[i]);
    return caption ? !unet : strcmp(r->group, "captions") != 0;
}

static const char *command(bool caption) { return caption ? "diffc train-caption" : "diffc train"; }

const dc_train_option *dc_train_option_table(int *n) {
    *n = (int)(sizeof table / sizeof table[0]);
    return table;
}

/* `name` with '-' read as '_' equals `key`. */
static bool same_name(const char *name, const char *key) {
    for (; *name && *key; name++, key++)
        if (*name != *key && !(*name == '-' && *key == '_'))
            return false;
    return *name == *key;
}

const dc_train_option *dc_train_option_find(const char *name) {
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (same_name(name, table[i].key))
            return &table[i];
    return NULL;
}

/* "train_batch_size" -> "train-batch-size" */
static const char *dashed(char *buf, const char *key) {
    size_t i = 0;
    for (; key[i] && i + 1 < MAX_NAME; i++)
        buf[i] = key[i] == '_' ? '-' : key[i];
    buf[i] = '\0';
    return buf;
}

/* Edit distance of a and b with '-' read as '_', for "did you mean". */
static int distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la >= MAX_NAME || lb >= MAX_NAME)
        return MAX_NAME;
    int d[MAX_NAME + 1], prev;
    for (size_t j = 0; j <= lb; j++)
        d[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        prev = d[0];
        d[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int ca = a[i - 1] == '-' ? '_' : a[i - 1], cost = ca != b[j - 1];
            int best = prev + cost;
            if (d[j] + 1 < best)
                best = d[j] + 1;
            if (d[j - 1] + 1 < best)
                best = d[j - 1] + 1;
            prev = d[j];
            d[j] = best;
        }
    }
    return d[lb];
}

/* The key nearest to an unknown name, when it is near enough to be a typo
 * (or the unknown name is a distinctive part of it: "batch_size"). */
static const dc_train_option *suggest(const char *name) {
    const dc_train_option *best = NULL;
    int best_d = 1 + (int)strlen(name) / 4;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        int d = distance(name, table[i].key);
        if (d <= best_d)
            best = &table[i], best_d = d;
    }
    for (size_t i = 0; !best && strlen(name) >= 5 && i < sizeof table / sizeof table[0]; i++)
        if (strstr(table[i].key, name))
            best = &table[i];
    return best;
}

/* ---- storing values ---- */

#define FIELD(o, r, T) ((T *)((char *)(o) + (r)->offset))

/* "[0, 1)", "at least 1", "more than 0", for range messages. */
static const char *range_text(char *buf, size_t n, const dc_train_option *r) {
    bool lo_open = r->flags & DC_OPT_LO_OPEN;
    if (r->hi >= BIG)
        snprintf(buf, n, "%s %.17g", lo_open ? "more than" : "at least", r->lo);
    else
        snprintf(buf, n, "in %s%.17g, %.17g%s", lo_open ? "(" : "[", r->lo, r->hi,
                 r->flags & DC_OPT_HI_OPEN ? ")" : "]");
    return buf;
}

static bool in_range(const dc_train_option *r, double v) {
    return (r->flags & DC_OPT_LO_OPEN ? v > r->lo : v >= r->lo) &&
           (r->flags & DC_OPT_HI_OPEN ? v < r->hi : v <= r->hi);
}

static int store_int(dc_train_options *o, const dc_train_option *r, int64_t v, const char *where) {
    char rb[80];
    if (v < (int64_t)r->lo || v > (int64_t)r->hi) /* in integers: 2^53 + 1 is not 2^53 */
        return dc_fail("%s: %lld is out of range (%s)", where, (long long)v, range_text(rb, sizeof rb, r));
    *FIELD(o, r, int64_t) = v;
    return 0;
}

static int store_float(dc_train_options *o, const dc_train_option *r, double v, const char *where) {
    char rb[80];
    if (isnan(v) && r->flags & DC_OPT_NULLABLE)
        return *FIELD(o, r, double) = v, 0;
    if (!isfinite(v))
        return dc_fail("%s: %g is not a finite number", where, v);
    if (!in_range(r, v))
        return dc_fail("%s: %.17g is out of range (%s)", where, v, range_text(rb, sizeof rb, r));
    *FIELD(o, r, double) = v;
    return 0;
}

static int store_enum(dc_train_options *o, const dc_train_option *r, const char *v, const char *where) {
    for (int i = 0; r->choices[i]; i++)
        if (!strcmp(v, r->choices[i]))
            return *FIELD(o, r, const char *) = r->choices[i], 0;
    char list[256] = "";
    for (int i = 0; r->choices[i]; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", r->choices[i]);
    return dc_fail("%s: '%s' is not one of %s", where, v, list);
}

/* Strings: "" (or JSON null) unsets. */
static int store_string(dc_train_options *o, const dc_train_option *r, const char *v, const char *where) {
    if (v && *v && r->check && r->check(v, where))
        return -1;
    char *copy = v && *v ? strdup(v) : NULL;
    if (v && *v && !copy)
        return dc_fail("%s: out of memory", where);
    char **field = FIELD(o, r, char *);
    free(*field);
    *field = copy;
    return 0;
}

/* A model config given inline is kept as compact JSON text. */
static int store_model_json(dc_train_options *o, const dc_train_option *r, const cJSON *v,
                            const char *where) {
    if (!cJSON_IsObject(v))
        return dc_fail("%s: the model config is not a JSON object", where);
    char *text = dc_json_print(v, false);
    if (!text)
        return dc_fail("%s: out of memory", where);
    char **field = FIELD(o, r, char *);
    free(*field);
    *field = text;
    return 0;
}

/* ---- from text (defaults and the command line) ---- */

static int parse_int(const char *s, int64_t *v) {
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (end == s || *end || errno)
        return -1;
    *v = x;
    return 0;
}

static int parse_bool(const char *s, bool *v) {
    if (!strcmp(s, "true") || !strcmp(s, "1"))
        return *v = true, 0;
    if (!strcmp(s, "false") || !strcmp(s, "0"))
        return *v = false, 0;
    return -1;
}

static int set_text(dc_train_options *o, const dc_train_option *r, const char *s, const char *where) {
    switch (r->type) {
    case DC_OPT_INT: {
        int64_t v;
        if (parse_int(s, &v))
            return dc_fail("%s: '%s' is not an integer", where, s);
        return store_int(o, r, v, where);
    }
    case DC_OPT_FLOAT: {
        char *end;
        double v = strtod(s, &end);
        if (end == s || *end)
            return dc_fail("%s: '%s' is not a number", where, s);
        return store_float(o, r, v, where);
    }
    case DC_OPT_BOOL:
        return parse_bool(s, FIELD(o, r, bool)) ? dc_fail("%s: '%s' is not true or false", where, s) : 0;
    case DC_OPT_ENUM: return store_enum(o, r, s, where);
    case DC_OPT_STRING: return store_string(o, r, s, where);
    case DC_OPT_MODEL: {
        const char *p = s + strspn(s, " \t\r\n");
        if (*p != '{')
            return store_string(o, r, s, where);
        cJSON *j = dc_json_parse(p, strlen(p), where);
        int rc = j ? store_model_json(o, r, j, where) : -1;
        cJSON_Delete(j);
        return rc;
    }
    }
    return dc_fail("%s: unknown option type %d", where, (int)r->type);
}

int dc_train_options_set(dc_train_options *o, const char *name, const char *value) {
    const dc_train_option *r = dc_train_option_find(name);
    char where[MAX_NAME + 2] = "--";
    if (!r)
        return dc_fail("unknown option '--%s'", name);
    dashed(where + 2, r->key);
    o->given |= ROW_BIT(r);
    return set_text(o, r, value, where);
}

/* Defaults go through set_text, so they obey the ranges they declare. */
int dc_train_options_init(dc_train_options *o) {
    memset(o, 0, sizeof *o);
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        const dc_train_option *r = &table[i];
        if (r->type == DC_OPT_FLOAT)
            *FIELD(o, r, double) = NAN;
        if (r->def && set_text(o, r, r->def, r->key))
            return -1;
    }
    return 0;
}

void dc_train_options_free(dc_train_options *o) {
    if (!o)
        return;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].type == DC_OPT_STRING || table[i].type == DC_OPT_MODEL)
            free(*FIELD(o, &table[i], char *));
    memset(o, 0, sizeof *o);
}

/* ---- from JSON (config files) ---- */

static int set_json(dc_train_options *o, const dc_train_option *r, const cJSON *v, const char *where) {
    switch (r->type) {
    case DC_OPT_INT: {
        double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
        if (!(fabs(d) <= BIG) || d != floor(d))
            return dc_fail("%s: expected an integer, got %s", where,
                           cJSON_IsNumber(v) ? "a fraction or a huge number" : dc_json_type(v));
        return store_int(o, r, (int64_t)d, where);
    }
    case DC_OPT_FLOAT:
        if (cJSON_IsNull(v) && r->flags & DC_OPT_NULLABLE)
            return store_float(o, r, NAN, where);
        if (!cJSON_IsNumber(v))
            return dc_fail("%s: expected a number, got %s", where, dc_json_type(v));
        return store_float(o, r, v->valuedouble, where);
    case DC_OPT_BOOL:
        if (!cJSON_IsBool(v))
            return dc_fail("%s: expected true or false, got %s", where, dc_json_type(v));
        return *FIELD(o, r, bool) = cJSON_IsTrue(v), 0;
    case DC_OPT_ENUM:
        if (!cJSON_IsString(v))
            return dc_fail("%s: expected a string, got %s", where, dc_json_type(v));
        return store_enum(o, r, v->valuestring, where);
    case DC_OPT_STRING:
        if (!cJSON_IsString(v) && !cJSON_IsNull(v))
            return dc_fail("%s: expected a string, got %s", where, dc_json_type(v));
        return store_string(o, r, cJSON_IsString(v) ? v->valuestring : NULL, where);
    case DC_OPT_MODEL:
        if (cJSON_IsObject(v))
            return store_model_json(o, r, v, where);
        if (cJSON_IsString(v)) /* as on the command line: text starting with '{' is the config */
            return set_text(o, r, v->valuestring, where);
        if (!cJSON_IsNull(v))
            return dc_fail("%s: expected the model config (an object) or its path (a string), got %s", where,
                           dc_json_type(v));
        return store_string(o, r, NULL, where);
    }
    return dc_fail("%s: unknown option type %d", where, (int)r->type);
}

static int unknown_key(const char *what, const char *key) {
    const dc_train_option *s = suggest(key);
    if (s && !(s->flags & DC_OPT_CLI_ONLY))
        return dc_fail("%s: key \"%s\" is unknown (did you mean \"%s\"?)", what, key, s->key);
    return dc_fail("%s: key \"%s\" is unknown (diffc train --help lists the options)", what, key);
}

int dc_train_options_apply_json(dc_train_options *o, const cJSON *json, const char *what) {
    if (!cJSON_IsObject(json))
        return dc_fail("%s: the training config is %s, not a JSON object", what, dc_json_type(json));
    for (const cJSON *v = json->child; v; v = v->next) {
        const dc_train_option *r = NULL;
        for (size_t i = 0; !r && i < sizeof table / sizeof table[0]; i++)
            if (!strcmp(v->string, table[i].key))
                r = &table[i];
        if (!r)
            return unknown_key(what, v->string);
        if (!row_applies(r, o->caption))
            return dc_fail("%s: key \"%s\" is an option of %s, not of %s", what, r->key, command(!o->caption),
                           command(o->caption));
        if (r->flags & DC_OPT_CLI_ONLY)
            return dc_fail("%s: key \"%s\" is a command-line option only", what, r->key);
        char where[512];
        snprintf(where, sizeof where, "%s: \"%s\"", what, r->key);
        if (set_json(o, r, v, where))
            return -1;
        o->given |= ROW_BIT(r);
    }
    return 0;
}

int dc_train_options_load(dc_train_options *o, const char *path) {
    cJSON *j = dc_json_load(path);
    int rc = j ? dc_train_options_apply_json(o, j, path) : -1;
    cJSON_Delete(j);
    return rc;
}

/* ---- the command line ---- */

typedef struct {
    const dc_train_option *r;
    const char *value;
} cli_item;

static int usage(const char *fmt, ...) DC_PRINTF(1, 2);
static int usage(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    dc_vfail(fmt, ap);
    va_end(ap);
    return DC_TRAIN_OPTIONS_USAGE;
}

/* "--name" or "--name=value" at argv[*i] (and the value after it). */
static int read_item(const dc_train_options *o, int argc, char **argv, int *i, cli_item *it) {
    char name[MAX_NAME], dn[MAX_NAME];
    const char *a = argv[*i];
    if (strncmp(a, "--", 2) || !a[2])
        return usage("%s takes no positional arguments ('%s'); options start with --", command(o->caption), a);
    const char *eq = strchr(a + 2, '='), *base = a + 2;
    size_t len = eq ? (size_t)(eq - base) : strlen(base);
    if (len >= MAX_NAME)
        return usage("unknown option '%s'", a);
    memcpy(name, base, len);
    name[len] = '\0';
    it->r = dc_train_option_find(name);
    it->value = eq ? eq + 1 : NULL;
    bool negated = !it->r && !eq && (!strncmp(name, "no-", 3) || !strncmp(name, "no_", 3));
    if (negated && (it->r = dc_train_option_find(name + 3)) && it->r->type == DC_OPT_BOOL) {
        it->value = "false";
        return 0;
    }
    if (!it->r || (negated && it->r->type != DC_OPT_BOOL)) {
        const dc_train_option *s = suggest(name);
        char hint[MAX_NAME + 32] = "";
        if (s)
            snprintf(hint, sizeof hint, " (did you mean --%s?)", dashed(dn, s->key));
        return usage("unknown option '--%s'%s", name, hint);
    }
    if (!row_applies(it->r, o->caption))
        return usage("--%s is an option of %s, not of %s", name, command(!o->caption), command(o->caption));
    if (it->r->type == DC_OPT_BOOL && !it->value)
        it->value = "true";
    if (it->value)
        return 0;
    if (*i + 1 >= argc || !strncmp(argv[*i + 1], "--", 2))
        return usage("--%s needs a value", dashed(dn, it->r->key));
    it->value = argv[++*i];
    return 0;
}

int dc_train_options_parse(dc_train_options *o, int argc, char **argv) {
    if (dc_train_options_init(o))
        return -1;
    o->caption = argc > 0 && !strcmp(argv[0], "train-caption");
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return DC_TRAIN_OPTIONS_HELP;
    cli_item *items = calloc((size_t)argc + 1, sizeof *items);
    if (!items)
        return dc_fail("out of memory");
    int n = 0, rc = 0;
    const char *config = NULL;
    for (int i = 1; !rc && i < argc; i++) {
        rc = read_item(o, argc, argv, &i, &items[n]);
        if (!rc && items[n].r->offset == offsetof(dc_train_options, config)) {
            if (config)
                rc = usage("--config given twice ('%s' and '%s')", config, items[n].value);
            config = items[n].value;
        }
        n++;
    }
    if (!rc && config)
        rc = dc_train_options_load(o, config);
    char where[MAX_NAME + 2] = "--";
    for (int k = 0; !rc && k < n; k++) {
        dashed(where + 2, items[k].r->key);
        rc = set_text(o, items[k].r, items[k].value, where);
        o->given |= ROW_BIT(items[k].r);
    }
    free(items);
    return rc ? rc : dc_train_options_pipeline_schedule(o) || dc_train_options_check(o) ? -1 : 0;
}

/* ---- the pretrained pipeline's schedule ---- */

/* A scheduler config key and the option it sets. */
static const struct {
    const char *key, *option;
} pipeline_keys[] = {
    {"prediction_type", "prediction_type"},         {"num_train_timesteps", "ddpm_num_steps"},
    {"beta_schedule", "ddpm_beta_schedule"},        {"beta_start", "ddpm_beta_start"},
    {"beta_end", "ddpm_beta_end"},                  {"rescale_betas_zero_snr", "rescale_betas_zero_snr"},
};

/* Option row r from the parsed scheduler config c. */
static int take_value(dc_train_options *o, const dc_train_option *r, const dc_noise_schedule_config *c,
                      const char *where) {
    switch (r->offset) {
    case offsetof(dc_train_options, prediction_type):
        return store_enum(o, r, dc_prediction_type_name(c->prediction_type), where);
    case offsetof(dc_train_options, ddpm_num_steps): return store_int(o, r, c->num_train_timesteps, where);
    case offsetof(dc_train_options, ddpm_beta_schedule):
        return store_enum(o, r, dc_beta_schedule_name(c->beta_schedule), where);
    case offsetof(dc_train_options, ddpm_beta_start): return store_float(o, r, c->beta_start, where);
    case offsetof(dc_train_options, ddpm_beta_end): return store_float(o, r, c->beta_end, where);
    default: return *FIELD(o, r, bool) = c->rescale_betas_zero_snr, 0;
    }
}

/* The keys that path sets, for the options not given. */
static int take_schedule(dc_train_options *o, const char *path) {
    char *text = dc_read_file(path, 1 << 20, NULL);
    cJSON *j = text ? dc_json_parse(text, strlen(text), path) : NULL;
    dc_noise_schedule_config c;
    int rc = j && !dc_noise_schedule_config_parse(&c, text, path) ? 0 : -1;
    for (size_t k = 0; !rc && k < sizeof pipeline_keys / sizeof pipeline_keys[0]; k++) {
        const dc_train_option *r = dc_train_option_find(pipeline_keys[k].option);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, pipeline_keys[k].key);
        if (!v || cJSON_IsNull(v) || (o->given & ROW_BIT(r)))
            continue;
        char where[512];
        snprintf(where, sizeof where, "%s: \"%s\"", path, pipeline_keys[k].key);
        rc = take_value(o, r, &c, where);
        o->from_pipeline |= ROW_BIT(r);
    }
    cJSON_Delete(j);
    free(text);
    return rc;
}

int dc_train_options_pipeline_schedule(dc_train_options *o) {
    if (!o->pretrained_model)
        return 0;
    char *path = dc_path_join(o->pretrained_model, "scheduler/scheduler_config.json");
    struct stat st;
    int rc = !path ? -1 : stat(path, &st) == 0 ? take_schedule(o, path) : 0;
    free(path);
    return rc;
}

/* diffc train-caption's combinations. */
static int check_caption(const dc_train_options *o) {
    if (!o->model)
        return dc_fail("no model: give --model DIR, a transformers BLIP captioning folder "
                       "(BlipForConditionalGeneration)");
    if (!o->train_data_dir)
        return dc_fail("no training data: give --train-data-dir, a folder of images with metadata.jsonl");
    if (!o->output_dir || !(o->given & ROW_BIT(dc_train_option_find("output_dir")))) /* not the UNet's default */
        return dc_fail("no output folder: give --output-dir");
    return 0;
}

bool dc_train_options_given(const dc_train_options *o, const char *key) {
    const dc_train_option *r = dc_train_option_find(key);
    return r && (o->given & ROW_BIT(r));
}

int dc_train_options_check(const dc_train_options *o) {
    if (o->caption)
        return check_caption(o);
    if (o->model && o->pretrained_model)
        return dc_fail("--model and --pretrained-model are both given: a fine-tuned model keeps the "
                       "pretrained model's config, so give only one");
    if (o->variant && !o->pretrained_model)
        return dc_fail("--variant %s: only --pretrained-model has weight variants", o->variant);
    if (!o->model && !o->pretrained_model && !o->resume_from_checkpoint)
        return dc_fail("no model: give --model (a UNet config.json, or the config inline in the --config "
                       "file) or --pretrained-model DIR");
    if (!o->train_data_dir)
        return dc_fail("no training data: give --train-data-dir");
    if (!o->output_dir)
        return dc_fail("no output folder: give --output-dir");
    if (o->rescale_betas_zero_snr && !strcmp(o->prediction_type, "epsilon"))
        return dc_fail("rescale_betas_zero_snr with prediction_type epsilon: at the last timestep the "
                       "image is pure noise, so predicting the noise teaches nothing and sampling from it "
                       "divides by zero; use --prediction-type v_prediction");
    return 0;
}

/* ---- the resolved configuration ---- */

static cJSON *value_json(const dc_train_options *o, const dc_train_option *r) {
    switch (r->type) {
    case DC_OPT_INT: return cJSON_CreateNumber((double)*FIELD(o, r, int64_t));
    case DC_OPT_FLOAT: {
        double v = *FIELD(o, r, double);
        return isnan(v) ? cJSON_CreateNull() : cJSON_CreateNumber(v);
    }
    case DC_OPT_BOOL: return cJSON_CreateBool(*FIELD(o, r, bool));
    case DC_OPT_ENUM: return cJSON_CreateString(*FIELD(o, r, const char *));
    case DC_OPT_STRING:
    case DC_OPT_MODEL: {
        const char *s = *FIELD(o, r, char *);
        if (!s)
            return cJSON_CreateNull();
        const char *p = s + strspn(s, " \t\r\n");
        return r->type == DC_OPT_MODEL && *p == '{' ? cJSON_Parse(p) : cJSON_CreateString(s);
    }
    }
    return NULL;
}

cJSON *dc_train_options_to_json(const dc_train_options *o) {
    cJSON *j = cJSON_CreateObject();
    for (size_t i = 0; j && i < sizeof table / sizeof table[0]; i++) {
        if (table[i].flags & DC_OPT_CLI_ONLY || !row_applies(&table[i], o->caption))
            continue;
        cJSON *v = value_json(o, &table[i]);
        if (!v || !cJSON_AddItemToObject(j, table[i].key, v)) {
            cJSON_Delete(v);
            cJSON_Delete(j);
            j = NULL;
        }
    }
    return j;
}

int dc_train_options_print(const dc_train_options *o, FILE *f) {
    cJSON *j = dc_train_options_to_json(o);
    if (!j)
        return dc_fail("out of memory");
    int width = 0, rc = 0;
    for (const cJSON *v = j->child; v; v = v->next)
        if ((int)strlen(v->string) > width)
            width = (int)strlen(v->string);
    for (const cJSON *v = j->child; v && !rc; v = v->next) {
        char *text = dc_json_print(v, false);
        const dc_train_option *r = dc_train_option_find(v->string);
        const char *from = r && (o->from_pipeline & ROW_BIT(r)) ? "  (from the pipeline)" : "";
        if (text)
            fprintf(f, "  %-*s  %s%s\n", width, v->string, text, from);
        else
            rc = dc_fail("out of memory");
        free(text);
    }
    cJSON_Delete(j);
    return rc;
}

int dc_train_options_save(const dc_train_options *o, const char *dir) {
    char *path = dc_path_join(dir, DC_TRAIN_CONFIG_FILE);
    cJSON *j = path ? dc_train_options_to_json(o) : NULL;
    int rc = !path ? -1 : j ? dc_json_save(path, j) : dc_fail("%s: out of memory", path);
    cJSON_Delete(j);
    free(path);
    return rc;
}

cJSON *dc_train_options_model_config(const dc_train_options *o) {
    if (!o->model) {
        dc_fail("no model config: give --model");
        return NULL;
    }
    const char *p = o->model + strspn(o->model, " \t\r\n");
    if (*p == '{')
        return dc_json_parse(p, strlen(p), "--model");
    struct stat st;
    bool dir = stat(o->model, &st) == 0 && S_ISDIR(st.st_mode);
    char *path = dir ? dc_path_join(o->model, "config.json") : strdup(o->model);
    cJSON *j = path ? dc_json_load(path) : NULL;
    if (j && !cJSON_IsObject(j)) {
        dc_fail("%s: the model config is %s, not a JSON object", path, dc_json_type(j));
        cJSON_Delete(j);
        j = NULL;
    }
    free(path);
    return j;
}

/* ---- --help ---- */

static const char help_intro[] =
    "usage: diffc train --config FILE [options]\n"
    "       diffc train --model JSON|FILE --train-data-dir DIR --output-dir DIR [options]\n"
    "\n"
    "Train a diffusers UNet2DModel on your images, or fine-tune one (--pretrained-model).\n"
    "Every option can also be a key of the --config file, spelt with underscores\n"
    "(--train-batch-size is \"train_batch_size\"); the command line overrides the file.\n"
    "The resolved configuration is printed and saved as train_config.json in the output\n"
    "folder. Checkpoints are diffusers pipeline folders (checkpoint-<step>); Ctrl-C or\n"
    "SIGTERM writes one and stops.\n";

#define HELP_COL 34
#define HELP_WIDTH 100

/* `text` wrapped to HELP_WIDTH, continuation lines indented to HELP_COL;
 * `col` is where the first line starts. */
static void print_wrapped(FILE *f, const char *text, int col) {
    while (*text) {
        int room = HELP_WIDTH - col, len = (int)strlen(text);
        if (len > room) { /* break at the last space that fits, or the first after */
            int cut = room;
            while (cut > 0 && text[cut] != ' ')
                cut--;
            if (cut == 0)
                cut = (int)strcspn(text, " ");
            len = cut;
        }
        fprintf(f, "%.*s\n", len, text);
        text += len;
        text += strspn(text, " ");
        if (*text)
            fprintf(f, "%*s", HELP_COL, "");
        col = HELP_COL;
    }
}

static void print_option(FILE *f, const dc_train_option *r) {
    char left[160], dn[MAX_NAME], text[1024], choices[256] = "";
    dashed(dn, r->key);
    const char *meta = r->type == DC_OPT_INT ? "N" : r->type == DC_OPT_FLOAT ? "X" : r->metavar;
    if (r->type == DC_OPT_ENUM) {
        for (int i = 0; r->choices[i]; i++)
            snprintf(choices + strlen(choices), sizeof choices - strlen(choices), "%s%s", i ? "|" : "",
                     r->choices[i]);
        meta = choices;
    }
    if (r->type == DC_OPT_BOOL)
        snprintf(left, sizeof left, "  --[no-]%s", dn);
    else
        snprintf(left, sizeof left, "  --%s %s", dn, meta);
    int n = snprintf(text, sizeof text, "%s", r->help);
    if (r->def && r->type != DC_OPT_BOOL)
        snprintf(text + n, sizeof text - (size_t)n, " (default: %s)", r->def);
    else if (r->type == DC_OPT_BOOL)
        snprintf(text + n, sizeof text - (size_t)n, " (default: %s)", !strcmp(r->def, "true") ? "on" : "off");
    int col = (int)strlen(left);
    if (col >= HELP_COL - 1) {
        fprintf(f, "%s\n%*s", left, HELP_COL, "");
        col = HELP_COL;
    } else {
        col = fprintf(f, "%-*s", HELP_COL, left);
    }
    print_wrapped(f, text, col);
}

static const char caption_help_intro[] =
    "usage: diffc train-caption --model DIR --train-data-dir DIR --output-dir DIR [options]\n"
    "\n"
    "Fine-tune a BLIP captioner (a transformers BlipForConditionalGeneration folder) on a\n"
    "folder of images whose metadata.jsonl gives their captions ({\"file_name\", \"text\"}).\n"
    "Every option can also be a key of the --config file, spelt with underscores. The\n"
    "output folder and its checkpoint-<step> folders are transformers model folders;\n"
    "Ctrl-C or SIGTERM writes a checkpoint and stops.\n";

static void print_help(FILE *f, bool caption) {
    fputs(caption ? caption_help_intro : help_intro, f);
    const char *group = NULL;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (!row_applies(&table[i], caption))
            continue;
        if (!group || strcmp(group, table[i].group))
            fprintf(f, "\n%s:\n", group = table[i].group);
        print_option(f, &table[i]);
    }
    fprintf(f, "%-*s%s\n", HELP_COL, "  -h, --help", "show this help");
}

void dc_train_options_help(FILE *f) { print_help(f, false); }

void dc_train_caption_options_help(FILE *f) { print_help(f, true); }

dc_ema_config dc_train_options_ema(const dc_train_options *o) {
    dc_ema_config e = dc_ema_default_config();
    e.decay = o->ema_max_decay;
    e.use_ema_warmup = true; /* as diffusers' train_unconditional */
    e.inv_gamma = o->ema_inv_gamma;
    e.power = o->ema_power;
    return e;
}

int dc_train_options_loader_threads(const dc_train_options *o) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (o->dataloader_num_workers)
        return (int)o->dataloader_num_workers;
    return cores < 1 ? 1 : cores > 8 ? 8 : (int)cores;
}
