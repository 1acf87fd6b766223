/*
 * The options of `diffc train`, described once.
 *
 * One table (dc_train_option_table) lists every option: its JSON key, its
 * type, default, range and help. The long option is the key with dashes
 * (train_batch_size <-> --train-batch-size); names mirror diffusers'
 * training examples. Everything else is generated from the table: the
 * defaults, the config-file reader, the command-line parser, --help, the
 * printed and saved resolved configuration. Each row points at its typed
 * field of dc_train_options with offsetof, so no name is written twice.
 *
 * Resolution order: the table's defaults, then the config file (--config,
 * JSON with the keys above), then the command line, left to right. On the
 * command line `--name value` and `--name=value` both work, underscores may
 * stand for dashes (--train_batch_size, as diffusers spells it), and a bool
 * is a flag (`--use-ema`), negated with `--no-use-ema` or given as
 * `--use-ema=false`. Paths are used as given: relative ones are relative to
 * the current folder, in a config file too.
 *
 * Fine-tuning (--pretrained-model DIR) trains with the noise schedule and
 * prediction type of the pipeline's scheduler/scheduler_config.json:
 * prediction_type, ddpm_num_steps, ddpm_beta_schedule, ddpm_beta_start,
 * ddpm_beta_end and rescale_betas_zero_snr take the values that file sets,
 * unless the config file or the command line gives them; the printed config
 * marks them "(from the pipeline)".
 *
 * `model` is the UNet's diffusers config.json: in a config file, either an
 * object (the config inline) or a string (the path of a config.json, or of a
 * folder holding one); on the command line a path, or JSON text starting
 * with '{'.
 *
 * Errors name the option and where it came from ("train.json: key
 * \"lerning_rate\" is unknown (did you mean \"learning_rate\"?)",
 * "--train-batch-size: 'x' is not an integer").
 */
#ifndef DC_TRAIN_OPTIONS_H
#define DC_TRAIN_OPTIONS_H

#include "autograd/optim.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The resolved options. Strings are malloc'ed and NULL when unset; enum
 * values point at the table's choice strings (static). */
typedef struct dc_train_options {
    /* model */
    char *config;           /* the config file read (command line only) */
    char *model;            /* inline JSON object text, or a path; see above */
    char *pretrained_model; /* a diffusers UNet folder (or pipeline with unet/) to start from */
    char *variant;          /* its weight variant ("fp16"); NULL: the plain weights */
    double dropout;         /* NaN: the model config's */
    int64_t lora_rank;      /* > 0: train LoRA adapters only (text-to-image) */
    double lora_alpha;      /* NaN: the rank */
    /* data */
    char *train_data_dir;
    char *classes; /* "3", "0,2", "Trouser": train on these classes only; NULL: all */
    char *cache_dir;
    int64_t resolution;
    bool random_flip;
    char *caption_column;  /* metadata.jsonl's key of the captions (text-to-image) */
    char *prompt_template; /* "a photo of a {class}": prompts from class folders; NULL: captions */
    bool strict;
    int64_t dataloader_num_workers; /* 0: one per core, at most 8 */
    /* diffusion */
    const char *prediction_type;
    int64_t ddpm_num_steps;
    const char *ddpm_beta_schedule;
    double ddpm_beta_start, ddpm_beta_end; /* linear and scaled_linear's ends */
    bool rescale_betas_zero_snr;
    double snr_gamma; /* 0: plain MSE */
    double noise_offset; /* 0: none */
    double cond_drop_prob;
    /* optimisation */
    int64_t train_batch_size;
    int64_t gradient_accumulation_steps;
    int64_t num_epochs;
    int64_t max_train_steps; /* 0: num_epochs of the data */
    double learning_rate;
    const char *lr_scheduler;
    int64_t lr_warmup_steps;
    double adam_beta1, adam_beta2, adam_weight_decay, adam_epsilon;
    double max_grad_norm; /* 0: no clipping */
    int64_t zero_stage;   /* 1: AdamW's state sharded over the ranks */
    bool use_ema;
    double ema_inv_gamma, ema_power, ema_max_decay;
    const char *mixed_precision;
    bool gradient_checkpointing; /* the UNet's blocks recomputed in backward (dc_checkpoint) */
    int64_t seed;
    char *device; /* auto, cpu, cuda, cuda:N */
    /* output */
    char *output_dir;
    char *logging_dir; /* TensorBoard events, relative to output_dir */
    int64_t logging_steps;
    int64_t checkpointing_steps;     /* 0: none before the end */
    int64_t checkpoints_total_limit; /* 0: keep every checkpoint */
    char *resume_from_checkpoint;    /* "latest" or a checkpoint folder */
    int64_t sample_every;            /* 0: no sample grids */
    int64_t eval_batch_size;         /* images in each sample grid */
    char *validation_prompt;         /* text-to-image grids: prompts split at '|'; NULL: a caption */
    int64_t ddpm_num_inference_steps;
    /* captions (diffc train-caption) */
    char *prompt;           /* the text every caption starts with, not learnt; NULL: none */
    int64_t max_length;     /* tokens per caption with [DEC] and [SEP]; 0: 40 or fewer (caption.c) */
    double label_smoothing; /* NaN: the model config's */
    bool freeze_vision;     /* train the text decoder only */
    bool caption;           /* the options of diffc train-caption (set by the parser from argv[0]) */
    /* where values came from, bit i for row i of the table */
    uint64_t given;         /* the config file or the command line */
    uint64_t from_pipeline; /* --pretrained-model's scheduler_config.json */
} dc_train_options;

typedef enum {
    DC_OPT_INT,    /* int64_t */
    DC_OPT_FLOAT,  /* double */
    DC_OPT_BOOL,   /* bool */
    DC_OPT_ENUM,   /* const char *, one of choices */
    DC_OPT_STRING, /* char * */
    DC_OPT_MODEL,  /* char *: a JSON object's text or a path */
} dc_opt_type;

enum {
    DC_OPT_CLI_ONLY = 1, /* not a config-file key (--config) */
    DC_OPT_HI_OPEN = 2,  /* the range excludes hi */
    DC_OPT_LO_OPEN = 8,  /* the range excludes lo */
    DC_OPT_NULLABLE = 4, /* a float that may be unset: NaN, null in JSON */
};

typedef struct dc_train_option {
    const char *group; /* the heading it is listed under in --help */
    const char *key;   /* "train_batch_size" */
    size_t offset;     /* of its field in dc_train_options */
    dc_opt_type type;
    const char *def; /* the default, as command-line text; NULL: unset */
    double lo, hi;   /* INT and FLOAT range */
    unsigned flags;
    const char *const *choices;                         /* ENUM: NULL-terminated */
    const char *metavar;                                /* STRING and MODEL: what the value is, for --help */
    int (*check)(const char *value, const char *where); /* STRING: more rules; NULL: none */
    const char *help;
} dc_train_option;

/* The table, in --help order. */
const dc_train_option *dc_train_option_table(int *n);
/* The row of a JSON key or long option ("lr_scheduler", "lr-scheduler"); NULL if none. */
const dc_train_option *dc_train_option_find(const char *name);

/* Every option at its default. */
int dc_train_options_init(dc_train_options *o);
void dc_train_options_free(dc_train_options *o);

/* What dc_train_options_parse returns besides 0 and -1. */
enum { DC_TRAIN_OPTIONS_HELP = 1, DC_TRAIN_OPTIONS_USAGE = -2 };

/* The whole resolution for `diffc train` and `diffc train-caption` (argv[0]
 * is the subcommand's name: "train-caption" takes the shared options and
 * the "captions" group, anything else the shared ones and the UNet's):
 * defaults, --config, the command line, the pretrained pipeline's schedule
 * (dc_train_options_pipeline_schedule), then dc_train_options_check.
 * Returns 0, DC_TRAIN_OPTIONS_HELP when --help/-h was given (nothing else
 * was looked at), -1 for a bad value, config file or combination (exit 1),
 * DC_TRAIN_OPTIONS_USAGE for an unknown option, a missing value or a
 * positional argument (exit 2). *o is initialised in every case. */
int dc_train_options_parse(dc_train_options *o, int argc, char **argv);

/* Apply a JSON object of options; `what` names it in errors (a file name). */
int dc_train_options_apply_json(dc_train_options *o, const cJSON *json, const char *what);
/* Apply the options of a JSON file. */
int dc_train_options_load(dc_train_options *o, const char *path);
/* Set one option from text as the command line gives it (`name` as key or
 * long option, without the dashes). */
int dc_train_options_set(dc_train_options *o, const char *name, const char *value);

/* The schedule options that neither the config file nor the command line
 * gave, from pretrained_model's scheduler/scheduler_config.json where it has
 * one (a bare UNet folder has none: nothing changes). */
int dc_train_options_pipeline_schedule(dc_train_options *o);

/* The combinations that cannot run: a model from --model and from
 * --pretrained-model, none of them (without a checkpoint to resume), no
 * training data, no output folder, a zero-SNR schedule for an epsilon model. */
int dc_train_options_check(const dc_train_options *o);

/* Whether the config file or the command line gave option `key` ("prompt_template" or
 * "prompt-template"). */
bool dc_train_options_given(const dc_train_options *o, const char *key);

/* Every config-file key with its value (unset ones as null): the resolved
 * configuration that is printed and saved, and that
 * dc_train_options_apply_json reads back to the same options. NULL when out
 * of memory. */
cJSON *dc_train_options_to_json(const dc_train_options *o);
/* One line per option, "  key  value" with the value as JSON, and
 * "(from the pipeline)" after the values taken from it. */
int dc_train_options_print(const dc_train_options *o, FILE *f);
/* Write `dir`/train_config.json (atomically). */
#define DC_TRAIN_CONFIG_FILE "train_config.json"
int dc_train_options_save(const dc_train_options *o, const char *dir);
/* `diffc train --help`: usage, then every option with its default. */
void dc_train_options_help(FILE *f);
/* `diffc train-caption --help`. */
void dc_train_caption_options_help(FILE *f);

/* The UNet config that `model` names: the inline object or the file (a
 * folder means its config.json). NULL (after dc_fail) when unset or bad. */
cJSON *dc_train_options_model_config(const dc_train_options *o);

/* The EMA of --ema-max-decay, --ema-inv-gamma and --ema-power, with
 * diffusers' warmup (as its train_unconditional). */
dc_ema_config dc_train_options_ema(const dc_train_options *o);
/* The data loader's threads: --dataloader-num-workers, or one per core, at most 8. */
int dc_train_options_loader_threads(const dc_train_options *o);

#endif
