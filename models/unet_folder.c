/*
 * Where a UNet's files lie in a diffusers folder (see dc_unet_find in
 * unet.h): a bare UNet folder (what UNet2DModel.save_pretrained writes) or
 * a component of a pipeline folder (unet/, unet_ema/), with its weights in
 * one file or sharded, plain or as a variant (fp16, ...; models/weights.c
 * finds them). Training's --pretrained-model and the inference commands'
 * --model both look here.
 */
#define _GNU_SOURCE /* strdup */
#include "unet.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "models/weights.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static const dc_weights_kind unet_weights = {
    .stem = "diffusion_pytorch_model",
    .bin = "diffusion_pytorch_model.bin",
    .library = "diffusers",
    .cls = "UNet2DModel",
};

bool dc_unet_weights_name(const char *name, char *variant, size_t n) {
    return dc_weights_name(&unet_weights, name, variant, n);
}

int dc_unet_find(const char *dir, const char *component, const char *variant, char **config_path,
                 char **weights_path, char **guessed) {
    char *unused = NULL;
    guessed = guessed ? guessed : &unused;
    *config_path = *weights_path = *guessed = NULL;
    if (!is_dir(dir))
        return dc_fail("%s: not a folder (a diffusers UNet or pipeline folder was expected)", dir);
    char *sub = dc_path_join(dir, component);
    char *base = sub && is_dir(sub) ? sub : strdup(dir);
    if (base != sub)
        free(sub);
    char *cfg = base ? dc_path_join(base, DC_UNET_CONFIG_FILE) : NULL;
    int rc = !base  ? dc_fail("out of memory")
             : !cfg ? -1
             : !is_file(cfg)
                 ? dc_fail("%s: no %s (not a diffusers UNet or pipeline folder)", base, DC_UNET_CONFIG_FILE)
                 : dc_weights_find(base, &unet_weights, variant, weights_path, guessed);
    if (!rc)
        *config_path = cfg;
    else
        free(cfg);
    free(base);
    free(unused);
    return rc;
}
