/*
 * Image preprocessing as transformers' BLIP image processor does it, from
 * the model folder's preprocessor_config.json: RGB, resize to height x width
 * (PIL's bicubic), rescale (x * rescale_factor), normalise ((x - mean) / std),
 * into float pixels [height, width, 3] (NHWC, where transformers gives NCHW).
 *
 * The reference is BlipImageProcessorPil, the PIL backend, value for value:
 * the rescale is done in double and rounded to float, the normalisation in
 * float32 with float32 mean and std, as its numpy code does. transformers'
 * default backend when torchvision is installed (BlipImageProcessor) resizes
 * with torch's bicubic instead, which is not PIL's: its pixels differ from
 * these by a few 8-bit levels where the image is resized.
 *
 * Images come from data/image, where alpha is already composited on white
 * as transformers' convert_rgb does, and gray has one channel: it is made RGB
 * when do_convert_rgb is true and refused otherwise (the model wants 3).
 * Keys read (defaults BLIP's): do_resize (true), size ({"height", "width"}
 * or one number; 384), resample (3, bicubic; the only one we have),
 * do_rescale (true), rescale_factor (1/255), do_normalize (true),
 * image_mean / image_std (three numbers or one; OpenAI CLIP's),
 * do_convert_rgb (true). A centre crop or padding is refused, and so is a
 * config whose pixels would not fit a float32 (a tiny image_std).
 */
#ifndef DC_DATA_IMAGE_PROCESSOR_H
#define DC_DATA_IMAGE_PROCESSOR_H

#include "data/image.h"

#include <stdbool.h>

typedef struct dc_image_processor {
    bool do_resize, do_rescale, do_normalize, do_convert_rgb;
    int height, width;     /* the output size, also without do_resize */
    int resample;          /* PIL's code: 3 = bicubic */
    double rescale_factor;
    double mean[3], std[3];
} dc_image_processor;

/* BlipImageProcessor's class defaults. */
dc_image_processor dc_image_processor_blip_default(void);
/* Read preprocessor_config.json (a file) over the defaults; errors name the file. */
int dc_image_processor_load(dc_image_processor *p, const char *path);
/* A model folder's: preprocessor_config.json, or processor_config.json's
 * "image_processor" (where transformers 5 saves it). */
int dc_image_processor_load_dir(dc_image_processor *p, const char *dir);
/* The same from JSON text; `what` names it in errors. */
int dc_image_processor_parse(dc_image_processor *p, const char *text, const char *what);

/* One image into out [p->height, p->width, 3]. Without do_resize the image
 * must already be that size. `what` names it in errors. */
int dc_image_processor_apply(const dc_image_processor *p, const dc_image *img, float *out,
                             const char *what);

#endif
