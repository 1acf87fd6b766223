/*
 * Where a UNet's files lie in a diffusers folder (see dc_unet_find in
 * unet.h): a bare UNet folder (what UNet2DModel.save_pretrained writes) or
 * a component of a pipeline folder (unet/, unet_ema/). Training's
 * --pretrained-model and the inference commands' --model both look here.
 */
#define _GNU_SOURCE /* strdup */
#include "unet.h"

#include "autograd/error.h"
#include "autograd/fileio.h"

#include <stdbool.h>
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

/* Why `base` has no usable weights: only PyTorch's pickled ones, or none. */
static int no_weights(const char *base) {
    char *bin = dc_path_join(base, "diffusion_pytorch_model.bin");
    int rc = !bin ? -1
             : is_file(bin)
                 ? dc_fail("%s: only PyTorch .bin weights; diffc reads safetensors (in Python: "
                           "UNet2DModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True))",
                           base)
                 : dc_fail("%s: no %s (a diffusers model folder holds its weights there)", base,
                           DC_UNET_WEIGHTS_FILE);
    free(bin);
    return rc;
}

int dc_unet_find(const char *dir, const char *component, char **config_path, char **weights_path) {
    *config_path = *weights_path = NULL;
    if (!is_dir(dir))
        return dc_fail("%s: not a folder (a diffusers UNet or pipeline folder was expected)", dir);
    char *sub = dc_path_join(dir, component);
    char *base = sub && is_dir(sub) ? sub : strdup(dir);
    if (base != sub)
        free(sub);
    char *cfg = base ? dc_path_join(base, DC_UNET_CONFIG_FILE) : NULL;
    char *weights = cfg ? dc_path_join(base, DC_UNET_WEIGHTS_FILE) : NULL;
    int rc = !base      ? dc_fail("out of memory")
             : !weights ? -1
             : !is_file(cfg)
                 ? dc_fail("%s: no %s (not a diffusers UNet or pipeline folder)", base, DC_UNET_CONFIG_FILE)
             : is_file(weights) ? 0
                                : no_weights(base);
    if (!rc)
        *config_path = cfg, *weights_path = weights;
    else
        free(cfg), free(weights);
    free(base);
    return rc;
}
