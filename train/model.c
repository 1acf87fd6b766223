/* The model `diffc train` trains (see model.h), chosen by --pretrained-model. */
#include "model.h"

#include "autograd/error.h"
#include "pipeline/sd_pipeline.h"

#include <math.h>

#include <string.h>

int dc_train_model_init(dc_train_model *m, const dc_train_options *o, int device, bool root) {
    memset(m, 0, sizeof *m);
    m->o = o;
    m->device = device;
    m->root = root;
    dc_params_init(&m->ps);
    bool sd = o->pretrained_model && dc_sd_is_pipeline(o->pretrained_model);
    return sd ? dc_train_model_sd_init(m) : dc_train_model_unet_init(m);
}

void dc_train_model_free(dc_train_model *m) {
    if (m->ops)
        m->ops->free(m);
    dc_params_free(&m->ps);
    cJSON_Delete(m->unet_json);
    memset(m, 0, sizeof *m);
}

int dc_train_model_override_dropout(dc_train_model *m) {
    if (isnan(m->o->dropout) || !cJSON_IsObject(m->unet_json))
        return 0;
    cJSON_DeleteItemFromObjectCaseSensitive(m->unet_json, "dropout");
    return cJSON_AddNumberToObject(m->unet_json, "dropout", m->o->dropout) ? 0 : dc_fail("out of memory");
}
