/* LoRA adapters on Stable Diffusion's UNet and text encoder: attach, save,
 * load, fuse (see lora.h). A file is read once into modules (one target
 * layer's A, B and alpha), every module checked against the model before
 * anything is written. */
#define _GNU_SOURCE /* strdup */
#include "lora.h"

#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- reading a file into modules ---- */

enum { PART_UNET, PART_TEXT, PARTS };
static const char *const part_prefix[PARTS] = {"unet.", "text_encoder."};
static const char *const part_name[PARTS] = {"UNet", "text encoder"};

typedef enum { ROLE_A, ROLE_B, ROLE_ALPHA } role;

/* Key endings of the formats diffusers reads, longest first where one ends another. */
static const struct {
    const char *suffix;
    role role;
    bool processor; /* "<attn>.processor.to_q_lora.down.weight": the projection named before it */
} suffixes[] = {
    {".lora_A.weight", ROLE_A, false},
    {".lora_B.weight", ROLE_B, false},
    {".lora_linear_layer.down.weight", ROLE_A, false},
    {".lora_linear_layer.up.weight", ROLE_B, false},
    {".lora.down.weight", ROLE_A, false},
    {".lora.up.weight", ROLE_B, false},
    {"_lora.down.weight", ROLE_A, true},
    {"_lora.up.weight", ROLE_B, true},
    {".alpha", ROLE_ALPHA, false},
};

typedef struct lora_module {
    int part;
    char *name;                              /* the target layer: its weight is name + ".weight" */
    const dc_st_tensor *t[3];                /* by role: A [r, in], B [out, r], alpha (or NULL) */
} lora_module;

typedef struct lora_file {
    char *path; /* the file read */
    dc_st_file f;
    int n;
    lora_module *m;      /* [n] in file order */
    double alpha[PARTS]; /* the metadata's lora_alpha; NAN when not given */
    bool rslora[PARTS];
} lora_file;

static void file_close(lora_file *lf) {
    for (int i = 0; i < lf->n; i++)
        free(lf->m[i].name);
    free(lf->m);
    dc_st_close(&lf->f);
    free(lf->path);
    memset(lf, 0, sizeof *lf);
}

/* The module of a processor-style key: ".processor" dropped, the projection
 * ("to_q") named as the model names it. */
static void processor_name(char *name, int part) {
    static const char *const from[] = {"to_q", "to_k", "to_v", "to_out"};
    static const char *const to[PARTS][4] = {{"to_q", "to_k", "to_v", "to_out.0"},
                                             {"q_proj", "k_proj", "v_proj", "out_proj"}};
    char *p = strstr(name, ".processor.");
    if (p)
        memmove(p, p + strlen(".processor"), strlen(p + strlen(".processor")) + 1);
    char *last = strrchr(name, '.');
    last = last ? last + 1 : name;
    for (int k = 0; k < 4; k++)
        if (!strcmp(last, from[k])) {
            strcpy(last, to[part][k]); /* the caller's buffer has room for the longer names */
            return;
        }
}

static lora_module *module_at(lora_file *lf, int part, const char *name) {
    for (int i = 0; i < lf->n; i++)
        if (lf->m[i].part == part && !strcmp(lf->m[i].name, name))
            return &lf->m[i];
    lora_module *m = realloc(lf->m, (size_t)(lf->n + 1) * sizeof *m);
    if (!m)
        return NULL;
    lf->m = m;
    m = &lf->m[lf->n];
    *m = (lora_module){.part = part, .name = strdup(name)};
    if (!m->name)
        return NULL;
    lf->n++;
    return m;
}

/* One tensor of the file into its module. */
static int add_tensor(lora_file *lf, const dc_st_tensor *t) {
    const char *key = t->name;
    if (!strncmp(key, "lora_unet_", 10) || !strncmp(key, "lora_te", 7))
        return dc_fail("%s: %s: a kohya-style LoRA key; diffc reads diffusers' and PEFT's names "
                       "(unet.<module>.lora_A.weight)", lf->path, key);
    int part = PART_UNET;
    for (int p = 0; p < PARTS; p++)
        if (!strncmp(key, part_prefix[p], strlen(part_prefix[p]))) {
            part = p, key += strlen(part_prefix[p]);
            break;
        }
    size_t len = strlen(key);
    for (size_t s = 0; s < sizeof suffixes / sizeof suffixes[0]; s++) {
        size_t sl = strlen(suffixes[s].suffix);
        if (len <= sl || strcmp(key + len - sl, suffixes[s].suffix))
            continue;
        char name[512];
        if (len - sl >= sizeof name - 8)
            return dc_fail("%s: %.64s...: key too long", lf->path, t->name);
        memcpy(name, key, len - sl);
        name[len - sl] = '\0';
        if (suffixes[s].processor)
            processor_name(name, part);
        lora_module *m = module_at(lf, part, name);
        if (!m)
            return dc_fail("%s: out of memory", lf->path);
        if (m->t[suffixes[s].role])
            return dc_fail("%s: %s: the module %s has it twice (also %s)", lf->path, t->name, name,
                           m->t[suffixes[s].role]->name);
        m->t[suffixes[s].role] = t;
        return 0;
    }
    return dc_fail("%s: %s: not a LoRA weight diffc reads (lora_A / lora_B, lora.down / lora.up, alpha; "
                   "DoRA, LoRA biases and other adapters are not supported)", lf->path, t->name);
}

/* The adapter settings of the metadata diffusers writes (LoraConfig's, per part). */
static int read_metadata(lora_file *lf) {
    for (int p = 0; p < PARTS; p++)
        lf->alpha[p] = NAN, lf->rslora[p] = false;
    const char *text = dc_st_meta(&lf->f, "lora_adapter_metadata");
    if (!text)
        return 0;
    cJSON *j = cJSON_Parse(text);
    int rc = cJSON_IsObject(j) ? 0 : dc_fail("%s: lora_adapter_metadata is not a JSON object", lf->path);
    for (int p = 0; p < PARTS && !rc; p++) {
        char key[64];
        snprintf(key, sizeof key, "%slora_alpha", part_prefix[p]);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
        if (v && (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble <= 0))
            rc = dc_fail("%s: metadata %s is not a positive number", lf->path, key);
        else if (v)
            lf->alpha[p] = v->valuedouble;
        snprintf(key, sizeof key, "%suse_rslora", part_prefix[p]);
        lf->rslora[p] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, key));
        static const char *const unsupported[] = {"use_dora", "lora_bias", "alpha_pattern"};
        for (int u = 0; u < 3 && !rc; u++) {
            snprintf(key, sizeof key, "%s%s", part_prefix[p], unsupported[u]);
            v = cJSON_GetObjectItemCaseSensitive(j, key);
            if (cJSON_IsTrue(v) || (cJSON_IsObject(v) && v->child))
                rc = dc_fail("%s: metadata %s: not supported by diffc", lf->path, key);
        }
    }
    cJSON_Delete(j);
    return rc;
}

/* `path` is the file, or a folder holding DC_LORA_WEIGHTS_FILE. */
static int file_open(lora_file *lf, const char *path) {
    memset(lf, 0, sizeof *lf);
    struct stat st;
    lf->path = stat(path, &st) == 0 && S_ISDIR(st.st_mode) ? dc_path_join(path, DC_LORA_WEIGHTS_FILE)
                                                           : strdup(path);
    if (!lf->path)
        return dc_fail("%s: out of memory", path);
    int rc = dc_st_open(&lf->f, lf->path);
    for (int i = 0; !rc && i < lf->f.n; i++)
        rc = add_tensor(lf, &lf->f.tensors[i]);
    rc = rc ? rc : lf->n ? read_metadata(lf) : dc_fail("%s: holds no LoRA weights", lf->path);
    if (rc)
        file_close(lf);
    return rc;
}

static bool is_float(const dc_st_tensor *t) {
    return t->dtype == DC_F32 || t->dtype == DC_BF16 || t->dtype == DC_F16;
}

/* A module's A and B are there and fit each other; its alpha is a finite scalar. */
static int check_module(const lora_file *lf, const lora_module *m) {
    const dc_st_tensor *A = m->t[ROLE_A], *B = m->t[ROLE_B], *al = m->t[ROLE_ALPHA];
    if (!A || !B)
        return dc_fail("%s: %s: the module has no %s", lf->path, (A ? A : B ? B : al)->name,
                       A ? "lora_B (up)" : "lora_A (down)");
    for (int k = 0; k < 3; k++)
        if (m->t[k] && !is_float(m->t[k]))
            return dc_fail("%s: %s: dtype %s, expected a float", lf->path, m->t[k]->name, m->t[k]->dtype_name);
    if (A->ndim != 2 || B->ndim != 2)
        return dc_fail("%s: %s: a %d-D adapter; diffc adapts linear layers (2-D lora_A and lora_B)", lf->path,
                       (A->ndim != 2 ? A : B)->name, (A->ndim != 2 ? A : B)->ndim);
    if (A->shape[0] < 1 || B->shape[1] != A->shape[0])
        return dc_fail("%s: %s: rank %lld, but %s has rank %lld", lf->path, B->name, (long long)B->shape[1],
                       A->name, (long long)A->shape[0]);
    if (al) {
        float a = NAN;
        if (al->ndim > 1 || (al->ndim == 1 && al->shape[0] != 1) ||
            dc_convert(&a, DC_F32, al->data, (dc_dtype)al->dtype, 1) || !isfinite(a))
            return dc_fail("%s: %s: expected one finite number", lf->path, al->name);
    }
    return 0;
}

/* alpha / rank (alpha / sqrt(rank) with rsLoRA) of a checked module. */
static float module_scale(const lora_file *lf, const lora_module *m) {
    double r = (double)m->t[ROLE_A]->shape[0], alpha = r;
    float a;
    if (m->t[ROLE_ALPHA] && !dc_convert(&a, DC_F32, m->t[ROLE_ALPHA]->data, (dc_dtype)m->t[ROLE_ALPHA]->dtype, 1))
        alpha = a;
    else if (!isnan(lf->alpha[m->part]))
        alpha = lf->alpha[m->part];
    return (float)(alpha / (lf->rslora[m->part] ? sqrt(r) : r));
}

/* A module's tensor as f32 host memory (malloc'ed), or NULL with a message. */
static float *to_f32(const dc_st_tensor *t) {
    size_t n = t->nbytes / t->elem_size;
    float *x = malloc((n + 1) * sizeof *x);
    if (!x || dc_convert(x, DC_F32, t->data, (dc_dtype)t->dtype, n)) {
        free(x);
        dc_fail("%s: out of memory", t->name);
        return NULL;
    }
    return x;
}

/* The failure of a reader function, its message made one line: the key
 * names it quotes come from the file and may hold control bytes ('?'). */
static int one_line(void) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", dc_error());
    for (char *c = msg; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    return dc_fail("%s", msg);
}

/* ---- fusing into the weights ---- */

/* The linear weight of module m in ps (after rename), its shape checked. */
static int fuse_target(const lora_file *lf, const lora_module *m, dc_params *ps, dc_rename_fn rename,
                       dc_param **out) {
    char name[600], buf[600];
    snprintf(name, sizeof name, "%s.weight", m->name);
    const char *pname = rename ? rename(name, buf, sizeof buf) : name;
    dc_param *p = ps && pname ? dc_params_find(ps, pname) : NULL;
    const dc_st_tensor *A = m->t[ROLE_A], *B = m->t[ROLE_B];
    if (!ps)
        return dc_fail("%s: %s: a %s LoRA, but no %s to fuse it into", lf->path, A->name, part_name[m->part],
                       part_name[m->part]);
    if (!p)
        return dc_fail("%s: %s: the %s has no layer %s", lf->path, A->name, part_name[m->part], m->name);
    if (p->layout != DC_LAYOUT_LINEAR)
        return dc_fail("%s: %s: %s is not a linear layer", lf->path, A->name, m->name);
    if (p->value.packed)
        return dc_fail("%s: %s: the weights are packed for inference already", lf->path, m->name);
    if (B->shape[0] != p->value.shape[0] || A->shape[1] != p->value.shape[1])
        return dc_fail("%s: %s: the adapter maps %lld to %lld features, the layer [%lld, %lld] %lld to %lld",
                       lf->path, m->name, (long long)A->shape[1], (long long)B->shape[0],
                       (long long)p->value.shape[0], (long long)p->value.shape[1], (long long)p->value.shape[1],
                       (long long)p->value.shape[0]);
    *out = p;
    return 0;
}

/* W [out, in] += k B [out, r] A [r, in], on the parameters' device through host memory. */
static int fuse_one(const lora_module *m, dc_param *p, int device, float k) {
    int64_t out = p->value.shape[0], in = p->value.shape[1], r = m->t[ROLE_A]->shape[0];
    size_t bytes = (size_t)(out * in) * sizeof(float);
    float *A = to_f32(m->t[ROLE_A]), *B = to_f32(m->t[ROLE_B]), *W = malloc(bytes + 1);
    int rc = !A || !B ? -1 : !W ? dc_fail("%s: out of memory", m->name)
                                : dc_memcpy(W, DC_CPU, p->value.data, device, bytes);
    if (!rc) {
#pragma omp parallel for
        for (int64_t o = 0; o < out; o++)
            for (int64_t j = 0; j < r; j++) {
                float b = k * B[o * r + j];
                for (int64_t i = 0; i < in; i++)
                    W[o * in + i] += b * A[j * in + i];
            }
        rc = dc_memcpy(p->value.data, device, W, DC_CPU, bytes);
    }
    free(A);
    free(B);
    free(W);
    return rc;
}

int dc_lora_fuse(const char *path, float lora_scale, dc_params *unet, dc_params *text,
                 dc_rename_fn text_rename) {
    lora_file lf;
    if (file_open(&lf, path))
        return one_line();
    dc_param **target = calloc((size_t)lf.n + 1, sizeof *target);
    int rc = target ? 0 : dc_fail("%s: out of memory", lf.path);
    for (int i = 0; i < lf.n && !rc; i++) {
        lora_module *m = &lf.m[i];
        rc = check_module(&lf, m) || fuse_target(&lf, m, m->part == PART_TEXT ? text : unet,
                                                 m->part == PART_TEXT ? text_rename : NULL, &target[i]);
    }
    for (int i = 0; i < lf.n && !rc; i++) {
        dc_params *ps = lf.m[i].part == PART_TEXT ? text : unet;
        rc = fuse_one(&lf.m[i], target[i], ps->device, lora_scale * module_scale(&lf, &lf.m[i]));
    }
    free(target);
    file_close(&lf);
    return rc ? one_line() : 0;
}

/* ---- attaching to the UNet for training ---- */

/* The attention projections of every transformer block, in the order of the
 * UNet's levels (down, mid, up); *out may be NULL to count them. */
static int unet_targets(dc_unet_cond *m, dc_nn_linear **out) {
    int nt = dc_unet_cond_transformers(m, NULL), n = 0;
    dc_unet_transformer **list = calloc((size_t)nt + 1, sizeof *list);
    if (!list)
        return -1;
    dc_unet_cond_transformers(m, list);
    for (int i = 0; i < nt; i++)
        for (int t = 0; t < list[i]->n_blocks; t++) {
            dc_tf_attention *att[2] = {&list[i]->blocks[t].attn1, &list[i]->blocks[t].attn2};
            for (int k = 0; k < 2; k++) {
                dc_nn_linear *proj[4] = {&att[k]->q, &att[k]->k, &att[k]->v, &att[k]->out};
                for (int j = 0; j < 4; j++, n++)
                    if (out)
                        out[n] = proj[j];
            }
        }
    free(list);
    return n;
}

/* The module name of a layer: its weight's parameter name less ".weight". */
static char *layer_name(const dc_params *base, const dc_nn_linear *lin) {
    for (int k = 0; k < base->n; k++)
        if (&base->p[k]->value == lin->weight) {
            const char *name = base->p[k]->name;
            size_t len = strlen(name);
            return len > 7 ? strndup(name, len - 7) : NULL;
        }
    return NULL;
}

/* Declare every layer's adapter in l->params; nothing attached yet. */
static int declare_layers(dc_lora *l, dc_unet_cond *m, const dc_params *base) {
    dc_nn_linear **lin = calloc((size_t)l->n + 1, sizeof *lin);
    if (!lin)
        return dc_fail("LoRA: out of memory");
    int rc = unet_targets(m, lin) < 0 ? dc_fail("LoRA: out of memory") : 0;
    for (int i = 0; i < l->n && !rc; i++) {
        dc_lora_layer *y = &l->layers[i];
        y->target = lin[i];
        y->name = layer_name(base, lin[i]);
        char *prefix = NULL;
        if (y->name && asprintf(&prefix, "%s%s", part_prefix[PART_UNET], y->name) < 0)
            prefix = NULL;
        rc = !y->name ? dc_fail("LoRA: a UNet attention layer is not among the given parameters")
             : !prefix ? dc_fail("LoRA: out of memory")
                       : dc_nn_lora_init(&y->adapter, l->params, prefix, lin[i]->weight->shape[1],
                                         lin[i]->weight->shape[0], l->rank, l->alpha);
        free(prefix);
    }
    free(lin);
    return rc;
}

int dc_lora_declare_unet(dc_lora *l, dc_unet_cond *m, const dc_params *base, dc_params *ps, int rank,
                         float alpha) {
    memset(l, 0, sizeof *l);
    l->params = ps;
    if (rank < 1 || rank > 65536 || !(alpha > 0) || !isfinite(alpha))
        return dc_fail("LoRA: rank %d and alpha %g: need a rank of 1 to 65536 and a positive alpha", rank, alpha);
    l->rank = rank;
    l->alpha = alpha;
    l->n = unet_targets(m, NULL);
    if (l->n <= 0)
        return dc_fail(l->n ? "LoRA: out of memory" : "LoRA: the UNet has no attention layers to adapt");
    l->layers = calloc((size_t)l->n, sizeof *l->layers);
    if (!l->layers || declare_layers(l, m, base)) {
        if (!l->layers)
            dc_fail("LoRA: out of memory");
        dc_lora_free(l);
        return -1;
    }
    for (int i = 0; i < l->n; i++)
        l->layers[i].target->lora = &l->layers[i].adapter;
    return 0;
}

int dc_lora_attach_unet(dc_lora *l, dc_unet_cond *m, dc_params *base, int rank, float alpha, uint64_t seed) {
    if (!base->data)
        return memset(l, 0, sizeof *l), dc_fail("LoRA: the UNet's parameters are not allocated");
    dc_params *own = malloc(sizeof *own);
    if (!own)
        return memset(l, 0, sizeof *l), dc_fail("LoRA: out of memory");
    dc_params_init(own);
    if (dc_lora_declare_unet(l, m, base, own, rank, alpha)) {
        free(own);
        return -1;
    }
    l->owns_params = true;
    if (dc_params_alloc_on(l->params, base->device, seed)) {
        dc_lora_free(l);
        return -1;
    }
    dc_params_freeze(base);
    return 0;
}

void dc_lora_free(dc_lora *l) {
    for (int i = 0; l->layers && i < l->n; i++) {
        if (l->layers[i].target && l->layers[i].target->lora == &l->layers[i].adapter)
            l->layers[i].target->lora = NULL;
        free(l->layers[i].name);
    }
    free(l->layers);
    if (l->owns_params) {
        dc_params_free(l->params);
        free(l->params);
    }
    memset(l, 0, sizeof *l);
}

/* ---- saving and loading the adapters ---- */

/* LoraConfig's settings as diffusers' metadata: keys prefixed "unet.". */
static char *adapter_metadata(const dc_lora *l) {
    cJSON *j = cJSON_CreateObject(), *targets = cJSON_CreateArray();
    static const char *const modules[] = {"to_k", "to_out.0", "to_q", "to_v"};
    for (int i = 0; i < 4; i++)
        cJSON_AddItemToArray(targets, cJSON_CreateString(modules[i]));
    cJSON_AddStringToObject(j, "unet.bias", "none");
    cJSON_AddBoolToObject(j, "unet.init_lora_weights", true);
    cJSON_AddNumberToObject(j, "unet.lora_alpha", l->alpha);
    cJSON_AddNumberToObject(j, "unet.lora_dropout", 0.0);
    cJSON_AddNumberToObject(j, "unet.r", l->rank);
    cJSON_AddItemToObject(j, "unet.target_modules", targets);
    cJSON_AddBoolToObject(j, "unet.use_dora", false);
    cJSON_AddBoolToObject(j, "unet.use_rslora", false);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    return text;
}

int dc_lora_save(const dc_lora *l, const char *dir) {
    char *meta = adapter_metadata(l), *path = dc_path_join(dir, DC_LORA_WEIGHTS_FILE);
    const char *keys[] = {"format", "lora_adapter_metadata"}, *values[] = {"pt", meta};
    int rc = !meta || !path ? dc_fail("%s: out of memory", dir)
                            : dc_mkdirs(dir) || dc_params_save(l->params, NULL, path, keys, values, 2);
    free(meta);
    free(path);
    return rc ? -1 : 0;
}

/* The attached layer of a file's module, its shapes checked. */
static int load_target(const dc_lora *l, const lora_file *lf, const lora_module *m, int *at) {
    *at = -1;
    for (int i = 0; i < l->n && *at < 0; i++)
        if (m->part == PART_UNET && !strcmp(l->layers[i].name, m->name))
            *at = i;
    if (*at < 0)
        return dc_fail("%s: %s: no adapter of this model is on %s %s", lf->path, m->t[ROLE_A]->name,
                       part_name[m->part], m->name);
    const dc_nn_lora *a = &l->layers[*at].adapter;
    const dc_st_tensor *A = m->t[ROLE_A], *B = m->t[ROLE_B];
    if (A->shape[0] != a->A->shape[0] || A->shape[1] != a->A->shape[1] || B->shape[0] != a->B->shape[0])
        return dc_fail("%s: %s: rank %lld, %lld to %lld features; the adapter has rank %lld, %lld to %lld",
                       lf->path, m->name, (long long)A->shape[0], (long long)A->shape[1], (long long)B->shape[0],
                       (long long)a->A->shape[0], (long long)a->A->shape[1], (long long)a->B->shape[0]);
    return 0;
}

static int copy_to(dc_tensor *dst, int device, const dc_st_tensor *src) {
    float *x = to_f32(src);
    int rc = x ? dc_memcpy(dst->data, device, x, DC_CPU, (size_t)dst->numel * sizeof *x) : -1;
    free(x);
    return rc;
}

int dc_lora_load(dc_lora *l, const char *path) {
    lora_file lf;
    if (file_open(&lf, path))
        return one_line();
    int *at = calloc((size_t)lf.n + 1, sizeof *at), rc = at ? 0 : dc_fail("%s: out of memory", lf.path);
    for (int i = 0; i < lf.n && !rc; i++)
        rc = check_module(&lf, &lf.m[i]) || load_target(l, &lf, &lf.m[i], &at[i]);
    if (!rc && lf.n != l->n)
        rc = dc_fail("%s: adapts %d layers; the model has adapters on %d", lf.path, lf.n, l->n);
    for (int i = 0; i < lf.n && !rc; i++) {
        dc_lora_layer *y = &l->layers[at[i]];
        rc = copy_to(y->adapter.A, l->params->device, lf.m[i].t[ROLE_A]) ||
             copy_to(y->adapter.B, l->params->device, lf.m[i].t[ROLE_B]);
        y->adapter.scale = module_scale(&lf, &lf.m[i]);
    }
    free(at);
    file_close(&lf);
    return rc ? one_line() : 0;
}
