/* libFuzzer target for training config files: whatever the bytes, they are
 * refused with a message, or they give options whose resolved config, read
 * back, gives the same resolved config again (what train_config.json and a
 * resumed run rely on). */
#include "autograd/fileio.h"
#include "train/options.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cJSON *j = dc_json_parse((const char *)data, size, "fuzz.json");
    dc_train_options a, b;
    dc_train_options_init(&a);
    dc_train_options_init(&b);
    if (j && dc_train_options_apply_json(&a, j, "fuzz.json") == 0) {
        cJSON *ja = dc_train_options_to_json(&a);
        char *text = ja ? dc_json_print(ja, true) : NULL;
        cJSON *parsed = text ? dc_json_parse(text, strlen(text), "resolved") : NULL;
        if (!parsed || dc_train_options_apply_json(&b, parsed, "resolved") != 0)
            __builtin_trap();
        cJSON *jb = dc_train_options_to_json(&b);
        if (!jb || !cJSON_Compare(ja, jb, 1))
            __builtin_trap();
        if (a.model && a.model[0] == '{') /* a path would read whatever file it names */
            cJSON_Delete(dc_train_options_model_config(&a));
        cJSON_Delete(jb);
        cJSON_Delete(parsed);
        free(text);
        cJSON_Delete(ja);
    }
    dc_train_options_free(&a);
    dc_train_options_free(&b);
    cJSON_Delete(j);
    return 0;
}
