/*
 * `diffc caption`: BLIP captions for images, as transformers'
 * BlipForConditionalGeneration.generate() + BlipProcessor.decode() give them.
 *
 * The model folder is what save_pretrained writes for a BLIP captioner
 * (Salesforce/blip-image-captioning-base/-large): config.json and the
 * weights (models/blip), preprocessor_config.json (data/image_processor),
 * the tokenizer files (data/text/wordpiece).
 *
 * --images takes folders and image files. A folder is read as the image
 * folders of training are (PNG/JPEG found by content, recursively; an
 * unreadable image is named and skipped), and its captions go to
 * FOLDER/metadata.jsonl, one {"file_name": "a/01.png", "text": "..."} a
 * line, the layout diffusers' and datasets' image folders read. Files print
 * "FILE<TAB>caption" on stdout. --output FILE sends everything to one
 * metadata.jsonl instead. A metadata.jsonl is appended to, each line in one
 * write: images it already names are skipped, so a run that was stopped
 * goes on where it was (a line cut short by a kill is dropped first).
 *
 * Generation: the text starts with the config's bos token ([DEC]) then the
 * prompt's tokens (the prompt encoded with [CLS] ... [SEP], [CLS] replaced
 * by bos and [SEP] dropped, as BLIP's generate() does); generation stops at
 * [SEP] (sep_token_id) and pads with pad_token_id; the caption is the decode
 * of the whole sequence without special tokens, so it starts with the prompt
 * as transformers' does. Options as GenerationConfig names them, with its
 * defaults (without --max-length: 20 tokens after bos and the prompt, as
 * generate() does when max_length is not set, within the model's positions). Sampling
 * (--do-sample, or --top-p < 1, or --temperature != 1) draws from the
 * seed's Philox streams, one per image of a batch: reproducible for a seed
 * and batch size.
 */
#define _GNU_SOURCE /* strdup */
#include "commands.h"

#include "autograd/clock.h"
#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "data/dataset.h"
#include "data/image_processor.h"
#include "data/metadata.h"
#include "data/text/wordpiece.h"
#include "infer/cli.h"
#include "models/blip.h"
#include "models/text_generate.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ACTIVATION_BYTES ((size_t)64 << 30) /* reserved lazily: only what a batch touches is used */

/* ---- options ---- */

typedef struct caption_options {
    const char *model, *output, *prompt, *device;
    const char *images; /* only for --help: take_images collects --images' values */
    int64_t num_beams, max_length, min_length, top_k, seed, batch_size;
    double repetition_penalty, length_penalty, top_p, temperature;
    bool do_sample;
} caption_options;

#define FIELD(f) offsetof(caption_options, f)

static const dc_cli_option options[] = {
    {"model", DC_CLI_STRING, FIELD(model), "DIR", NULL, "required", 0, 0, false,
     "a BLIP captioner folder (config.json, weights, preprocessor and tokenizer files)"},
    {"images", DC_CLI_STRING, FIELD(images), "DIR|FILE...", NULL, "required", 0, 0, false,
     "image folders (captions to DIR/metadata.jsonl) and image files (printed)"},
    {"output", DC_CLI_STRING, FIELD(output), "FILE", NULL, "default: see --images", 0, 0, false,
     "write every caption to this metadata.jsonl (appended; images in it are skipped)"},
    {"prompt", DC_CLI_STRING, FIELD(prompt), "TEXT", NULL, "default: none", 0, 0, false,
     "text the captions start with (\"a picture of\"); kept in the output"},
    {"max-length", DC_CLI_INT, FIELD(max_length), "N", NULL, "default: 20 more than [DEC] and the prompt", 1, 1e6,
     false, "tokens at most, [DEC] and the prompt included"},
    {"min-length", DC_CLI_INT, FIELD(min_length), "N", "0", NULL, 0, 1e6, false,
     "tokens at least before [SEP] may end the caption, [DEC] and the prompt included"},
    {"num-beams", DC_CLI_INT, FIELD(num_beams), "N", "1", NULL, 1, 256, false, "beam search with N beams (1: greedy)"},
    {"length-penalty", DC_CLI_FLOAT, FIELD(length_penalty), "X", "1", NULL, -1e6, 1e6, false,
     "beam search: scores divided by length^X"},
    {"repetition-penalty", DC_CLI_FLOAT, FIELD(repetition_penalty), "X", "1", NULL, 0, 1e6, true,
     "tokens already in the text: positive scores divided by X, negative ones multiplied"},
    {"do-sample", DC_CLI_FLAG, FIELD(do_sample), NULL, NULL, NULL, 0, 0, false,
     "sample the tokens (also on with --top-p below 1 or --temperature other than 1)"},
    {"top-p", DC_CLI_FLOAT, FIELD(top_p), "X", "1", NULL, 0, 1, true, "sampling: nucleus of probability X"},
    {"top-k", DC_CLI_INT, FIELD(top_k), "K", "50", NULL, 0, 1e9, false, "sampling: the K likeliest tokens (0: all)"},
    {"temperature", DC_CLI_FLOAT, FIELD(temperature), "X", "1", NULL, 0, 1e6, true, "sampling: scores divided by X"},
    {"seed", DC_CLI_INT, FIELD(seed), "N", "0", NULL, 0, 9007199254740992.0, false, "sampling's seed"},
    {"batch-size", DC_CLI_INT, FIELD(batch_size), "N", "8", NULL, 1, 65536, false, "images captioned together"},
    DC_CLI_DEVICE_ROW(""),
};
#define N_OPTIONS (sizeof options / sizeof options[0])

static const char usage_line[] = "usage: diffc caption --model DIR --images DIR|FILE... [options]";

static const dc_cli cli = {
    "caption", usage_line,
    "Caption images with a BLIP model folder (transformers' BlipForConditionalGeneration, e.g.\n"
    "Salesforce/blip-image-captioning-base), as its generate() and decode() do. Folders get a\n"
    "metadata.jsonl ({\"file_name\", \"text\"} lines, what diffusers and datasets read); images\n"
    "already in it are skipped, so an interrupted run resumes. Image files print FILE<TAB>caption.\n",
    options, N_OPTIONS};

/* ---- where captions go ---- */

/* A metadata.jsonl (path set) or stdout (path NULL), and the file_names it has. */
typedef struct sink {
    char *path;
    int fd;
    char **done; /* sorted */
    int64_t n_done;
} sink;

/* One image to caption. */
typedef struct job {
    int source;
    int64_t item;
    char *name; /* the file_name written, or the path printed */
    int sink;
} job;

typedef struct run {
    caption_options o;
    char **inputs; /* --images values */
    int n_inputs;
    dc_dataset_items *sources; /* [n_inputs] */
    sink *sinks;
    int n_sinks;
    job *jobs;
    int64_t n_jobs, skipped, already;
    dc_blip *model;
    dc_wordpiece *tok;
    dc_image_processor proc;
    int32_t *prefix;
    int64_t prefix_len;
    dc_text_gen_options gen;
    dc_ctx ctx;
    dc_blip_decoder *decoder; /* the last batch's, restarted for a batch as large */
    int64_t decoder_images;
    bool ctx_ready, tty;
} run;

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Drop a last line without its newline (a write cut short), so appends start
 * on a line of their own. */
static int drop_partial_line(const char *path, int fd) {
    off_t size = lseek(fd, 0, SEEK_END);
    off_t keep = size;
    char c;
    while (keep > 0 && pread(fd, &c, 1, keep - 1) == 1 && c != '\n')
        keep--;
    if (keep != size && ftruncate(fd, keep) != 0)
        return dc_fail("%s: cannot drop its cut-off last line: %s", path, strerror(errno));
    if (keep != size)
        fprintf(stderr, "diffc: note: %s: dropped a cut-off last line (a run stopped while writing it)\n", path);
    return 0;
}

/* The file_names a metadata.jsonl already has ("./" dropped, as the image
 * folder's reader drops it). Lines that are not such objects are left
 * alone: that reader names them. */
static int read_done(sink *s) {
    size_t n;
    char *text = dc_read_file(s->path, (size_t)1 << 32, &n);
    if (!text)
        return -1;
    size_t lines = 1;
    for (size_t i = 0; i < n; i++)
        lines += text[i] == '\n';
    s->done = calloc(lines, sizeof *s->done);
    int rc = s->done ? 0 : dc_fail("out of memory");
    for (char *line = text, *nl; !rc && line < text + n; line = nl + 1) {
        nl = memchr(line, '\n', (size_t)(text + n - line));
        if (!nl)
            nl = text + n;
        cJSON *o = cJSON_ParseWithLength(line, (size_t)(nl - line));
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "file_name"));
        while (name && !strncmp(name, "./", 2))
            name += 2;
        if (name && !(s->done[s->n_done++] = strdup(name)))
            rc = dc_fail("out of memory");
        cJSON_Delete(o);
    }
    free(text);
    if (!rc && s->n_done)
        qsort(s->done, (size_t)s->n_done, sizeof *s->done, cmp_str);
    return rc;
}

/* The sink writing to `path` (opened, resumed) or stdout (path NULL); its index. */
static int open_sink(run *r, const char *path) {
    for (int i = 0; i < r->n_sinks; i++)
        if ((!path && !r->sinks[i].path) || (path && r->sinks[i].path && !strcmp(path, r->sinks[i].path)))
            return i;
    sink *grown = realloc(r->sinks, (size_t)(r->n_sinks + 1) * sizeof *grown);
    if (!grown)
        return dc_fail("out of memory");
    r->sinks = grown;
    sink *s = &r->sinks[r->n_sinks];
    memset(s, 0, sizeof *s);
    s->fd = STDOUT_FILENO;
    if (path) {
        if (!(s->path = strdup(path)))
            return dc_fail("out of memory");
        r->n_sinks++;
        s->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (s->fd < 0)
            return dc_fail("%s: cannot open for writing: %s", path, strerror(errno));
        if (drop_partial_line(path, s->fd) || read_done(s))
            return -1;
        return r->n_sinks - 1;
    }
    return r->n_sinks++;
}

static bool is_done(const sink *s, const char *name) {
    return s->n_done && bsearch(&name, s->done, (size_t)s->n_done, sizeof *s->done, cmp_str);
}

/* One caption out: a metadata.jsonl line, or FILE<TAB>caption. */
static int emit(const sink *s, const char *name, const char *caption) {
    if (s->path)
        return dc_metadata_append(s->fd, s->path, name, caption);
    char *line = NULL;
    if (asprintf(&line, "%s\t%s\n", name, caption) < 0)
        return dc_fail("out of memory");
    size_t n = strlen(line);
    ssize_t w = write(s->fd, line, n);
    free(line);
    if (w != (ssize_t)n)
        return dc_fail("stdout: cannot write: %s", w < 0 ? strerror(errno) : "short write");
    return 0;
}

/* ---- the images ---- */

/* Image `item` of input `source`, unless its sink has it (room for it made). */
static int add_job(run *r, int source, int64_t item, const char *name, int sink_index) {
    if (is_done(&r->sinks[sink_index], name)) {
        r->already++;
        return 0;
    }
    job *j = &r->jobs[r->n_jobs];
    *j = (job){source, item, strdup(name), sink_index};
    if (!j->name)
        return dc_fail("out of memory");
    r->n_jobs++;
    return 0;
}

/* Input k: a folder's images (captions to its metadata.jsonl or --output),
 * or one image file (printed, or to --output). */
static int add_input(run *r, int k) {
    const char *path = r->inputs[k];
    struct stat st;
    if (stat(path, &st) != 0)
        return dc_fail("--images %s: %s", path, strerror(errno));
    bool folder = S_ISDIR(st.st_mode);
    char *meta = folder && !r->o.output ? dc_path_join(path, DC_METADATA_FILE) : NULL;
    if (folder && !r->o.output && !meta)
        return -1;
    /* the folder's reader checks metadata.jsonl: repair a cut-off line first */
    int s = open_sink(r, r->o.output ? r->o.output : meta);
    free(meta);
    if (s < 0 || dc_dataset_items_open(&r->sources[k], path, NULL))
        return -1;
    const char *kind = r->sources[k].kind;
    if (strcmp(kind, "image folder") && strcmp(kind, "image file"))
        return dc_fail("--images %s: %s data; caption reads image folders and PNG/JPEG files", path, kind);
    job *grown = realloc(r->jobs, (size_t)(r->n_jobs + r->sources[k].count) * sizeof *grown);
    if (!grown)
        return dc_fail("out of memory");
    r->jobs = grown;
    for (int64_t i = 0; i < r->sources[k].count; i++) {
        char buf[64];
        const char *name = folder ? dc_dataset_item_name(&r->sources[k], i, buf, sizeof buf) : path;
        if (add_job(r, k, i, name, s))
            return -1;
    }
    return 0;
}

/* ---- the model ---- */

static dc_text_gen_options gen_options(const run *r) {
    dc_text_gen_options g = dc_text_gen_default_options();
    const caption_options *o = &r->o;
    g.max_length = o->max_length; /* 0: generate()'s default */
    g.max_positions = r->model->cfg.text.max_position_embeddings;
    g.min_length = o->min_length;
    g.num_beams = o->num_beams;
    g.length_penalty = o->length_penalty;
    g.repetition_penalty = o->repetition_penalty;
    g.do_sample = o->do_sample || o->top_p < 1 || o->temperature != 1;
    g.top_k = o->top_k;
    g.top_p = o->top_p;
    g.temperature = o->temperature;
    g.seed = (uint64_t)o->seed;
    g.eos_token_id = r->model->cfg.text.sep_token_id;
    g.pad_token_id = r->model->cfg.text.pad_token_id;
    return g;
}

/* The prefix of every caption: bos, then the prompt's tokens; the generation options. */
static int make_prefix(run *r) {
    const dc_blip_text_config *t = &r->model->cfg.text;
    int32_t *ids = NULL;
    int64_t n = 0;
    if (r->o.prompt && dc_wordpiece_encode(r->tok, r->o.prompt, false, &ids, &n))
        return -1;
    r->prefix = malloc((size_t)(n + 1) * sizeof *r->prefix);
    if (!r->prefix) {
        free(ids);
        return dc_fail("out of memory");
    }
    r->prefix[0] = t->bos_token_id;
    for (int64_t i = 0; i < n; i++)
        r->prefix[i + 1] = ids[i];
    free(ids);
    r->prefix_len = n + 1;
    for (int64_t i = 0; i < r->prefix_len; i++)
        if (r->prefix[i] < 0 || r->prefix[i] >= t->vocab_size)
            return dc_fail("--prompt: token %d is outside the model's %d (the tokenizer does not fit the model)",
                           r->prefix[i], t->vocab_size);
    r->gen = gen_options(r);
    int64_t max_length = dc_text_gen_max_length(&r->gen, r->prefix_len);
    if (r->prefix_len >= max_length)
        return dc_fail("--prompt: %" PRId64 " tokens with [DEC]; a length of %" PRId64 " leaves none to generate",
                       r->prefix_len, max_length);
    if (max_length > t->max_position_embeddings)
        return dc_fail("--max-length %" PRId64 " is over the model's %d positions", max_length,
                       t->max_position_embeddings);
    return 0;
}

static int load_model(run *r) {
    int device;
    if (dc_cli_resolve_device(r->o.device, "no", &device) || dc_blip_load(&r->model, r->o.model, device) ||
        dc_wordpiece_load(&r->tok, r->o.model) || dc_image_processor_load_dir(&r->proc, r->o.model))
        return -1;
    const dc_blip_config *c = &r->model->cfg;
    if (r->proc.height != c->vision.image_size || r->proc.width != c->vision.image_size)
        return dc_fail("%s: preprocessor_config.json makes %dx%d images, the model takes %dx%d", r->o.model,
                       r->proc.width, r->proc.height, c->vision.image_size, c->vision.image_size);
    if (c->text.bos_token_id < 0 || c->text.sep_token_id < 0)
        return dc_fail("%s: config.json's text_config needs bos_token_id and sep_token_id", r->o.model);
    size_t bytes;
    if (dc_device_arena_bytes(device, ACTIVATION_BYTES, &bytes) || dc_ctx_init(&r->ctx, device, bytes))
        return -1;
    r->ctx_ready = true;
    dc_set_grad_enabled(&r->ctx, false);
    r->ctx.training = false;
    return make_prefix(r);
}

/* ---- captioning ---- */

/* Decode and preprocess job j into px; 1 when the image is skipped. */
static int load_pixels(run *r, const job *j, float *px) {
    dc_image img = {0};
    int rc = dc_dataset_item_image(&r->sources[j->source], j->item, &img);
    if (rc == 1) {
        fprintf(stderr, "diffc: warning: skipped: %s: %s\n", j->name, dc_error());
        r->skipped++;
    }
    if (!rc && dc_image_processor_apply(&r->proc, &img, px, j->name))
        rc = -1;
    dc_image_free(&img);
    return rc;
}

/* Captions of b images, pixels px [b, S, S, 3]: into caps[b] (malloc'ed). */
static int caption_pixels(run *r, const float *px, int64_t b, char **caps) {
    int64_t s = r->model->cfg.vision.image_size;
    dc_ctx_reset(&r->ctx);
    dc_tensor *pixels = dc_from_host(&r->ctx, DC_F32, 4, (int64_t[]){b, s, s, 3}, px);
    dc_tensor *embeds = pixels ? dc_blip_vision_forward(&r->ctx, r->model, pixels) : NULL;
    if (!embeds || dc_ctx_status(&r->ctx))
        return -1;
    const dc_text_gen_options *g = &r->gen;
    int32_t *prefix = malloc((size_t)(b * r->prefix_len) * sizeof *prefix);
    dc_text_gen_output out = {0};
    int rc = prefix ? 0 : dc_fail("out of memory");
    for (int64_t i = 0; !rc && i < b; i++)
        memcpy(prefix + i * r->prefix_len, r->prefix, (size_t)r->prefix_len * sizeof *prefix);
    if (!rc && r->decoder && r->decoder_images == b) /* a batch as large as the last one */
        rc = dc_blip_decoder_restart(r->decoder, embeds);
    else if (!rc) {
        dc_blip_decoder_free(r->decoder);
        r->decoder_images = b;
        rc = dc_blip_decoder_init(&r->decoder, r->model, embeds, dc_text_gen_rows_per_entry(g),
                                  dc_text_gen_max_length(g, r->prefix_len));
    }
    if (!rc) {
        dc_lm lm = dc_blip_decoder_lm(r->decoder);
        rc = dc_text_generate(&lm, g, b, prefix, r->prefix_len, &out);
    }
    for (int64_t i = 0; !rc && i < b; i++)
        rc = dc_wordpiece_decode(r->tok, out.ids + i * out.len, out.lengths[i], true, &caps[i]);
    dc_text_gen_output_free(&out);
    free(prefix);
    return rc;
}

static void progress(const run *r, int64_t done, double t0) {
    double s = dc_seconds() - t0;
    fprintf(stderr, r->tty ? "\rcaptioned %" PRId64 "/%" PRId64 " images, %.2f images/s   "
                           : "captioned %" PRId64 "/%" PRId64 " images, %.2f images/s\n",
            done, r->n_jobs, s > 0 ? (double)done / s : 0.0);
}

/* Jobs [first, first + n): those that decode are captioned together and written. */
static int caption_batch(run *r, int64_t first, int64_t n, float *px, int64_t *which, char **caps) {
    int64_t per = (int64_t)r->proc.height * r->proc.width * 3, b = 0;
    for (int64_t j = first; j < first + n; j++) {
        int rc = load_pixels(r, &r->jobs[j], px + b * per);
        if (rc < 0)
            return -1;
        if (rc == 0)
            which[b++] = j;
    }
    if (b == 0)
        return 0;
    memset(caps, 0, (size_t)b * sizeof *caps);
    int rc = caption_pixels(r, px, b, caps);
    for (int64_t i = 0; !rc && i < b; i++) {
        const job *j = &r->jobs[which[i]];
        rc = emit(&r->sinks[j->sink], j->name, caps[i]);
    }
    for (int64_t i = 0; i < b; i++)
        free(caps[i]);
    return rc;
}

static int caption_all(run *r) {
    int64_t bs = r->o.batch_size, per = (int64_t)r->proc.height * r->proc.width * 3;
    float *px = malloc((size_t)(bs * per) * sizeof *px);
    int64_t *which = malloc((size_t)bs * sizeof *which);
    char **caps = malloc((size_t)bs * sizeof *caps);
    int rc = px && which && caps ? 0 : dc_fail("out of memory for a batch of %" PRId64 " images", bs);
    double t0 = dc_seconds();
    for (int64_t first = 0; !rc && first < r->n_jobs; first += bs) {
        int64_t n = r->n_jobs - first < bs ? r->n_jobs - first : bs;
        rc = caption_batch(r, first, n, px, which, caps);
        if (!rc)
            progress(r, first + n, t0);
    }
    if (r->tty && r->n_jobs)
        fputc('\n', stderr);
    free(px);
    free(which);
    free(caps);
    return rc;
}

static int setup(run *r) {
    r->tty = isatty(fileno(stderr));
    if (r->o.output && strlen(r->o.output) == 0)
        return dc_fail("--output: an empty path");
    r->sources = calloc((size_t)r->n_inputs, sizeof *r->sources);
    if (!r->sources)
        return dc_fail("out of memory");
    for (int k = 0; k < r->n_inputs; k++)
        if (add_input(r, k))
            return -1;
    if (r->already)
        fprintf(stderr, "diffc: note: %" PRId64 " image%s already captioned, skipped\n", r->already,
                r->already == 1 ? "" : "s");
    return r->n_jobs ? load_model(r) : 0;
}

static int finish(const run *r) {
    int64_t written = r->n_jobs - r->skipped;
    fprintf(stderr, "%" PRId64 " image%s captioned (%" PRId64 " unreadable, skipped; %" PRId64 " done before)",
            written, written == 1 ? "" : "s", r->skipped, r->already);
    for (int i = 0; i < r->n_sinks; i++)
        if (r->sinks[i].path)
            fprintf(stderr, "%s %s", i ? "," : ":", r->sinks[i].path);
    fputc('\n', stderr);
    return 0;
}

static void run_free(run *r) {
    for (int i = 0; i < r->n_sinks; i++) {
        if (r->sinks[i].path && r->sinks[i].fd >= 0)
            close(r->sinks[i].fd);
        for (int64_t k = 0; k < r->sinks[i].n_done; k++)
            free(r->sinks[i].done[k]);
        free(r->sinks[i].done);
        free(r->sinks[i].path);
    }
    for (int64_t j = 0; j < r->n_jobs; j++)
        free(r->jobs[j].name);
    for (int k = 0; r->sources && k < r->n_inputs; k++)
        dc_dataset_items_close(&r->sources[k]);
    if (r->ctx_ready)
        dc_ctx_free(&r->ctx);
    dc_blip_decoder_free(r->decoder);
    dc_blip_free(r->model);
    dc_wordpiece_free(r->tok);
    free(r->prefix);
    free(r->sources);
    free(r->sinks);
    free(r->jobs);
    free(r->inputs);
}

/* Take --images and the words after it (until the next option) out of argv,
 * into r->inputs; the rest stays for dc_cli_parse. */
static int take_images(run *r, int *argc, char **argv) {
    r->inputs = calloc((size_t)*argc + 1, sizeof *r->inputs);
    if (!r->inputs)
        return dc_fail("out of memory");
    int kept = 1;
    bool in_images = false;
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        bool images = !strcmp(a, "--images") || !strncmp(a, "--images=", 9);
        if (images && a[8] == '=')
            r->inputs[r->n_inputs++] = argv[i] + 9;
        if (images || (in_images && strncmp(a, "--", 2) != 0)) {
            if (!images)
                r->inputs[r->n_inputs++] = argv[i];
            in_images = images ? a[8] != '=' : true;
            continue;
        }
        in_images = false;
        argv[kept++] = argv[i];
    }
    *argc = kept;
    return 0;
}

int dc_cmd_caption(int argc, char **argv) {
    run r = {0};
    int rc = take_images(&r, &argc, argv) ? -1 : dc_cli_parse(&cli, &r.o, argc, argv);
    if (rc == DC_CLI_HELP) {
        dc_cli_help(&cli, stdout);
        run_free(&r);
        return 0;
    }
    if (rc == DC_CLI_PARSED && !r.o.model)
        rc = dc_cli_usage_error(&cli, "%s", "caption needs --model DIR");
    if (rc == DC_CLI_PARSED && !r.n_inputs)
        rc = dc_cli_usage_error(&cli, "%s", "caption needs --images DIR|FILE...");
    if (rc == DC_CLI_USAGE) {
        run_free(&r);
        return 2;
    }
    if (!rc)
        rc = setup(&r) || caption_all(&r) || finish(&r) ? -1 : 0;
    if (rc) {
        fprintf(stderr, "diffc: error: %s\n", dc_error());
        rc = 1;
    }
    run_free(&r);
    return rc;
}
