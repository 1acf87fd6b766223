/* The trainer's input and output: options (config file, command line,
 * errors, --help, the resolved config), checkpoints (round trip bit for bit,
 * latest, pruning, a full disk, an unwritable folder, kill -9 at every step
 * of a write and at random times), TensorBoard event files (CRC-32C, the
 * records and protobuf fields decoded back), metrics.jsonl and the progress
 * line, the signal handlers, and the GPU each rank of a node takes. */
#define _GNU_SOURCE /* nftw, open_memstream, openpty */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/nn.h"
#include "autograd/safetensors.h"
#include "data/image.h"
#include "models/unet.h"
#include "train/checkpoint.h"
#include "train/dist.h"
#include "autograd/fileio.h"
#include "train/memory.h"
#include "train/metrics.h"
#include "train/options.h"
#include "train/signals.h"
#include "train/tensorboard.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <omp.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* ---- temporary folder and files ---- */

static char tmpdir[64];

static void make_tmpdir(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dc_tio_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void) { ck_assert_msg(dc_remove_tree(tmpdir) == 0, "%s", dc_error()); }

static const char *tmp_path(const char *name) {
    static char buf[4][256];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", tmpdir, name);
    return b;
}

static void spill(const char *path, const char *text) {
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_int_eq(fputs(text, fp) >= 0, 1);
    ck_assert_int_eq(fclose(fp), 0);
}

static char *slurp(const char *path) {
    char *s = dc_read_file(path, 1 << 28, NULL);
    ck_assert_msg(s != NULL, "%s", dc_error());
    return s;
}

static bool exists(const char *path) { return access(path, F_OK) == 0; }

static void assert_error(const char *needle) {
    ck_assert_msg(strstr(dc_error(), needle), "message '%s' lacks '%s'", dc_error(), needle);
}

/* ---- files ---- */

START_TEST(test_files) {
    make_tmpdir();
    ck_assert_msg(dc_mkdirs(tmp_path("a/b//c/")) == 0, "%s", dc_error());
    ck_assert_int_eq(dc_mkdirs(tmp_path("a/b")), 0); /* existing is fine */
    spill(tmp_path("a/file"), "x");
    ck_assert_int_eq(dc_mkdirs(tmp_path("a/file/sub")), -1);
    assert_error("a/file: exists and is not a folder");
    ck_assert_int_eq(dc_dir_check_writable(tmp_path("a/file/sub")), -1);

    /* atomic writes replace, leave no .tmp */
    const char *p = tmp_path("a/b/w.txt");
    ck_assert_int_eq(dc_write_file(p, "old", 3, true), 0);
    ck_assert_int_eq(dc_write_file(p, "new!", 4, true), 0);
    char *s = slurp(p);
    ck_assert_str_eq(s, "new!");
    free(s);
    ck_assert(!exists(tmp_path("a/b/w.txt.tmp")));
    ck_assert_int_eq(dc_write_file(tmp_path("nope/w.txt"), "x", 1, true), -1);
    assert_error("nope/w.txt: cannot create");

    ck_assert_int_eq(dc_remove_tree(tmp_path("a")), 0);
    ck_assert(!exists(tmp_path("a")));
    ck_assert_int_eq(dc_remove_tree(tmp_path("a")), 0); /* missing is fine */
    remove_tmpdir();
}
END_TEST

START_TEST(test_json_files) {
    make_tmpdir();
    const char *p = tmp_path("c.json");
    spill(p, "{\n  \"a\": 1,\n  \"b\": [1, 2,, 3]\n}\n");
    ck_assert_ptr_null(dc_json_load(p));
    assert_error("c.json:3:14: not valid JSON"); /* the second comma */
    spill(p, "{\"a\": {\"x\": 1, \"y\": 2, \"x\": 3}}");
    ck_assert_ptr_null(dc_json_load(p));
    assert_error("key \"x\" appears twice");
    spill(p, "{\"a\": 1} {");
    ck_assert_ptr_null(dc_json_load(p));
    assert_error("c.json:1:10: text after the JSON value");
    ck_assert_ptr_null(dc_json_load(tmp_path("missing.json")));
    assert_error("missing.json: cannot open: No such file or directory");
    ck_assert_ptr_null(dc_json_load(tmpdir));
    assert_error("a folder");

    cJSON *j = cJSON_Parse("{\"k\": [1, \"two\", null], \"u\": \"\\u00e9\"}");
    ck_assert_int_eq(dc_json_save(p, j), 0);
    cJSON *back = dc_json_load(p);
    ck_assert(back && cJSON_Compare(j, back, 1));
    cJSON_Delete(j);
    cJSON_Delete(back);
    remove_tmpdir();
}
END_TEST

/* ---- options ---- */

static dc_train_options opts;

/* Parse a NULL-terminated argument list ("train" is argv[0]). */
static int parse(const char *first, ...) {
    char *argv[64] = {"train"};
    int argc = 1;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    dc_train_options_free(&opts);
    dc_clear_error();
    return dc_train_options_parse(&opts, argc, argv);
}

START_TEST(test_option_defaults) {
    dc_train_options o;
    ck_assert_msg(dc_train_options_init(&o) == 0, "%s", dc_error());
    ck_assert_int_eq(o.train_batch_size, 16);
    ck_assert_int_eq(o.resolution, 64);
    ck_assert(o.learning_rate == 1e-4 && o.adam_beta1 == 0.95 && o.adam_epsilon == 1e-8);
    ck_assert(o.max_grad_norm == 1.0 && o.ema_power == 0.75 && o.ema_max_decay == 0.9999);
    ck_assert_str_eq(o.lr_scheduler, "cosine");
    ck_assert_str_eq(o.mixed_precision, "no");
    ck_assert_str_eq(o.prediction_type, "epsilon");
    ck_assert_str_eq(o.output_dir, "ddpm-model-64");
    ck_assert_str_eq(o.device, "auto");
    ck_assert(!o.use_ema && !o.random_flip && isnan(o.dropout));
    ck_assert_ptr_null(o.model);
    ck_assert_ptr_null(o.resume_from_checkpoint);
    dc_train_options_free(&o);
    dc_train_options_free(&o); /* freed twice is fine */
}
END_TEST

START_TEST(test_config_then_command_line) {
    make_tmpdir();
    int64_t batch = 1 + (int64_t)(tu_next() % 500), seed = (int64_t)(tu_next() >> 12);
    double lr = tu_uniform(1e-6, 1e-2);
    char cfg[1024], batch_text[32], lr_text[64], seed_text[64];
    snprintf(cfg, sizeof cfg,
             "{\"model\": {\"sample_size\": 32, \"block_out_channels\": [32, 64]},\n"
             " \"train_data_dir\": \"data/in\", \"learning_rate\": 0.5, \"use_ema\": true,\n"
             " \"lr_scheduler\": \"linear\", \"dropout\": 0.25, \"train_batch_size\": 3,\n"
             " \"seed\": %lld, \"cache_dir\": null, \"output_dir\": \"%s\"}\n",
             (long long)seed, tmpdir);
    spill(tmp_path("train.json"), cfg);
    snprintf(batch_text, sizeof batch_text, "%lld", (long long)batch);
    snprintf(lr_text, sizeof lr_text, "--learning-rate=%.17g", lr);
    snprintf(seed_text, sizeof seed_text, "%lld", (long long)seed);
    ck_assert_msg(parse("--train-batch-size", batch_text, "--config", tmp_path("train.json"), lr_text,
                        "--no-use-ema", "--train_data_dir", "other", "--random-flip", "--mixed-precision",
                        "bf16", "--device=cuda:1", NULL) == 0,
                  "%s", dc_error());
    ck_assert_int_eq(opts.train_batch_size, batch); /* command line wins, wherever it stands */
    ck_assert(opts.learning_rate == lr);
    ck_assert(!opts.use_ema && opts.random_flip);
    ck_assert_str_eq(opts.train_data_dir, "other");
    ck_assert_str_eq(opts.lr_scheduler, "linear"); /* from the file */
    ck_assert_str_eq(opts.mixed_precision, "bf16");
    ck_assert_str_eq(opts.device, "cuda:1");
    ck_assert(opts.dropout == 0.25);
    ck_assert_int_eq(opts.seed, seed);
    ck_assert_str_eq(opts.config, tmp_path("train.json"));

    cJSON *model = dc_train_options_model_config(&opts);
    ck_assert_msg(model != NULL, "%s", dc_error());
    ck_assert_int_eq(cJSON_GetObjectItem(model, "sample_size")->valueint, 32);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(model, "block_out_channels")), 2);
    cJSON_Delete(model);

    /* the model as inline JSON on the command line, and "=true" for a bool */
    ck_assert_msg(
        parse("--model", " {\"sample_size\": 8}", "--train-data-dir", "d", "--use-ema=true", NULL) == 0, "%s",
        dc_error());
    ck_assert(opts.use_ema);
    model = dc_train_options_model_config(&opts);
    ck_assert_int_eq(cJSON_GetObjectItem(model, "sample_size")->valueint, 8);
    cJSON_Delete(model);
    dc_train_options_free(&opts);
    remove_tmpdir();
}
END_TEST

START_TEST(test_model_config_sources) {
    make_tmpdir();
    spill(tmp_path("config.json"), "{\"sample_size\": 28, \"in_channels\": 1}");
    ck_assert_int_eq(parse("--model", tmp_path("config.json"), "--train-data-dir", "d", NULL), 0);
    cJSON *m = dc_train_options_model_config(&opts);
    ck_assert(m && cJSON_GetObjectItem(m, "in_channels")->valueint == 1);
    cJSON_Delete(m);
    ck_assert_int_eq(parse("--model", tmpdir, "--train-data-dir", "d", NULL),
                     0); /* a folder: its config.json */
    m = dc_train_options_model_config(&opts);
    ck_assert(m && cJSON_GetObjectItem(m, "sample_size")->valueint == 28);
    cJSON_Delete(m);
    ck_assert_int_eq(parse("--model", tmp_path("none.json"), "--train-data-dir", "d", NULL), 0);
    ck_assert_ptr_null(dc_train_options_model_config(&opts));
    assert_error("none.json: cannot open");
    spill(tmp_path("list.json"), "[1, 2]");
    ck_assert_int_eq(parse("--model", tmp_path("list.json"), "--train-data-dir", "d", NULL), 0);
    ck_assert_ptr_null(dc_train_options_model_config(&opts));
    assert_error("list.json: the model config is an array, not a JSON object");
    ck_assert_int_eq(parse("--model", "{\"a\": ", "--train-data-dir", "d", NULL), -1);
    assert_error("--model:1:");
    dc_train_options_free(&opts);
    remove_tmpdir();
}
END_TEST

/* Every config shipped in configs/ loads, and its model is a UNet config we build. */
START_TEST(test_shipped_configs) {
    DIR *d = opendir("configs");
    ck_assert_ptr_nonnull(d);
    int count = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".json"))
            continue;
        char path[512];
        snprintf(path, sizeof path, "configs/%s", e->d_name);
        ck_assert_msg(parse("--config", path, NULL) == 0, "%s", dc_error());
        cJSON *model = dc_train_options_model_config(&opts);
        char *text = model ? cJSON_Print(model) : NULL;
        dc_unet_config c;
        ck_assert_msg(text && dc_unet_config_parse(&c, text, path) == 0, "%s: %s", path, dc_error());
        dc_unet_config_free(&c);
        free(text);
        cJSON_Delete(model);
        count++;
    }
    closedir(d);
    ck_assert_int_ge(count, 2);
    dc_train_options_free(&opts);
}
END_TEST

/* configs/cifar10-ddpm.json: google/ddpm-cifar10-32's model exactly as published (the
 * config the UNet tests build), with the DDPM paper's training settings. */
START_TEST(test_cifar10_ddpm_config) {
    ck_assert_msg(parse("--config", "configs/cifar10-ddpm.json", NULL) == 0, "%s", dc_error());
    cJSON *model = dc_train_options_model_config(&opts), *wild = dc_json_load("tests/fixtures/unet_configs.json");
    ck_assert_msg(model && wild, "%s", dc_error());
    cJSON *published = cJSON_GetObjectItem(cJSON_GetObjectItem(wild, "ddpm_cifar10_32"), "config");
    ck_assert(cJSON_Compare(model, published, 1));
    ck_assert(opts.dropout == 0.1 && opts.learning_rate == 2e-4 && opts.max_grad_norm == 1.0);
    ck_assert(opts.train_batch_size == 128 && opts.gradient_accumulation_steps == 1);
    ck_assert(opts.lr_warmup_steps == 5000 && opts.max_train_steps == 800000);
    ck_assert_str_eq(opts.lr_scheduler, "constant_with_warmup");
    ck_assert(opts.adam_beta1 == 0.9 && opts.adam_beta2 == 0.999 && opts.adam_weight_decay == 0);
    ck_assert(opts.use_ema && opts.ema_max_decay == 0.9999 && opts.random_flip);
    ck_assert(opts.resolution == 32 && opts.ddpm_num_steps == 1000);
    ck_assert_str_eq(opts.ddpm_beta_schedule, "linear");
    ck_assert_str_eq(opts.prediction_type, "epsilon");
    cJSON_Delete(model);
    cJSON_Delete(wild);
    dc_train_options_free(&opts);
}
END_TEST

/* A config file holding `json` is refused with a message holding `needle`. */
static void config_refused(const char *json, const char *needle) {
    spill(tmp_path("bad.json"), json);
    ck_assert_msg(
        parse("--config", tmp_path("bad.json"), "--train-data-dir", "d", "--model", "m.json", NULL) == -1,
        "%s accepted", json);
    ck_assert_msg(strstr(dc_error(), tmp_path("bad.json")), "'%s' does not name the file", dc_error());
    ck_assert_msg(strstr(dc_error(), needle), "%s: message '%s' lacks '%s'", json, dc_error(), needle);
}

START_TEST(test_unknown_keys) {
    make_tmpdir();
    config_refused("{\"lerning_rate\": 1e-4}",
                   "key \"lerning_rate\" is unknown (did you mean \"learning_rate\"?)");
    config_refused("{\"train-batch-size\": 4}", "(did you mean \"train_batch_size\"?)");
    config_refused("{\"batch_size\": 4}", "(did you mean \"train_batch_size\"?)");
    config_refused("{\"zzzzqqqq\": 4}", "key \"zzzzqqqq\" is unknown (diffc train --help lists the options)");
    config_refused("{\"config\": \"x.json\"}", "\"config\" is a command-line option only");
    config_refused("[1]", "the training config is an array, not a JSON object");
    config_refused("{\"seed\": 1, \"seed\": 2}", "key \"seed\" appears twice");

    ck_assert_int_eq(parse("--lerning-rate", "1", NULL), DC_TRAIN_OPTIONS_USAGE);
    assert_error("unknown option '--lerning-rate' (did you mean --learning-rate?)");
    ck_assert_int_eq(parse("--no-learning-rate", NULL), DC_TRAIN_OPTIONS_USAGE); /* not a bool */
    assert_error("unknown option '--no-learning-rate'");
    ck_assert_int_eq(parse("data", NULL), DC_TRAIN_OPTIONS_USAGE);
    assert_error("no positional arguments ('data')");
    ck_assert_int_eq(parse("--train-data-dir", "d", "--seed", NULL), DC_TRAIN_OPTIONS_USAGE);
    assert_error("--seed needs a value");
    ck_assert_int_eq(parse("--output-dir", "--seed", "3", NULL), DC_TRAIN_OPTIONS_USAGE);
    assert_error("--output-dir needs a value");
    ck_assert_int_eq(parse("--config", "a.json", "--config=b.json", NULL), DC_TRAIN_OPTIONS_USAGE);
    assert_error("--config given twice");
    ck_assert_int_eq(parse("--config", tmp_path("missing.json"), NULL), -1);
    assert_error("missing.json: cannot open");
    /* --help wins over everything else */
    ck_assert_int_eq(parse("--bogus", "-h", NULL), DC_TRAIN_OPTIONS_HELP);
    ck_assert_int_eq(parse("--help", NULL), DC_TRAIN_OPTIONS_HELP);
    dc_train_options_free(&opts);
    remove_tmpdir();
}
END_TEST

START_TEST(test_bad_values) {
    make_tmpdir();
    static const struct {
        const char *json, *needle;
    } files[] = {
        {"{\"train_batch_size\": \"16\"}", "\"train_batch_size\": expected an integer, got a string"},
        {"{\"train_batch_size\": 1.5}", "\"train_batch_size\": expected an integer, got a fraction"},
        {"{\"train_batch_size\": 0}", "\"train_batch_size\": 0 is out of range (in [1, 1048576])"},
        {"{\"max_train_steps\": -5}", "\"max_train_steps\": -5 is out of range (at least 0)"},
        {"{\"learning_rate\": \"fast\"}", "\"learning_rate\": expected a number, got a string"},
        {"{\"learning_rate\": null}", "\"learning_rate\": expected a number, got null"},
        {"{\"adam_beta1\": 1}", "\"adam_beta1\": 1 is out of range (in [0, 1))"},
        {"{\"use_ema\": 1}", "\"use_ema\": expected true or false, got a number"},
        {"{\"lr_scheduler\": \"cosin\"}",
         "\"lr_scheduler\": 'cosin' is not one of constant, constant_with_warmup, linear, cosine"},
        {"{\"mixed_precision\": \"fp16\"}", "'fp16' is not one of no, bf16"},
        {"{\"model\": 5}",
         "\"model\": expected the model config (an object) or its path (a string), got a number"},
        {"{\"output_dir\": [\"a\"]}", "\"output_dir\": expected a string, got an array"},
        {"{\"device\": \"gpu\"}", "\"device\": 'gpu' is not a device: auto, cpu, cuda or cuda:N"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        config_refused(files[i].json, files[i].needle);

    static const struct {
        const char *name, *value, *needle;
    } words[] = {
        {"--train-batch-size", "abc", "--train-batch-size: 'abc' is not an integer"},
        {"--train-batch-size", "12x", "--train-batch-size: '12x' is not an integer"},
        {"--seed", "99999999999999999999", "--seed: '99999999999999999999' is not an integer"},
        {"--seed", "9007199254740993", "--seed: 9007199254740993 is out of range"},
        {"--learning-rate", "1e-4x", "--learning-rate: '1e-4x' is not a number"},
        {"--learning-rate", "nan", "--learning-rate: nan is not a finite number"},
        {"--learning-rate", "-1", "--learning-rate: -1 is out of range (at least 0)"},
        {"--use-ema=maybe", NULL, "--use-ema: 'maybe' is not true or false"},
        {"--dropout", "1", "--dropout: 1 is out of range (in [0, 1))"},
        {"--ema-inv-gamma", "0", "--ema-inv-gamma: 0 is out of range (more than 0)"},
        {"--prediction-type", "eps", "'eps' is not one of epsilon, v_prediction, sample"},
        {"--device", "cuda:x", "'cuda:x' is not a device"},
    };
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        ck_assert_msg(
            parse("--model", "m.json", "--train-data-dir", "d", words[i].name, words[i].value, NULL) == -1,
            "%s %s accepted", words[i].name, words[i].value);
        assert_error(words[i].needle);
    }
    dc_train_options_free(&opts);
    remove_tmpdir();
}
END_TEST

START_TEST(test_combinations) {
    ck_assert_int_eq(parse("--model", "m.json", "--pretrained-model", "p", "--train-data-dir", "d", NULL),
                     -1);
    assert_error("--model and --pretrained-model are both given");
    ck_assert_int_eq(parse("--train-data-dir", "d", NULL), -1);
    assert_error("no model: give --model");
    ck_assert_int_eq(parse("--train-data-dir", "d", "--resume-from-checkpoint", "latest", NULL), 0);
    ck_assert_int_eq(parse("--pretrained-model", "p", NULL), -1);
    assert_error("no training data: give --train-data-dir");
    ck_assert_int_eq(parse("--pretrained-model", "p", "--train-data-dir", "d", "--output-dir", "", NULL), -1);
    assert_error("no output folder");
    dc_train_options_free(&opts);
}
END_TEST

/* --pretrained-model's scheduler config sets the schedule options nobody gave. */
START_TEST(test_pipeline_schedule) {
    make_tmpdir();
    ck_assert_int_eq(dc_mkdirs(tmp_path("pipe/scheduler")), 0);
    spill(tmp_path("pipe/scheduler/scheduler_config.json"),
          "{\"_class_name\": \"DDPMScheduler\", \"beta_schedule\": \"squaredcos_cap_v2\", "
          "\"prediction_type\": \"v_prediction\", \"num_train_timesteps\": 500, \"beta_end\": 0.03, "
          "\"beta_start\": null, \"rescale_betas_zero_snr\": true, \"lambda_min_clipped\": -Infinity}");
    char pipe[256];
    snprintf(pipe, sizeof pipe, "%s", tmp_path("pipe"));
    ck_assert_msg(parse("--pretrained-model", pipe, "--train-data-dir", "d", NULL) == 0, "%s", dc_error());
    ck_assert_str_eq(opts.prediction_type, "v_prediction");
    ck_assert_str_eq(opts.ddpm_beta_schedule, "squaredcos_cap_v2");
    ck_assert(opts.ddpm_num_steps == 500 && opts.ddpm_beta_end == 0.03 && opts.rescale_betas_zero_snr);
    ck_assert(opts.ddpm_beta_start == 0.0001); /* null: the default */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    ck_assert_int_eq(dc_train_options_print(&opts, f), 0);
    fclose(f);
    ck_assert_msg(strstr(text, "\"v_prediction\"  (from the pipeline)\n") &&
                      strstr(text, "\"squaredcos_cap_v2\"  (from the pipeline)\n") &&
                      strstr(text, "500  (from the pipeline)\n") && strstr(text, "0.03  (from the pipeline)\n") &&
                      strstr(text, "true  (from the pipeline)\n") && !strstr(text, "0.0001  (from"),
                  "%s", text);
    free(text);
    /* the command line and the config file win, and say nothing of the pipeline */
    spill(tmp_path("train.json"), "{\"ddpm_num_steps\": 300}");
    ck_assert_msg(parse("--config", tmp_path("train.json"), "--pretrained-model", pipe, "--train-data-dir", "d",
                        "--ddpm-beta-schedule", "linear", "--no-rescale-betas-zero-snr", NULL) == 0,
                  "%s", dc_error());
    ck_assert_str_eq(opts.ddpm_beta_schedule, "linear");
    ck_assert(opts.ddpm_num_steps == 300 && !opts.rescale_betas_zero_snr);
    ck_assert_str_eq(opts.prediction_type, "v_prediction");
    const dc_train_option *steps = dc_train_option_find("ddpm_num_steps");
    int n;
    ck_assert(!(opts.from_pipeline >> (steps - dc_train_option_table(&n)) & 1));
    /* zero SNR asks for a model that does not predict the noise */
    ck_assert_int_eq(parse("--pretrained-model", pipe, "--train-data-dir", "d", "--prediction-type", "epsilon",
                           NULL),
                     -1);
    assert_error("rescale_betas_zero_snr with prediction_type epsilon");
    /* what the schedule cannot be is refused, naming the file */
    spill(tmp_path("pipe/scheduler/scheduler_config.json"), "{\"num_train_timesteps\": 200000}");
    ck_assert_int_eq(parse("--pretrained-model", pipe, "--train-data-dir", "d", NULL), -1);
    assert_error("pipe/scheduler/scheduler_config.json: \"num_train_timesteps\": 200000 is out of range");
    spill(tmp_path("pipe/scheduler/scheduler_config.json"), "{\"trained_betas\": [0.1]}");
    ck_assert_int_eq(parse("--pretrained-model", pipe, "--train-data-dir", "d", NULL), -1);
    assert_error("scheduler_config.json: trained_betas is not supported");
    spill(tmp_path("pipe/scheduler/scheduler_config.json"), "{\"beta_schedule\": \"linear\",");
    ck_assert_int_eq(parse("--pretrained-model", pipe, "--train-data-dir", "d", NULL), -1);
    assert_error("scheduler_config.json:1:27: not valid JSON here");
    /* a bare UNet folder has no scheduler: the defaults */
    ck_assert_int_eq(parse("--pretrained-model", tmp_path("pipe/scheduler"), "--train-data-dir", "d", NULL), 0);
    ck_assert(!strcmp(opts.prediction_type, "epsilon") && opts.ddpm_num_steps == 1000 && !opts.from_pipeline);
    dc_train_options_free(&opts);
    remove_tmpdir();
}
END_TEST

START_TEST(test_help_lists_every_option) {
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    dc_train_options_help(f);
    dc_train_caption_options_help(f); /* the "captions" group is train-caption's */
    fclose(f);
    int n;
    const dc_train_option *t = dc_train_option_table(&n);
    ck_assert_int_ge(n, 40);
    for (int i = 0; i < n; i++) {
        char flag[128], def[128];
        snprintf(flag, sizeof flag, t[i].type == DC_OPT_BOOL ? "\n  --[no-]%s " : "\n  --%s ", t[i].key);
        for (char *c = flag; *c; c++)
            *c = *c == '_' ? '-' : *c;
        const char *line = strstr(text, flag);
        ck_assert_msg(line, "--help lacks %s", flag + 3);
        /* the option's entry, up to the next one, with its wrapped lines joined */
        const char *end = strstr(line + 1, "\n  -");
        char entry[1024];
        size_t k = 0;
        for (const char *c = line; c < (end ? end : line + strlen(line)) && k + 1 < sizeof entry; c++)
            if (!(isspace((unsigned char)*c) && k && entry[k - 1] == ' '))
                entry[k++] = isspace((unsigned char)*c) ? ' ' : *c;
        entry[k] = '\0';
        snprintf(def, sizeof def, "(default: %s)",
                 t[i].type == DC_OPT_BOOL ? (!strcmp(t[i].def, "true") ? "on" : "off") : t[i].def);
        ck_assert_msg(!t[i].def || strstr(entry, def), "--help: '%s' lacks '%s'", entry, def);
    }
    for (const char *l = text; *l; l = strchr(l, '\n') + 1) /* nothing runs off a 100-column screen */
        ck_assert_int_le(strcspn(l, "\n"), 100);
    free(text);
}
END_TEST

/* Random values for every option, within its range. */
static void randomise(dc_train_options *o) {
    int n;
    const dc_train_option *t = dc_train_option_table(&n);
    for (int i = 0; i < n; i++) {
        const dc_train_option *r = &t[i];
        char text[64];
        double hi = r->hi > 1e6 ? 1e6 : r->hi;
        switch (r->type) {
        case DC_OPT_INT: snprintf(text, sizeof text, "%lld", (long long)tu_uniform(r->lo, hi)); break;
        case DC_OPT_FLOAT: snprintf(text, sizeof text, "%.17g", tu_uniform(r->lo, hi * 0.999)); break;
        case DC_OPT_BOOL: snprintf(text, sizeof text, "%s", tu_next() & 1 ? "true" : "false"); break;
        case DC_OPT_ENUM: {
            int k = 0;
            while (r->choices[k])
                k++;
            snprintf(text, sizeof text, "%s", r->choices[tu_next() % (uint64_t)k]);
            break;
        }
        case DC_OPT_STRING:
            snprintf(text, sizeof text, r->check ? "cuda:%d" : "path/%d \"q\" \\", (int)(tu_next() % 8));
            break;
        case DC_OPT_MODEL:
            snprintf(text, sizeof text, "{\"sample_size\": %d, \"x\": [1.5, null]}", (int)(tu_next() % 99));
            break;
        }
        ck_assert_msg(dc_train_options_set(o, r->key, text) == 0, "%s = %s: %s", r->key, text, dc_error());
    }
}

START_TEST(test_resolved_config_round_trip) {
    make_tmpdir();
    dc_train_options a, b;
    ck_assert_int_eq(dc_train_options_init(&a), 0);
    randomise(&a);
    ck_assert_msg(dc_train_options_save(&a, tmpdir) == 0, "%s", dc_error());
    ck_assert(!exists(tmp_path("train_config.json.tmp")));
    ck_assert_int_eq(dc_train_options_init(&b), 0);
    ck_assert_msg(dc_train_options_load(&b, tmp_path(DC_TRAIN_CONFIG_FILE)) == 0, "%s", dc_error());
    cJSON *ja = dc_train_options_to_json(&a), *jb = dc_train_options_to_json(&b);
    ck_assert(cJSON_Compare(ja, jb, 1));
    ck_assert(cJSON_IsObject(cJSON_GetObjectItem(ja, "model"))); /* inline stays an object */
    ck_assert_ptr_null(cJSON_GetObjectItem(ja, "config"));       /* command line only */
    ck_assert(a.learning_rate == b.learning_rate && a.seed == b.seed && a.use_ema == b.use_ema);

    /* a model path stays a string; unset values are null and read back unset */
    ck_assert_int_eq(dc_train_options_set(&a, "model", "unet/config.json"), 0);
    ck_assert_int_eq(dc_train_options_set(&a, "cache-dir", ""), 0);
    ck_assert_int_eq(dc_train_options_set(&a, "dropout", "nan"), 0);
    cJSON_Delete(ja);
    ja = dc_train_options_to_json(&a);
    ck_assert_str_eq(cJSON_GetObjectItem(ja, "model")->valuestring, "unet/config.json");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(ja, "cache_dir")) &&
              cJSON_IsNull(cJSON_GetObjectItem(ja, "dropout")));
    ck_assert_int_eq(dc_train_options_apply_json(&b, ja, "mem"), 0);
    ck_assert(b.cache_dir == NULL && isnan(b.dropout));

    /* a JSON string starting with '{' is the config inline, as on the command
     * line: valid, it reads back as an object; not, it is refused (it once
     * passed as a path that printed back as nothing: found by fuzz_train_config) */
    cJSON *inline_text = cJSON_Parse("{\"model\": \" {\\\"sample_size\\\": 8}\"}");
    ck_assert_int_eq(dc_train_options_apply_json(&b, inline_text, "mem"), 0);
    cJSON *jm = dc_train_options_to_json(&b);
    ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(jm, "model"), "sample_size")->valueint, 8);
    cJSON *broken = cJSON_Parse("{\"model\": \"{saMple ?lr_schcine\"}");
    ck_assert_int_eq(dc_train_options_apply_json(&b, broken, "mem"), -1);
    ck_assert_ptr_nonnull(strstr(dc_error(), "model"));
    cJSON_Delete(broken);
    cJSON_Delete(jm);
    cJSON_Delete(inline_text);

    /* printed: one line per key */
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    ck_assert_int_eq(dc_train_options_print(&a, f), 0);
    fclose(f);
    int lines = 0;
    for (const char *c = text; *c; c++)
        lines += *c == '\n';
    ck_assert_int_eq(lines, cJSON_GetArraySize(ja));
    ck_assert_ptr_nonnull(strstr(text, "  learning_rate "));
    free(text);
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    dc_train_options_free(&a);
    dc_train_options_free(&b);
    remove_tmpdir();
}
END_TEST

/* ---- checkpoints ---- */

/* libgomp's thread pool does not survive fork(): a test that forks
 * checkpoint writers (which run OpenMP loops) keeps OpenMP on one thread. */
static void before_fork_tests(void) { omp_set_num_threads(1); }

/* A small model: a conv weight (stored transposed in files), a bias and a
 * linear weight of `wide` columns, with random values. */
static void make_params(dc_params *ps, int64_t wide) {
    dc_params_init(ps);
    dc_params_add(ps, "conv_in", "weight", DC_SHAPE(8, 3, 3, 4), DC_LAYOUT_CONV, DC_INIT_NORMAL, 1);
    dc_params_add(ps, "conv_in", "bias", DC_SHAPE(8), DC_LAYOUT_PLAIN, DC_INIT_UNIFORM, 1);
    dc_params_add(ps, "time_embedding.linear_1", "weight", DC_SHAPE(16, wide), DC_LAYOUT_PLAIN,
                  DC_INIT_NORMAL, 1);
    ck_assert_msg(dc_params_alloc(ps, tu_next()) == 0, "%s", dc_error());
}

static void fill(float *p, size_t n, float base) {
    for (size_t i = 0; i < n; i++)
        p[i] = base + (float)tu_normal();
}

/* Everything a checkpoint holds, made up. */
typedef struct {
    dc_params ps;
    float *ema, *m;
    int64_t step_value;
    cJSON *unet, *sched, *ema_state;
    dc_st_tensor state[2];
    const char *meta_keys[1], *meta_values[1];
    dc_pipeline pipe;
    dc_train_state ts;
} ckpt_fixture;

static void fixture_init(ckpt_fixture *f, int64_t wide) {
    memset(f, 0, sizeof *f);
    make_params(&f->ps, wide);
    f->ema = malloc(f->ps.total * sizeof(float));
    f->m = malloc(f->ps.total * sizeof(float));
    fill(f->ema, f->ps.total, 0);
    fill(f->m, f->ps.total, 0);
    f->step_value = (int64_t)(tu_next() >> 4);
    f->unet = cJSON_Parse("{\"sample_size\": 8, \"block_out_channels\": [8, 16], \"dropout\": 0.0}");
    f->sched = cJSON_Parse("{\"num_train_timesteps\": 1000, \"beta_schedule\": \"linear\"}");
    f->ema_state = cJSON_Parse("{\"decay\": 0.9999, \"optimization_step\": 42, \"use_ema_warmup\": true}");
    f->state[0] = (dc_st_tensor){.name = "optimizer.m",
                                 .dtype = DC_F32,
                                 .ndim = 1,
                                 .shape = {(int64_t)f->ps.total},
                                 .data = f->m,
                                 .nbytes = f->ps.total * sizeof(float)};
    f->state[1] =
        (dc_st_tensor){.name = "step", .dtype_name = "I64", .ndim = 0, .data = &f->step_value, .nbytes = 8};
    f->meta_keys[0] = "train_config";
    f->meta_values[0] = "{\"learning_rate\": 0.0001}";
    f->pipe = (dc_pipeline){f->unet, f->sched, &f->ps, NULL, f->ema, f->ema_state, NULL, NULL};
    f->ts = (dc_train_state){f->state, 2, f->meta_keys, f->meta_values, 1};
}

static void fixture_free(ckpt_fixture *f) {
    dc_params_free(&f->ps);
    free(f->ema);
    free(f->m);
    cJSON_Delete(f->unet);
    cJSON_Delete(f->sched);
    cJSON_Delete(f->ema_state);
}

/* The checkpoint at `dir` holds exactly f's weights, EMA and state. */
static void assert_checkpoint_holds(const char *dir, const ckpt_fixture *f) {
    dc_params ps;
    make_params(&ps, f->ps.p[2]->value.shape[1]); /* other random values */
    float *ema = malloc(ps.total * sizeof(float));
    dc_st_file st;
    ck_assert_msg(dc_checkpoint_load(dir, &ps, NULL, ema, &st) == 0, "%s", dc_error());
    for (int i = 0; i < ps.n; i++) { /* the padding between tensors is not saved */
        const dc_param *p = ps.p[i];
        size_t bytes = (size_t)p->value.numel * sizeof(float);
        ck_assert_msg(!memcmp(ps.data + p->offset, f->ps.data + p->offset, bytes), "%s: %s differs", dir,
                      p->name);
        ck_assert_msg(!memcmp(ema + p->offset, f->ema + p->offset, bytes), "%s: EMA %s differs", dir,
                      p->name);
    }
    const dc_st_tensor *m = dc_st_find(&st, "optimizer.m"), *step = dc_st_find(&st, "step");
    ck_assert(m && m->nbytes == ps.total * sizeof(float) && !memcmp(m->data, f->m, m->nbytes));
    ck_assert(step && !strcmp(step->dtype_name, "I64") && !memcmp(step->data, &f->step_value, 8));
    ck_assert_str_eq(dc_st_meta(&st, "train_config"), f->meta_values[0]);
    dc_st_close(&st);
    free(ema);
    dc_params_free(&ps);
}

typedef struct {
    char paths[16][512];
    int n, kill_at;
} hook_log;

/* Records each path; with kill_at, dies of SIGKILL after that many. */
static void log_hook(const char *path, void *arg) {
    hook_log *h = arg;
    if (h->n < 16)
        snprintf(h->paths[h->n], sizeof h->paths[0], "%s", path);
    if (++h->n == h->kill_at)
        raise(SIGKILL);
}

static cJSON *load_json(const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    cJSON *j = dc_json_load(path);
    ck_assert_msg(j != NULL, "%s", dc_error());
    return j;
}

START_TEST(test_checkpoint_round_trip) {
    make_tmpdir();
    ckpt_fixture f;
    fixture_init(&f, 5 + (int64_t)(tu_next() % 50));
    hook_log log = {0};
    ck_assert_msg(dc_checkpoint_save(tmpdir, 100, &f.pipe, &f.ts, log_hook, &log) == 0, "%s", dc_error());
    const char *dir = tmp_path("checkpoint-100");
    assert_checkpoint_holds(dir, &f);
    ck_assert(!exists(tmp_path(".checkpoint-100.tmp")));

    /* the hook saw every file, the rename, then DONE last */
    ck_assert_int_eq(log.n, 9);
    ck_assert_ptr_nonnull(strstr(log.paths[0], ".checkpoint-100.tmp/model_index.json"));
    ck_assert_str_eq(log.paths[7], dir);
    ck_assert_str_eq(log.paths[8], tmp_path("checkpoint-100/DONE"));

    /* what diffusers reads */
    cJSON *index = load_json(dir, "model_index.json");
    cJSON *want = cJSON_Parse("{\"_class_name\": \"DDPMPipeline\", \"_diffusers_version\": \"0.27.2\", "
                              "\"scheduler\": [\"diffusers\", \"DDPMScheduler\"], \"unet\": [\"diffusers\", "
                              "\"UNet2DModel\"]}");
    ck_assert(cJSON_Compare(index, want, 1));
    cJSON *unet = load_json(dir, "unet/config.json"), *ema = load_json(dir, "unet_ema/config.json"),
          *sched = load_json(dir, "scheduler/scheduler_config.json");
    ck_assert_str_eq(unet->child->string, "_class_name");
    ck_assert_str_eq(cJSON_GetObjectItem(unet, "_class_name")->valuestring, "UNet2DModel");
    ck_assert_str_eq(cJSON_GetObjectItem(unet, "_diffusers_version")->valuestring, DC_DIFFUSERS_VERSION);
    ck_assert(cJSON_Compare(cJSON_GetObjectItem(unet, "block_out_channels"),
                            cJSON_GetObjectItem(f.unet, "block_out_channels"), 1));
    ck_assert_ptr_null(cJSON_GetObjectItem(unet, "optimization_step"));
    ck_assert_int_eq(cJSON_GetObjectItem(ema, "optimization_step")->valueint, 42);
    ck_assert_int_eq(cJSON_GetObjectItem(ema, "sample_size")->valueint, 8);
    ck_assert_str_eq(cJSON_GetObjectItem(sched, "_class_name")->valuestring, "DDPMScheduler");
    ck_assert_int_eq(cJSON_GetObjectItem(sched, "num_train_timesteps")->valueint, 1000);

    /* weights in PyTorch's layout, named as diffusers names them */
    dc_st_file w;
    ck_assert_int_eq(dc_st_open(&w, tmp_path("checkpoint-100/unet/diffusion_pytorch_model.safetensors")), 0);
    const dc_st_tensor *conv = dc_st_find(&w, "conv_in.weight");
    ck_assert(conv && conv->ndim == 4 && conv->shape[0] == 8 && conv->shape[1] == 4 && conv->shape[2] == 3);
    ck_assert_str_eq(dc_st_meta(&w, "format"), "pt");
    dc_st_close(&w);

    char *path;
    int64_t step;
    ck_assert_int_eq(dc_checkpoint_latest(tmpdir, &path, &step), 1);
    ck_assert_str_eq(path, dir);
    ck_assert_int_eq(step, 100);
    free(path);

    /* the same step saved again is replaced whole */
    fill(f.ps.data, f.ps.total, 3);
    ck_assert_int_eq(dc_checkpoint_save(tmpdir, 100, &f.pipe, &f.ts, NULL, NULL), 0);
    assert_checkpoint_holds(dir, &f);
    ck_assert(!exists(tmp_path(".checkpoint-100.old")));

    /* a pipeline folder without training state: the output folder itself */
    f.pipe.ema = NULL;
    ck_assert_msg(dc_pipeline_save(tmp_path("final"), &f.pipe) == 0, "%s", dc_error());
    ck_assert(exists(tmp_path("final/unet/diffusion_pytorch_model.safetensors")));
    ck_assert(!exists(tmp_path("final/unet_ema")) && !exists(tmp_path("final/DONE")));
    char *cfg, *weights;
    ck_assert_msg(dc_unet_find(tmp_path("final"), "unet", NULL, &cfg, &weights, NULL) == 0, "%s", dc_error());
    ck_assert_str_eq(weights, tmp_path("final/unet/diffusion_pytorch_model.safetensors"));
    ck_assert_str_eq(cfg, tmp_path("final/unet/config.json"));
    free(cfg);
    free(weights);
    ck_assert_int_eq(dc_checkpoint_load(tmp_path("final"), &f.ps, NULL, f.ema, NULL), -1);
    assert_error("has no EMA weights");

    cJSON_Delete(index);
    cJSON_Delete(want);
    cJSON_Delete(unet);
    cJSON_Delete(ema);
    cJSON_Delete(sched);
    fixture_free(&f);
    remove_tmpdir();
}
END_TEST

START_TEST(test_latest_resolve_prune) {
    make_tmpdir();
    char *path;
    int64_t step;
    ck_assert_int_eq(dc_checkpoint_latest(tmp_path("none"), &path, &step), 0);
    ck_assert_int_eq(dc_checkpoint_resolve(tmpdir, "latest", &path), 0); /* nothing yet: a new run */
    ck_assert_ptr_null(path);

    ckpt_fixture f;
    fixture_init(&f, 3);
    int64_t steps[5] = {5, 40, 300, 1000, 20000};
    for (int i = 0; i < 5; i++)
        ck_assert_msg(dc_checkpoint_save(tmpdir, steps[i], &f.pipe, &f.ts, NULL, NULL) == 0, "%s",
                      dc_error());
    /* leftovers of killed writers, and things that are not ours */
    ck_assert_int_eq(dc_mkdirs(tmp_path("checkpoint-30000/unet")), 0); /* no DONE */
    ck_assert_int_eq(dc_mkdirs(tmp_path(".checkpoint-25000.tmp/unet")), 0);
    ck_assert_int_eq(dc_mkdirs(tmp_path(".checkpoint-5.old")), 0);
    ck_assert_int_eq(dc_mkdirs(tmp_path("checkpoint-final")), 0);
    ck_assert_int_eq(dc_mkdirs(tmp_path("checkpoint-")), 0);
    spill(tmp_path("checkpoint-40000"), "a file");

    ck_assert_int_eq(dc_checkpoint_latest(tmpdir, &path, &step), 1);
    ck_assert_int_eq(step, 20000);
    free(path);
    ck_assert_int_eq(dc_checkpoint_resolve(tmpdir, "latest", &path), 0);
    ck_assert_str_eq(path, tmp_path("checkpoint-20000"));
    free(path);
    ck_assert_int_eq(dc_checkpoint_resolve(tmpdir, "checkpoint-40", &path),
                     0); /* a name in the output folder */
    ck_assert_str_eq(path, tmp_path("checkpoint-40"));
    free(path);
    ck_assert_int_eq(dc_checkpoint_resolve("elsewhere", tmp_path("checkpoint-300"), &path), 0); /* a path */
    free(path);
    ck_assert_int_eq(dc_checkpoint_resolve(tmpdir, "checkpoint-30000", &path), -1);
    assert_error("an incomplete checkpoint (no DONE file");
    ck_assert_int_eq(dc_checkpoint_resolve(tmpdir, "checkpoint-7", &path), -1);
    assert_error("checkpoint-7: no such checkpoint folder");

    ck_assert_msg(dc_checkpoint_prune(tmpdir, 0) == 0, "%s", dc_error()); /* leftovers only */
    for (int i = 0; i < 5; i++) {
        char name[64];
        snprintf(name, sizeof name, "checkpoint-%lld", (long long)steps[i]);
        ck_assert(exists(tmp_path(name)));
    }
    ck_assert(!exists(tmp_path("checkpoint-30000")) && !exists(tmp_path(".checkpoint-25000.tmp")) &&
              !exists(tmp_path(".checkpoint-5.old")));
    ck_assert(exists(tmp_path("checkpoint-final")) && exists(tmp_path("checkpoint-")) &&
              exists(tmp_path("checkpoint-40000")));

    ck_assert_int_eq(dc_checkpoint_prune(tmpdir, 2), 0); /* the newest two, by step not by name */
    ck_assert(!exists(tmp_path("checkpoint-5")) && !exists(tmp_path("checkpoint-40")) &&
              !exists(tmp_path("checkpoint-300")));
    ck_assert(exists(tmp_path("checkpoint-1000")) && exists(tmp_path("checkpoint-20000")));
    assert_checkpoint_holds(tmp_path("checkpoint-1000"), &f);
    fixture_free(&f);
    remove_tmpdir();
}
END_TEST

/* A write that fails half-way (a file size limit, as a full disk would)
 * leaves no trace, and the earlier checkpoint as it was. */
START_TEST(test_checkpoint_full_disk) {
    make_tmpdir();
    ckpt_fixture f;
    fixture_init(&f, 4096); /* 256 KiB of weights */
    ck_assert_int_eq(dc_checkpoint_save(tmpdir, 1, &f.pipe, &f.ts, NULL, NULL), 0);
    float *before = malloc(f.ps.total * sizeof(float));
    memcpy(before, f.ps.data, f.ps.total * sizeof(float));
    fill(f.ps.data, f.ps.total, 1);

    struct rlimit old, lim;
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &old);
    lim = (struct rlimit){64 << 10, old.rlim_max};
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int rc = dc_checkpoint_save(tmpdir, 2, &f.pipe, &f.ts, NULL, NULL);
    setrlimit(RLIMIT_FSIZE, &old);
    ck_assert_int_eq(rc, -1);
    assert_error("checkpoint-2 not written (earlier checkpoints are intact): ");
    assert_error("diffusion_pytorch_model.safetensors: cannot write: File too large");
    ck_assert(!exists(tmp_path(".checkpoint-2.tmp")) && !exists(tmp_path("checkpoint-2")));

    char *path;
    int64_t step;
    ck_assert_int_eq(dc_checkpoint_latest(tmpdir, &path, &step), 1);
    ck_assert_int_eq(step, 1);
    memcpy(f.ps.data, before, f.ps.total * sizeof(float));
    assert_checkpoint_holds(path, &f);
    free(path);
    free(before);
    fixture_free(&f);
    remove_tmpdir();
}
END_TEST

/* An output folder that cannot be written: a path through a file, and (as
 * an unprivileged user, so root drops to nobody in a child) a read-only
 * folder. */
START_TEST(test_unwritable_output) {
    before_fork_tests();
    make_tmpdir();
    ckpt_fixture f;
    fixture_init(&f, 3);
    spill(tmp_path("file"), "x");
    ck_assert_int_eq(dc_dir_check_writable(tmp_path("file/out")), -1);
    assert_error("file: exists and is not a folder");
    ck_assert_int_eq(dc_checkpoint_save(tmp_path("file"), 1, &f.pipe, &f.ts, NULL, NULL), -1);
    assert_error("checkpoint-1 not written");
    assert_error("Not a directory");

    pid_t pid = fork();
    if (pid == 0) {
        if (geteuid() == 0 && setuid(65534) != 0)
            _exit(10);
        char dir[] = "/tmp/dc_tio_ro_XXXXXX";
        if (!mkdtemp(dir) || chmod(dir, 0555) != 0)
            _exit(11);
        int ok =
            dc_dir_check_writable(dir) == -1 && strstr(dc_error(), "cannot write in this folder: Permission");
        ok = ok && dc_checkpoint_save(dir, 1, &f.pipe, &f.ts, NULL, NULL) == -1 &&
             strstr(dc_error(), "Permission");
        chmod(dir, 0755);
        dc_remove_tree(dir);
        _exit(ok ? 0 : 12);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "read-only folder: status %d", status);
    fixture_free(&f);
    remove_tmpdir();
}
END_TEST

/* kill -9 after each step of a checkpoint write in turn: the previous
 * checkpoint stays complete and is what `latest` picks, the partial one has
 * no DONE, and the next save cleans up. Made deterministic by the hook. */
START_TEST(test_kill9_at_every_step) {
    before_fork_tests();
    make_tmpdir();
    ckpt_fixture f;
    fixture_init(&f, 64);
    ck_assert_int_eq(dc_checkpoint_save(tmpdir, 1, &f.pipe, &f.ts, NULL, NULL), 0);
    float *first = malloc(f.ps.total * sizeof(float));
    memcpy(first, f.ps.data, f.ps.total * sizeof(float));
    const int steps = 9; /* 7 files, the rename, DONE */
    for (int k = 1; k <= steps; k++) {
        fill(f.ps.data, f.ps.total, (float)k);
        pid_t pid = fork();
        if (pid == 0) {
            hook_log log = {.kill_at = k};
            dc_checkpoint_save(tmpdir, 2, &f.pipe, &f.ts, log_hook, &log);
            _exit(0);
        }
        int status;
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "k=%d: status %d", k, status);

        char *path;
        int64_t step;
        ck_assert_int_eq(dc_checkpoint_latest(tmpdir, &path, &step), 1);
        ck_assert_int_eq(step, k == steps ? 2 : 1); /* killed after DONE: complete */
        free(path);
        ck_assert(k == steps || !exists(tmp_path("checkpoint-2/DONE")));
        ck_assert_int_eq(exists(tmp_path("checkpoint-2")), k >= steps - 1);
        ck_assert_int_eq(exists(tmp_path(".checkpoint-2.tmp")), k < steps - 1);
        if (k == steps)
            assert_checkpoint_holds(tmp_path("checkpoint-2"), &f);
        else
            ck_assert_int_eq(dc_checkpoint_resolve(tmpdir, "checkpoint-2", &path), -1);
        float *now = malloc(f.ps.total * sizeof(float));
        memcpy(now, f.ps.data, f.ps.total * sizeof(float));
        memcpy(f.ps.data, first, f.ps.total * sizeof(float));
        assert_checkpoint_holds(tmp_path("checkpoint-1"), &f);
        memcpy(f.ps.data, now, f.ps.total * sizeof(float));
        free(now);

        /* the next save and prune clean up whatever was left */
        ck_assert_msg(dc_checkpoint_save(tmpdir, 3, &f.pipe, &f.ts, NULL, NULL) == 0, "%s", dc_error());
        ck_assert_int_eq(dc_checkpoint_prune(tmpdir, 0), 0);
        ck_assert(!exists(tmp_path(".checkpoint-2.tmp")));
        ck_assert_int_eq(exists(tmp_path("checkpoint-2")), k == steps);
        ck_assert_int_eq(dc_remove_tree(tmp_path("checkpoint-2")), 0);
        ck_assert_int_eq(dc_remove_tree(tmp_path("checkpoint-3")), 0);
    }
    free(first);
    fixture_free(&f);
    remove_tmpdir();
}
END_TEST

/* kill -9 from outside at random moments while a child writes checkpoints
 * of growing steps whose weights are all equal to the step: every
 * checkpoint with DONE must be whole. */
START_TEST(test_kill9_at_random_times) {
    before_fork_tests();
    make_tmpdir();
    ckpt_fixture f;
    fixture_init(&f, 1 << 14); /* 1 MiB of weights, 2 MiB of state */
    /* four kills that find a checkpoint; a loaded machine may not finish the
     * first one in time, so the wait grows with every kill that finds none */
    int checked = 0, misses = 0;
    for (int round = 0; checked < 4 && round < 40; round++) {
        pid_t pid = fork();
        if (pid == 0) {
            for (int64_t s = 1 + 1000 * round;; s++) {
                for (size_t i = 0; i < f.ps.total; i++)
                    f.ps.data[i] = f.ema[i] = f.m[i] = (float)s;
                f.step_value = s;
                if (dc_checkpoint_save(tmpdir, s, &f.pipe, &f.ts, NULL, NULL) ||
                    dc_checkpoint_prune(tmpdir, 3))
                    _exit(1);
            }
        }
        double ns = tu_uniform(5e6, 150e6 * (1 + misses));
        struct timespec t = {(time_t)(ns / 1e9), (long)fmod(ns, 1e9)};
        nanosleep(&t, NULL);
        kill(pid, SIGKILL);
        int status;
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFSIGNALED(status), "the writer failed on its own: status %d", status);

        char *path;
        int64_t step;
        int found = dc_checkpoint_latest(tmpdir, &path, &step);
        ck_assert_int_ge(found, 0);
        if (!found) {
            misses++; /* killed before the first one was done */
            continue;
        }
        for (size_t i = 0; i < f.ps.total; i++)
            f.ps.data[i] = f.ema[i] = f.m[i] = (float)step;
        f.step_value = step;
        assert_checkpoint_holds(path, &f);
        free(path);
        checked++;
        fprintf(stderr, "kill -9 at a random time: checkpoint-%lld is the latest, and whole\n",
                (long long)step);
    }
    ck_assert_int_eq(checked, 4);
    fixture_free(&f);
    remove_tmpdir();
}
END_TEST

/* ---- TensorBoard ---- */

START_TEST(test_crc32c_vectors) {
    ck_assert_uint_eq(dc_crc32c(0, "123456789", 9), 0xE3069283u);
    ck_assert_uint_eq(dc_crc32c(0, "", 0), 0);
    uint8_t buf[32];
    memset(buf, 0, sizeof buf); /* RFC 3720 B.4 */
    ck_assert_uint_eq(dc_crc32c(0, buf, 32), 0x8A9136AAu);
    memset(buf, 0xff, sizeof buf);
    ck_assert_uint_eq(dc_crc32c(0, buf, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)i;
    ck_assert_uint_eq(dc_crc32c(0, buf, 32), 0x46DD794Eu);
    size_t cut = tu_next() % 33; /* continued in two pieces */
    ck_assert_uint_eq(dc_crc32c(dc_crc32c(0, buf, cut), buf + cut, 32 - cut), 0x46DD794Eu);
}
END_TEST

/* A minimal protobuf reader for checking what the writer wrote. */
typedef struct {
    int field, wire;
    uint64_t v;       /* varint, fixed32, fixed64 */
    const uint8_t *p; /* length-delimited */
    size_t n;
} pb_field;

static uint64_t read_varint(const uint8_t *m, size_t n, size_t *at) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        ck_assert_msg(*at < n, "varint runs past the message");
        uint8_t b = m[(*at)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return v;
    }
    ck_abort_msg("varint too long");
    return 0;
}

static uint64_t read_le(const uint8_t *p, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Every field of a message, checked to end exactly at its end. */
static int pb_fields(const uint8_t *m, size_t n, pb_field *out, int max) {
    size_t at = 0;
    int k = 0;
    while (at < n) {
        ck_assert_int_lt(k, max);
        uint64_t key = read_varint(m, n, &at);
        pb_field *f = &out[k++];
        *f = (pb_field){.field = (int)(key >> 3), .wire = (int)(key & 7)};
        if (f->wire == 0) {
            f->v = read_varint(m, n, &at);
        } else if (f->wire == 1 || f->wire == 5) {
            int bytes = f->wire == 1 ? 8 : 4;
            ck_assert_uint_le(at + (size_t)bytes, n);
            f->v = read_le(m + at, bytes);
            at += (size_t)bytes;
        } else {
            ck_assert_int_eq(f->wire, 2);
            f->n = (size_t)read_varint(m, n, &at);
            ck_assert_uint_le(f->n, n - at);
            f->p = m + at;
            at += f->n;
        }
    }
    return k;
}

/* The one field numbered `field` (it must occur exactly once). */
static pb_field pb_get(const uint8_t *m, size_t n, int field) {
    pb_field fs[16], got = {0};
    int k = pb_fields(m, n, fs, 16), count = 0;
    for (int i = 0; i < k; i++)
        if (fs[i].field == field)
            got = fs[i], count++;
    ck_assert_msg(count == 1, "field %d occurs %d times", field, count);
    return got;
}

static bool pb_has(const uint8_t *m, size_t n, int field) {
    pb_field fs[16];
    int k = pb_fields(m, n, fs, 16);
    for (int i = 0; i < k; i++)
        if (fs[i].field == field)
            return true;
    return false;
}

static uint32_t masked(const void *p, size_t n) {
    uint32_t c = dc_crc32c(0, p, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

/* The records of an event file, their framing and CRCs checked. */
typedef struct {
    const uint8_t *p;
    size_t n;
} record;

/* -1 on a bad length or CRC, else the number of records. */
static int parse_records(const uint8_t *file, size_t size, record *out, int max) {
    size_t at = 0;
    int k = 0;
    while (at < size) {
        if (k == max || size - at < 16)
            return -1;
        uint64_t len = read_le(file + at, 8);
        if (read_le(file + at + 8, 4) != masked(file + at, 8) || len > size - at - 16)
            return -1;
        out[k] = (record){file + at + 12, (size_t)len};
        if (read_le(file + at + 12 + len, 4) != masked(out[k].p, out[k].n))
            return -1;
        at += 16 + len;
        k++;
    }
    return k;
}

static int read_records(const uint8_t *file, size_t size, record *out, int max) {
    int k = parse_records(file, size, out, max);
    ck_assert_msg(k >= 0, "the event file's framing or CRCs are wrong");
    return k;
}

static double field_double(pb_field f) {
    double d;
    ck_assert_int_eq(f.wire, 1);
    memcpy(&d, &f.v, 8);
    return d;
}

static float field_float(pb_field f) {
    float x;
    uint32_t bits = (uint32_t)f.v;
    ck_assert_int_eq(f.wire, 5);
    memcpy(&x, &bits, 4);
    return x;
}

/* Event -> summary -> value (the only one). */
static pb_field event_value(record r, int64_t step, double t0) {
    ck_assert(fabs(field_double(pb_get(r.p, r.n, 1)) - t0) < 60);
    ck_assert_uint_eq(pb_get(r.p, r.n, 2).v, (uint64_t)step);
    pb_field summary = pb_get(r.p, r.n, 5);
    return pb_get(summary.p, summary.n, 1);
}

static void assert_tag(pb_field value, const char *tag) {
    pb_field t = pb_get(value.p, value.n, 1);
    ck_assert(t.n == strlen(tag) && !memcmp(t.p, tag, t.n));
}

/* The name of the only entry in `dir`. */
static char *only_file(const char *dir) {
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    char *name = NULL;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        ck_assert_msg(!name, "more than one file in %s", dir);
        name = strdup(e->d_name);
    }
    closedir(d);
    ck_assert_ptr_nonnull(name);
    return name;
}

START_TEST(test_tensorboard_records) {
    make_tmpdir();
    double t0 = (double)time(NULL);
    dc_tb_writer *w;
    ck_assert_msg(dc_tb_open(&w, tmp_path("logs/run"), 0) == 0, "%s", dc_error());
    enum { N = 5 };
    int64_t steps[N];
    double values[N];
    char tags[N][32];
    for (int i = 0; i < N; i++) {
        steps[i] = (int64_t)(tu_next() % 100000) * (i + 1);
        values[i] = tu_normal() * 10;
        snprintf(tags[i], sizeof tags[i], "%s/%d", i % 2 ? "loss" : "lr", i);
        ck_assert_msg(dc_tb_scalar(w, tags[i], steps[i], values[i]) == 0, "%s", dc_error());
    }
    dc_image rgb = tu_random_image(1 + (int)(tu_next() % 40), 1 + (int)(tu_next() % 30), 3);
    dc_image gray = tu_random_image(7, 5, 1);
    ck_assert_int_eq(dc_tb_image(w, "samples", 700, &rgb), 0);
    ck_assert_int_eq(dc_tb_image(w, "samples/gray", 701, &gray), 0);
    char *path = strdup(dc_tb_path(w));
    ck_assert_int_eq(dc_tb_close(w), 0);

    char *name = only_file(tmp_path("logs/run"));
    char host[256], want[400];
    gethostname(host, sizeof host);
    snprintf(want, sizeof want, ".%s.%ld", host, (long)getpid());
    ck_assert_msg(!strncmp(name, "events.out.tfevents.", 20) && strstr(name, want), "file name %s", name);
    ck_assert(strstr(path, name));

    size_t size;
    uint8_t *file = (uint8_t *)dc_read_file(path, 1 << 24, &size);
    record r[16];
    ck_assert_int_eq(read_records(file, size, r, 16), 1 + N + 2);
    /* the version record */
    ck_assert(fabs(field_double(pb_get(r[0].p, r[0].n, 1)) - t0) < 60);
    pb_field ver = pb_get(r[0].p, r[0].n, 3);
    ck_assert(ver.n == 13 && !memcmp(ver.p, "brain.Event:2", 13));
    for (int i = 0; i < N; i++) {
        pb_field v = event_value(r[1 + i], steps[i], t0);
        assert_tag(v, tags[i]);
        ck_assert(field_float(pb_get(v.p, v.n, 2)) == (float)values[i]);
    }
    const dc_image *imgs[2] = {&rgb, &gray};
    for (int i = 0; i < 2; i++) {
        pb_field v = event_value(r[1 + N + i], 700 + i, t0);
        assert_tag(v, i ? "samples/gray" : "samples");
        pb_field im = pb_get(v.p, v.n, 4);
        ck_assert_uint_eq(pb_get(im.p, im.n, 1).v, (uint64_t)imgs[i]->h);
        ck_assert_uint_eq(pb_get(im.p, im.n, 2).v, (uint64_t)imgs[i]->w);
        ck_assert_uint_eq(pb_get(im.p, im.n, 3).v, (uint64_t)imgs[i]->c);
        pb_field png = pb_get(im.p, im.n, 4);
        dc_image back;
        ck_assert_int_eq(dc_image_decode(&back, png.p, png.n, "event image"), 0);
        ck_assert(back.w == imgs[i]->w && back.h == imgs[i]->h && back.c == imgs[i]->c);
        ck_assert(!memcmp(back.px, imgs[i]->px, (size_t)back.w * back.h * back.c));
        dc_image_free(&back);
    }
    /* a flipped byte anywhere is caught by the CRCs (the test's reader can fail) */
    size_t at = tu_next() % size;
    file[at] ^= 0x10;
    ck_assert_msg(parse_records(file, size, r, 16) == -1, "a flipped byte at %zu went unnoticed", at);

    free(file);
    free(name);
    free(path);
    dc_image_free(&rgb);
    dc_image_free(&gray);
    remove_tmpdir();
}
END_TEST

START_TEST(test_tensorboard_resume_and_errors) {
    make_tmpdir();
    dc_tb_writer *w;
    ck_assert_int_eq(dc_tb_open(&w, tmpdir, 500), 0);
    ck_assert_int_eq(dc_tb_scalar(w, "loss", 501, 0.5), 0);
    char *path = strdup(dc_tb_path(w));
    ck_assert_int_eq(dc_tb_close(w), 0);
    size_t size;
    uint8_t *file = (uint8_t *)dc_read_file(path, 1 << 20, &size);
    record r[4];
    ck_assert_int_eq(read_records(file, size, r, 4), 3);
    ck_assert_uint_eq(pb_get(r[1].p, r[1].n, 2).v, 501); /* SessionLog START at the first new step */
    pb_field log = pb_get(r[1].p, r[1].n, 7);
    ck_assert_uint_eq(pb_get(log.p, log.n, 1).v, 1);
    ck_assert(!pb_has(r[1].p, r[1].n, 5));
    free(file);
    free(path);

    spill(tmp_path("file"), "x");
    ck_assert_int_eq(dc_tb_open(&w, tmp_path("file/logs"), 0), -1);
    ck_assert_ptr_null(w);
    assert_error("file: exists and is not a folder");
    ck_assert_int_eq(dc_tb_close(NULL), 0);
    remove_tmpdir();
}
END_TEST

/* ---- metrics ---- */

static char **read_lines(const char *path, int *n) {
    char *text = slurp(path), **lines = calloc(1024, sizeof *lines);
    *n = 0;
    for (char *s = strtok(text, "\n"); s; s = strtok(NULL, "\n"))
        lines[(*n)++] = strdup(s);
    free(text);
    return lines;
}

static void free_lines(char **lines, int n) {
    for (int i = 0; i < n; i++)
        free(lines[i]);
    free(lines);
}

static dc_metrics_row random_row(int64_t step) {
    dc_metrics_row r = {.step = step,
                        .loss = tu_uniform(0, 1),
                        .lr = tu_uniform(0, 1e-3),
                        .grad_norm = tu_uniform(0, 5),
                        .images_per_s = tu_uniform(1, 1000),
                        .peak_arena_bytes = (double)(tu_next() >> 20)};
    for (int q = 0; q < 4; q++)
        r.loss_t_quartiles[q] = tu_next() % 3 ? tu_uniform(0, 1) : NAN;
    return r;
}

START_TEST(test_metrics_lines) {
    make_tmpdir();
    const char *path = tmp_path("metrics.jsonl");
    dc_metrics *m;
    ck_assert_msg(dc_metrics_open(&m, path, 0) == 0, "%s", dc_error());
    dc_metrics_row rows[3];
    cJSON *extra = cJSON_Parse("{\"epoch\": 2, \"ema_decay\": 0.99}");
    for (int i = 0; i < 3; i++) {
        rows[i] = random_row(10 * (i + 1));
        if (i == 1)
            rows[i].loss = NAN;
        ck_assert_int_eq(dc_metrics_write(m, &rows[i], i == 2 ? extra : NULL), 0);
    }
    int n;
    char **lines = read_lines(path, &n); /* flushed: readable before close */
    ck_assert_int_eq(n, 3);
    for (int i = 0; i < 3; i++) {
        cJSON *j = cJSON_Parse(lines[i]);
        ck_assert_msg(j != NULL, "line %d is not JSON: %s", i, lines[i]);
        ck_assert_str_eq(j->child->string, "step");
        ck_assert_int_eq(cJSON_GetObjectItem(j, "step")->valueint, rows[i].step);
        const cJSON *loss = cJSON_GetObjectItem(j, "loss"), *q = cJSON_GetObjectItem(j, "loss_t_quartiles");
        ck_assert(i == 1 ? cJSON_IsNull(loss) : loss->valuedouble == rows[i].loss);
        ck_assert_int_eq(cJSON_GetArraySize(q), 4);
        for (int k = 0; k < 4; k++) {
            const cJSON *v = cJSON_GetArrayItem(q, k);
            ck_assert(isnan(rows[i].loss_t_quartiles[k]) ? cJSON_IsNull(v)
                                                         : v->valuedouble == rows[i].loss_t_quartiles[k]);
        }
        ck_assert(cJSON_GetObjectItem(j, "lr")->valuedouble == rows[i].lr);
        ck_assert(cJSON_GetObjectItem(j, "grad_norm")->valuedouble == rows[i].grad_norm);
        ck_assert(cJSON_GetObjectItem(j, "images_per_s")->valuedouble == rows[i].images_per_s);
        ck_assert(cJSON_GetObjectItem(j, "peak_arena_bytes")->valuedouble == rows[i].peak_arena_bytes);
        ck_assert_int_eq(cJSON_GetObjectItem(j, "epoch") != NULL, i == 2);
        cJSON_Delete(j);
    }
    free_lines(lines, n);
    ck_assert_int_eq(dc_metrics_close(m), 0);
    ck_assert_int_eq(dc_metrics_close(NULL), 0);
    cJSON_Delete(extra);
    ck_assert_int_eq(dc_metrics_open(&m, tmp_path("no/such/metrics.jsonl"), 0), -1);
    assert_error("metrics.jsonl: cannot open for appending");
    remove_tmpdir();
}
END_TEST

START_TEST(test_metrics_resume) {
    make_tmpdir();
    const char *path = tmp_path("metrics.jsonl");
    dc_metrics *m;
    ck_assert_int_eq(dc_metrics_open(&m, path, 0), 0);
    for (int s = 1; s <= 10; s++) {
        dc_metrics_row r = random_row(s);
        ck_assert_int_eq(dc_metrics_write(m, &r, NULL), 0);
    }
    ck_assert_int_eq(dc_metrics_close(m), 0);
    FILE *fp = fopen(path, "a"); /* killed half-way through a line */
    fputs("{\"step\": 11, \"lo", fp);
    fclose(fp);

    ck_assert_int_eq(dc_metrics_open(&m, path, 6), 0); /* resumed from checkpoint-6 */
    dc_metrics_row r = random_row(7);
    ck_assert_int_eq(dc_metrics_write(m, &r, NULL), 0);
    ck_assert_int_eq(dc_metrics_close(m), 0);
    int n;
    char **lines = read_lines(path, &n);
    ck_assert_int_eq(n, 7);
    for (int i = 0; i < n; i++) {
        cJSON *j = cJSON_Parse(lines[i]);
        ck_assert_int_eq(cJSON_GetObjectItem(j, "step")->valueint, i + 1);
        cJSON_Delete(j);
    }
    free_lines(lines, n);
    ck_assert_int_eq(dc_metrics_open(&m, path, 0), 0); /* a new run starts afresh */
    ck_assert_int_eq(dc_metrics_close(m), 0);
    char *text = slurp(path);
    ck_assert_str_eq(text, "");
    free(text);
    remove_tmpdir();
}
END_TEST

START_TEST(test_durations) {
    char b[32];
    ck_assert_str_eq(dc_format_duration(b, sizeof b, 0), "0s");
    ck_assert_str_eq(dc_format_duration(b, sizeof b, 59.4), "59s");
    ck_assert_str_eq(dc_format_duration(b, sizeof b, 61), "1m01s");
    ck_assert_str_eq(dc_format_duration(b, sizeof b, 252), "4m12s");
    ck_assert_str_eq(dc_format_duration(b, sizeof b, 3600 + 180), "1h03m");
    ck_assert_str_eq(dc_format_duration(b, sizeof b, 2 * 86400 + 4 * 3600 + 59), "2d04h");
    ck_assert_str_eq(dc_format_duration(b, sizeof b, -1), "?");
    ck_assert_str_eq(dc_format_duration(b, sizeof b, NAN), "?");
    ck_assert_str_eq(dc_format_duration(b, sizeof b, INFINITY), "?");
}
END_TEST

START_TEST(test_progress_log_lines) {
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size); /* not a terminal */
    dc_progress p;
    dc_progress_init(&p, f, 100, 110, 3);
    ck_assert(!p.tty);
    for (int64_t s = 101; s <= 110; s++) {
        dc_progress_step(&p, s, 0.0412, 1e-4, 312.4);
        if (s == 104)
            dc_progress_note(&p, "saved checkpoint-%d", 104);
    }
    dc_progress_done(&p, 110, 0.0412, 32000, 3960); /* the whole run's rate, not the last step's */
    fclose(f);
    int n = 0;
    char *lines[16];
    for (char *s = strtok(text, "\n"); s && n < 16; s = strtok(NULL, "\n"))
        lines[n++] = s;
    ck_assert_int_eq(n, 6); /* steps 102, 105, 108 (every 3rd), the note, the last step, done */
    ck_assert_msg(!strncmp(lines[0], "step 102/110  loss 0.0412  lr 1.0e-04  312 img/s  ETA ", 54), "%s",
                  lines[0]);
    ck_assert_str_eq(lines[1], "saved checkpoint-104");
    ck_assert(!strncmp(lines[2], "step 105/110", 12) && !strncmp(lines[3], "step 108/110", 12));
    ck_assert_msg(!strncmp(lines[4], "step 110/110", 12) && strstr(lines[4], "ETA 0s"), "%s", lines[4]);
    ck_assert_msg(!strcmp(lines[5], "done: 10 steps in 1h06m, 8.1 img/s, final loss 0.0412"), "%s", lines[5]);
    ck_assert(!strchr(text, '\r') && !strchr(text, '\033'));
    free(text);
}
END_TEST

/* On a terminal (a pseudo-terminal 36 columns wide): one line redrawn in
 * place with \r, cut to fit. */
START_TEST(test_progress_terminal) {
    int master, slave;
    struct winsize ws = {.ws_row = 24, .ws_col = 36};
    if (openpty(&master, &slave, NULL, NULL, &ws) != 0) {
        fprintf(stderr, "no pseudo-terminal (%s): terminal test skipped\n", strerror(errno));
        return;
    }
    struct termios tio;
    tcgetattr(slave, &tio);
    cfmakeraw(&tio);
    tcsetattr(slave, TCSANOW, &tio);
    FILE *f = fdopen(slave, "w");
    dc_progress p;
    dc_progress_init(&p, f, 0, 5000, 10);
    ck_assert(p.tty);
    p.t_drawn = INFINITY;                          /* as if it had just been drawn: */
    dc_progress_step(&p, 120, 0.0412, 1e-4, 312);  /* too soon, not drawn */
    dc_progress_step(&p, 5000, 0.0412, 1e-4, 312); /* the last step always is */
    dc_progress_note(&p, "saved");
    dc_progress_done(&p, 5000, 0.04, 312 * 60, 60);
    fclose(f);
    char out[4096];
    size_t n = 0;
    struct pollfd pfd = {master, POLLIN, 0};
    while (n < sizeof out - 1 && poll(&pfd, 1, 200) > 0) {
        ssize_t k = read(master, out + n, sizeof out - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    out[n] = '\0';
    close(master);
    const char *want = "\rstep 5000/5000  loss 0.0412  lr 1.0\033[K" /* 35 columns */
                       "\r\033[Ksaved\n"
                       "\rstep 5000/5000  loss 0.0412  lr 1.0\033[K"
                       "\ndone: 5000 steps in ";
    ck_assert_msg(!strncmp(out, want, strlen(want)), "got '%s'", out);
    const char *tail = ", 312 img/s, final loss 0.04\n"; /* after the time taken */
    ck_assert_msg(strlen(out) > strlen(tail) && !strcmp(out + strlen(out) - strlen(tail), tail), "got '%s'", out);
}
END_TEST

/* ---- signals ---- */

START_TEST(test_signal_sets_flag) {
    int devnull = open("/dev/null", O_WRONLY); /* the handler's line goes to stderr */
    dup2(devnull, STDERR_FILENO);
    ck_assert_int_eq(dc_signals_install(), 0);
    ck_assert_int_eq(dc_signals_caught(), 0);
    raise(SIGTERM);
    ck_assert_int_eq(dc_signals_caught(), SIGTERM); /* and the process lives on */
    ck_assert_int_eq(dc_signals_exit_status(SIGINT), 130);
    ck_assert_int_eq(dc_signals_exit_status(SIGTERM), 143);
    dc_signals_restore();
    ck_assert_int_eq(dc_signals_install(), 0); /* install forgets the last one */
    ck_assert_int_eq(dc_signals_caught(), 0);
    raise(SIGINT);
    ck_assert_int_eq(dc_signals_caught(), SIGINT);
    dc_signals_restore();
}
END_TEST

/* Run `body` in a child with stderr silenced; its wait status. */
static int in_child(void (*body)(void)) {
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, STDERR_FILENO);
        body();
        _exit(0);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    return status;
}

static void two_signals(void) {
    dc_signals_install();
    raise(SIGTERM);
    if (dc_signals_caught() != SIGTERM)
        _exit(3);
    raise(SIGINT); /* the second, of the other kind: default action */
    _exit(4);
}

static void restored(void) {
    signal(SIGTERM, SIG_IGN);
    dc_signals_install();
    dc_signals_restore();
    raise(SIGTERM); /* ignored again */
    _exit(dc_signals_caught() == 0 ? 5 : 6);
}

START_TEST(test_second_signal_stops_at_once) {
    int status = in_child(two_signals);
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT, "status %d", status);
    status = in_child(restored);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 5, "status %d", status);
}
END_TEST

/* ---- the GPU of a rank ---- */

/* Every (GPUs visible, local rank, ranks on the node) against the rule
 * stated independently: one GPU visible (srun --gpus-per-task=1) or none:
 * GPU 0 for every rank; several but fewer than the ranks: an error naming
 * both counts; else each rank of the node its own GPU among those visible. */
START_TEST(test_local_gpu) {
    for (int count = 0; count <= 9; count++)
        for (int world = 1; world <= 9; world++) {
            bool used[9] = {false};
            for (int rank = 0; rank < world; rank++) {
                int gpu = -1;
                int rc = dc_dist_local_gpu(count, rank, world, &gpu);
                if (count > 1 && count < world) {
                    char want[64];
                    snprintf(want, sizeof want, "%d ranks on this node but %d GPUs", world, count);
                    ck_assert_msg(rc == -1 && strstr(dc_error(), want), "%d GPUs, %d ranks: %s", count, world,
                                  dc_error());
                    continue;
                }
                ck_assert_msg(rc == 0, "%d GPUs, rank %d of %d: %s", count, rank, world, dc_error());
                if (count <= 1) {
                    ck_assert_int_eq(gpu, 0);
                    continue;
                }
                ck_assert_msg(gpu >= 0 && gpu < count && !used[gpu], "%d GPUs, rank %d of %d: GPU %d", count, rank,
                              world, gpu);
                used[gpu] = true;
            }
        }
    /* a node of many ranks, each shown its own GPU: not GPU <local rank> */
    int rank = 1 + (int)(tu_next() % 255), gpu = -1;
    ck_assert_int_eq(dc_dist_local_gpu(1, rank, 256, &gpu), 0);
    ck_assert_int_eq(gpu, 0);
    ck_assert_int_eq(dc_dist_local_gpu(256, rank, 256, &gpu), 0);
    ck_assert_int_eq(gpu, rank);
}
END_TEST

/* ---- memory ---- */

/* The arithmetic of dc_step_memory_check on random sizes: a batch fits when
 * both the activation arena and the host hold it, the largest that fits is
 * named, several ranks share the host, and sizes past 2^64 do not wrap. */
START_TEST(test_step_memory) {
    size_t image = 1000 + tu_next() % 100000, scratch = tu_next() % 100000, loader = 1 + tu_next() % 5000;
    size_t held = tu_next() % 1000000;
    int64_t fit = 10 + (int64_t)(tu_next() % 1000);
    dc_step_memory m = {.batch = fit, .resolution = 32, .device = "cpu", .act_image = image,
                        .act_scratch = scratch, .act_on_host = true, .loader_image = loader,
                        .held = held, .ranks_on_host = 1};
    m.act_capacity = image * (size_t)fit + scratch + image / 2; /* fit images and a half */
    m.host_available = (size_t)1 << 60;
    ck_assert_msg(dc_step_memory_check(&m) == 0, "%s", dc_error());
    m.batch = fit + 1;
    ck_assert_int_ne(dc_step_memory_check(&m), 0);
    char want[96];
    snprintf(want, sizeof want, "use --train-batch-size %lld or less", (long long)fit);
    ck_assert_msg(strstr(dc_error(), want) && strstr(dc_error(), "of activations on cpu"), "%s", dc_error());
    snprintf(want, sizeof want, "--train-batch-size %lld at 32x32 needs about", (long long)fit + 1);
    ck_assert_msg(strstr(dc_error(), want), "%s", dc_error());
    /* the host: activations, loader and optimizer state of every local rank */
    m.act_capacity = SIZE_MAX;
    m.ranks_on_host = 2;
    m.batch = fit;
    m.host_available = 2 * ((image + loader) * (size_t)fit + scratch);
    ck_assert_msg(dc_step_memory_check(&m) == 0, "%s", dc_error());
    m.host_available--;
    ck_assert_int_ne(dc_step_memory_check(&m), 0);
    snprintf(want, sizeof want, "use --train-batch-size %lld or less", (long long)fit - 1);
    ck_assert_msg(strstr(dc_error(), want) && strstr(dc_error(), "more of host memory for the 2 ranks on this host"),
                  "%s", dc_error());
    /* a GPU's activations are not host memory */
    m.act_on_host = false;
    m.host_available = 2 * loader * (size_t)fit;
    ck_assert_msg(dc_step_memory_check(&m) == 0, "%s", dc_error());
    /* not one image; sizes that would wrap around */
    m.host_available = loader;
    ck_assert_int_ne(dc_step_memory_check(&m), 0);
    ck_assert_msg(strstr(dc_error(), "not even one image fits"), "%s", dc_error());
    m.host_available = (size_t)1 << 62;
    m.batch = (int64_t)1 << 62;
    ck_assert_int_ne(dc_step_memory_check(&m), 0);
    m.act_capacity = (size_t)1 << 62;
    m.act_image = ((size_t)1 << 63) + ((size_t)1 << 62); /* x 3 is 2^62 mod 2^64 */
    m.act_scratch = 0;
    m.batch = 3;
    ck_assert_int_ne(dc_step_memory_check(&m), 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("train_io");
    TCase *tc = tu_tcase(s, "files", 10);
    tcase_add_test(tc, test_files);
    tcase_add_test(tc, test_json_files);
    tc = tu_tcase(s, "options", 10);
    tcase_add_test(tc, test_option_defaults);
    tcase_add_test(tc, test_config_then_command_line);
    tcase_add_test(tc, test_model_config_sources);
    tcase_add_test(tc, test_unknown_keys);
    tcase_add_test(tc, test_bad_values);
    tcase_add_test(tc, test_combinations);
    tcase_add_test(tc, test_pipeline_schedule);
    tcase_add_test(tc, test_help_lists_every_option);
    tcase_add_test(tc, test_resolved_config_round_trip);
    tcase_add_test(tc, test_shipped_configs);
    tcase_add_test(tc, test_cifar10_ddpm_config);
    tc = tu_tcase(s, "checkpoints", 30);
    tcase_add_test(tc, test_checkpoint_round_trip);
    tcase_add_test(tc, test_latest_resolve_prune);
    tcase_add_test(tc, test_checkpoint_full_disk);
    tcase_add_test(tc, test_unwritable_output);
    tcase_add_test(tc, test_kill9_at_every_step);
    tcase_add_test(tc, test_kill9_at_random_times);
    tc = tu_tcase(s, "tensorboard", 10);
    tcase_add_test(tc, test_crc32c_vectors);
    tcase_add_test(tc, test_tensorboard_records);
    tcase_add_test(tc, test_tensorboard_resume_and_errors);
    tc = tu_tcase(s, "metrics", 10);
    tcase_add_test(tc, test_metrics_lines);
    tcase_add_test(tc, test_metrics_resume);
    tcase_add_test(tc, test_durations);
    tcase_add_test(tc, test_progress_log_lines);
    tcase_add_test(tc, test_progress_terminal);
    tc = tu_tcase(s, "memory", 10);
    tcase_add_test(tc, test_step_memory);
    tc = tu_tcase(s, "signals", 10);
    tcase_add_test(tc, test_signal_sets_flag);
    tcase_add_test(tc, test_second_signal_stops_at_once);
    tc = tu_tcase(s, "dist", 10);
    tcase_add_test(tc, test_local_gpu);
    return tu_run(s);
}
